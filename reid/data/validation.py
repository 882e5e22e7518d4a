"""Checks shared by the real datasets, run before any training starts, and their statistics.

Every problem a user can fix names what is wrong: a missing folder (with the expected tree), a
file name that does not parse (with the expected pattern), a camera id outside the dataset's
range, an unreadable image (see :func:`reid.data.images.check_images`). Counts that differ from the
published ones are only a warning, since subsets are a legitimate use.

Split items are torchreid's ``(img_path, pid, camid)`` tuples (``camid`` 0-based); a fourth
element (``dsetid``) is carried along where present.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from .images import check_images

logger = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "query", "gallery")
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp")


class DatasetError(ValueError):
    """A dataset on disk does not have the expected layout; the message says what to fix."""


@dataclass(frozen=True)
class NamePattern:
    """How a dataset names its image files.

    Attributes:
        regex: full-match pattern with named groups ``pid`` and ``cam`` (camera, 1-based).
        description: the pattern for people, e.g. ``<pid>_c<camera>_f<frame>.jpg``.
        example: a valid name, e.g. ``0001_c2_f0046182.jpg``.
    """

    regex: re.Pattern
    description: str
    example: str


@dataclass(frozen=True)
class PublishedCounts:
    """Published size of one split."""

    identities: int
    images: int


@dataclass(frozen=True)
class SplitStats:
    """Measured size of one split."""

    split: str
    identities: int
    images: int
    cameras: int


def require_paths(paths: Iterable[str], dataset_name: str, expected_tree: str) -> None:
    """Fails on the first path that does not exist.

    Raises:
        DatasetError: naming the missing path and showing ``expected_tree``.
    """
    for path in paths:
        if not os.path.exists(path):
            raise DatasetError(
                f"{dataset_name}: not found: {path}\nExpected layout:\n{expected_tree}"
            )


def parse_image_name(path: str, pattern: NamePattern) -> tuple[int, int]:
    """``(pid, camera)`` parsed from the file name of ``path``; ``camera`` is 1-based.

    Raises:
        DatasetError: the name does not match, naming the file and the expected pattern.
    """
    match = pattern.regex.fullmatch(os.path.basename(path))
    if match is None:
        raise DatasetError(
            f"file name does not match the expected pattern {pattern.description} "
            f"(e.g. {pattern.example}): {path}"
        )
    return int(match.group("pid")), int(match.group("cam"))


def scan_split_dir(dir_path: str, pattern: NamePattern) -> list[tuple[str, int, int]]:
    """All images of a split folder as ``(img_path, pid, camid)``, sorted by file name.

    ``camid`` is 0-based. Hidden files, sub-folders and files whose extension is not an image
    extension (e.g. ``Thumbs.db``) are ignored; every image file must match ``pattern``.

    Raises:
        DatasetError: a file name does not parse, or the folder holds no image.
    """
    items, ignored = [], 0
    for name in sorted(os.listdir(dir_path)):
        path = os.path.join(dir_path, name)
        if name.startswith(".") or not name.lower().endswith(IMAGE_EXTENSIONS):
            ignored += 1
            continue
        if not os.path.isfile(path):
            ignored += 1
            continue
        pid, camera = parse_image_name(path, pattern)
        items.append((path, pid, camera - 1))
    if ignored:
        logger.debug("ignored %d non-image entries in %s", ignored, dir_path)
    if not items:
        raise DatasetError(
            f"no images in {dir_path} (expected files named like {pattern.example})"
        )
    return items


def check_camera_ids(items: Sequence[tuple], num_cams: int, dataset_name: str) -> None:
    """Fails on the first item whose 0-based ``camid`` is outside ``[0, num_cams)``.

    Raises:
        DatasetError: naming the file, its camera (1-based, as in file names) and the range.
    """
    for item in items:
        camid = item[2]
        if not 0 <= camid < num_cams:
            raise DatasetError(
                f"{dataset_name}: camera c{camid + 1} is outside c1..c{num_cams}: {item[0]}"
            )


def relabel(items: Sequence[tuple]) -> list[tuple]:
    """Items with pids mapped to ``0..N-1`` in increasing order of the original pid."""
    label = {pid: i for i, pid in enumerate(sorted({item[1] for item in items}))}
    return [(item[0], label[item[1]], *item[2:]) for item in items]


def split_statistics(items: Sequence[tuple], split: str) -> SplitStats:
    """Identities, images and cameras of one split."""
    return SplitStats(
        split=split,
        identities=len({item[1] for item in items}),
        images=len(items),
        cameras=len({item[2] for item in items}),
    )


def dataset_statistics(dataset: object) -> list[SplitStats]:
    """Statistics of a torchreid dataset's ``train``, ``query`` and ``gallery`` lists."""
    return [split_statistics(getattr(dataset, split), split) for split in SPLITS]


def format_statistics(stats: Sequence[SplitStats], title: str = "") -> str:
    """A text table of split statistics (one row per split), with ``title`` above it."""
    header = f"{'split':<8} {'identities':>10} {'images':>8} {'cameras':>8}"
    rows = [f"{s.split:<8} {s.identities:>10d} {s.images:>8d} {s.cameras:>8d}" for s in stats]
    lines = ([title] if title else []) + [header, "-" * len(header)] + rows
    return "\n".join(lines)


def count_mismatches(
    stats: Sequence[SplitStats], published: Mapping[str, PublishedCounts]
) -> list[str]:
    """One sentence per split whose identities or images differ from the published counts."""
    problems = []
    for s in stats:
        ref = published.get(s.split)
        if ref is None:
            continue
        for what, found, expected in (
            ("identities", s.identities, ref.identities),
            ("images", s.images, ref.images),
        ):
            if found != expected:
                problems.append(f"{s.split}: {found} {what}, published {expected}")
    return problems


def splits_in_use(mode: str, combineall: bool) -> tuple[str, ...]:
    """Splits that a torchreid dataset built in ``mode`` serves (all three with combineall)."""
    if mode == "train":
        return SPLITS if combineall else ("train",)
    return (mode,) if mode in SPLITS else ()


def read_split_images(
    dataset_name: str,
    split: str,
    items: Sequence[tuple],
    on_bad_image: str = "error",
    skipped: list[str] | None = None,
) -> list[tuple]:
    """Reads every image of one split (see :func:`reid.data.images.check_images`).

    Returns:
        The items whose image could be read (all of them with ``on_bad_image="error"``).

    Raises:
        reid.data.images.ImageReadError: an unreadable image when ``on_bad_image`` is ``error``.
        DatasetError: every image of the split was unreadable.
    """
    kept = check_images(
        list(items), on_bad_image=on_bad_image, split=f"{dataset_name} {split}", skipped=skipped
    )
    if items and not kept:
        raise DatasetError(f"{dataset_name}: every image of the {split} split is unreadable")
    return kept


def check_split_images(
    dataset_name: str,
    splits: Mapping[str, list[tuple]],
    *,
    on_bad_image: str = "error",
    verify: Iterable[str] = SPLITS,
    skipped: list[str] | None = None,
) -> dict[str, list[tuple]]:
    """Reads every image of the splits in ``verify``; the validation that every dataset gets.

    Used as is for datasets whose lists are already parsed and labelled (torchreid's built-ins,
    see :mod:`reid.data.checked`); :func:`prepare_splits` runs the same reading after its checks
    of names and cameras.

    Args:
        dataset_name: used in messages.
        splits: ``{"train": items, "query": items, "gallery": items}``, train labelled ``0..N-1``.
        on_bad_image: ``error`` or ``skip`` (see :func:`reid.data.images.check_images`).
        verify: the splits whose images are read (the others are returned unchanged).
        skipped: if given, the paths of dropped images are appended to it.

    Returns:
        The splits without unreadable images; train relabelled to ``0..N-1`` when images were
        dropped from it (an identity may have lost its only image).

    Raises:
        reid.data.images.ImageReadError: an unreadable image when ``on_bad_image`` is ``error``.
        DatasetError: every image of a verified split was unreadable.
    """
    verify = set(verify)
    checked = {}
    for split in SPLITS:
        items = list(splits[split])
        if split in verify:
            kept = read_split_images(dataset_name, split, items, on_bad_image, skipped)
            if split == "train" and len(kept) < len(items):
                kept = relabel(kept)
            items = kept
        checked[split] = items
    return checked


def prepare_splits(
    dataset_name: str,
    splits: Mapping[str, list[tuple]],
    *,
    num_cams: int,
    published: Mapping[str, PublishedCounts],
    on_bad_image: str = "error",
    verify: Iterable[str] = SPLITS,
    skipped: list[str] | None = None,
) -> dict[str, list[tuple]]:
    """Validates parsed splits and relabels the training pids to ``0..N-1``.

    Every split: not empty, cameras within range. Splits in ``verify`` also get their counts
    compared with ``published`` (a warning) and every image read (an error or a logged skip);
    images are read only for these, since torchreid builds a dataset once per mode.

    Args:
        dataset_name: used in messages.
        splits: ``{"train": items, "query": items, "gallery": items}``; query and gallery keep
            their original pids.
        num_cams: number of cameras; ``camid`` must be in ``[0, num_cams)``.
        published: published counts per split.
        on_bad_image: ``error`` or ``skip`` (see :func:`reid.data.images.check_images`).
        verify: splits whose counts and images are checked.
        skipped: if given, the paths of dropped images are appended to it.

    Returns:
        The checked splits, train relabelled after any skipped images were dropped.

    Raises:
        DatasetError: an empty split or a camera out of range.
        reid.data.images.ImageReadError: an unreadable image when ``on_bad_image`` is ``error``.
    """
    verify = set(verify)
    checked = {}
    for split in SPLITS:
        items = list(splits[split])
        if not items:
            raise DatasetError(f"{dataset_name}: the {split} split has no images")
        check_camera_ids(items, num_cams, dataset_name)
        if split in verify:
            for problem in count_mismatches([split_statistics(items, split)], published):
                logger.warning("%s: counts differ from the published ones: %s", dataset_name, problem)
            items = read_split_images(dataset_name, split, items, on_bad_image, skipped)
        checked[split] = items
    checked["train"] = relabel(checked["train"])
    return checked


@dataclass(frozen=True)
class DatasetCheck:
    """What :func:`check_dataset` found in one dataset.

    Attributes:
        table: identities, images and cameras per split (:func:`format_statistics`).
        differences: the counts that differ from the published ones.
        skipped: unreadable images dropped with ``on_bad_image="skip"``.
    """

    table: str
    differences: list[str]
    skipped: list[str]


def check_dataset(name: str, registered_name: str, root: str) -> DatasetCheck:
    """Builds the torchreid dataset ``registered_name`` under ``root`` in each mode, as training
    does: every image of every split is read (datasets that do not read them themselves are
    wrapped by :func:`reid.data.base.register_variant`, which made ``registered_name``). Returns
    its statistics table titled ``name``, the counts that differ from the published ones and
    the images that were skipped.

    Raises:
        ValueError, OSError, KeyError, RuntimeError: the dataset cannot be built (our
            ``DatasetError`` is a ``ValueError``, ``ImageReadError`` an ``OSError``).
    """
    from torchreid.reid.data.datasets import init_image_dataset

    # Our datasets are registered with torchreid: importing this module imported its package
    # first, ``reid/data/__init__.py``, which registers them (no import of it here: a circle).
    splits, published, skipped = {}, {}, []
    for mode in SPLITS:
        dataset = init_image_dataset(registered_name, root=root, mode=mode, verbose=False)
        splits[mode] = getattr(dataset, mode)
        published = getattr(dataset, "published", {})
        skipped.extend(getattr(dataset, "skipped_images", ()))
    stats = [split_statistics(splits[split], split) for split in SPLITS]
    return DatasetCheck(
        format_statistics(stats, title=name), count_mismatches(stats, published), skipped
    )
