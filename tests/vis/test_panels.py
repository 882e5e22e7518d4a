import numpy as np
from PIL import Image

from reid.vis import CORRECT_COLOR, WRONG_COLOR, PanelLayout, load_image, pair_panel, save_image, triplet_panel

SMALL = PanelLayout(tile_height=64, tile_width=32, margin=6, header_height=30, caption_height=14, border=3)


def uniform(color, shape=(16, 8)):
    return np.broadcast_to(np.array(color, dtype=np.uint8), (*shape, 3)).copy()


def test_pair_panel_size_and_file(tmp_path):
    q, g = uniform((10, 20, 30)), uniform((200, 100, 50), (32, 16))
    panel = pair_panel(q, g, np.zeros((4, 2)), np.ones((2, 1)), distance=0.1234, rank=3, correct=True,
                       query_pid=5, gallery_pid=5)
    # default layout, 4 tiles: width 4 * 128 + 5 * 8 = 552, height 40 + 256 + 20 + 8 = 324
    assert panel.shape == (324, 552, 3) and panel.dtype == np.uint8
    path = tmp_path / "panels" / "p.png"
    save_image(path, panel)
    with Image.open(path) as img:
        assert img.size == (552, 324)
    # tile 0 (query) starts at (x, y) = (8, 40) and shows the query image
    assert load_image(path)[40 + 128, 8 + 64].tolist() == [10, 20, 30]
    # tile 3 (gallery) starts at x = 8 + 3 * 136 = 416
    assert panel[40 + 128, 416 + 64].tolist() == [200, 100, 50]


def test_pair_panel_border_marks_correctness():
    q, g = uniform((10, 20, 30)), uniform((200, 100, 50))
    args = (q, g, np.zeros((4, 2)), np.zeros((4, 2)))
    # gallery-overlay tile 2 starts at x = 6 + 2 * 38 = 82, y = 30; its border lies in the margin
    probe = (30 + 32, 82 - 2)
    assert tuple(pair_panel(*args, 0.5, 1, correct=True, layout=SMALL)[probe]) == CORRECT_COLOR
    assert tuple(pair_panel(*args, 0.5, 1, correct=False, layout=SMALL)[probe]) == WRONG_COLOR
    assert tuple(pair_panel(*args, 0.5, 1, correct=None, layout=SMALL)[probe]) == (255, 255, 255)
    # the query tiles never get a border
    assert tuple(pair_panel(*args, 0.5, 1, correct=True, layout=SMALL)[30 + 32, 6 - 2]) == (255, 255, 255)


def test_triplet_panel_size():
    a, b, c = uniform((1, 2, 3)), uniform((4, 5, 6)), uniform((7, 8, 9))
    m = np.full((4, 2), 0.5)
    panel = triplet_panel(a, b, c, m, m, m, 0.2, 0.7, correct_a=True, correct_b=False, layout=SMALL)
    assert SMALL.size(6) == (30 + 64 + 14 + 6, 6 * 32 + 7 * 6)
    assert panel.shape == (*SMALL.size(6), 3)
    # tile 4 (image B) starts at x = 6 + 4 * 38 = 158
    assert panel[30 + 32, 158 + 16].tolist() == [7, 8, 9]
    assert tuple(panel[30 + 32, 158 - 2]) == WRONG_COLOR
