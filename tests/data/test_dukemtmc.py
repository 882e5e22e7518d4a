import logging
import os

import pytest
from PIL import Image
from torchreid.reid.data import ImageDataManager
from torchreid.reid.data.datasets import init_image_dataset

from reid.data.base import register_variant
from reid.data.images import ImageReadError
from reid.data.dukemtmc import DukeMTMCreID
from reid.data.validation import DatasetError

TREE = {
    "bounding_box_train": ["0005_c1_f0000001.jpg", "0005_c3_f0000002.jpg", "0009_c8_f0000003.jpg"],
    "query": ["0002_c2_f0000004.jpg"],
    "bounding_box_test": ["0002_c5_f0000005.jpg", "0007_c1_f0000006.jpg"],
}


def make_duke(base, tree=TREE):
    for folder, names in tree.items():
        os.makedirs(base / folder, exist_ok=True)
        for i, name in enumerate(names):
            Image.new("RGB", (4, 8), (10 * i, 50, 90)).save(base / folder / name)
    return base


def duke(root, **kwargs):
    return DukeMTMCreID(root=str(root), verbose=False, **kwargs)


def test_torchreid_layout_pids_and_cameras(tmp_path):
    base = make_duke(tmp_path / "dukemtmc-reid" / "DukeMTMC-reID")
    data = duke(tmp_path)
    assert [(os.path.basename(p), pid, cam) for p, pid, cam, _ in data.train] == [
        ("0005_c1_f0000001.jpg", 0, 0), ("0005_c3_f0000002.jpg", 0, 2), ("0009_c8_f0000003.jpg", 1, 7)
    ]
    assert [(pid, cam) for _, pid, cam, _ in data.query] == [(2, 1)]
    assert [(pid, cam) for _, pid, cam, _ in data.gallery] == [(2, 4), (7, 0)]
    assert data.train[0][0] == str(base / "bounding_box_train" / "0005_c1_f0000001.jpg")
    assert data.num_train_pids == 2


def test_folder_directly_under_root(tmp_path):
    make_duke(tmp_path / "DukeMTMC-reID")
    assert len(duke(tmp_path).gallery) == 2


def test_missing_dataset_names_path_and_tree(tmp_path):
    with pytest.raises(DatasetError) as info:
        duke(tmp_path)
    assert str(tmp_path / "dukemtmc-reid" / "DukeMTMC-reID") in str(info.value)
    assert "bounding_box_train/" in str(info.value)


def test_missing_split_folder_names_it(tmp_path):
    tree = {k: v for k, v in TREE.items() if k != "query"}
    base = make_duke(tmp_path / "DukeMTMC-reID", tree)
    with pytest.raises(DatasetError, match="Expected layout") as info:
        duke(tmp_path)
    assert f"not found: {base / 'query'}\n" in str(info.value)


def test_bad_file_name_names_file_and_pattern(tmp_path):
    tree = {**TREE, "query": ["0002_c2.jpg"]}
    make_duke(tmp_path / "DukeMTMC-reID", tree)
    with pytest.raises(DatasetError, match=r"<pid>_c<camera>_f<frame>\.jpg.*0002_c2\.jpg"):
        duke(tmp_path)


def test_camera_out_of_range(tmp_path):
    tree = {**TREE, "bounding_box_test": ["0002_c9_f0000005.jpg"]}
    make_duke(tmp_path / "DukeMTMC-reID", tree)
    with pytest.raises(DatasetError, match=r"c9 is outside c1\.\.c8: .*0002_c9_f0000005\.jpg"):
        duke(tmp_path)


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_truncated_image_error_or_skip(tmp_path, caplog):
    base = make_duke(tmp_path / "DukeMTMC-reID")
    truncate(base / "bounding_box_train" / "0009_c8_f0000003.jpg")
    with pytest.raises(ImageReadError, match="0009_c8_f0000003.jpg"):
        duke(tmp_path)
    with caplog.at_level(logging.WARNING):
        data = duke(tmp_path, on_bad_image="skip")
    assert "skipped 1 unreadable image" in caplog.text
    assert [pid for _, pid, _, _ in data.train] == [0, 0]


def test_images_read_for_the_mode_in_use(tmp_path):
    base = make_duke(tmp_path / "DukeMTMC-reID")
    truncate(base / "bounding_box_test" / "0007_c1_f0000006.jpg")
    assert len(duke(tmp_path, mode="query").data) == 1
    with pytest.raises(ImageReadError, match="0007_c1_f0000006.jpg"):
        duke(tmp_path, mode="gallery")
    with pytest.raises(ImageReadError, match="0007_c1_f0000006.jpg"):
        duke(tmp_path, combineall=True)


def test_count_mismatch_warns_with_both_numbers(tmp_path, caplog):
    make_duke(tmp_path / "DukeMTMC-reID")
    with caplog.at_level(logging.WARNING):
        duke(tmp_path)
    assert "train: 3 images, published 16522" in caplog.text
    assert "train: 2 identities, published 702" in caplog.text


def test_registered_and_built_by_torchreid_data_manager(tmp_path):
    make_duke(tmp_path / "dukemtmc-reid" / "DukeMTMC-reID")
    query = init_image_dataset("dukemtmc_reid", root=str(tmp_path), mode="query", verbose=False)
    assert len(query) == 1
    name = register_variant("dukemtmc_reid", {"on_bad_image": "skip"})
    manager = ImageDataManager(
        root=str(tmp_path), sources=[name], height=8, width=4, batch_size_train=2,
        batch_size_test=2, workers=0, train_sampler="RandomSampler", use_gpu=False,
    )
    assert manager.num_train_pids == 2
    batch = next(iter(manager.test_loader[name]["gallery"]))
    assert batch["img"].shape == (2, 3, 8, 4)
