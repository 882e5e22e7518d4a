"""CUHK03-NP (the new protocol of Zhong et al.), registered with torchreid as
``cuhk03_np_labeled`` and ``cuhk03_np_detected``.

Reference:
    Zhong et al. Re-ranking Person Re-identification with k-reciprocal Encoding. CVPR 2017
    (the 767/700 split); Li et al. DeepReID. CVPR 2014 (the images).

Two releases are read; the folder release is used when both are present, and the log says which:

- the folder release ``<root>/cuhk03-np/{labeled,detected}/{bounding_box_train,query,
  bounding_box_test}/0001_c1_1.png`` (``<pid>_c<camera>_<index>.png``, cameras 1-2);
- the original release that torchreid reads, ``<root>/cuhk03/cuhk03_release/cuhk-03.mat`` with
  ``<root>/cuhk03/cuhk03_new_protocol_config_{labeled,detected}.mat``. torchreid's ``CUHK03``
  extracts the images once (into ``<root>/cuhk03/images_{labeled,detected}``) and writes split
  json files that store absolute paths; we take the splits from it and rebase every path on the
  current root, so a moved data root keeps working.

Published counts: 767 training and 700 test identities; labeled 7368/1400/5328 and detected
7365/1400/5332 train/query/gallery images.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
from typing import Any

from torchreid.reid.data.datasets.image.cuhk03 import CUHK03

from .base import SafeImageDataset, register_once
from .validation import (
    DatasetError,
    NamePattern,
    PublishedCounts,
    dataset_statistics,
    format_statistics,
    prepare_splits,
    require_paths,
    scan_split_dir,
    splits_in_use,
)

logger = logging.getLogger(__name__)

EXPECTED_TREE = """\
  either the folder release:
  <root>/cuhk03-np/labeled/                  (and detected/, same layout)
      bounding_box_train/0001_c1_1.png ...
      query/...
      bounding_box_test/...
  or the original release:
  <root>/cuhk03/cuhk03_release/cuhk-03.mat
  <root>/cuhk03/cuhk03_new_protocol_config_labeled.mat
  <root>/cuhk03/cuhk03_new_protocol_config_detected.mat"""

NAME_PATTERN = NamePattern(
    regex=re.compile(r"(?P<pid>\d+)_c(?P<cam>\d+)_(?P<index>\d+)\.png"),
    description="<pid>_c<camera>_<index>.png",
    example="0001_c1_1.png",
)
SPLIT_DIRS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
TRAIN_IDS, TEST_IDS = 767, 700
PUBLISHED_IMAGES = {
    "labeled": {"train": 7368, "query": 1400, "gallery": 5328},
    "detected": {"train": 7365, "query": 1400, "gallery": 5332},
}


def published_counts(image_type: str) -> dict[str, PublishedCounts]:
    """Published identities and images per split for ``labeled`` or ``detected`` boxes."""
    images = PUBLISHED_IMAGES[image_type]
    return {
        split: PublishedCounts(TRAIN_IDS if split == "train" else TEST_IDS, images[split])
        for split in ("train", "query", "gallery")
    }


def folder_release_splits(root: str, image_type: str) -> dict[str, list[tuple[str, int, int]]]:
    """Splits parsed from ``<root>/cuhk03-np/<image_type>``; original pids, 0-based camids.

    Raises:
        DatasetError: a missing split folder, a file name that does not parse, an empty folder.
    """
    base = os.path.join(root, "cuhk03-np", image_type)
    dirs = {split: os.path.join(base, d) for split, d in SPLIT_DIRS.items()}
    require_paths(dirs.values(), f"CUHK03-NP ({image_type})", EXPECTED_TREE)
    return {split: scan_split_dir(path, NAME_PATTERN) for split, path in dirs.items()}


def mat_release_splits(root: str, image_type: str) -> dict[str, list[tuple[str, int, int]]]:
    """Splits of the new protocol from the original ``.mat`` release, paths under ``root``.

    torchreid's ``CUHK03`` extracts the images and the splits (first call only); its json
    files hold absolute paths, possibly of a former location of the root, so each path is
    rebased on ``<root>/cuhk03/images_<image_type>``. Train pids are already relabelled.

    Raises:
        DatasetError: a missing file, or a ``.mat`` file that cannot be read.
    """
    base = os.path.join(root, "cuhk03")
    required = [
        os.path.join(base, "cuhk03_release", "cuhk-03.mat"),
        os.path.join(base, "cuhk03_new_protocol_config_labeled.mat"),
        os.path.join(base, "cuhk03_new_protocol_config_detected.mat"),
    ]
    require_paths(required, f"CUHK03-NP ({image_type})", EXPECTED_TREE)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):  # torchreid prints its progress
            original = CUHK03(
                root=root,
                cuhk03_labeled=image_type == "labeled",
                cuhk03_classic_split=False,
                verbose=False,
            )
    except (OSError, KeyError, IndexError, TypeError, ValueError, AssertionError) as exc:
        raise DatasetError(f"cannot read the CUHK03 release under {base}: {exc!r}") from exc
    finally:
        for line in out.getvalue().splitlines():
            logger.info("torchreid: %s", line)
    images_dir = os.path.join(base, f"images_{image_type}")
    return {
        split: [
            (os.path.join(images_dir, os.path.basename(item[0])), item[1], item[2])
            for item in getattr(original, split)
        ]
        for split in ("train", "query", "gallery")
    }


class CUHK03NP(SafeImageDataset):
    """CUHK03-NP from whichever release is present under ``root``.

    Train pids are relabelled to ``0..N-1``; query and gallery keep their original pids.
    ``camid`` is 0-based (the two views of a camera pair). Every image of the splits that
    ``mode`` serves (all three with ``combineall``) is read at construction; torchreid builds a
    dataset once per mode, so each split is read once before training.

    Args:
        root: data root (see the module docstring for the layouts).
        image_type: ``labeled`` (hand-drawn boxes) or ``detected`` (DPM boxes); the registered
            subclasses fix it, and torchreid's ``cuhk03_labeled`` argument is ignored.
        on_bad_image: ``error`` or ``skip`` an unreadable image.
        **kwargs: torchreid's dataset arguments (``transform``, ``mode``, ``combineall``,
            ``verbose``, ...).

    Raises:
        DatasetError: neither release, missing folder or file, bad file name, camera out of
            range, empty split.
        reid.data.base.ImageReadError: an unreadable image with ``on_bad_image="error"``.
    """

    num_cams = 2
    checks_images = True

    def __init__(
        self,
        root: str = "",
        image_type: str = "labeled",
        on_bad_image: str = "error",
        **kwargs: Any,
    ) -> None:
        if image_type not in PUBLISHED_IMAGES:
            raise ValueError(f"image_type must be 'labeled' or 'detected', got {image_type!r}")
        kwargs.pop("cuhk03_labeled", None)
        self.root = os.path.abspath(os.path.expanduser(root))
        self.image_type = image_type
        self.name = f"CUHK03-NP ({image_type})"
        self.published = published_counts(image_type)
        splits = self._read_release()
        verify = splits_in_use(kwargs.get("mode", "train"), kwargs.get("combineall", False))
        self.skipped_images: list[str] = []
        splits = prepare_splits(
            self.name,
            splits,
            num_cams=self.num_cams,
            published=self.published,
            on_bad_image=on_bad_image,
            verify=verify,
            skipped=self.skipped_images,
        )
        super().__init__(splits["train"], splits["query"], splits["gallery"], **kwargs)

    def _read_release(self) -> dict[str, list[tuple[str, int, int]]]:
        """Splits of the folder release if present, else of the ``.mat`` release."""
        folder = os.path.join(self.root, "cuhk03-np", self.image_type)
        original = os.path.join(self.root, "cuhk03")
        if os.path.isdir(folder):
            logger.info("%s: using the folder release at %s", self.name, folder)
            return folder_release_splits(self.root, self.image_type)
        if os.path.isdir(original):
            logger.info("%s: using the original .mat release at %s", self.name, original)
            return mat_release_splits(self.root, self.image_type)
        raise DatasetError(
            f"{self.name}: not found: neither {folder} nor {original} exists\n"
            f"Expected layout:\n{EXPECTED_TREE}"
        )

    def show_summary(self) -> None:
        """Logs the statistics table (torchreid prints it)."""
        logger.info("%s", format_statistics(dataset_statistics(self), title=f"=> {self.name}"))


class CUHK03NPLabeled(CUHK03NP):
    """CUHK03-NP with the hand-labelled boxes (``cuhk03_np_labeled``)."""

    def __init__(self, root: str = "", **kwargs: Any) -> None:
        super().__init__(root=root, image_type="labeled", **kwargs)


class CUHK03NPDetected(CUHK03NP):
    """CUHK03-NP with the detected boxes (``cuhk03_np_detected``)."""

    def __init__(self, root: str = "", **kwargs: Any) -> None:
        super().__init__(root=root, image_type="detected", **kwargs)


register_once("cuhk03_np_labeled", CUHK03NPLabeled)
register_once("cuhk03_np_detected", CUHK03NPDetected)
