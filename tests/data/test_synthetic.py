"""Tests of the synthetic re-id set: renderer, attribute sampling, generation, cache, torchreid."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import subprocess
import sys
import time
from collections import defaultdict

import cv2
import numpy as np
import pytest

from reid.data import render, synthetic
from reid.data.render import (
    ATTRIBUTE_VALUES,
    PART_LABELS,
    VIEWPOINTS,
    Difficulty,
    PersonAttributes,
    ViewParams,
    bag_visible,
    make_cameras,
    render_person,
    sample_identities,
    sample_view,
)
from reid.data.synthetic import (
    COMPLETE_MARKER,
    MARKET_PATTERN,
    SPLIT_DIRS,
    SyntheticConfig,
    SyntheticReID,
    is_complete,
    load_attributes,
    load_mask,
    load_metadata,
    prepare_synthetic,
    remove_stale_temporaries,
    render_params,
)

TINY = dict(num_ids=8, num_cams=2, images_per_id=4, seed=0, progress=False, verbose=False)
CLEAN = ViewParams(viewpoint="front", phase=0.7, stride=0.6, arm_swing=0.6, noise_seed=3)


def _tiny_config(**changes) -> SyntheticConfig:
    values = {k: v for k, v in TINY.items() if k not in ("progress", "verbose")}
    values.update(changes)
    return SyntheticConfig(**values)


def _all_files(folder: str) -> dict[str, bytes]:
    files = {}
    for dirpath, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as fh:
                files[os.path.relpath(path, folder)] = fh.read()
    return files


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    return prepare_synthetic(str(tmp_path_factory.mktemp("data")), _tiny_config(), progress=False)


# ---------------------------------------------------------------------------------- renderer


def test_render_is_deterministic_and_seed_dependent():
    attrs = PersonAttributes(top_pattern="stripes", bag_type="backpack")
    camera = make_cameras(2, np.random.default_rng(0), Difficulty())[1]
    view = sample_view(np.random.default_rng(1), camera, Difficulty())
    img1, mask1 = render_person(attrs, view, camera)
    img2, mask2 = render_person(attrs, view, camera)
    assert img1.shape == (128, 64, 3) and img1.dtype == np.uint8
    assert mask1.shape == (128, 64) and mask1.dtype == np.uint8
    np.testing.assert_array_equal(img1, img2)
    np.testing.assert_array_equal(mask1, mask2)
    img3, _ = render_person(attrs, view.replace(noise_seed=view.noise_seed + 1), camera)
    assert not np.array_equal(img1, img3)


@pytest.mark.parametrize("viewpoint", VIEWPOINTS)
def test_mask_labels_and_person_area(viewpoint):
    img, mask = render_person(PersonAttributes(bag_type="handbag"), CLEAN.replace(viewpoint=viewpoint))
    assert set(np.unique(mask)) <= set(PART_LABELS.values())
    for part in ("head", "torso", "legs", "shoes"):
        assert (mask == PART_LABELS[part]).any(), part
    assert 0.1 < (mask > 0).mean() < 0.6
    # the head is above the torso, which is above the legs, which are above the shoes
    rows = {p: np.nonzero((mask == PART_LABELS[p]).any(axis=1))[0].mean()
            for p in ("head", "torso", "legs", "shoes")}
    assert rows["head"] < rows["torso"] < rows["legs"] < rows["shoes"]


@pytest.mark.parametrize("bag_type", ATTRIBUTE_VALUES["bag_type"])
@pytest.mark.parametrize("bag_side", ("left", "right"))
@pytest.mark.parametrize("viewpoint", VIEWPOINTS)
def test_bag_pixels_iff_bag_visible(bag_type, bag_side, viewpoint):
    attrs = PersonAttributes(bag_type=bag_type, bag_side=bag_side)
    _, mask = render_person(attrs, CLEAN.replace(viewpoint=viewpoint), height=64, width=32)
    assert (mask == PART_LABELS["bag"]).any() == bag_visible(attrs, viewpoint)


def test_backpack_shows_fully_from_the_back():
    attrs = PersonAttributes(bag_type="backpack")
    area = {v: int((render_person(attrs, CLEAN.replace(viewpoint=v))[1] == 5).sum())
            for v in ("front", "back")}
    assert area["back"] > 3 * area["front"] > 0


@pytest.mark.parametrize("viewpoint", VIEWPOINTS)
def test_logo_only_visible_from_the_front(viewpoint):
    solid = PersonAttributes(top_colour="navy", top_pattern="solid")
    img_solid, mask_solid = render_person(solid, CLEAN.replace(viewpoint=viewpoint))
    img_logo, mask_logo = render_person(solid.with_attribute("top_pattern", "logo"),
                                        CLEAN.replace(viewpoint=viewpoint))
    np.testing.assert_array_equal(mask_solid, mask_logo)
    assert np.array_equal(img_solid, img_logo) == (viewpoint != "front")


def test_one_attribute_change_only_changes_its_part():
    attrs = PersonAttributes(shoes_colour="black")
    view = CLEAN.replace(pixel_noise=4.0, colour_noise=0.1, blur=0.0, clutter=True)
    img_a, mask_a = render_person(attrs, view)
    img_b, mask_b = render_person(attrs.with_attribute("shoes_colour", "white"), view)
    np.testing.assert_array_equal(mask_a, mask_b)
    changed = np.abs(img_a.astype(int) - img_b.astype(int)).max(axis=2) > 0
    shoes = cv2.dilate((mask_a == PART_LABELS["shoes"]).astype(np.uint8), np.ones((3, 3), np.uint8))
    assert changed.any()
    assert not (changed & (shoes == 0)).any()


def test_occluder_clears_mask_and_area_stays_nontrivial():
    attrs = PersonAttributes()
    _, clean = render_person(attrs, CLEAN)
    for k, occluder in enumerate(("pole", "box", "side", "person")):
        _, mask = render_person(attrs, CLEAN.replace(occluder=occluder, occluder_seed=k))
        assert (mask > 0).sum() < (clean > 0).sum(), occluder
        assert not ((mask > 0) & (clean == 0)).any(), occluder
        assert (mask > 0).mean() > 0.05, occluder


def test_attributes_validate_and_copy_with_one_change():
    attrs = PersonAttributes()
    changed = attrs.with_attribute("bag_type", "backpack")
    assert changed.bag_type == "backpack" and attrs.bag_type == "none"
    diff = [f.name for f in dataclasses.fields(attrs) if getattr(attrs, f.name) != getattr(changed, f.name)]
    assert diff == ["bag_type"]
    assert PersonAttributes.from_dict(changed.to_dict()) == changed
    with pytest.raises(ValueError, match="bag_type"):
        attrs.with_attribute("bag_type", "suitcase")
    with pytest.raises(ValueError, match="unknown"):
        attrs.replace(hat="red")


@pytest.mark.parametrize("num_ids,seed", [(4, 0), (5, 1), (8, 2), (31, 3), (150, 4)])
def test_no_attribute_value_identifies_a_person(num_ids, seed):
    people = sample_identities(num_ids, np.random.default_rng(seed))
    assert len({p.as_tuple() for p in people}) == num_ids
    for name in ATTRIBUTE_VALUES:
        holders: dict[str, int] = defaultdict(int)
        for p in people:
            holders[getattr(p, name)] += 1
        assert min(holders.values()) >= 2, (name, dict(holders))


def test_identity_sampling_needs_four_ids():
    with pytest.raises(ValueError, match="at least 4"):
        sample_identities(3, np.random.default_rng(0))


# -------------------------------------------------------------------------------- generation


def test_generation_is_byte_identical_for_a_seed(tmp_path, tiny_dir):
    again = prepare_synthetic(str(tmp_path / "a"), _tiny_config(), progress=False)
    first, second = _all_files(tiny_dir), _all_files(again)
    assert len(first) == len(second) > 8 * 4 * 2
    assert first == second
    other = prepare_synthetic(str(tmp_path / "b"), _tiny_config(seed=1), progress=False)
    assert os.path.basename(other) != os.path.basename(tiny_dir)
    jpgs = [_all_files(other)[k] for k in sorted(_all_files(other)) if k.endswith(".jpg")]
    assert jpgs != [first[k] for k in sorted(first) if k.endswith(".jpg")]


def test_file_names_splits_and_id_ranges(tiny_dir):
    pids: dict[str, set[int]] = {}
    for split, folder in SPLIT_DIRS.items():
        names = os.listdir(os.path.join(tiny_dir, folder))
        assert names, split
        parsed = [MARKET_PATTERN.search(n) for n in names]
        assert all(parsed), names
        pids[split] = {int(m.group(1)) for m in parsed}
        assert {int(m.group(2)) for m in parsed} <= {1, 2}
    assert pids["train"] == {1, 2, 3, 4}
    assert pids["query"] == pids["gallery"] == {5, 6, 7, 8}
    assert not pids["train"] & pids["gallery"]


def test_every_image_has_a_matching_mask(tiny_dir):
    for folder in SPLIT_DIRS.values():
        for name in os.listdir(os.path.join(tiny_dir, folder)):
            path = os.path.join(tiny_dir, folder, name)
            image = cv2.imread(path)
            mask = load_mask(path)
            assert mask.shape == image.shape[:2] == (128, 64)
            assert mask.dtype == np.uint8 and mask.max() <= 5
            assert (mask > 0).mean() > 0.03


def test_metadata_attributes_and_rerendering(tiny_dir):
    metadata = load_metadata(tiny_dir)
    attributes = load_attributes(tiny_dir)
    assert sorted(attributes) == list(range(1, 9))
    assert len(metadata) == 8 * 4
    for rel, entry in metadata.items():
        assert entry["viewpoint"] in VIEWPOINTS
        assert entry["occluded"] == (entry["occluded_fraction"] > 0)
        if entry["occluder"] == "none":
            assert not entry["occluded"]
        mask = load_mask(os.path.join(tiny_dir, rel))
        assert entry["part_pixels"] == np.bincount(mask.ravel(), minlength=6).tolist()
        has_bag = bool((mask == PART_LABELS["bag"]).any())
        if entry["occluder"] == "none":
            assert has_bag == entry["bag_visible"]
        elif has_bag:
            assert entry["bag_visible"]
    rel = sorted(metadata)[-1]
    attrs, view, camera = render_params(tiny_dir, rel, metadata)
    assert attrs == attributes[metadata[rel]["pid"]]
    image, mask = render_person(attrs, view, camera, 128, 64)
    np.testing.assert_array_equal(mask, load_mask(os.path.join(tiny_dir, rel)))
    ok, encoded = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, camera.jpeg_quality])
    with open(os.path.join(tiny_dir, rel), "rb") as fh:
        assert ok and encoded.tobytes() == fh.read()


def test_stored_attributes_share_every_value_within_each_split(tiny_dir):
    attributes = load_attributes(tiny_dir)
    for split_pids in ([1, 2, 3, 4], [5, 6, 7, 8]):
        for name in ATTRIBUTE_VALUES:
            values = [getattr(attributes[p], name) for p in split_pids]
            assert all(values.count(v) >= 2 for v in values), name


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    calls = {"n": 0}
    original = render.PersonRenderer.render_with_unoccluded

    def failing(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(render.PersonRenderer, "render_with_unoccluded", failing)
    with pytest.raises(KeyboardInterrupt):
        prepare_synthetic(str(tmp_path), _tiny_config(), progress=False)
    assert os.listdir(tmp_path / "synthetic") == []


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _age(folder, seconds):
    """Sets the modification time of ``folder`` and its sub-folders ``seconds`` in the past."""
    stamp = time.time() - seconds
    for dirpath, dirnames, _ in os.walk(folder, topdown=False):
        for name in dirnames:
            os.utime(os.path.join(dirpath, name), (stamp, stamp))
    os.utime(folder, (stamp, stamp))


def _temporary(parent, name, age_s=0.0):
    """A leftover generation folder ``parent/name`` with an image, ``age_s`` seconds old."""
    folder = parent / name
    os.makedirs(folder / "bounding_box_train")
    (folder / "bounding_box_train" / "0001_c1s1_000000_00.jpg").write_bytes(b"x")
    _age(folder, age_s)
    return folder


def test_stale_temporary_folders_are_removed_at_the_next_start(tmp_path, caplog):
    final = prepare_synthetic(str(tmp_path), _tiny_config(), progress=False)
    parent = tmp_path / "synthetic"
    name = synthetic.temporary_folder_name
    minutes = 60.0
    old = _temporary(parent, ".tmp-n8_old-12", age_s=synthetic.STALE_AFTER_S + minutes)  # older versions' name
    dead = _temporary(parent, name("dead", _dead_pid()), age_s=synthetic.DEAD_OWNER_GRACE_S + 1)
    just_died = _temporary(parent, name("just-died", _dead_pid()))  # within the grace period
    fresh = _temporary(parent, ".tmp-n8_fresh-34", age_s=synthetic.STALE_AFTER_S - minutes)
    live = _temporary(parent, name("live", os.getppid()), age_s=synthetic.STALE_AFTER_S - minutes)
    elsewhere = _temporary(parent, name("elsewhere", _dead_pid(), "another-host"), age_s=2 * minutes)
    with caplog.at_level(logging.INFO, logger="reid.data.synthetic"):
        assert prepare_synthetic(str(tmp_path), _tiny_config(), progress=False) == final
    assert not old.exists() and not dead.exists()
    for kept in (just_died, fresh, live, elsewhere):
        assert kept.exists(), kept
    assert is_complete(final)
    assert f"removed the stale temporary folder {old} (nothing in it changed for 11 min)" in caplog.text
    assert f"removed the stale temporary folder {dead} (its generating process" in caplog.text
    assert caplog.text.count("removed the stale temporary folder") == 2


def test_folder_of_a_killed_generation_is_removed_by_the_next_one(tmp_path):
    script = (
        "import sys; from reid.data.synthetic import SyntheticConfig, prepare_synthetic; "
        "prepare_synthetic(sys.argv[1], SyntheticConfig(num_ids=200, images_per_id=20), progress=False)"
    )
    child = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)])
    try:
        deadline = time.monotonic() + 120
        images = []
        while time.monotonic() < deadline and child.poll() is None:
            images = list((tmp_path / "synthetic").glob(".tmp-*/bounding_box_train/*.jpg"))
            if len(images) > 10:
                break
            time.sleep(0.1)
        assert images, "the generation never started writing images"
        remove_stale_temporaries(str(tmp_path / "synthetic"))  # a live generation is left alone
        assert images[0].exists()
    finally:
        child.kill()
        child.wait()
    (temporary,) = (tmp_path / "synthetic").glob(".tmp-*")
    assert not is_complete(str(temporary))
    _age(temporary, synthetic.DEAD_OWNER_GRACE_S)  # killed a minute ago
    prepare_synthetic(str(tmp_path), _tiny_config(), progress=False)
    assert [p.name for p in (tmp_path / "synthetic").iterdir()] == [_tiny_config().variant_name()]


def test_unusable_root_names_the_folder(tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(OSError, match=re.escape(str(not_a_dir))):
        SyntheticReID(root=str(not_a_dir), **TINY)


# --------------------------------------------------------------------------------- dataset


def test_dataset_counts_and_relabelled_train_pids(tmp_path):
    ds = SyntheticReID(root=str(tmp_path), **TINY)
    assert len(ds.train) == 4 * 4
    assert len(ds.query) + len(ds.gallery) == 4 * 4
    assert sorted({pid for _, pid, _, _ in ds.train}) == [0, 1, 2, 3]
    assert ds.num_train_pids == 4
    assert {pid for _, pid, _, _ in ds.query} == {5, 6, 7, 8}
    assert {cam for _, _, cam, _ in ds.train + ds.query + ds.gallery} == {0, 1}
    # one query per (test identity, camera); each has a gallery match in another camera
    assert len({(pid, cam) for _, pid, cam, _ in ds.query}) == len(ds.query)
    for _, pid, cam, _ in ds.query:
        assert any(p == pid and c != cam for _, p, c, _ in ds.gallery)
    for path, _, cam, _ in ds.train:
        assert int(MARKET_PATTERN.search(path).group(2)) == cam + 1
    item = ds[0]
    assert item["img"].size == (64, 128)


def test_cache_is_reused_and_incomplete_folder_regenerated(tmp_path):
    first = SyntheticReID(root=str(tmp_path), **TINY)
    folder = first.dataset_dir
    stamps = {p: os.stat(os.path.join(folder, p)).st_mtime_ns for p in _all_files(folder)}
    second = SyntheticReID(root=str(tmp_path), **TINY)
    assert second.dataset_dir == folder
    assert {p: os.stat(os.path.join(folder, p)).st_mtime_ns for p in _all_files(folder)} == stamps
    # an interrupted older run: no marker, an image missing
    os.remove(os.path.join(folder, COMPLETE_MARKER))
    victim = first.train[0][0]
    os.remove(victim)
    third = SyntheticReID(root=str(tmp_path), **TINY)
    assert os.path.isfile(victim) and os.path.isfile(os.path.join(folder, COMPLETE_MARKER))
    assert len(third.train) == len(first.train)


def test_knobs_and_unknown_arguments(tmp_path):
    ds = SyntheticReID(root=str(tmp_path), occlusion_prob=0.0, split_id=0, cuhk03_labeled=False,
                       market1501_500k=False, **TINY)
    assert ds.config.difficulty.occlusion_prob == 0.0
    assert not any(e["occluded"] for e in load_metadata(ds.dataset_dir).values())
    with pytest.raises(TypeError, match="occlusion_probability"):
        SyntheticReID(root=str(tmp_path), occlusion_probability=0.5, **TINY)


def test_difficulty_scaled_zero_is_clean():
    clean = Difficulty().scaled(0.0)
    assert clean.occlusion_prob == clean.pixel_noise == clean.blur == 0.0
    assert clean.family_size == Difficulty().family_size
    with pytest.raises(ValueError):
        Difficulty(occlusion_prob=1.5)


def test_registered_with_torchreid(tmp_path):
    from torchreid.reid.data import datasets

    synthetic.register()  # importing or registering again is harmless
    ds = datasets.init_image_dataset("synthetic", root=str(tmp_path), mode="query", **TINY)
    assert isinstance(ds, SyntheticReID)
    assert len(ds) == len(ds.query)
