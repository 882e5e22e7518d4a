"""PASCAL-5i one-shot semantic segmentation episodes (a plain class, not a torchreid dataset).

Reference:
    Shaban et al. One-Shot Learning for Semantic Segmentation. BMVC 2017.

PASCAL-5i is PASCAL VOC 2012 with the SBD annotations (Hariharan et al., ICCV 2011) added, its 20
classes cut into 4 folds of 5: fold ``i`` (0-3) tests on classes ``5i+1 .. 5i+5`` and trains on
the other 15. Layout (the usual one for VOC with the augmented masks)::

    <root>/VOCdevkit/VOC2012/
        JPEGImages/2007_000032.jpg ...
        SegmentationClassAug/2007_000032.png ...   palette or grey PNG: pixel value = class
                                                    (1-20), 0 background, 255 ignore
        ImageSets/Segmentation/val.txt              one image id per line (1,449 ids)
        ImageSets/Segmentation/train.txt            (1,464 ids)
        ImageSets/Segmentation/trainaug.txt         optional: VOC train + SBD (10,582 ids)

``split="val"`` reads ``val.txt``; ``split="train"`` reads ``trainaug.txt`` when it exists, else
``train.txt``, and leaves out any id that ``val.txt`` also lists (some circulated augmented lists
contain validation images). The classes of a split: the fold's 5 test classes for ``val``, its 15
training classes for ``train``.

Building a :class:`Pascal5i` reads every mask of the split once to index which classes each image
contains; an episode (:meth:`Pascal5i.episode`) picks a class, a query image and a different
support image containing it, deterministically from ``(index, seed)``, and returns the binary
masks of that class (the ignore pixels, value 255, are returned separately). An N-way K-shot
episode (:meth:`Pascal5i.few_shot_episode`) draws N classes that appear together in a query image
and K support images of each.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from PIL import Image

from .base import ImageReadError
from .validation import DatasetError, require_paths

logger = logging.getLogger(__name__)

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)
"""Class names; class id ``k`` (1-20) is ``VOC_CLASSES[k - 1]``."""

NUM_FOLDS = 4
CLASSES_PER_FOLD = 5
BACKGROUND = 0
IGNORE_LABEL = 255
SPLITS = ("train", "val")
MASK_MODES = ("P", "L", "I", "I;16")
"""PIL modes of label masks (palette or grey: the pixel value is the class)."""

EXPECTED_TREE = """\
  <root>/VOCdevkit/VOC2012/
      JPEGImages/2007_000032.jpg ...
      SegmentationClassAug/2007_000032.png ...   (palette or grey PNG, value = class 1-20,
                                                  0 background, 255 ignore)
      ImageSets/Segmentation/val.txt
      ImageSets/Segmentation/train.txt            (or trainaug.txt, used when present)"""

NAME = "PASCAL-5i"


def check_fold(fold: int) -> int:
    """``fold`` if it is an integer in 0..3.

    Raises:
        ValueError: anything else (the message gives the allowed folds).
    """
    if isinstance(fold, bool) or not isinstance(fold, (int, np.integer)) or not 0 <= fold < NUM_FOLDS:
        raise ValueError(f"PASCAL-5i fold must be an integer in 0..{NUM_FOLDS - 1}, got {fold!r}")
    return int(fold)


def fold_classes(fold: int) -> tuple[int, ...]:
    """The test class ids of ``fold``: ``5*fold+1 .. 5*fold+5``."""
    first = CLASSES_PER_FOLD * check_fold(fold) + 1
    return tuple(range(first, first + CLASSES_PER_FOLD))


def train_classes(fold: int) -> tuple[int, ...]:
    """The 15 training class ids of ``fold`` (every class but its test classes)."""
    test = set(fold_classes(fold))
    return tuple(c for c in range(1, len(VOC_CLASSES) + 1) if c not in test)


def read_label_mask(path: str) -> np.ndarray:
    """The ``(H, W)`` uint8 class map of a palette or grey PNG (values 0-20 and 255).

    Raises:
        DatasetError: the file does not exist, is an RGB (colour-coded) mask, or holds a value
            that is not a class (0-20) nor 255; the message names the file.
        ImageReadError: the file cannot be decoded.
    """
    if not os.path.isfile(path):
        raise DatasetError(f"{NAME}: mask file not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            array = np.asarray(img)
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"cannot read mask {path}: {exc}") from exc
    if mode not in MASK_MODES or array.ndim != 2:
        raise DatasetError(
            f"{NAME}: {path}: mask of PIL mode {mode!r}; expected a palette or grey PNG whose pixel "
            "value is the class (colour-coded RGB masks are not supported)"
        )
    values = np.unique(array)
    bad = [int(v) for v in values if not (0 <= v <= len(VOC_CLASSES) or v == IGNORE_LABEL)]
    if bad:
        raise DatasetError(
            f"{NAME}: {path}: pixel values {bad[:5]} are neither a class (0-{len(VOC_CLASSES)}) "
            f"nor {IGNORE_LABEL} (ignore)"
        )
    return array.astype(np.uint8)


def image_size(path: str) -> tuple[int, int]:
    """``(width, height)`` of an image, from its header.

    Raises:
        DatasetError: the file does not exist.
        ImageReadError: it is not an image.
    """
    if not os.path.isfile(path):
        raise DatasetError(f"{NAME}: image file not found: {path}")
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"cannot read image {path}: {exc}") from exc


class Episode(NamedTuple):
    """One one-shot pair of the same class.

    ``episode[:5]`` is ``(support_image, support_mask, query_image, query_mask, class_id)``
    (``support_path`` and ``query_path`` are aliases of the two image paths).
    Masks are ``(H, W)`` bool arrays: ``*_mask`` the pixels of ``class_id``, ``*_ignore`` the
    pixels labelled 255 (object borders and difficult regions; neither object nor background).
    """

    support_image: str
    support_mask: np.ndarray
    query_image: str
    query_mask: np.ndarray
    class_id: int
    support_ignore: np.ndarray
    query_ignore: np.ndarray

    @property
    def class_name(self) -> str:
        return VOC_CLASSES[self.class_id - 1]

    @property
    def support_path(self) -> str:
        """Same as ``support_image``."""
        return self.support_image

    @property
    def query_path(self) -> str:
        """Same as ``query_image``."""
        return self.query_image


@dataclass(frozen=True)
class FewShotEpisode:
    """An N-way K-shot episode: one query image holding every class of the episode, and ``K``
    support images per class (none of them the query).

    Attributes:
        query_image: the query's path.
        class_ids: the episode's classes, in the order drawn.
        query_masks: per class (same order), the ``(H, W)`` bool mask of its pixels in the query.
        query_ignore: the query's pixels labelled 255.
        supports: per class, ``K`` ``(path, mask)`` pairs (the mask of that class in the support).
    """

    query_image: str
    class_ids: tuple[int, ...]
    query_masks: tuple[np.ndarray, ...]
    query_ignore: np.ndarray
    supports: tuple[tuple[tuple[str, np.ndarray], ...], ...]

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(VOC_CLASSES[c - 1] for c in self.class_ids)


class Pascal5i:
    """The images of one PASCAL-5i fold and split, indexed by class, and one-shot episodes.

    Args:
        root: folder holding ``VOCdevkit/`` (see the module docstring).
        fold: 0-3; the fold's test classes are ``5*fold+1 .. 5*fold+5``.
        split: ``val`` (test episodes on the fold's 5 test classes) or ``train`` (its 15 training
            classes; ``trainaug.txt`` when present, else ``train.txt``, without the ``val.txt`` ids).
        min_pixels: an image is listed for a class when at least this many pixels have it.

    Attributes:
        classes: the class ids of the split (test classes for ``val``), increasing.
        image_ids: the ids of the split list, in order.
        images_by_class: class id -> ids of the images that contain it, in list order.
        list_file: the split list that was read.

    Raises:
        ValueError: a bad fold, split or ``min_pixels``.
        DatasetError: a missing folder, list file, image or mask (named), a malformed list line
            (file and line), a mask whose size differs from its image's or that holds values
            other than classes and 255, a split list without images.
        ImageReadError: an image or mask that cannot be decoded.
    """

    def __init__(self, root: str, fold: int, split: str = "val", min_pixels: int = 1) -> None:
        self.fold = check_fold(fold)
        if split not in SPLITS:
            raise ValueError(f"PASCAL-5i split must be one of {SPLITS}, got {split!r}")
        if isinstance(min_pixels, bool) or not isinstance(min_pixels, int) or min_pixels < 1:
            raise ValueError(f"min_pixels must be an integer >= 1, got {min_pixels!r}")
        self.split = split
        self.min_pixels = min_pixels
        self.root = os.path.abspath(os.path.expanduser(root))
        self.voc_dir = os.path.join(self.root, "VOCdevkit", "VOC2012")
        self.image_dir = os.path.join(self.voc_dir, "JPEGImages")
        self.mask_dir = os.path.join(self.voc_dir, "SegmentationClassAug")
        lists_dir = os.path.join(self.voc_dir, "ImageSets", "Segmentation")
        require_paths([self.voc_dir, self.image_dir, self.mask_dir, lists_dir], NAME, EXPECTED_TREE)
        self.test_classes = fold_classes(self.fold)
        self.classes = self.test_classes if split == "val" else train_classes(self.fold)
        self.list_file, self.image_ids = self._split_list(lists_dir)
        self.images_by_class = self._index()
        self._groups: dict[tuple[int, int], list[tuple[tuple[int, ...], list[str]]]] = {}
        logger.info(
            "%s fold %d %s: %d images from %s; images per class: %s", NAME, self.fold, split,
            len(self.image_ids), self.list_file,
            ", ".join(f"{VOC_CLASSES[c - 1]} {len(ids)}" for c, ids in self.images_by_class.items()),
        )

    # ---------------------------------------------------------------------------- reading

    def image_path(self, image_id: str) -> str:
        """``JPEGImages/<id>.jpg``."""
        return os.path.join(self.image_dir, f"{image_id}.jpg")

    def mask_path(self, image_id: str) -> str:
        """``SegmentationClassAug/<id>.png``."""
        return os.path.join(self.mask_dir, f"{image_id}.png")

    def _split_list(self, lists_dir: str) -> tuple[str, list[str]]:
        val_file = os.path.join(lists_dir, "val.txt")
        if self.split == "val":
            require_paths([val_file], NAME, EXPECTED_TREE)
            return val_file, self._read_list(val_file)
        aug = os.path.join(lists_dir, "trainaug.txt")
        list_file = aug if os.path.isfile(aug) else os.path.join(lists_dir, "train.txt")
        require_paths([list_file], NAME, EXPECTED_TREE)
        ids = self._read_list(list_file)
        if os.path.isfile(val_file):
            val = set(self._read_list(val_file, allow_empty=True))
            kept = [i for i in ids if i not in val]
            if len(kept) < len(ids):
                logger.warning("%s: left out %d id(s) of %s that val.txt also lists",
                               NAME, len(ids) - len(kept), list_file)
            ids = kept
        if not ids:
            raise DatasetError(f"{NAME}: {list_file} has no image outside val.txt")
        return list_file, ids

    @staticmethod
    def _read_list(path: str, allow_empty: bool = False) -> list[str]:
        """Image ids, one per line (blank lines skipped; an id listed twice is kept once)."""
        try:
            with open(path, encoding="utf-8") as fh:
                lines = fh.read().splitlines()
        except UnicodeDecodeError as exc:
            raise DatasetError(f"{NAME}: {path} is not a UTF-8 text file: {exc}") from exc
        ids: list[str] = []
        seen: set[str] = set()
        for lineno, line in enumerate(lines, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 1:
                raise DatasetError(
                    f"{NAME}: {path}:{lineno}: expected one image id per line, got {len(fields)} "
                    f"fields: {line.strip()!r}"
                )
            if fields[0] not in seen:
                seen.add(fields[0])
                ids.append(fields[0])
        if not ids and not allow_empty:
            raise DatasetError(f"{NAME}: {path} lists no image")
        return ids

    def _index(self) -> dict[int, list[str]]:
        """Reads every mask of the list (checking its image's size) and lists the images per class."""
        by_class: dict[int, list[str]] = {c: [] for c in self.classes}
        for image_id in self.image_ids:
            mask = self.load_mask(image_id)
            counts = np.bincount(mask.ravel(), minlength=IGNORE_LABEL + 1)
            for c in self.classes:
                if counts[c] >= self.min_pixels:
                    by_class[c].append(image_id)
        return by_class

    def load_mask(self, image_id: str) -> np.ndarray:
        """The ``(H, W)`` uint8 class map of an image of the split, checked against its image.

        Raises:
            DatasetError: the image or the mask is missing, the sizes differ, a bad pixel value.
        """
        img_path, mask_path = self.image_path(image_id), self.mask_path(image_id)
        size = image_size(img_path)
        mask = read_label_mask(mask_path)
        if (mask.shape[1], mask.shape[0]) != size:
            raise DatasetError(
                f"{NAME}: mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but its image "
                f"{img_path} is {size[0]}x{size[1]} (width x height)"
            )
        return mask

    def images_of(self, class_id: int) -> list[str]:
        """Paths of the images of the split that contain ``class_id``.

        Raises:
            KeyError: ``class_id`` is not a class of this split (the message lists them).
        """
        if class_id not in self.images_by_class:
            raise KeyError(
                f"class {class_id} is not a class of fold {self.fold} {self.split}: {list(self.classes)}"
            )
        return [self.image_path(i) for i in self.images_by_class[class_id]]

    # ---------------------------------------------------------------------------- episodes

    def episode_classes(self) -> tuple[int, ...]:
        """The classes with at least two images (a support and a different query)."""
        return tuple(c for c in self.classes if len(self.images_by_class[c]) >= 2)

    def episode(self, index: int, seed: int = 0) -> Episode:
        """The one-shot episode ``index`` of the stream ``seed``.

        A class is drawn uniformly among :meth:`episode_classes`, then a query image and a
        different support image among the images containing it, from a generator seeded with
        ``(seed, index)``: the same arguments on the same data always give the same episode,
        whatever was drawn before.

        Raises:
            ValueError: a negative ``index`` or ``seed``.
            DatasetError: no class of the split has two images.
        """
        for what, value in (("index", index), ("seed", seed)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"episode {what} must be an integer >= 0, got {value!r}")
        classes = self.episode_classes()
        if not classes:
            raise DatasetError(
                f"{NAME}: no class of fold {self.fold} ({self.split}, classes {list(self.classes)}) has "
                f"two images in {self.list_file}; an episode needs a support and a query image"
            )
        rng = np.random.default_rng([int(seed), int(index)])
        class_id = classes[int(rng.integers(len(classes)))]
        ids = self.images_by_class[class_id]
        query_pos = int(rng.integers(len(ids)))
        support_pos = int(rng.integers(len(ids) - 1))
        if support_pos >= query_pos:
            support_pos += 1
        support_id, query_id = ids[support_pos], ids[query_pos]
        support, query = self.load_mask(support_id), self.load_mask(query_id)
        return Episode(
            support_image=self.image_path(support_id),
            support_mask=support == class_id,
            query_image=self.image_path(query_id),
            query_mask=query == class_id,
            class_id=class_id,
            support_ignore=support == IGNORE_LABEL,
            query_ignore=query == IGNORE_LABEL,
        )

    def class_groups(self, ways: int, shots: int) -> list[tuple[tuple[int, ...], list[str]]]:
        """The sets of ``ways`` classes that an episode can draw, each with the ids of the images
        holding all of them (query candidates): a query candidate needs ``shots`` other images of
        each class for the supports."""
        from itertools import combinations

        key = (ways, shots)
        if key not in self._groups:
            members = {c: set(self.images_by_class[c]) for c in self.classes}
            groups = []
            for classes in combinations(self.classes, ways):
                # a query holds every class; each class then needs `shots` images besides the query
                common = [i for i in self.images_by_class[classes[0]] if all(i in members[c] for c in classes[1:])]
                if common and all(len(members[c]) - 1 >= shots for c in classes):
                    groups.append((classes, common))
            self._groups[key] = groups
        return self._groups[key]

    def few_shot_episode(self, index: int, seed: int = 0, ways: int = 2, shots: int = 1) -> FewShotEpisode:
        """The ``ways``-way ``shots``-shot episode ``index`` of the stream ``seed``.

        A set of ``ways`` classes is drawn uniformly among those that some image holds together
        (:meth:`class_groups`), then a query image among those images, then for each class
        ``shots`` distinct support images holding it (never the query; they may hold other
        classes too), from a generator seeded with ``(seed, index, ways, shots)``: deterministic per
        fold, split and seed, whatever was drawn before. ``ways=1`` draws as :meth:`episode`'s
        protocol does, with ``shots`` supports.

        Raises:
            ValueError: a negative ``index`` or ``seed``, ``ways`` not in 1..5 or ``shots`` < 1.
            DatasetError: no set of ``ways`` classes of the split appears together in an image with
                ``shots`` other images of each.
        """
        for what, value in (("index", index), ("seed", seed)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"episode {what} must be an integer >= 0, got {value!r}")
        if not 1 <= ways <= CLASSES_PER_FOLD or shots < 1:
            raise ValueError(f"need 1 <= ways <= {CLASSES_PER_FOLD} and shots >= 1, got ways {ways}, shots {shots}")
        groups = self.class_groups(ways, shots)
        if not groups:
            raise DatasetError(
                f"{NAME}: no {ways} classes of fold {self.fold} ({self.split}) appear together in an image with "
                f"{shots} other image(s) of each in {self.list_file}; a {ways}-way {shots}-shot episode needs them"
            )
        rng = np.random.default_rng([int(seed), int(index), int(ways), int(shots)])
        classes, candidates = groups[int(rng.integers(len(groups)))]
        query_id = candidates[int(rng.integers(len(candidates)))]
        query = self.load_mask(query_id)
        supports = []
        for class_id in classes:
            others = [i for i in self.images_by_class[class_id] if i != query_id]
            chosen = rng.choice(len(others), size=shots, replace=False)
            supports.append(tuple(
                (self.image_path(others[k]), self.load_mask(others[k]) == class_id) for k in sorted(chosen)
            ))
        return FewShotEpisode(
            query_image=self.image_path(query_id), class_ids=tuple(classes),
            query_masks=tuple(query == c for c in classes), query_ignore=query == IGNORE_LABEL,
            supports=tuple(supports),
        )

    def episodes(self, n: int, seed: int = 0) -> list[Episode]:
        """Episodes ``0..n-1`` of the stream ``seed`` (the usual test protocol draws 1,000)."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"the number of episodes must be an integer >= 0, got {n!r}")
        return [self.episode(i, seed) for i in range(int(n))]
