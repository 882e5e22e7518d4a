"""Controlled triplets: the negative differs from the anchor in exactly one attribute and its part."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from reid.data.controlled import ATTRIBUTE_PARTS, build_controlled_triplets, change_is_visible
from reid.data.render import PART_LABELS, PersonAttributes
from reid.data.synthetic import SyntheticConfig, load_attributes, load_metadata, prepare_synthetic, render_params
from tests.conftest import TINY_SYNTHETIC


@pytest.fixture(scope="module")
def tiny_dir(tiny_data_root) -> str:
    return prepare_synthetic(str(tiny_data_root), SyntheticConfig(**TINY_SYNTHETIC), progress=False)


@pytest.fixture(scope="module")
def triplets(tiny_dir):
    return build_controlled_triplets(tiny_dir, 24, seed=1)


def _rel(tiny_dir, path):
    return path[len(tiny_dir) + 1 :].replace("\\", "/")


def test_count_identities_and_positives(tiny_dir, triplets):
    assert len(triplets) == 24
    metadata = load_metadata(tiny_dir)
    for t in triplets:
        anchor, positive = metadata[_rel(tiny_dir, t.anchor_path)], metadata[_rel(tiny_dir, t.positive_path)]
        assert anchor["split"] in ("query", "gallery") and positive["split"] in ("query", "gallery")
        assert anchor["pid"] == positive["pid"] == t.pid and t.anchor_path != t.positive_path
        assert anchor["camid"] == t.camid and anchor["viewpoint"] == t.viewpoint
    assert len({t.anchor_path for t in triplets}) == len(triplets)  # anchors drawn without replacement
    assert len({t.attribute for t in triplets}) >= 6  # the attributes cycle


def test_negative_changes_exactly_one_attribute(tiny_dir, triplets):
    attributes = load_attributes(tiny_dir)
    metadata = load_metadata(tiny_dir)
    for t in triplets:
        identity = attributes[t.pid]
        assert getattr(identity, t.attribute) == t.old_value != t.new_value
        changed = identity.with_attribute(t.attribute, t.new_value)
        diffs = [k for k, v in dataclasses.asdict(changed).items() if v != getattr(identity, k)]
        assert diffs == [t.attribute]
        # the stored renders are what the generator draws for the anchor's view and camera
        attrs, view, camera = render_params(tiny_dir, _rel(tiny_dir, t.anchor_path), metadata)
        assert attrs == identity
        from reid.data.render import render_person

        image, mask = render_person(changed, view, camera, *t.region.shape)
        np.testing.assert_array_equal(image, t.negative_render)
        np.testing.assert_array_equal(mask, t.negative_mask)


def test_changes_stay_inside_the_region(triplets):
    for t in triplets:
        labels = [PART_LABELS[p] for p in ATTRIBUTE_PARTS[t.attribute]]
        expected = np.isin(t.anchor_mask, labels) | np.isin(t.negative_mask, labels)
        np.testing.assert_array_equal(t.region, expected)
        assert t.region.any()
        # part labels identical outside the region
        np.testing.assert_array_equal(t.anchor_mask[~t.region], t.negative_mask[~t.region])
        # pixels identical outside the region's blur/anti-aliasing support, and visibly changed inside
        changed = (t.anchor_render != t.negative_render).any(axis=2)
        assert not (changed & ~t.support()).any()
        big = np.abs(t.anchor_render.astype(int) - t.negative_render.astype(int)).max(axis=2) > 24
        assert big.sum() >= 8 and (big & t.region).any()


def _jpeg_round_trip(image, quality):
    ok, encoded = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return cv2.imdecode(encoded, cv2.IMREAD_COLOR)[..., ::-1]


def test_anchor_is_the_stored_image_and_negative_is_encoded_like_it(tiny_dir, triplets):
    metadata = load_metadata(tiny_dir)
    for t in triplets[:6]:
        _, _, camera = render_params(tiny_dir, _rel(tiny_dir, t.anchor_path), metadata)
        stored = cv2.imread(t.anchor_path)[..., ::-1]
        np.testing.assert_array_equal(stored, _jpeg_round_trip(t.anchor_render, camera.jpeg_quality))
        np.testing.assert_array_equal(t.negative, _jpeg_round_trip(t.negative_render, camera.jpeg_quality))


def test_same_seed_same_triplets_and_other_seed_differs(tiny_dir, triplets):
    again = build_controlled_triplets(tiny_dir, 24, seed=1)
    assert [t.to_record() for t in again] == [t.to_record() for t in triplets]
    other = build_controlled_triplets(tiny_dir, 24, seed=2)
    assert [t.anchor_path for t in other] != [t.anchor_path for t in triplets]


def test_hidden_changes_are_not_used():
    no_bag = PersonAttributes(bag_type="none")
    assert not change_is_visible(no_bag, "bag_colour", "red", "front")
    assert not change_is_visible(no_bag, "bag_side", "left", "front")
    handbag_right = PersonAttributes(bag_type="handbag", bag_side="right")
    assert not change_is_visible(handbag_right, "bag_colour", "red", "left")  # hidden behind the body
    assert change_is_visible(handbag_right, "bag_colour", "red", "right")
    assert not change_is_visible(PersonAttributes(bag_type="backpack"), "bag_side", "left", "back")
    solid = PersonAttributes(top_pattern="solid")
    assert not change_is_visible(solid, "top_pattern", "logo", "back")
    assert change_is_visible(solid, "top_pattern", "logo", "front")
    assert change_is_visible(solid, "top_pattern", "stripes", "back")


def test_only_chosen_attributes_and_errors(tiny_dir, tmp_path):
    shoes = build_controlled_triplets(tiny_dir, 5, seed=0, attributes=["shoes_colour"])
    assert shoes and {t.attribute for t in shoes} == {"shoes_colour"}
    with pytest.raises(ValueError, match="attributes"):
        build_controlled_triplets(tiny_dir, 5, attributes=["skin_tone"])
    with pytest.raises(ValueError, match="splits"):
        build_controlled_triplets(tiny_dir, 5, splits=["test"])
    with pytest.raises(FileNotFoundError, match="not a complete synthetic set"):
        build_controlled_triplets(str(tmp_path), 5)
