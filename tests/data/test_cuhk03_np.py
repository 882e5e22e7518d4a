import logging
import os
import shutil

import h5py
import numpy as np
import pytest
import scipy.io
from PIL import Image
from torchreid.reid.data.datasets import init_image_dataset

from reid.data.images import ImageReadError
from reid.data.cuhk03_np import CUHK03NPDetected, CUHK03NPLabeled
from reid.data.validation import DatasetError

# Folder release: train pids 3 and 8, test pids 4 and 6.
FOLDER_TREE = {
    "bounding_box_train": ["0003_c1_1.png", "0003_c2_2.png", "0008_c2_1.png"],
    "query": ["0004_c1_1.png", "0006_c2_1.png"],
    "bounding_box_test": ["0004_c2_2.png", "0006_c1_2.png", "0006_c1_3.png"],
}

# Original release: one camera pair, 4 persons; labeled boxes have 2 images per view, detected 1.
PERSONS = 4
TRAIN_PERSONS = (1, 2)
IMAGES_PER_VIEW = {"labeled": 2, "detected": 1}


def make_folder_release(root, image_type="labeled", tree=FOLDER_TREE):
    for folder, names in tree.items():
        path = root / "cuhk03-np" / image_type / folder
        os.makedirs(path, exist_ok=True)
        for i, name in enumerate(names):
            Image.new("RGB", (4, 8), (20 * i, 10, 60)).save(path / name)


def cell_indices(image_type):
    """Indices (0-9) of the non-empty cells of a person: view 1 is 0-4, view 2 is 5-9."""
    n = IMAGES_PER_VIEW[image_type]
    return list(range(n)) + list(range(5, 5 + n))


def write_raw_mat(path):
    """A tiny ``cuhk-03.mat`` in MATLAB v7.3 (HDF5) layout: cells are object references, and
    arrays are stored transposed (torchreid reads ``mat[ref][:].T``)."""
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        refs = f.create_group("#refs#")

        def store(array):
            return refs.create_dataset(str(len(refs)), data=array).ref

        for image_type in ("labeled", "detected"):
            cells = np.empty((10, PERSONS), dtype=h5py.ref_dtype)  # (persons, 10) once transposed
            for person in range(PERSONS):
                for k in range(10):
                    if k in cell_indices(image_type):
                        img = rng.integers(0, 256, size=(8, 4, 3), dtype=np.uint8)
                        cells[k, person] = store(img.T)
                    else:
                        cells[k, person] = store(np.zeros(2, dtype=np.uint64))  # empty cell
            pairs = np.empty((1, 1), dtype=h5py.ref_dtype)
            pairs[0, 0] = store(cells)
            f.create_dataset(image_type, data=pairs)
        testset = np.array([[1, p] for p in range(1, PERSONS + 1) if p not in TRAIN_PERSONS], float)
        testsets = np.empty((1, 1), dtype=h5py.ref_dtype)
        testsets[0, 0] = store(testset.T)
        f.create_dataset("testsets", data=testsets)


def write_protocol_mat(path, image_type):
    """A tiny ``cuhk03_new_protocol_config_<type>.mat``: 1-based indices into ``filelist``;
    query is the first view-1 image of each test person, gallery the rest."""
    names, labels, cams, train, query, gallery = [], [], [], [], [], []
    for person in range(1, PERSONS + 1):
        for k in cell_indices(image_type):
            view = 1 if k < 5 else 2
            names.append(f"1_{person:03d}_{view}_{k + 1:02d}.png")
            labels.append(person)
            cams.append(view)
            index = len(names)
            if person in TRAIN_PERSONS:
                train.append(index)
            elif k == 0:
                query.append(index)
            else:
                gallery.append(index)
    filelist = np.empty((len(names), 1), dtype=object)
    filelist[:, 0] = names
    column = lambda values: np.array(values, dtype=np.int32).reshape(-1, 1)  # noqa: E731
    scipy.io.savemat(
        path,
        {"filelist": filelist, "labels": column(labels), "camId": column(cams),
         "train_idx": column(train), "query_idx": column(query), "gallery_idx": column(gallery)},
    )


def make_mat_release(root):
    base = root / "cuhk03"
    os.makedirs(base / "cuhk03_release")
    write_raw_mat(base / "cuhk03_release" / "cuhk-03.mat")
    for image_type in ("labeled", "detected"):
        write_protocol_mat(base / f"cuhk03_new_protocol_config_{image_type}.mat", image_type)


def summary(items):
    return [(os.path.basename(p), pid, cam) for p, pid, cam, *_ in items]


def test_folder_release_pids_and_cameras(tmp_path):
    make_folder_release(tmp_path, "labeled")
    data = CUHK03NPLabeled(root=str(tmp_path), verbose=False)
    assert summary(data.train) == [("0003_c1_1.png", 0, 0), ("0003_c2_2.png", 0, 1), ("0008_c2_1.png", 1, 1)]
    assert summary(data.query) == [("0004_c1_1.png", 4, 0), ("0006_c2_1.png", 6, 1)]
    assert [pid for _, pid, _, _ in data.gallery] == [4, 6, 6]
    train_dir = tmp_path / "cuhk03-np" / "labeled" / "bounding_box_train"
    assert data.train[0][0] == str(train_dir / "0003_c1_1.png")


def test_folder_release_camera_out_of_range(tmp_path):
    make_folder_release(tmp_path, "labeled", {**FOLDER_TREE, "query": ["0004_c3_1.png"]})
    with pytest.raises(DatasetError, match=r"c3 is outside c1\.\.c2: .*0004_c3_1\.png"):
        CUHK03NPLabeled(root=str(tmp_path), verbose=False)


def test_folder_release_bad_name_and_missing_folder(tmp_path):
    make_folder_release(tmp_path, "labeled", {**FOLDER_TREE, "query": ["4_1.png"]})
    with pytest.raises(DatasetError, match=r"<pid>_c<camera>_<index>\.png.*4_1\.png"):
        CUHK03NPLabeled(root=str(tmp_path), verbose=False)
    shutil.rmtree(tmp_path / "cuhk03-np" / "labeled" / "query")
    with pytest.raises(DatasetError, match="Expected layout") as info:
        CUHK03NPLabeled(root=str(tmp_path), verbose=False)
    assert str(tmp_path / "cuhk03-np" / "labeled" / "query") in str(info.value)


def test_no_release_names_both_paths(tmp_path):
    with pytest.raises(DatasetError) as info:
        CUHK03NPDetected(root=str(tmp_path), verbose=False)
    assert str(tmp_path / "cuhk03-np" / "detected") in str(info.value)
    assert str(tmp_path / "cuhk03") in str(info.value)
    assert "cuhk03_new_protocol_config_detected.mat" in str(info.value)


def test_mat_release_missing_protocol_file_is_named(tmp_path):
    make_mat_release(tmp_path)
    os.remove(tmp_path / "cuhk03" / "cuhk03_new_protocol_config_labeled.mat")
    with pytest.raises(DatasetError, match="cuhk03_new_protocol_config_labeled.mat"):
        CUHK03NPDetected(root=str(tmp_path), verbose=False)


def test_mat_release_both_types_then_moved_root(tmp_path, caplog):
    old, new = tmp_path / "old", tmp_path / "new"
    make_mat_release(old)
    with caplog.at_level(logging.INFO):
        labeled = CUHK03NPLabeled(root=str(old), verbose=False)
    assert "using the original .mat release" in caplog.text
    detected = CUHK03NPDetected(root=str(old), verbose=False)
    assert [len(labeled.train), len(labeled.query), len(labeled.gallery)] == [8, 2, 6]
    assert [len(detected.train), len(detected.query), len(detected.gallery)] == [4, 2, 2]
    assert summary(labeled.query) == [("1_003_1_01.png", 3, 0), ("1_004_1_01.png", 4, 0)]
    assert sorted({pid for _, pid, _, _ in labeled.train}) == [0, 1]
    assert {cam for _, _, cam, _ in labeled.gallery} == {0, 1}

    shutil.move(str(old), str(new))
    # torchreid's own split file still points at the old root: the trap we avoid.
    with open(new / "cuhk03" / "splits_new_labeled.json") as f:
        assert str(old) in f.read()
    moved = CUHK03NPLabeled(root=str(new), verbose=False)
    for split in ("train", "query", "gallery"):
        assert summary(getattr(moved, split)) == summary(getattr(labeled, split))
        assert all(p.startswith(str(new) + os.sep) for p, *_ in getattr(moved, split))
    assert moved[0]["img"].size == (4, 8)


def test_folder_release_preferred_when_both_present(tmp_path, caplog):
    make_mat_release(tmp_path)
    make_folder_release(tmp_path, "detected")
    with caplog.at_level(logging.INFO):
        data = CUHK03NPDetected(root=str(tmp_path), verbose=False)
    assert "using the folder release" in caplog.text
    assert summary(data.query)[0][0] == "0004_c1_1.png"
    assert not os.path.exists(tmp_path / "cuhk03" / "images_detected")  # .mat left untouched


def test_mat_release_missing_extracted_image(tmp_path):
    make_mat_release(tmp_path)
    CUHK03NPLabeled(root=str(tmp_path), verbose=False)
    os.remove(tmp_path / "cuhk03" / "images_labeled" / "1_002_2_07.png")
    with pytest.raises(ImageReadError, match="1_002_2_07.png"):
        CUHK03NPLabeled(root=str(tmp_path), verbose=False)


def test_registered_with_torchreid(tmp_path, caplog):
    make_folder_release(tmp_path, "detected")
    with caplog.at_level(logging.WARNING):
        data = init_image_dataset(
            "cuhk03_np_detected", root=str(tmp_path), mode="gallery", combineall=False,
            split_id=0, cuhk03_labeled=True, cuhk03_classic_split=False, market1501_500k=False,
            transform=None, k_tfm=1, verbose=False,
        )
    assert isinstance(data, CUHK03NPDetected)
    assert len(data) == 3
    assert "gallery: 3 images, published 5332" in caplog.text
    with pytest.raises(DatasetError, match="labeled"):
        init_image_dataset("cuhk03_np_labeled", root=str(tmp_path), verbose=False)
