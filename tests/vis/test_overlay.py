import numpy as np
import pytest

from reid.vis import colorize_map, denormalize_image, load_image, overlay_heatmap, save_image


def test_colorize_jet_ends_by_hand():
    colors = colorize_map(np.array([[0.0, 1.0]]))
    assert colors.dtype == np.uint8 and colors.shape == (1, 2, 3)
    assert colors[0, 0].tolist() == [0, 0, 128]  # jet: 0 is dark blue
    assert colors[0, 1].tolist() == [128, 0, 0]  # jet: 1 is dark red


def test_overlay_shape_dtype_and_hand_blend():
    image = np.full((8, 4, 3), 100, dtype=np.uint8)
    before = image.copy()
    out = overlay_heatmap(image, np.zeros((8, 4)), alpha=0.5)
    assert out.dtype == np.uint8 and out.shape == (8, 4, 3)
    assert (out == np.array([50, 50, 114], dtype=np.uint8)).all()  # (100 + (0, 0, 128)) / 2
    assert np.array_equal(image, before)


def test_overlay_alpha_zero_is_the_image_and_alpha_one_the_colours():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(6, 3, 3), dtype=np.uint8)
    heat = rng.random((6, 3))
    out0 = overlay_heatmap(image, heat, alpha=0.0)
    assert np.array_equal(out0, image) and out0 is not image
    assert np.array_equal(overlay_heatmap(image, heat, alpha=1.0), colorize_map(heat))


def test_overlay_resizes_small_map_to_image():
    out = overlay_heatmap(np.zeros((16, 8, 3), dtype=np.uint8), np.array([[1.0], [0.0]]), alpha=1.0)
    assert out.shape == (16, 8, 3)
    assert out[0, 0].tolist() == [128, 0, 0] and out[-1, 0].tolist() == [0, 0, 128]


def test_overlay_rejects_bad_inputs():
    image = np.zeros((4, 4, 3), dtype=np.uint8)
    with pytest.raises(ValueError):
        overlay_heatmap(image, np.full((4, 4), 3.0))  # raw map, not normalised
    with pytest.raises(ValueError):
        overlay_heatmap(image.astype(np.float32), np.zeros((4, 4)))
    with pytest.raises(ValueError):
        overlay_heatmap(image, np.zeros((4, 4)), alpha=1.5)


def test_denormalize_by_hand_and_save_load_roundtrip(tmp_path):
    zeros = np.zeros((3, 2, 2))
    assert denormalize_image(zeros)[0, 0].tolist() == [124, 116, 104]  # rint(255 * mean)
    ones = denormalize_image(np.ones((3, 1, 1)), mean=(0.0, 0.0, 0.0), std=(0.5, 1.0, 2.0))
    assert ones[0, 0].tolist() == [128, 255, 255]
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    path = tmp_path / "sub" / "x.png"
    save_image(path, image)
    assert np.array_equal(load_image(path), image)
