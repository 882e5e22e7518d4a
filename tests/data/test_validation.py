import logging
import re

import pytest
from PIL import Image

from reid.data.images import ImageReadError
from reid.data.validation import (
    DatasetError,
    NamePattern,
    PublishedCounts,
    SplitStats,
    count_mismatches,
    dataset_statistics,
    format_statistics,
    parse_image_name,
    prepare_splits,
    relabel,
    require_paths,
    scan_split_dir,
    split_statistics,
    splits_in_use,
)

PATTERN = NamePattern(re.compile(r"(?P<pid>\d+)_c(?P<cam>\d+)\.jpg"), "<pid>_c<cam>.jpg", "0001_c1.jpg")
PUBLISHED = {s: PublishedCounts(identities=1, images=1) for s in ("train", "query", "gallery")}


def image(path, color=(0, 0, 0)):
    Image.new("RGB", (4, 8), color).save(path)
    return str(path)


def test_dataset_error_is_a_value_error():
    assert issubclass(DatasetError, ValueError)


def test_require_paths_names_missing_path_and_tree(tmp_path):
    present = tmp_path / "here"
    present.mkdir()
    with pytest.raises(DatasetError) as info:
        require_paths([str(present), str(tmp_path / "gone")], "Demo", "  <root>/gone/")
    assert str(tmp_path / "gone") in str(info.value)
    assert "Expected layout:\n  <root>/gone/" in str(info.value)
    require_paths([str(present)], "Demo", "")


def test_parse_image_name_and_error_names_file_and_pattern():
    assert parse_image_name("/x/0042_c3.jpg", PATTERN) == (42, 3)
    with pytest.raises(DatasetError, match=r"<pid>_c<cam>\.jpg.*/x/42-c3\.jpg"):
        parse_image_name("/x/42-c3.jpg", PATTERN)


def test_scan_sorted_zero_based_cameras_ignores_non_images(tmp_path):
    image(tmp_path / "0002_c2.jpg")
    image(tmp_path / "0001_c1.jpg")
    (tmp_path / "Thumbs.db").write_bytes(b"x")
    (tmp_path / ".hidden.jpg").write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    items = scan_split_dir(str(tmp_path), PATTERN)
    assert items == [(str(tmp_path / "0001_c1.jpg"), 1, 0), (str(tmp_path / "0002_c2.jpg"), 2, 1)]


def test_scan_empty_folder_is_an_error(tmp_path):
    with pytest.raises(DatasetError, match="no images in"):
        scan_split_dir(str(tmp_path), PATTERN)


def test_relabel_in_pid_order_keeps_other_fields():
    items = [("a", 9, 0, 0), ("b", 3, 1, 0), ("c", 9, 1, 0)]
    assert relabel(items) == [("a", 1, 0, 0), ("b", 0, 1, 0), ("c", 1, 1, 0)]


def test_statistics_and_table():
    items = [("a", 1, 0), ("b", 1, 1), ("c", 2, 1)]
    assert split_statistics(items, "train") == SplitStats("train", 2, 3, 2)

    class Fake:
        train, query, gallery = items, items[:1], items[1:]

    stats = dataset_statistics(Fake())
    assert [s.images for s in stats] == [3, 1, 2]
    table = format_statistics(stats, title="Fake")
    lines = table.splitlines()
    assert lines[0] == "Fake"
    assert lines[1].split() == ["split", "identities", "images", "cameras"]
    assert lines[3].split() == ["train", "2", "3", "2"]
    assert lines[5].split() == ["gallery", "2", "2", "1"]


def test_count_mismatches_report_both_numbers():
    stats = [SplitStats("train", 2, 10, 2), SplitStats("query", 1, 1, 1)]
    published = {"train": PublishedCounts(2, 12), "query": PublishedCounts(1, 1)}
    assert count_mismatches(stats, published) == ["train: 10 images, published 12"]


@pytest.mark.parametrize(
    "mode, combineall, expected",
    [("train", False, ("train",)), ("train", True, ("train", "query", "gallery")),
     ("query", False, ("query",)), ("gallery", True, ("gallery",)), ("bogus", False, ())],
)
def test_splits_in_use(mode, combineall, expected):
    assert splits_in_use(mode, combineall) == expected


def splits_of(tmp_path):
    return {
        "train": [(image(tmp_path / "t1.png"), 7, 0), (image(tmp_path / "t2.png"), 3, 1)],
        "query": [(image(tmp_path / "q.png"), 5, 0)],
        "gallery": [(image(tmp_path / "g.png"), 5, 1)],
    }


def test_prepare_splits_relabels_train_only(tmp_path):
    out = prepare_splits("Demo", splits_of(tmp_path), num_cams=2, published={})
    assert [item[1] for item in out["train"]] == [1, 0]
    assert out["query"][0][1] == 5 and out["gallery"][0][1] == 5


def test_prepare_splits_camera_out_of_range_names_file(tmp_path):
    splits = splits_of(tmp_path)
    with pytest.raises(DatasetError, match=r"c2 is outside c1\.\.c1: .*t2\.png"):
        prepare_splits("Demo", splits, num_cams=1, published={})


def test_prepare_splits_empty_split(tmp_path):
    splits = {**splits_of(tmp_path), "query": []}
    with pytest.raises(DatasetError, match="query split has no images"):
        prepare_splits("Demo", splits, num_cams=2, published={})


def test_prepare_splits_reads_only_verified_splits(tmp_path):
    splits = splits_of(tmp_path)
    (tmp_path / "g.png").write_bytes(b"not an image")
    out = prepare_splits("Demo", splits, num_cams=2, published={}, verify=("train",))
    assert len(out["gallery"]) == 1
    with pytest.raises(ImageReadError, match="g.png"):
        prepare_splits("Demo", splits, num_cams=2, published={}, verify=("gallery",))


def test_prepare_splits_skip_drops_identity_and_relabels(tmp_path, caplog):
    splits = splits_of(tmp_path)
    (tmp_path / "t2.png").write_bytes(b"not an image")  # the only image of pid 3
    with caplog.at_level(logging.WARNING):
        out = prepare_splits("Demo", splits, num_cams=2, published={}, on_bad_image="skip")
    assert out["train"] == [(str(tmp_path / "t1.png"), 0, 0)]
    assert "skipped 1 unreadable image" in caplog.text


def test_prepare_splits_warns_on_counts_of_verified_splits(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        prepare_splits("Demo", splits_of(tmp_path), num_cams=2, published=PUBLISHED, verify=("train",))
    assert "Demo: counts differ from the published ones: train: 2 identities, published 1" in caplog.text
    assert "train: 2 images, published 1" in caplog.text
    assert "query" not in caplog.text
