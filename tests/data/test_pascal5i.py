"""PASCAL-5i on a tiny fake VOC 2012 + SBD tree (8x8 JPEGs, palette and grey PNG masks)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from reid.data.pascal5i import (
    IGNORE_LABEL,
    Episode,
    Pascal5i,
    fold_classes,
    read_label_mask,
    train_classes,
)
from reid.data.validation import DatasetError


def mask_with(*regions, border=False):
    """An 8x8 class map: each region ``(class, rows, cols)`` fills a block; optional 255 border."""
    mask = np.zeros((8, 8), np.uint8)
    for cls, rows, cols in regions:
        mask[rows, cols] = cls
    if border:
        mask[0, :] = IGNORE_LABEL
    return mask


# image id -> class map; the val images of fold 0 hold classes 1, 2, 3 (4 and 5 absent)
VAL = {
    "2007_000032": mask_with((1, slice(2, 6), slice(2, 6)), border=True),
    "2007_000039": mask_with((1, slice(0, 2), slice(0, 8)), (2, slice(4, 8), slice(0, 4))),
    "2007_000063": mask_with((3, slice(1, 7), slice(1, 7))),
    "2007_000068": mask_with((2, slice(6, 8), slice(6, 8)), (15, slice(0, 3), slice(0, 3))),
    "2007_000121": mask_with(),
    "2007_000123": mask_with((6, slice(0, 4), slice(0, 4))),
}
TRAIN = {
    "2007_000027": mask_with((15, slice(0, 8), slice(0, 4))),
    "2007_000033": mask_with((15, slice(0, 2), slice(0, 2)), (7, slice(4, 8), slice(4, 8))),
}
SBD_ONLY = {"2008_000002": mask_with((7, slice(0, 8), slice(0, 8)))}


def write_mask(path, mask, mode):
    img = Image.fromarray(mask, mode="L")
    if mode == "P":
        img = img.convert("P")
        img.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    img.save(path)


def make_voc(root, val=VAL, train=TRAIN, trainaug=None, mask_mode="P"):
    voc = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation"):
        os.makedirs(voc / sub, exist_ok=True)
    everything = {**val, **train, **(trainaug or {})}
    for i, (image_id, mask) in enumerate(everything.items()):
        Image.new("RGB", (8, 8), (30 * i % 256, 90, 140)).save(voc / "JPEGImages" / f"{image_id}.jpg")
        write_mask(voc / "SegmentationClassAug" / f"{image_id}.png", mask, mask_mode)
    lists = voc / "ImageSets" / "Segmentation"
    (lists / "val.txt").write_text("".join(f"{i}\n" for i in val))
    (lists / "train.txt").write_text("".join(f"{i}\n" for i in train))
    if trainaug is not None:
        (lists / "trainaug.txt").write_text("".join(f"{i}\n" for i in trainaug))
    return voc


def test_folds():
    assert fold_classes(0) == (1, 2, 3, 4, 5) and fold_classes(3) == (16, 17, 18, 19, 20)
    assert len(train_classes(1)) == 15 and not set(train_classes(1)) & set(fold_classes(1))


@pytest.mark.parametrize("fold", [-1, 4, 1.5, True, "0", None])
def test_bad_fold_is_refused(tmp_path, fold):
    make_voc(tmp_path)
    with pytest.raises(ValueError, match=r"fold must be an integer in 0\.\.3, got"):
        Pascal5i(str(tmp_path), fold)


def test_bad_split_and_min_pixels(tmp_path):
    make_voc(tmp_path)
    with pytest.raises(ValueError, match=r"split must be one of \('train', 'val'\), got 'test'"):
        Pascal5i(str(tmp_path), 0, split="test")
    with pytest.raises(ValueError, match="min_pixels must be an integer >= 1"):
        Pascal5i(str(tmp_path), 0, min_pixels=0)


@pytest.mark.parametrize("mask_mode", ["P", "L"])
def test_val_index_per_test_class(tmp_path, mask_mode):
    voc = make_voc(tmp_path, mask_mode=mask_mode)
    data = Pascal5i(str(tmp_path), 0)
    assert data.classes == (1, 2, 3, 4, 5) and data.list_file.endswith(os.path.join("Segmentation", "val.txt"))
    assert data.image_ids == list(VAL)
    assert data.images_by_class == {
        1: ["2007_000032", "2007_000039"], 2: ["2007_000039", "2007_000068"], 3: ["2007_000063"], 4: [], 5: [],
    }
    assert data.images_of(3) == [str(voc / "JPEGImages" / "2007_000063.jpg")]
    with pytest.raises(KeyError, match="class 15 is not a class of fold 0 val"):
        data.images_of(15)
    assert data.episode_classes() == (1, 2)
    assert np.array_equal(read_label_mask(str(voc / "SegmentationClassAug" / "2007_000039.png")), VAL["2007_000039"])


def test_min_pixels(tmp_path):
    make_voc(tmp_path)
    data = Pascal5i(str(tmp_path), 0, min_pixels=5)  # class 2 of 2007_000068 has 4 pixels
    assert data.images_by_class[2] == ["2007_000039"]


def test_episodes_are_deterministic_one_shot_pairs(tmp_path):
    voc = make_voc(tmp_path)
    data = Pascal5i(str(tmp_path), 0)
    episodes = data.episodes(20, seed=7)
    assert len(episodes) == 20 and all(isinstance(e, Episode) for e in episodes)
    again = Pascal5i(str(tmp_path), 0).episode(13, seed=7)
    assert again[0] == episodes[13][0] and again[2] == episodes[13][2] and again.class_id == episodes[13].class_id
    assert np.array_equal(again.query_mask, episodes[13].query_mask)
    assert {e.class_id for e in episodes} == {1, 2}
    for e in episodes:
        support, s_mask, query, q_mask, cls = e[:5]
        assert support != query
        assert (e.support_path, e.query_path) == (support, query)
        for path, mask, ignore in ((support, s_mask, e.support_ignore), (query, q_mask, e.query_ignore)):
            image_id = os.path.splitext(os.path.basename(path))[0]
            assert path == str(voc / "JPEGImages" / f"{image_id}.jpg")
            assert mask.dtype == bool and mask.shape == (8, 8) and mask.any()
            assert np.array_equal(mask, VAL[image_id] == cls)
            assert np.array_equal(ignore, VAL[image_id] == IGNORE_LABEL)
            assert not (mask & ignore).any()
    assert e.class_name in ("aeroplane", "bicycle")
    first = [(e.support_image, e.query_image) for e in episodes]
    other = [(e.support_image, e.query_image) for e in data.episodes(20, seed=8)]
    assert first != other
    assert any(e.support_ignore.any() or e.query_ignore.any() for e in episodes)


def test_episode_arguments_and_no_pairable_class(tmp_path):
    make_voc(tmp_path)
    data = Pascal5i(str(tmp_path), 0)
    with pytest.raises(ValueError, match="episode index must be an integer >= 0"):
        data.episode(-1)
    with pytest.raises(ValueError, match="number of episodes"):
        data.episodes(-2)
    fold1 = Pascal5i(str(tmp_path), 1)  # class 6 is in one val image only
    assert fold1.images_by_class[6] == ["2007_000123"]
    with pytest.raises(DatasetError, match="no class of fold 1 .* has two images"):
        fold1.episode(0)


def test_train_split_prefers_trainaug_without_val_ids(tmp_path, caplog):
    make_voc(tmp_path)
    data = Pascal5i(str(tmp_path), 0, split="train")
    assert os.path.basename(data.list_file) == "train.txt" and data.image_ids == list(TRAIN)
    assert data.classes == train_classes(0)
    assert data.images_by_class[15] == ["2007_000027", "2007_000033"]
    aug = [*TRAIN, *SBD_ONLY, "2007_000032"]  # a val id in the augmented list is left out
    make_voc(tmp_path, trainaug={**TRAIN, **SBD_ONLY, "2007_000032": VAL["2007_000032"]})
    (tmp_path / "VOCdevkit/VOC2012/ImageSets/Segmentation/trainaug.txt").write_text("\n".join(aug) + "\n")
    data = Pascal5i(str(tmp_path), 0, split="train")
    assert data.list_file.endswith("trainaug.txt")
    assert data.image_ids == [*TRAIN, *SBD_ONLY]
    assert "left out 1 id(s)" in caplog.text
    assert data.images_by_class[7] == ["2007_000033", "2008_000002"]


def test_missing_folders_and_list_files(tmp_path):
    with pytest.raises(DatasetError, match="Expected layout") as info:
        Pascal5i(str(tmp_path), 0)
    assert str(tmp_path / "VOCdevkit" / "VOC2012") in str(info.value)
    assert "SegmentationClassAug" in str(info.value)
    voc = make_voc(tmp_path)
    os.rename(voc / "SegmentationClassAug", voc / "SegmentationClass")
    with pytest.raises(DatasetError, match=f"not found: {voc / 'SegmentationClassAug'}\n"):
        Pascal5i(str(tmp_path), 0)
    os.rename(voc / "SegmentationClass", voc / "SegmentationClassAug")
    os.remove(voc / "ImageSets" / "Segmentation" / "val.txt")
    with pytest.raises(DatasetError, match=f"not found: {voc / 'ImageSets' / 'Segmentation' / 'val.txt'}\n"):
        Pascal5i(str(tmp_path), 0)


def test_missing_image_or_mask_of_a_listed_id(tmp_path):
    voc = make_voc(tmp_path)
    os.remove(voc / "SegmentationClassAug" / "2007_000063.png")
    with pytest.raises(DatasetError, match=r"mask file not found: .*2007_000063\.png"):
        Pascal5i(str(tmp_path), 0)
    voc = make_voc(tmp_path)
    os.remove(voc / "JPEGImages" / "2007_000068.jpg")
    with pytest.raises(DatasetError, match=r"image file not found: .*2007_000068\.jpg"):
        Pascal5i(str(tmp_path), 0)


def test_mask_size_differs_from_image(tmp_path):
    voc = make_voc(tmp_path)
    write_mask(voc / "SegmentationClassAug" / "2007_000039.png", np.zeros((6, 8), np.uint8), "P")
    with pytest.raises(DatasetError, match=r"mask .*2007_000039\.png is 8x6 but its image .*2007_000039\.jpg is 8x8"):
        Pascal5i(str(tmp_path), 0)


def test_bad_mask_contents(tmp_path):
    voc = make_voc(tmp_path)
    path = voc / "SegmentationClassAug" / "2007_000039.png"
    Image.new("RGB", (8, 8), (128, 0, 0)).save(path)
    with pytest.raises(DatasetError, match=r"2007_000039\.png: mask of PIL mode 'RGB'"):
        Pascal5i(str(tmp_path), 0)
    write_mask(path, mask_with((21, slice(0, 2), slice(0, 2))), "L")
    with pytest.raises(DatasetError, match=r"2007_000039\.png: pixel values \[21\] are neither a class"):
        Pascal5i(str(tmp_path), 0)


def test_malformed_list_line(tmp_path):
    voc = make_voc(tmp_path)
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000032\n\n2007_000039 1\n")
    with pytest.raises(DatasetError, match=r"val\.txt:3: expected one image id per line, got 2 fields"):
        Pascal5i(str(tmp_path), 0)
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("\n")
    with pytest.raises(DatasetError, match=r"val\.txt lists no image"):
        Pascal5i(str(tmp_path), 0)


# fold 0 val with classes 1 and 2 together in three images, and more images of each
TWO_WAY = {
    "2008_000001": mask_with((1, slice(0, 4), slice(0, 8)), (2, slice(4, 8), slice(0, 8))),
    "2008_000002": mask_with((1, slice(0, 8), slice(0, 3)), (2, slice(0, 8), slice(5, 8))),
    "2008_000003": mask_with((1, slice(2, 4), slice(2, 4)), (2, slice(5, 7), slice(5, 7)), border=True),
    **{f"2008_00001{k}": mask_with((1, slice(k % 4, 8), slice(0, 8))) for k in range(4)},
    **{f"2008_00002{k}": mask_with((2, slice(0, 8 - k % 4), slice(0, 8))) for k in range(4)},
    "2008_000030": mask_with((3, slice(0, 8), slice(0, 8))),
}


def test_two_way_five_shot_episodes(tmp_path):
    make_voc(tmp_path, val=TWO_WAY)
    data = Pascal5i(str(tmp_path), 0)
    (classes, candidates), = data.class_groups(2, 5)  # only classes 1 and 2 appear together
    assert classes == (1, 2) and candidates == ["2008_000001", "2008_000002", "2008_000003"]
    episodes = [data.few_shot_episode(i, seed=3, ways=2, shots=5) for i in range(6)]
    again = data.few_shot_episode(4, seed=3, ways=2, shots=5)
    assert again.query_image == episodes[4].query_image and [
        [p for p, _ in s] for s in again.supports] == [[p for p, _ in s] for s in episodes[4].supports]
    for e in episodes:
        assert e.class_ids == (1, 2) and e.class_names == ("aeroplane", "bicycle")
        query_id = os.path.basename(e.query_image)[:-4]
        labels = read_label_mask(data.mask_path(query_id))
        for class_id, mask, supports in zip(e.class_ids, e.query_masks, e.supports):
            assert np.array_equal(mask, labels == class_id) and mask.any()
            assert len(supports) == 5 and len({p for p, _ in supports}) == 5
            for path, support_mask in supports:
                assert path != e.query_image and support_mask.any()
                assert np.array_equal(support_mask, read_label_mask(data.mask_path(os.path.basename(path)[:-4])) == class_id)
        assert np.array_equal(e.query_ignore, labels == IGNORE_LABEL)
    one_way = data.few_shot_episode(0, seed=0, ways=1, shots=5)
    assert len(one_way.class_ids) == 1 and len(one_way.supports[0]) == 5
    with pytest.raises(DatasetError, match="no 2 classes of fold 0 .* with 9 other image"):
        data.few_shot_episode(0, ways=2, shots=9)
    with pytest.raises(ValueError, match="ways"):
        data.few_shot_episode(0, ways=6)
