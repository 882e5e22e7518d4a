"""The retrieval datasets (``cub200``, ``cars196``, ``sop``, ``synthetic_retrieval``) on small fake
copies of their official layouts: class splits, relabelling, the query = gallery / camid = index
convention (CMC = Recall@K), torchreid's data manager, ``reid check-data`` and the bad inputs."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat
from torchreid.reid.data import ImageDataManager
from torchreid.reid.data.datasets import init_image_dataset

from reid.data.base import register_variant
from reid.data.images import ImageReadError
from reid.data.retrieval import (
    CAMID_LIMIT,
    CUB200,
    Cars196,
    StanfordOnlineProducts,
    SyntheticRetrieval,
    retrieval_splits,
)
from reid.data.validation import DatasetError, check_dataset
from tests.conftest import TINY_SYNTHETIC


def write_image(path, shade=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (8, 8), (shade % 256, 80, 160)).save(path)


def truncate(path):
    data = open(path, "rb").read()
    with open(path, "wb") as fh:
        fh.write(data[: len(data) // 2])


def build(cls, root, **kwargs):
    return cls(root=str(root), verbose=False, **kwargs)


def names(items):
    return [os.path.basename(item[0]) for item in items]


def manager(root, name):
    return ImageDataManager(
        root=str(root), sources=[name], height=8, width=8, batch_size_train=2, batch_size_test=4,
        workers=0, train_sampler="RandomSampler", use_gpu=False, transforms=[],
    )


# ------------------------------------------------------------------------------ CUB-200-2011

# (image_id, path under images/, class_id): classes 1, 2 train; 101, 150, 200 test
CUB = [
    (1, "001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg", 1),
    (2, "001.Black_footed_Albatross/Black_Footed_Albatross_0009_34.jpg", 1),
    (3, "002.Laysan_Albatross/Laysan_Albatross_0002_1027.jpg", 2),
    (4, "101.White_Pelican/White_Pelican_0025_97604.jpg", 101),
    (5, "200.Common_Yellowthroat/Common_Yellowthroat_0055_190967.jpg", 200),
    (6, "101.White_Pelican/White_Pelican_0011_95862.jpg", 101),
    (7, "150.Sage_Thrasher/Sage_Thrasher_0062_796462.jpg", 150),
    (8, "150.Sage_Thrasher/Sage_Thrasher_0049_796434.jpg", 150),
    (9, "200.Common_Yellowthroat/Common_Yellowthroat_0003_190521.jpg", 200),
]


def make_cub(root, records=CUB, images_lines=None, labels_lines=None):
    base = root / "CUB_200_2011"
    for image_id, rel, _ in records:
        write_image(str(base / "images" / rel), 20 * image_id)
    images = images_lines or [f"{i} {rel}" for i, rel, _ in records]
    labels = labels_lines or [f"{i} {c}" for i, _, c in records]
    (base / "images.txt").write_text("\n".join(images) + "\n")
    (base / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    return base


def test_cub_splits_relabelling_and_camid_index(tmp_path):
    base = make_cub(tmp_path)
    data = build(CUB200, tmp_path)
    assert data.retrieval is True and data.num_cams == CAMID_LIMIT
    assert [(n, pid, cam) for (_, pid, cam, _), n in zip(data.train, names(data.train))] == [
        ("Black_Footed_Albatross_0046_18.jpg", 0, 0),
        ("Black_Footed_Albatross_0009_34.jpg", 0, 0),
        ("Laysan_Albatross_0002_1027.jpg", 1, 0),
    ]
    assert data.train[0][0] == str(base / "images" / CUB[0][1])
    assert data.num_train_pids == 2
    # test: every image of classes 101-200, in images.txt order; classes 101, 150, 200 -> 0, 1, 2
    assert names(data.query) == [os.path.basename(rel) for _, rel, c in CUB if c > 100]
    assert [pid for _, pid, _, _ in data.query] == [0, 2, 0, 1, 1, 2]
    assert [cam for _, _, cam, _ in data.query] == list(range(6))
    assert data.query == data.gallery and data.num_test_images == 6


def test_cub_built_by_torchreid_data_manager(tmp_path):
    make_cub(tmp_path)
    query = init_image_dataset("cub200", root=str(tmp_path), mode="query", verbose=False)
    assert len(query) == 6 and query.retrieval
    name = register_variant("cub200", {"on_bad_image": "skip"})
    dm = manager(tmp_path, name)
    assert dm.num_train_pids == 2
    assert len(dm.train_loader.dataset) == 3
    query_loader = dm.test_loader[name]["query"]
    gallery_loader = dm.test_loader[name]["gallery"]
    assert [p for p, *_ in query_loader.dataset.data] == [p for p, *_ in gallery_loader.dataset.data]
    batch = next(iter(gallery_loader))
    assert batch["img"].shape == (4, 3, 8, 8)
    assert batch["camid"].tolist() == [0, 1, 2, 3]


def test_cmc_equals_recall_at_k_with_the_camid_convention(tmp_path):
    """torchreid's protocol drops exactly the query itself: CMC rank-K is Recall@K."""
    from torchreid.reid.metrics import evaluate_rank

    make_cub(tmp_path)
    data = build(CUB200, tmp_path, mode="query")
    pids = np.array([pid for _, pid, _, _ in data.query])
    camids = np.array([cam for _, _, cam, _ in data.query])
    rng = np.random.default_rng(0)
    for _ in range(5):
        feats = rng.normal(size=(len(pids), 3))
        dist = ((feats[:, None] - feats[None]) ** 2).sum(-1)
        cmc, _ = evaluate_rank(dist, pids, pids, camids, camids, max_rank=5, use_cython=False)
        for k in range(1, 6):
            hits = []
            for q in range(len(pids)):
                order = [g for g in np.argsort(dist[q], kind="stable") if g != q][:k]
                hits.append(any(pids[g] == pids[q] for g in order))
            assert cmc[k - 1] == pytest.approx(np.mean(hits)), k


def test_retrieval_splits_mapping():
    out = retrieval_splits([("a", 7), ("b", 3)], [("c", 50), ("d", 40), ("e", 50)])
    assert out["train"] == [("a", 1, 0), ("b", 0, 0)]
    assert out["query"] == out["gallery"] == [("c", 1, 0), ("d", 0, 1), ("e", 1, 2)]


def test_cub_combineall_adds_the_test_images_once(tmp_path):
    make_cub(tmp_path)
    data = build(CUB200, tmp_path, combineall=True)
    assert len(data.train) == 3 + 6
    assert data.num_train_pids == 5
    assert {cam for _, _, cam, _ in data.train} == {0}


def test_cub_count_mismatch_is_a_warning(tmp_path, caplog):
    make_cub(tmp_path)
    with caplog.at_level(logging.WARNING):
        build(CUB200, tmp_path, combineall=True)
    assert "train: 3 images, published 5864" in caplog.text
    assert "test: 6 images, published 5924" in caplog.text
    assert "test: 3 identities, published 100" in caplog.text


def test_cub_truncated_image_error_or_skip_keeps_query_equal_gallery(tmp_path, caplog):
    base = make_cub(tmp_path)
    truncate(base / "images" / CUB[5][1])  # the second White Pelican, test index 2
    assert len(build(CUB200, tmp_path).train) == 3  # train mode reads the train images only
    with pytest.raises(ImageReadError, match="White_Pelican_0011_95862.jpg"):
        build(CUB200, tmp_path, mode="gallery")
    with caplog.at_level(logging.WARNING):
        data = build(CUB200, tmp_path, mode="query", on_bad_image="skip")
    assert "skipped 1 unreadable image" in caplog.text
    assert "White_Pelican_0011_95862.jpg" not in names(data.query)
    assert [cam for _, _, cam, _ in data.query] == list(range(5))
    assert data.query == data.gallery and data.skipped_images == [str(base / "images" / CUB[5][1])]


def test_cub_missing_folder_and_files_show_the_tree(tmp_path):
    with pytest.raises(DatasetError, match="Expected layout") as info:
        build(CUB200, tmp_path)
    assert f"not found: {tmp_path / 'CUB_200_2011'}\n" in str(info.value)
    assert "image_class_labels.txt" in str(info.value)
    base = make_cub(tmp_path)
    os.remove(base / "image_class_labels.txt")
    with pytest.raises(DatasetError, match=f"not found: {base / 'image_class_labels.txt'}\n"):
        build(CUB200, tmp_path)


@pytest.mark.parametrize(
    "which, line_no, line, message",
    [
        ("images", 3, "3", r"images\.txt:3: expected 2 fields '<image_id> <relative path>', got 1"),
        ("images", 2, "x2 001.Black_footed_Albatross/Black_Footed_Albatross_0009_34.jpg",
         r"images\.txt:2: image id is not an integer \('x2'\)"),
        ("images", 4, "1 101.White_Pelican/White_Pelican_0025_97604.jpg",
         r"images\.txt:4: image id 1 listed twice \(first on line 1\)"),
        ("labels", 5, "5 201", r"image_class_labels\.txt:5: class id 201 is outside 1\.\.200"),
        ("labels", 5, "5 0", r"image_class_labels\.txt:5: class id 0 is outside 1\.\.200"),
        ("labels", 5, "5 two", r"image_class_labels\.txt:5: class id is not an integer \('two'\)"),
        ("labels", 5, "5 200 7", r"image_class_labels\.txt:5: expected 2 fields '<image_id> <class_id>', got 3"),
        ("labels", 5, "4 101", r"image_class_labels\.txt:5: image id 4 listed twice \(first on line 4\)"),
        ("labels", 5, "42 200", r"image_class_labels\.txt:5: image id 42 is not in .*images\.txt"),
    ],
)
def test_cub_malformed_lines_name_file_and_line(tmp_path, which, line_no, line, message):
    images = [f"{i} {rel}" for i, rel, _ in CUB]
    labels = [f"{i} {c}" for i, _, c in CUB]
    (images if which == "images" else labels)[line_no - 1] = line
    make_cub(tmp_path, images_lines=images, labels_lines=labels)
    with pytest.raises(DatasetError, match=message):
        build(CUB200, tmp_path)


def test_cub_image_without_label_and_missing_image_file(tmp_path):
    labels = [f"{i} {c}" for i, _, c in CUB if i != 7]
    make_cub(tmp_path, labels_lines=labels)
    with pytest.raises(DatasetError, match=r"images\.txt:7: image id 7 has no class in .*image_class_labels\.txt"):
        build(CUB200, tmp_path)
    base = make_cub(tmp_path)
    os.remove(base / "images" / CUB[7][1])
    missing = r"images\.txt:8: image file not found: .*Sage_Thrasher_0049_796434\.jpg"
    with pytest.raises(DatasetError, match=missing):
        build(CUB200, tmp_path)


def test_check_data_command_covers_cub(tmp_path, capsys):
    from reid.cli.check_data import main

    make_cub(tmp_path / "data")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"DATA:\n  ROOT: {tmp_path / 'data'}\n  SOURCES: [cub200]\n")
    assert main(["--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "cub200"
    assert lines[3].split() == ["train", "2", "3", "1"]
    assert lines[4].split() == ["query", "3", "6", "6"]
    assert lines[5].split() == ["gallery", "3", "6", "6"]
    assert "train: 3 images, published 5864" in out and "query: 6 images, published 5924" in out
    assert "1 of 1 dataset(s) OK" in out
    truncate(tmp_path / "data" / "CUB_200_2011" / "images" / CUB[3][1])
    assert main(["--config", str(cfg)]) == 1
    assert "White_Pelican_0025_97604.jpg" in capsys.readouterr().out
    assert main(["--config", str(cfg), "DATA.ON_BAD_IMAGE", "skip"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[4].split() == ["query", "3", "5", "5"]
    assert "skipped 2 unreadable image(s)" in out  # once for query, once for gallery


# ----------------------------------------------------------------------------------- Cars196

# (relative_im_path, class); classes 1, 98 train, 99, 196 test
CARS = [
    ("car_ims/000001.jpg", 1), ("car_ims/000002.jpg", 1), ("car_ims/000003.jpg", 98),
    ("car_ims/000004.jpg", 196), ("car_ims/000005.jpg", 99), ("car_ims/000006.jpg", 196),
    ("car_ims/000007.jpg", 99),
]
CARS_FIELDS = ("relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test")


def write_cars_mat(path, records, fields=CARS_FIELDS, variable="annotations"):
    """A cars_annos.mat like the real one: a 1xN struct array of annotations (uint8 classes)."""
    annotations = np.zeros((1, len(records)), dtype=[(f, "O") for f in fields])
    for i, (rel, cls) in enumerate(records):
        values = {
            "relative_im_path": rel, "bbox_x1": np.uint16(1), "bbox_y1": np.uint16(2),
            "bbox_x2": np.uint16(7), "bbox_y2": np.uint16(6),
            "class": np.uint8(cls) if isinstance(cls, int) and 0 <= cls < 256 else cls,
            "test": np.uint8(i % 2),
        }
        annotations[0, i] = tuple(values[f] for f in fields)
    class_names = np.array(["AM General Hummer SUV 2000"], dtype=object)
    savemat(str(path), {variable: annotations, "class_names": class_names})


def make_cars(root, folder="cars196", records=CARS, **kwargs):
    base = root / folder
    for i, (rel, _) in enumerate(records):
        write_image(str(base / rel), 30 * i)
    write_cars_mat(base / "cars_annos.mat", records, **kwargs)
    return base


def test_cars_splits_from_a_real_mat_file(tmp_path):
    base = make_cars(tmp_path)
    data = build(Cars196, tmp_path)
    assert data.retrieval and data.dataset_dir == str(base)
    assert [(n, pid, cam) for (_, pid, cam, _), n in zip(data.train, names(data.train))] == [
        ("000001.jpg", 0, 0), ("000002.jpg", 0, 0), ("000003.jpg", 1, 0)
    ]
    assert names(data.query) == ["000004.jpg", "000005.jpg", "000006.jpg", "000007.jpg"]
    assert [pid for _, pid, _, _ in data.query] == [1, 0, 1, 0]
    assert [cam for _, _, cam, _ in data.query] == [0, 1, 2, 3]
    assert data.query == data.gallery


def test_cars_built_by_torchreid_data_manager(tmp_path):
    make_cars(tmp_path)
    name = register_variant("cars196", {"on_bad_image": "error"})
    dm = manager(tmp_path, name)
    assert dm.num_train_pids == 2
    assert len(dm.test_loader[name]["query"].dataset) == 4


def test_cars_folder_search_order(tmp_path):
    base = make_cars(tmp_path, folder="stanford_cars")
    assert build(Cars196, tmp_path).dataset_dir == str(base)
    preferred = make_cars(tmp_path, folder="cars196")
    assert build(Cars196, tmp_path).dataset_dir == str(preferred)


def test_cars_missing_folder_names_every_candidate(tmp_path):
    with pytest.raises(DatasetError, match="Expected layout") as info:
        build(Cars196, tmp_path)
    text = str(info.value)
    for folder in ("cars196", "CARS196", "stanford_cars"):
        assert str(tmp_path / folder) in text
    assert "cars_annos.mat" in text
    os.makedirs(tmp_path / "cars196" / "car_ims")
    with pytest.raises(DatasetError, match=f"not found: {tmp_path / 'cars196' / 'cars_annos.mat'}\n"):
        build(Cars196, tmp_path)


@pytest.mark.parametrize(
    "index, value, message",
    [
        (2, ("car_ims/000003.jpg", 197), r"annotation 3 \(car_ims/000003.jpg\): class 197 is outside 1\.\.196"),
        (2, ("car_ims/000003.jpg", 0), r"annotation 3 \(car_ims/000003.jpg\): class 0 is outside 1\.\.196"),
        (2, ("car_ims/000003.jpg", "98"), r"annotation 3 \(car_ims/000003.jpg\): class is not an integer"),
        (2, ("car_ims/000003.jpg", 98.5), r"annotation 3 \(car_ims/000003.jpg\): class is not an integer"),
        (2, ("car_ims/000001.jpg", 1),
         r"annotation 3: image car_ims/000001.jpg listed twice \(first in annotation 1\)"),
    ],
)
def test_cars_bad_annotations_name_the_record(tmp_path, index, value, message):
    records = list(CARS)
    records[index] = value
    make_cars(tmp_path, records=records)
    with pytest.raises(DatasetError, match=message) as info:
        build(Cars196, tmp_path)
    assert "cars_annos.mat" in str(info.value)


def test_cars_bad_mat_contents(tmp_path):
    base = make_cars(tmp_path, fields=tuple(f for f in CARS_FIELDS if f != "class"))
    with pytest.raises(DatasetError, match=r"fields relative_im_path and class \(missing \['class'\]"):
        build(Cars196, tmp_path)
    write_cars_mat(base / "cars_annos.mat", CARS, variable="annos")
    with pytest.raises(DatasetError, match=r"no variable 'annotations' \(found: \['annos', 'class_names'\]\)"):
        build(Cars196, tmp_path)
    (base / "cars_annos.mat").write_bytes(b"not a mat file at all")
    with pytest.raises(DatasetError, match="cannot read .*cars_annos.mat as a MATLAB file"):
        build(Cars196, tmp_path)


def test_cars_missing_image_and_unreadable_image(tmp_path):
    base = make_cars(tmp_path)
    os.remove(base / "car_ims" / "000006.jpg")
    with pytest.raises(DatasetError, match=r"annotation 6: image file not found: .*000006\.jpg"):
        build(Cars196, tmp_path)
    write_image(str(base / "car_ims" / "000006.jpg"))
    truncate(base / "car_ims" / "000002.jpg")
    with pytest.raises(ImageReadError, match="000002.jpg"):
        build(Cars196, tmp_path)
    data = build(Cars196, tmp_path, on_bad_image="skip")
    assert [(n, pid) for (_, pid, _, _), n in zip(data.train, names(data.train))] == [
        ("000001.jpg", 0), ("000003.jpg", 1)
    ]


def test_cars_single_record_mat(tmp_path):
    """A struct array of one record is squeezed by scipy to a scalar struct; still one record."""
    make_cars(tmp_path, records=[("car_ims/000001.jpg", 5)])
    with pytest.raises(DatasetError, match="the test classes have no images"):
        build(Cars196, tmp_path)


# ---------------------------------------------------------------- Stanford Online Products

HEADER = "image_id class_id super_class_id path"
SOP_TRAIN = [
    "1 1 1 bicycle_final/111085122871_0.JPG",
    "2 1 1 bicycle_final/111085122871_1.JPG",
    "3 2 1 bicycle_final/111265328556_0.JPG",
    "4 2 1 bicycle_final/111265328556_1.JPG",
    "5 3 2 cabinet_final/110811624396_0.JPG",
]
SOP_TEST = [
    "1 11319 1 bicycle_final/111085122871_6.JPG",
    "2 11319 1 bicycle_final/111085122871_7.JPG",
    "3 22634 12 toaster_final/252043618823_0.JPG",
    "4 22634 12 toaster_final/252043618823_1.JPG",
    "5 11319 1 bicycle_final/111085122871_8.JPG",
]


def make_sop(root, train=SOP_TRAIN, test=SOP_TEST, header=HEADER, images=True):
    """The list files, and (``images``) an image for every line."""
    base = root / "Stanford_Online_Products"
    for lines, split in ((train, "train"), (test, "test")):
        for i, line in enumerate(lines):
            fields = line.split()
            if images and len(fields) == 4:
                write_image(str(base / fields[3]), 25 * i)
        (base / f"Ebay_{split}.txt").write_text("\n".join([header, *lines]) + "\n")
    return base


def test_sop_splits_from_the_files(tmp_path):
    base = make_sop(tmp_path)
    data = build(StanfordOnlineProducts, tmp_path)
    assert [pid for _, pid, _, _ in data.train] == [0, 0, 1, 1, 2]
    assert {cam for _, _, cam, _ in data.train} == {0}
    assert data.train[0][0] == str(base / "bicycle_final" / "111085122871_0.JPG")
    assert names(data.query) == [line.split()[3].split("/")[1] for line in SOP_TEST]
    assert [pid for _, pid, _, _ in data.query] == [0, 0, 1, 1, 0]
    assert [cam for _, _, cam, _ in data.query] == list(range(5))
    assert data.query == data.gallery


def test_sop_built_by_torchreid_data_manager(tmp_path):
    make_sop(tmp_path)
    name = register_variant("sop", {"on_bad_image": "error"})
    dm = manager(tmp_path, name)
    assert dm.num_train_pids == 3
    assert len(dm.test_loader[name]["gallery"].dataset) == 5


def test_sop_missing_list_file(tmp_path):
    base = make_sop(tmp_path)
    os.remove(base / "Ebay_test.txt")
    with pytest.raises(DatasetError, match=f"not found: {base / 'Ebay_test.txt'}\nExpected layout"):
        build(StanfordOnlineProducts, tmp_path)


@pytest.mark.parametrize(
    "split, index, line, message",
    [
        ("train", 1, "2 1 bicycle_final/111085122871_1.JPG", r"Ebay_train\.txt:3: expected 4 fields .*got 3"),
        ("train", 1, "2 one 1 bicycle_final/111085122871_1.JPG",
         r"Ebay_train\.txt:3: class id is not an integer \('one'\)"),
        ("train", 1, "2 1 13 bicycle_final/111085122871_1.JPG",
         r"Ebay_train\.txt:3: super class id 13 is outside 1\.\.12"),
        ("train", 1, "2 0 1 bicycle_final/111085122871_1.JPG", r"Ebay_train\.txt:3: class id 0 is not >= 1"),
        ("test", 3, "1 22634 12 toaster_final/252043618823_1.JPG",
         r"Ebay_test\.txt:5: image id 1 listed twice \(first on line 2\)"),
        ("test", 3, "4 22634 12 bicycle_final/111085122871_0.JPG",
         r"Ebay_test\.txt:5: image bicycle_final/111085122871_0\.JPG listed twice "
         r"\(first at .*Ebay_train\.txt:2\)"),
        ("test", 3, "4 22634 12 toaster_final/gone.JPG",
         r"Ebay_test\.txt:5: image file not found: .*toaster_final/gone\.JPG"),
        ("test", 3, "4 2 1 toaster_final/252043618823_1.JPG",
         r"class 2 is in both the train and the test list \(.*Ebay_train\.txt:4 and .*Ebay_test\.txt:5\)"),
    ],
)
def test_sop_malformed_lines_name_file_and_line(tmp_path, split, index, line, message):
    train, test = list(SOP_TRAIN), list(SOP_TEST)
    make_sop(tmp_path)  # the images of the good lists only
    (train if split == "train" else test)[index] = line
    make_sop(tmp_path, train=train, test=test, images=False)
    with pytest.raises(DatasetError, match=message):
        build(StanfordOnlineProducts, tmp_path)


def test_sop_bad_header(tmp_path):
    make_sop(tmp_path, header="id class super path")
    header = r"Ebay_train\.txt:1: expected the header 'image_id class_id super_class_id path'"
    with pytest.raises(DatasetError, match=header):
        build(StanfordOnlineProducts, tmp_path)


def test_sop_count_mismatch_warns(tmp_path, caplog):
    make_sop(tmp_path)
    with caplog.at_level(logging.WARNING):
        build(StanfordOnlineProducts, tmp_path, mode="query")
    assert "test: 5 images, published 60502" in caplog.text
    assert "test: 2 identities, published 11316" in caplog.text


# ------------------------------------------------------------------------ synthetic_retrieval


def test_synthetic_retrieval_reuses_the_synthetic_set(tiny_data_root):
    from reid.data.synthetic import SyntheticReID

    before = sorted(os.listdir(tiny_data_root / "synthetic"))
    data = SyntheticRetrieval(root=str(tiny_data_root), progress=False, verbose=False, mode="query",
                              **TINY_SYNTHETIC)
    assert sorted(os.listdir(tiny_data_root / "synthetic")) == before  # nothing rendered
    reid_set = SyntheticReID(root=str(tiny_data_root), progress=False, verbose=False, **TINY_SYNTHETIC)
    assert data.dataset_dir == reid_set.dataset_dir
    assert [item[:2] for item in data.train] == [item[:2] for item in reid_set.train]
    test_paths = [p for p, *_ in reid_set.query] + [p for p, *_ in reid_set.gallery]
    assert [p for p, *_ in data.query] == test_paths
    reid_pids = [pid for _, pid, *_ in reid_set.query] + [pid for _, pid, *_ in reid_set.gallery]
    label = {pid: i for i, pid in enumerate(sorted(set(reid_pids)))}
    assert [pid for _, pid, _, _ in data.query] == [label[p] for p in reid_pids]
    assert [cam for _, _, cam, _ in data.query] == list(range(len(test_paths)))
    assert data.query == data.gallery and data.retrieval


def test_synthetic_retrieval_variant_by_data_manager_and_check_dataset(tiny_data_root):
    name = register_variant("synthetic_retrieval", {**TINY_SYNTHETIC, "progress": False})
    dm = manager(tiny_data_root, name)
    assert dm.num_train_pids == TINY_SYNTHETIC["num_ids"] // 2
    report = check_dataset("synthetic_retrieval", name, str(tiny_data_root))
    rows = report.table.splitlines()
    assert rows[0] == "synthetic_retrieval"
    n_test = len(dm.test_loader[name]["query"].dataset)
    assert rows[4].split() == ["query", str(TINY_SYNTHETIC["num_ids"] // 2), str(n_test), str(n_test)]
    assert rows[5].split()[0] == "gallery" and rows[5].split()[1:] == rows[4].split()[1:]
    assert report.differences == [] and report.skipped == []


def test_synthetic_retrieval_rejects_unknown_options(tmp_path):
    with pytest.raises(TypeError, match="unknown arguments \\['bogus'\\]"):
        SyntheticRetrieval(root=str(tmp_path), bogus=1)
