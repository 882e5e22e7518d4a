"""A dataset folder of the user's (``folder``): the Market-1501 layout and plain list files, on tiny
generated images; relabelling, junk and distractors, the config keys, and every error's one line."""

from __future__ import annotations

import logging
import os

import pytest
from PIL import Image
from torchreid.reid.data.datasets import init_image_dataset

from reid.builders import check_dataset_names, dataset_names, dataset_options
from reid.config import ConfigError, get_default_config, load_config, merge_from_list
from reid.data.images import ImageReadError
from reid.data.folder import FolderReID, read_list_file, resolve_folder
from reid.data.validation import DatasetError


def write_image(path, shade=0, size=(8, 16)):
    """A tiny RGB image; the format follows the extension (JPEG or PNG)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, (shade % 256, 80, 160)).save(path)
    return path


# ----------------------------------------------------------------------------- Market-1501 layout

MARKET = {
    "bounding_box_train": [
        "0003_c1s1_000101_01.jpg", "0003_c2s1_000201_01.jpg", "0007_c1s1_000301_01.png",
        "0007_c3s2_000401_02.jpg", "-1_c1s1_000501_01.jpg",
    ],
    "query": ["0010_c1s1_001051_00.jpg", "0012_c2s1_001061_00.jpg"],
    "bounding_box_test": [
        "0010_c2s1_001101_02.jpg", "0012_c1s1_001201_01.jpg", "0000_c3s1_000001_01.jpg",
        "-1_c1s1_000002_01.jpg", "Thumbs.db",
    ],
}


def make_market(folder):
    for split, names in MARKET.items():
        for i, name in enumerate(names):
            path = os.path.join(folder, split, name)
            if name.endswith(".db"):
                os.makedirs(os.path.dirname(path), exist_ok=True)
                open(path, "wb").write(b"not an image")
            else:
                write_image(path, 30 * i)
    return folder


def folder_set(folder, mode="train", **kwargs):
    return FolderReID(root="", folder=str(folder), mode=mode, verbose=False, **kwargs)


def test_market_layout_relabels_train_drops_junk_keeps_distractors(tmp_path):
    folder = make_market(tmp_path / "market")
    data = folder_set(folder)
    base = str(folder)
    assert sorted(data.train) == sorted([
        (f"{base}/bounding_box_train/0003_c1s1_000101_01.jpg", 0, 0, 0),
        (f"{base}/bounding_box_train/0003_c2s1_000201_01.jpg", 0, 1, 0),
        (f"{base}/bounding_box_train/0007_c1s1_000301_01.png", 1, 0, 0),
        (f"{base}/bounding_box_train/0007_c3s2_000401_02.jpg", 1, 2, 0),
    ])
    assert data.num_train_pids == 2
    assert sorted((pid, cam) for _, pid, cam, _ in data.query) == [(10, 0), (12, 1)]
    # the distractor (0) stays in the gallery; junk (-1) and the non-image file are left out
    assert sorted((pid, cam) for _, pid, cam, _ in data.gallery) == [(0, 2), (10, 1), (12, 0)]
    assert data._junk_pids == [0]


def test_market_layout_combineall_leaves_distractors_out(tmp_path):
    data = folder_set(make_market(tmp_path / "market"), combineall=True)
    assert len(data.train) == 4 + 2 + 2  # train, query and the gallery's non-distractors
    assert data.num_train_pids == 4


def test_market_layout_errors_name_the_folder_or_file(tmp_path):
    folder = make_market(tmp_path / "market")
    os.rename(folder / "query", folder / "queries")
    with pytest.raises(DatasetError, match=r"not found: .*market/query \(expected bounding_box_train/"):
        folder_set(folder)
    os.rename(folder / "queries", folder / "query")
    bad = write_image(str(folder / "query" / "0010_cam1_001051.jpg"))
    with pytest.raises(DatasetError, match=r"does not match the expected pattern .*0010_cam1_001051\.jpg"):
        folder_set(folder)
    os.remove(bad)
    write_image(str(folder / "query" / "0010_c0s1_001051_00.jpg"))
    with pytest.raises(DatasetError, match=r"camera c0 in .*0010_c0s1_001051_00\.jpg: cameras are numbered from c1"):
        folder_set(folder)


def test_market_split_of_junk_only_is_empty(tmp_path):
    folder = make_market(tmp_path / "market")
    for name in MARKET["query"]:
        os.remove(folder / "query" / name)
    write_image(str(folder / "query" / "-1_c1s1_000001_00.jpg"))
    with pytest.raises(DatasetError, match=r"market/query: only junk images \(identity -1\): the query split is empty"):
        folder_set(folder)


# ---------------------------------------------------------------------------------- list files

TRAIN_LIST = """\
# path identity camera
people/a 1.jpg 42 0
people/a 2.jpg 42 1

people/b.png 5 2
   people/c.jpg 9 0
people/junk.jpg -1 0
"""


def make_lists(folder, train=TRAIN_LIST, query=None, gallery=None):
    """A folder with the images of ``TRAIN_LIST`` and a query and gallery of identities 100, 101."""
    for name in ("people/a 1.jpg", "people/a 2.jpg", "people/b.png", "people/c.jpg", "people/junk.jpg"):
        write_image(os.path.join(folder, name))
    for name in ("test/q100.jpg", "test/q101.jpg", "test/g100.png", "test/g101.jpg", "test/g102.jpg"):
        write_image(os.path.join(folder, name))
    files = {
        "train.txt": train,
        "query.txt": query if query is not None else "test/q100.jpg 100 0\ntest/q101.jpg 101 1\n",
        "gallery.txt": gallery if gallery is not None else "test/g100.png 100 1\ntest/g101.jpg 101 0\ntest/g102.jpg 102 1\n",
    }
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def lists_set(folder, mode="train", **kwargs):
    return folder_set(folder, mode=mode, layout="lists", **kwargs)


def test_lists_layout_parses_comments_blank_lines_spaces_and_relabels(tmp_path):
    folder = make_lists(tmp_path / "mine")
    data = lists_set(folder)
    base = str(folder)
    # identities 5, 9, 42 -> 0, 1, 2 (increasing order); cameras as written; junk (-1) ignored
    assert sorted(data.train) == sorted([
        (f"{base}/people/a 1.jpg", 2, 0, 0), (f"{base}/people/a 2.jpg", 2, 1, 0),
        (f"{base}/people/b.png", 0, 2, 0), (f"{base}/people/c.jpg", 1, 0, 0),
    ])
    assert data.num_train_pids == 3
    assert [(pid, cam) for _, pid, cam, _ in data.query] == [(100, 0), (101, 1)]
    assert [(pid, cam) for _, pid, cam, _ in data.gallery] == [(100, 1), (101, 0), (102, 1)]
    assert data._junk_pids == []


def test_lists_layout_other_file_names_and_absolute_paths(tmp_path):
    folder = make_lists(tmp_path / "mine")
    (folder / "lists").mkdir()
    (folder / "lists" / "mine_train.txt").write_text(f"{folder}/people/b.png 5 0\n{folder}/people/c.jpg 9 1\n")
    data = lists_set(folder, train_list="lists/mine_train.txt")
    assert [(pid, cam) for _, pid, cam, _ in data.train] == [(0, 0), (1, 1)]


def test_relative_folder_resolves_against_the_data_root(tmp_path):
    make_lists(tmp_path / "data" / "mine")
    assert resolve_folder(str(tmp_path / "data"), "mine") == str(tmp_path / "data" / "mine")
    assert resolve_folder(str(tmp_path / "data"), str(tmp_path / "x")) == str(tmp_path / "x")
    data = FolderReID(root=str(tmp_path / "data"), folder="mine", layout="lists", verbose=False)
    assert data.dataset_dir == str(tmp_path / "data" / "mine")
    assert len(data.train) == 4


@pytest.mark.parametrize(
    "train, message",
    [
        ("people/b.png 5\n", r"train\.txt:1: expected 'path identity camera', got 'people/b.png 5'"),
        ("# header\npeople/b.png five 0\n", r"train\.txt:2: identity 'five' is not an integer"),
        ("people/b.png 5 0\npeople/c.jpg 9 c1\n", r"train\.txt:2: camera 'c1' is not an integer"),
        ("people/b.png 5 -1\n", r"train\.txt:1: camera -1 must be >= 0 \(cameras are 0-based\)"),
        ("people/b.png -2 0\n", r"train\.txt:1: identity -2 must be >= 0 \(or -1: junk, ignored\)"),
        ("people/b.png 5 0\n\npeople/nobody.jpg 9 0\n", r"train\.txt:3: image not found: .*people/nobody\.jpg"),
        ("# nothing yet\n\n", r"train\.txt: no images listed \(the train split is empty\)"),
        ("people/junk.jpg -1 0\n", r"train\.txt: no images listed \(the train split is empty\)"),
    ],
)
def test_list_errors_name_the_file_and_line(tmp_path, train, message):
    folder = make_lists(tmp_path / "mine", train=train)
    with pytest.raises(DatasetError, match=message) as error:
        lists_set(folder)
    assert "\n" not in str(error.value)
    assert str(folder / "train.txt") in str(error.value)


def test_missing_list_file_and_folder(tmp_path):
    folder = make_lists(tmp_path / "mine")
    os.remove(folder / "gallery.txt")
    with pytest.raises(DatasetError, match=rf"folder: list file not found: {folder}/gallery\.txt$"):
        lists_set(folder, mode="query")
    with pytest.raises(DatasetError, match=rf"folder: dataset folder not found: {tmp_path}/elsewhere$"):
        lists_set(tmp_path / "elsewhere")
    with pytest.raises(DatasetError, match="no dataset folder given"):
        FolderReID(root=str(tmp_path), folder="", layout="lists")
    with pytest.raises(DatasetError, match=r"unknown layout 'csv'"):
        FolderReID(root=str(tmp_path), folder="mine", layout="csv")


def test_list_that_is_not_text(tmp_path):
    folder = make_lists(tmp_path / "mine")
    (folder / "query.txt").write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(DatasetError, match=r"query\.txt: not UTF-8 text"):
        lists_set(folder)


def test_query_identity_absent_from_gallery_is_logged(tmp_path, caplog):
    folder = make_lists(tmp_path / "mine", query="test/q100.jpg 100 0\n# q\ntest/q101.jpg 77 1\n")
    with caplog.at_level(logging.WARNING, logger="reid.data.folder"):
        data = lists_set(folder, mode="query")
    assert len(data.query) == 2
    (record,) = [r for r in caplog.records if "no image in the gallery" in r.getMessage()]
    assert f"identity 77 ({folder}/query.txt:3)" in record.getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="reid.data.folder"):
        lists_set(folder, mode="train")  # logged once, by the build that serves the query
    assert not caplog.records


def test_no_query_identity_in_the_gallery_is_an_error(tmp_path):
    folder = make_lists(tmp_path / "mine", query="test/q100.jpg 500 0\n")
    with pytest.raises(DatasetError, match=r"query\.txt: none of its 1 query identities has an image in the gallery"):
        lists_set(folder, mode="query")


def test_unreadable_images_go_through_on_bad_image(tmp_path):
    folder = make_lists(tmp_path / "mine", train=TRAIN_LIST + "people/gone.jpg 9 1\n")
    with pytest.raises(DatasetError, match=r"train\.txt:8: image not found"):
        lists_set(folder)
    data = lists_set(folder, on_bad_image="skip")  # a missing image is skipped like an unreadable one
    assert data.skipped_images == [str(folder / "people" / "gone.jpg")]
    assert len(data.train) == 4
    (folder / "train.txt").write_text(TRAIN_LIST)
    bad = folder / "test" / "g101.jpg"
    bad.write_bytes(bad.read_bytes()[:40])
    lists_set(folder, mode="train")  # the gallery is read by the build that serves it
    with pytest.raises(ImageReadError, match="g101.jpg"):
        lists_set(folder, mode="gallery")
    gallery = lists_set(folder, mode="gallery", on_bad_image="skip")
    assert [pid for _, pid, _, _ in gallery.gallery] == [100, 102]


def test_read_list_file_returns_the_line_of_each_image(tmp_path):
    folder = make_lists(tmp_path / "mine")
    items, lines = read_list_file(str(folder / "train.txt"), str(folder))
    assert lines == [2, 3, 5, 6]
    assert [pid for _, pid, _ in items] == [42, 42, 5, 9]


# ---------------------------------------------------------------------------- config, builders


def test_config_keys_and_their_checks():
    cfg = get_default_config()
    assert cfg.DATA.FOLDER.ROOT == "" and cfg.DATA.FOLDER.LAYOUT == "market1501"
    assert (cfg.DATA.FOLDER.TRAIN_LIST, cfg.DATA.FOLDER.QUERY_LIST, cfg.DATA.FOLDER.GALLERY_LIST) == (
        "train.txt", "query.txt", "gallery.txt")
    load_config(None, [])  # DATA.FOLDER.ROOT is needed only when a dataset is "folder"
    with pytest.raises(ConfigError, match="DATA.FOLDER.ROOT must name your dataset folder"):
        load_config(None, ["DATA.SOURCES", "['folder']"])
    with pytest.raises(ConfigError, match="DATA.FOLDER.ROOT must name your dataset folder"):
        load_config(None, ["DATA.TARGETS", "['folder']"])
    with pytest.raises(ConfigError, match=r"DATA.FOLDER.LAYOUT must be one of \['market1501', 'lists'\], got 'csv'"):
        load_config(None, ["DATA.FOLDER.LAYOUT", "csv"])
    with pytest.raises(ConfigError, match="DATA.FOLDER.QUERY_LIST must name a list file, got ''"):
        load_config(None, ["DATA.FOLDER.QUERY_LIST", "''"])
    cfg = load_config(None, ["DATA.SOURCES", "['folder']", "DATA.FOLDER.ROOT", "/data/mine",
                             "DATA.FOLDER.LAYOUT", "lists", "DATA.FOLDER.TRAIN_LIST", "t.txt"])
    assert dataset_options(cfg, "folder") == {
        "on_bad_image": "error", "folder": "/data/mine", "layout": "lists",
        "train_list": "t.txt", "query_list": "query.txt", "gallery_list": "gallery.txt",
    }
    assert dataset_options(cfg, "synthetic").keys().isdisjoint({"folder", "layout"})


def test_registered_variant_is_built_by_torchreid(tmp_path):
    folder = make_lists(tmp_path / "data" / "mine")
    cfg = get_default_config()
    merge_from_list(cfg, ["DATA.ROOT", str(tmp_path / "data"), "DATA.SOURCES", "['folder']",
                          "DATA.FOLDER.ROOT", "mine", "DATA.FOLDER.LAYOUT", "lists"])
    (name,) = dataset_names(cfg, ["folder"])
    assert name.startswith("folder[")
    data = init_image_dataset(name, root=cfg.DATA.ROOT, mode="gallery", verbose=False)
    assert data.dataset_dir == str(folder) and len(data) == 3


def test_unknown_dataset_names_are_a_config_error_naming_the_key():
    check_dataset_names(["folder", "synthetic", "market1501"], "DATA.SOURCES")
    with pytest.raises(ConfigError, match=r"DATA.TARGETS: unknown dataset\(s\) \['mine'\]; registered datasets: .*'folder'.*--plugin"):
        check_dataset_names(["folder", "mine"], "DATA.TARGETS")
