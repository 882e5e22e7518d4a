"""Controlled triplets with a known answer to "why is the negative dissimilar?".

From a generated synthetic set (:mod:`reid.data.synthetic`) each triplet takes

* an **anchor**: a real image of a test identity (the stored file);
* a **positive**: another real image of the same identity (another camera when there is one);
* a **negative**: the anchor re-rendered with the *same* view and camera (pose, placement,
  occluder, illumination, noise seed) and exactly **one attribute changed** (hair, top colour or
  pattern, sleeves, bottom colour or type, shoes, bag type, colour or side).

Because every random draw of the renderer depends only on the view and the camera
(:mod:`reid.data.render`), the negative differs from the anchor's re-rendering only on the part
that attribute draws. The ground-truth region is the union of that attribute's part(s)
(:data:`ATTRIBUTE_PARTS`) in both part masks (the anchor's and the negative's), so it covers
pixels the part leaves or newly covers (e.g. a new backpack over the torso). Around the region
the rendering may differ by anti-aliasing (one pixel) and by the image's Gaussian blur
(``ControlledTriplet.support_radius`` pixels); nowhere else.

Only changes that show are used: no bag change where the bag is hidden (:func:`bag_visible`), no
logo change off the front view (:func:`logo_visible`), and at least ``min_changed_pixels``
pixels whose colour changes by more than ``VISIBLE_DIFFERENCE`` grey levels (so a change hidden
by an occluder, or between two near-identical colours, is skipped). A change is also skipped
when it is not confined to its part: occluders placed from the figure's outline (pole, box,
wall) move when a bag or long hair widens it, and a semi-transparent occluding person lets a
changed part show through background-labelled pixels.

The negative is JPEG-encoded with the camera's quality, exactly as the generator writes images,
so it goes through the same pipeline as the anchor (whose stored file equals the JPEG encoding of
its re-rendering). Attributes excluded: ``skin_tone`` (face, arms and legs at once) and
``body_height``/``body_width`` (the whole figure moves).
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping, Sequence

import cv2
import numpy as np

from .render import (
    ATTRIBUTE_VALUES,
    PART_LABELS,
    PersonAttributes,
    PersonRenderer,
    ViewParams,
    bag_visible,
    logo_visible,
)
from .synthetic import SPLIT_DIRS, is_complete, load_metadata, render_params

logger = logging.getLogger(__name__)

__all__ = [
    "ATTRIBUTE_PARTS",
    "VISIBLE_DIFFERENCE",
    "ControlledTriplet",
    "build_controlled_triplets",
    "change_is_visible",
]

ATTRIBUTE_PARTS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "hair_style": ("head",),
        "hair_colour": ("head",),
        "top_colour": ("torso",),
        "top_pattern": ("torso",),
        "sleeves": ("torso",),
        "bottom_colour": ("legs",),
        "bottom_type": ("legs",),
        "shoes_colour": ("shoes",),
        "bag_type": ("bag",),
        "bag_colour": ("bag",),
        "bag_side": ("bag",),
    }
)
"""The attributes a negative may change, and the part labels (``render.PART_LABELS``) they draw."""

VISIBLE_DIFFERENCE = 24
"""A pixel counts as changed when a channel differs by more than this (0-255 scale)."""


@dataclass(frozen=True)
class ControlledTriplet:
    """One anchor, positive and one-attribute negative, with the ground-truth region.

    Attributes:
        anchor_path: the anchor's image file.
        positive_path: another image of the anchor's identity.
        pid: the identity.
        camid: the anchor's (0-based) camera, shared by the negative.
        viewpoint: the anchor's viewpoint, shared by the negative.
        attribute: the changed attribute.
        old_value: its value in the identity (anchor, positive).
        new_value: its value in the negative.
        negative: ``(H, W, 3)`` uint8 RGB negative image (JPEG-encoded like the set's files).
        anchor_render: ``(H, W, 3)`` uint8 RGB re-rendering of the anchor (before JPEG).
        negative_render: ``(H, W, 3)`` uint8 RGB negative before JPEG.
        anchor_mask: ``(H, W)`` uint8 part labels of the anchor.
        negative_mask: ``(H, W)`` uint8 part labels of the negative.
        region: ``(H, W)`` bool ground truth, the changed attribute's parts in either mask.
        support_radius: pixels around ``region`` where blur and anti-aliasing may spread the
            change (``ceil(4 sigma) + 1`` for the image's blur ``sigma``).
    """

    anchor_path: str
    positive_path: str
    pid: int
    camid: int
    viewpoint: str
    attribute: str
    old_value: str
    new_value: str
    negative: np.ndarray
    anchor_render: np.ndarray
    negative_render: np.ndarray
    anchor_mask: np.ndarray
    negative_mask: np.ndarray
    region: np.ndarray
    support_radius: int

    def support(self) -> np.ndarray:
        """``(H, W)`` bool: the region grown by ``support_radius`` (where renders may differ)."""
        return _grow(self.region, self.support_radius)

    def to_record(self) -> dict[str, Any]:
        """A JSON-serialisable summary (paths, identity, the change, region area)."""
        return {
            "anchor_path": self.anchor_path, "positive_path": self.positive_path, "pid": self.pid,
            "camid": self.camid, "viewpoint": self.viewpoint, "attribute": self.attribute,
            "old_value": self.old_value, "new_value": self.new_value,
            "region_fraction": round(float(self.region.mean()), 5),
        }


def change_is_visible(attrs: PersonAttributes, name: str, value: str, viewpoint: str) -> bool:
    """Whether changing ``name`` to ``value`` can show from ``viewpoint`` (before occluders).

    Bag changes need a bag visible before or after the change (and colour/side changes a bag
    that is visible at all); top-pattern changes to or from a logo need the front view unless the
    other pattern shows (stripes, checks show from every side).
    """
    new = attrs.with_attribute(name, value)
    if name.startswith("bag_"):
        if name == "bag_type":
            return bag_visible(attrs, viewpoint) or bag_visible(new, viewpoint)
        if attrs.bag_type == "none" or (name == "bag_side" and attrs.bag_type == "backpack"):
            return False
        return bag_visible(attrs, viewpoint) or bag_visible(new, viewpoint)
    if name == "top_pattern":
        plain = ("solid", "logo")
        if attrs.top_pattern in plain and value in plain:
            return logo_visible(attrs, viewpoint) or logo_visible(new, viewpoint)
    return True


def _part_region(mask: np.ndarray, name: str) -> np.ndarray:
    labels = [PART_LABELS[part] for part in ATTRIBUTE_PARTS[name]]
    return np.isin(mask, labels)


def _support_radius(view: ViewParams) -> int:
    """Pixels a change may spread: OpenCV's float Gaussian kernel reaches ``4 sigma``, plus one
    pixel of anti-aliasing (the figure is drawn supersampled and area-downsampled)."""
    return int(math.ceil(4.0 * view.blur)) + 1


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    ok, encoded = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("could not JPEG-encode a rendered negative")
    return cv2.imdecode(encoded, cv2.IMREAD_COLOR)[..., ::-1].copy()


def _load_render_settings(dataset_dir: str) -> tuple[int, int, int]:
    with open(os.path.join(dataset_dir, "config.json"), encoding="utf-8") as fh:
        config = json.load(fh)
    return int(config["height"]), int(config["width"]), int(config.get("supersample", 2))


def _positive_for(rel: str, entry: Mapping[str, Any], same_pid: Sequence[str],
                  metadata: Mapping[str, Mapping[str, Any]], rng: np.random.Generator) -> str | None:
    others = [r for r in same_pid if r != rel]
    if not others:
        return None
    other_cams = [r for r in others if metadata[r]["camid"] != entry["camid"]]
    pool = other_cams or others
    return pool[int(rng.integers(len(pool)))]


def build_controlled_triplets(
    dataset_dir: str,
    num_triplets: int,
    seed: int = 0,
    splits: Sequence[str] = ("query", "gallery"),
    attributes: Sequence[str] | None = None,
    min_changed_pixels: int | None = None,
    progress: Any = None,
) -> list[ControlledTriplet]:
    """Builds up to ``num_triplets`` controlled triplets from a generated synthetic set.

    Anchors are drawn without replacement in a seeded random order from the images of the given
    splits (test identities by default: the model never trained on them; distractors skipped).
    The changed attribute cycles through ``attributes`` (all of :data:`ATTRIBUTE_PARTS` by
    default) so every attribute is about equally represented; for each anchor the attribute of
    the cycle (then the others in random order) and a random new value that pass
    :func:`change_is_visible`, the pixel test and the confinement test (masks equal outside the
    region, renders equal outside its support) are used; an anchor where nothing qualifies is
    skipped.

    Args:
        dataset_dir: a complete synthetic set (``SyntheticReID(...).dataset_dir``).
        num_triplets: how many triplets (fewer when the set runs out of anchors).
        seed: seeds the anchor order, positives and new values.
        splits: splits the anchors come from (``train``, ``query``, ``gallery``).
        attributes: attributes to change (subset of :data:`ATTRIBUTE_PARTS`).
        min_changed_pixels: pixels that must visibly change (default: 0.2% of the image, at
            least 8).
        progress: optional callable ``(iterable, desc) -> iterable`` (e.g. a tqdm wrapper).

    Returns:
        The triplets, in the order they were drawn.

    Raises:
        FileNotFoundError: ``dataset_dir`` is not a complete synthetic set.
        ValueError: an unknown split or attribute, or ``num_triplets < 1``.
    """
    if not is_complete(dataset_dir):
        raise FileNotFoundError(f"{dataset_dir} is not a complete synthetic set (no COMPLETE marker)")
    if num_triplets < 1:
        raise ValueError(f"num_triplets must be positive, got {num_triplets}")
    unknown = set(splits) - set(SPLIT_DIRS)
    if unknown:
        raise ValueError(f"unknown splits {sorted(unknown)}; choose from {list(SPLIT_DIRS)}")
    names = list(attributes) if attributes is not None else list(ATTRIBUTE_PARTS)
    bad = [n for n in names if n not in ATTRIBUTE_PARTS]
    if bad or not names:
        raise ValueError(f"attributes must be a non-empty subset of {list(ATTRIBUTE_PARTS)}, got {names}")
    height, width, supersample = _load_render_settings(dataset_dir)
    if min_changed_pixels is None:
        min_changed_pixels = max(8, int(math.ceil(0.002 * height * width)))
    metadata = load_metadata(dataset_dir)
    by_pid: dict[int, list[str]] = {}
    for rel in sorted(metadata):
        entry = metadata[rel]
        if entry["split"] in splits and entry["pid"] > 0:
            by_pid.setdefault(int(entry["pid"]), []).append(rel)
    anchors = [rel for rels in by_pid.values() if len(rels) > 1 for rel in rels]
    rng = np.random.default_rng(seed)
    order = [anchors[i] for i in rng.permutation(len(anchors))]
    renderer = PersonRenderer(height, width, supersample)
    triplets: list[ControlledTriplet] = []
    iterator = progress(order, "controlled triplets") if progress is not None else order
    for rel in iterator:
        if len(triplets) >= num_triplets:
            break
        entry = metadata[rel]
        positive = _positive_for(rel, entry, by_pid[int(entry["pid"])], metadata, rng)
        attrs, view, camera = render_params(dataset_dir, rel, metadata)
        radius = _support_radius(view)
        target = names[len(triplets) % len(names)]
        fallbacks = [names[i] for i in rng.permutation(len(names)) if names[i] != target]
        made = None
        for name in [target, *fallbacks]:
            made = _try_attribute(renderer, attrs, view, camera, name, rng, min_changed_pixels, radius)
            if made is not None:
                break
        if made is None or positive is None:
            logger.debug("no visible one-attribute change for %s; skipped", rel)
            continue
        name, value, anchor_render, anchor_mask, negative_render, negative_mask = made
        region = _part_region(anchor_mask, name) | _part_region(negative_mask, name)
        triplets.append(ControlledTriplet(
            anchor_path=os.path.join(dataset_dir, *rel.split("/")),
            positive_path=os.path.join(dataset_dir, *positive.split("/")),
            pid=int(entry["pid"]), camid=int(entry["camid"]), viewpoint=view.viewpoint,
            attribute=name, old_value=getattr(attrs, name), new_value=value,
            negative=_jpeg(negative_render, camera.jpeg_quality),
            anchor_render=anchor_render, negative_render=negative_render,
            anchor_mask=anchor_mask, negative_mask=negative_mask, region=region,
            support_radius=radius,
        ))
    if len(triplets) < num_triplets:
        logger.warning("built %d controlled triplets of the %d asked (the splits %s ran out of anchors)",
                       len(triplets), num_triplets, list(splits))
    return triplets


def _try_attribute(renderer: PersonRenderer, attrs: PersonAttributes, view: ViewParams, camera: Any,
                   name: str, rng: np.random.Generator, min_changed_pixels: int, support_radius: int
                   ) -> tuple[str, str, np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """The first random new value of ``name`` whose change visibly shows, with both renders."""
    values = [v for v in ATTRIBUTE_VALUES[name] if v != getattr(attrs, name)]
    anchor_render = anchor_mask = None
    for index in rng.permutation(len(values)):
        value = values[int(index)]
        if not change_is_visible(attrs, name, value, view.viewpoint):
            continue
        if anchor_render is None:
            anchor_render, anchor_mask = renderer.render(attrs, view, camera)
        negative_render, negative_mask = renderer.render(attrs.with_attribute(name, value), view, camera)
        diff = np.abs(anchor_render.astype(np.int16) - negative_render.astype(np.int16)).max(axis=2)
        if int((diff > VISIBLE_DIFFERENCE).sum()) < min_changed_pixels:
            continue
        if _confined(diff > 0, anchor_mask, negative_mask, name, support_radius):
            return name, value, anchor_render, anchor_mask, negative_render, negative_mask
    return None


def _confined(changed: np.ndarray, anchor_mask: np.ndarray, negative_mask: np.ndarray, name: str,
              support_radius: int) -> bool:
    """Whether a change stays on its part: masks equal outside the region, pixels outside the support.

    Fails where an occluder's geometry follows the person's outline (a pole, box or wall placed
    from the figure's bounding box moves when a bag widens it) or where a semi-transparent
    occluder (another person) lets a changed part show through pixels labelled background.
    """
    region = _part_region(anchor_mask, name) | _part_region(negative_mask, name)
    if not np.array_equal(anchor_mask[~region], negative_mask[~region]):
        return False
    return not bool((changed & ~_grow(region, support_radius)).any())


def _grow(region: np.ndarray, radius: int) -> np.ndarray:
    """``region`` dilated by a ``(2 radius + 1)`` square."""
    size = 2 * radius + 1
    return cv2.dilate(region.astype(np.uint8), np.ones((size, size), np.uint8)).astype(bool)
