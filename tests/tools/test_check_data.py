import os

from PIL import Image

from reid.cli.check_data import main

TREE = {
    "bounding_box_train": ["0005_c1_f0000001.jpg", "0005_c3_f0000002.jpg", "0009_c8_f0000003.jpg"],
    "query": ["0002_c2_f0000004.jpg"],
    "bounding_box_test": ["0002_c5_f0000005.jpg", "0007_c1_f0000006.jpg"],
}


def make_duke(root):
    base = root / "DukeMTMC-reID"
    for folder, names in TREE.items():
        os.makedirs(base / folder)
        for name in names:
            Image.new("RGB", (4, 8), (0, 90, 200)).save(base / folder / name)
    return base


def config(tmp_path, targets="[]"):
    path = tmp_path / "cfg.yaml"
    path.write_text(
        f"DATA:\n  ROOT: {tmp_path / 'data'}\n  SOURCES: [dukemtmc_reid]\n  TARGETS: {targets}\n"
    )
    return str(path)


def test_prints_table_and_published_differences(tmp_path, capsys):
    make_duke(tmp_path / "data")
    assert main(["--config", config(tmp_path)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "dukemtmc_reid"
    assert lines[3].split() == ["train", "2", "3", "3"]
    assert lines[4].split() == ["query", "1", "1", "1"]
    assert lines[5].split() == ["gallery", "2", "2", "2"]
    assert "gallery: 2 images, published 17661" in out
    assert "1 of 1 dataset(s) OK" in out


def test_errors_exit_non_zero_and_skip_option(tmp_path, capsys):
    base = make_duke(tmp_path / "data")
    bad = base / "bounding_box_test" / "0007_c1_f0000006.jpg"
    bad.write_bytes(bad.read_bytes()[:20])
    cfg = config(tmp_path, targets="[dukemtmc_reid, cuhk03_np_detected]")
    assert main(["--config", cfg]) == 1
    out = capsys.readouterr().out
    assert "0007_c1_f0000006.jpg" in out
    assert str(tmp_path / "data" / "cuhk03-np" / "detected") in out
    assert "0 of 2 dataset(s) OK" in out
    assert main(["--config", cfg, "DATA.TARGETS", "[]", "DATA.ON_BAD_IMAGE", "skip"]) == 0
    assert capsys.readouterr().out.splitlines()[5].split() == ["gallery", "1", "1", "1"]


def synthetic_config(tmp_path, root, sources="[synthetic]"):
    from tests.conftest import TINY_SYNTHETIC as syn

    path = tmp_path / "synthetic.yaml"
    path.write_text(
        f"DATA:\n  ROOT: {root}\n  SOURCES: {sources}\n  SYNTHETIC:\n    NUM_IDS: {syn['num_ids']}\n"
        f"    NUM_CAMS: {syn['num_cams']}\n    IMAGES_PER_ID: {syn['images_per_id']}\n"
        f"    IMG_HEIGHT: {syn['height']}\n    IMG_WIDTH: {syn['width']}\n    SEED: {syn['seed']}\n"
    )
    return str(path)


def test_synthetic_truncated_image_is_reported_not_ok(tiny_data_root, tmp_path, capsys):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(tiny_data_root, root)
    cfg = synthetic_config(tmp_path, root)
    assert main(["--config", cfg]) == 0
    lines = capsys.readouterr().out.splitlines()
    train_images = int(lines[3].split()[2])
    bad = sorted((root / "synthetic").glob("*/bounding_box_train/*.jpg"))[0]
    bad.write_bytes(bad.read_bytes()[:200])
    assert main(["--config", cfg]) == 1
    out = capsys.readouterr().out
    assert bad.name in out and "synthetic: ERROR" in out
    assert "0 of 1 dataset(s) OK" in out
    assert main(["--config", cfg, "DATA.ON_BAD_IMAGE", "skip"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[3].split()[2] == str(train_images - 1)
    assert "skipped 1 unreadable image(s)" in out and bad.name in out


def test_torchreid_builtin_truncated_image_is_reported(tmp_path, capsys):
    from tests.data.test_every_dataset_checked import make_market

    base = make_market(tmp_path / "data")
    bad = base / "bounding_box_test" / "0010_c2s1_001101_02.jpg"
    bad.write_bytes(bad.read_bytes()[:20])
    cfg = synthetic_config(tmp_path, tmp_path / "data", sources="[market1501]")
    assert main(["--config", cfg]) == 1
    out = capsys.readouterr().out
    assert bad.name in out and "0 of 1 dataset(s) OK" in out
    assert main(["--config", cfg, "DATA.ON_BAD_IMAGE", "skip"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "market1501"
    assert out.splitlines()[5].split() == ["gallery", "1", "1", "1"]
