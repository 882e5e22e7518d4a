"""A dataset folder of your own, registered with torchreid as ``folder``.

Two layouts (``layout``):

``market1501``: the folder holds Market-1501's three split folders, with its file names::

    <folder>/
        bounding_box_train/0002_c1s1_000451_03.jpg ...    train
        query/0010_c1s1_001051_00.jpg ...                 query
        bounding_box_test/0010_c2s1_001101_02.jpg ...     gallery

    <identity>_c<camera>s<sequence>_<frame>_<box>.jpg (.jpeg, .png, .bmp too); identity -1 is
    junk (ignored, as Market-1501 does), identity 0 a distractor (kept in the gallery, left out
    by ``combineall``); cameras c1, c2, ... become camids 0, 1, ...

``lists``: three plain text files in the folder (``train_list``, ``query_list``,
``gallery_list``), one image per line::

    # path identity camera
    alice/cam0/0001.jpg 7 0
    bob/cam1/0001.jpg 12 1

    the path relative to the folder (or absolute; it may hold spaces: the last two fields are
    the identity and the camera), the identity an integer (-1: junk, ignored), the camera an
    integer >= 0 (0-based, as torchreid counts; only which images share a camera matters).
    Lines starting with ``#`` and blank lines are ignored.

Either way the training identities are relabelled ``0..N-1`` (query and gallery keep theirs), and
the splits go through the validation every dataset gets (:func:`reid.data.validation.prepare_splits`:
no empty split, every image of the splits in use read with ``on_bad_image``). A problem is one
line naming the file (and, for list files, the line number). A query identity that has no image
in the gallery is allowed (the evaluation skips such queries) and logged; a query split none of
whose identities is in the gallery is an error, since nothing could be evaluated.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any, Mapping, Sequence

from .base import SafeImageDataset, register_once
from .validation import (
    SPLITS,
    DatasetError,
    NamePattern,
    dataset_statistics,
    format_statistics,
    prepare_splits,
    scan_split_dir,
    splits_in_use,
)

logger = logging.getLogger(__name__)

# How the folder is organised (DATA.FOLDER.LAYOUT).
FOLDER_LAYOUTS: tuple[str, ...] = ("market1501", "lists")
# The list files of the ``lists`` layout, by split, when none are given.
DEFAULT_LISTS: dict[str, str] = {"train": "train.txt", "query": "query.txt", "gallery": "gallery.txt"}
# The split folders of the ``market1501`` layout.
MARKET_DIRS: dict[str, str] = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
MARKET_PATTERN = NamePattern(
    regex=re.compile(r"(?P<pid>-1|\d+)_c(?P<cam>\d+)s\d+_\d+_\d+\.(?:jpe?g|png|bmp)", re.IGNORECASE),
    description="<identity>_c<camera>s<sequence>_<frame>_<box>.jpg",
    example="0002_c1s1_000451_03.jpg",
)
# Identity of the images every layout ignores (Market-1501's junk boxes).
JUNK_PID = -1


def resolve_folder(root: str, folder: str) -> str:
    """The dataset folder: ``folder`` as it is when absolute, else relative to the data ``root``
    (``~`` expanded in both)."""
    return os.path.abspath(os.path.join(os.path.expanduser(root or ""), os.path.expanduser(folder)))


def _integer(token: str, what: str, where: str) -> int:
    try:
        return int(token)
    except ValueError:
        raise DatasetError(f"{where}: {what} {token!r} is not an integer") from None


def read_list_file(
    list_path: str, folder: str, on_bad_image: str = "error"
) -> tuple[list[tuple[str, int, int]], list[int]]:
    """The images a list file names, as ``(img_path, pid, camid)``, and the line of each.

    Each line is ``path identity camera``: ``path`` relative to ``folder`` (or absolute; it may hold
    spaces), ``identity`` an integer >= -1, ``camera`` an integer >= 0. Lines starting with ``#``
    and blank lines are skipped; so are images of identity -1 (junk). An image file that does not
    exist is an error with ``on_bad_image="error"``; with ``skip`` it is kept, for the image check
    (:func:`reid.data.base.check_images`) to drop and report like any unreadable image.

    Raises:
        DatasetError: one line naming the file (and the line): the file is missing or not UTF-8
            text, a line does not have three fields, an identity or a camera is not an integer or
            out of range, an image is missing.
    """
    if not os.path.isfile(list_path):
        raise DatasetError(f"folder: list file not found: {list_path}")
    try:
        with open(list_path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{list_path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    items, numbers = [], []
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{list_path}:{number}"
        fields = line.rsplit(None, 2)
        if len(fields) != 3:
            raise DatasetError(f"{where}: expected 'path identity camera', got {line!r}")
        path, pid_text, cam_text = fields
        pid = _integer(pid_text, "identity", where)
        camid = _integer(cam_text, "camera", where)
        if pid < JUNK_PID:
            raise DatasetError(f"{where}: identity {pid} must be >= 0 (or -1: junk, ignored)")
        if camid < 0:
            raise DatasetError(f"{where}: camera {camid} must be >= 0 (cameras are 0-based)")
        if pid == JUNK_PID:
            continue
        img_path = os.path.normpath(os.path.join(folder, os.path.expanduser(path)))
        if on_bad_image == "error" and not os.path.isfile(img_path):
            raise DatasetError(f"{where}: image not found: {img_path}")
        items.append((img_path, pid, camid))
        numbers.append(number)
    return items, numbers


def _market_split(split_dir: str) -> list[tuple[str, int, int]]:
    """The images of one Market-1501 split folder, junk (-1) left out, camids 0-based."""
    items = []
    for img_path, pid, camid in scan_split_dir(split_dir, MARKET_PATTERN):
        if camid < 0:
            raise DatasetError(f"camera c0 in {img_path}: cameras are numbered from c1")
        if pid != JUNK_PID:
            items.append((img_path, pid, camid))
    return items


def check_query_identities(
    query: Sequence[tuple], gallery: Sequence[tuple], query_source: str, gallery_source: str,
    origins: Mapping[str, str] | None = None,
) -> None:
    """Logs the query identities that have no image in the gallery (the evaluation skips those
    queries).

    Args:
        query, gallery: the split items.
        query_source, gallery_source: where each split comes from (a list file, a folder).
        origins: image path -> where it is listed (``file:line``), for the log.

    Raises:
        DatasetError: no query identity at all is in the gallery (nothing could be evaluated).
    """
    in_gallery = {item[1] for item in gallery}
    absent = [i for i, item in enumerate(query) if item[1] not in in_gallery]
    if not absent:
        return
    identities = sorted({query[i][1] for i in absent})
    if len(absent) == len(query):
        raise DatasetError(
            f"{query_source}: none of its {len(identities)} query identities has an image in the gallery "
            f"({gallery_source}): nothing to evaluate"
        )
    first = absent[0]
    where = (origins or {}).get(query[first][0], query[first][0])
    logger.warning(
        "folder: %d query identit%s with no image in the gallery (%s), e.g. identity %d (%s); the "
        "evaluation skips their %d quer%s",
        len(identities), "y" if len(identities) == 1 else "ies", gallery_source, query[first][1], where,
        len(absent), "y" if len(absent) == 1 else "ies",
    )


class FolderReID(SafeImageDataset):
    """A dataset folder of the user's, in the Market-1501 layout or described by list files (see the
    module docstring).

    Train pids are relabelled to ``0..N-1``; query and gallery keep their pids; ``camid`` is
    0-based. Every image of the splits that ``mode`` serves (all three with ``combineall``) is read
    at construction, as for every dataset.

    Args:
        root: data root (``DATA.ROOT``); a relative ``folder`` is resolved against it.
        folder: the dataset folder (``DATA.FOLDER.ROOT``), absolute or relative to ``root``.
        layout: ``market1501`` or ``lists``.
        train_list, query_list, gallery_list: the list files of the ``lists`` layout, relative to
            the folder (or absolute).
        on_bad_image: ``error`` or ``skip`` an unreadable (or, for a list, missing) image.
        **kwargs: torchreid's dataset arguments (``transform``, ``mode``, ``combineall``,
            ``verbose``, ...); the CUHK03 and Market options it passes to every dataset are ignored.

    Raises:
        DatasetError: no folder given or not found, an unknown layout, a missing split folder or
            list file, a bad file name or list line, an empty split, no query identity in the
            gallery.
        reid.data.base.ImageReadError: an unreadable image with ``on_bad_image="error"``.
    """

    name = "folder"
    checks_images = True

    def __init__(
        self,
        root: str = "",
        folder: str = "",
        layout: str = "market1501",
        train_list: str = DEFAULT_LISTS["train"],
        query_list: str = DEFAULT_LISTS["query"],
        gallery_list: str = DEFAULT_LISTS["gallery"],
        on_bad_image: str = "error",
        **kwargs: Any,
    ) -> None:
        if layout not in FOLDER_LAYOUTS:
            raise DatasetError(f"folder: unknown layout {layout!r}; choose one of {list(FOLDER_LAYOUTS)}")
        if not folder:
            raise DatasetError("folder: no dataset folder given (DATA.FOLDER.ROOT)")
        self.root = os.path.abspath(os.path.expanduser(root or ""))
        self.dataset_dir = resolve_folder(root, folder)
        self.layout = layout
        if not os.path.isdir(self.dataset_dir):
            raise DatasetError(f"folder: dataset folder not found: {self.dataset_dir}")
        origins: dict[str, str] = {}  # query image -> file:line of the list that names it
        if layout == "lists":
            files = {"train": train_list, "query": query_list, "gallery": gallery_list}
            sources = {split: os.path.join(self.dataset_dir, files[split]) for split in SPLITS}
            splits = {}
            for split in SPLITS:
                splits[split], numbers = read_list_file(sources[split], self.dataset_dir, on_bad_image)
                if split == "query":
                    origins = {item[0]: f"{sources[split]}:{n}" for item, n in zip(splits[split], numbers)}
                if not splits[split]:
                    raise DatasetError(f"{sources[split]}: no images listed (the {split} split is empty)")
            self._junk_pids = []
        else:
            sources = {split: os.path.join(self.dataset_dir, d) for split, d in MARKET_DIRS.items()}
            for split in SPLITS:
                if not os.path.isdir(sources[split]):
                    raise DatasetError(
                        f"folder (layout market1501): not found: {sources[split]} (expected "
                        f"{', '.join(d + '/' for d in MARKET_DIRS.values())} in {self.dataset_dir})"
                    )
            splits = {split: _market_split(sources[split]) for split in SPLITS}
            for split in SPLITS:
                if not splits[split]:
                    raise DatasetError(f"{sources[split]}: only junk images (identity -1): the {split} split is empty")
            self._junk_pids = [0]  # Market-1501's distractors: in the gallery, not trained on
        self.sources = sources
        mode, combineall = kwargs.get("mode", "train"), kwargs.get("combineall", False)
        verify = splits_in_use(mode, combineall)
        self.skipped_images: list[str] = []
        splits = prepare_splits(
            self.name,
            splits,
            num_cams=1 + max(item[2] for split in SPLITS for item in splits[split]),
            published={},
            on_bad_image=on_bad_image,
            verify=verify,
            skipped=self.skipped_images,
        )
        if "query" in verify:
            check_query_identities(
                splits["query"], splits["gallery"], sources["query"], sources["gallery"], origins
            )
        super().__init__(splits["train"], splits["query"], splits["gallery"], **kwargs)

    def show_summary(self) -> None:
        """Logs the statistics table (torchreid prints it)."""
        logger.info(
            "%s", format_statistics(dataset_statistics(self), title=f"=> folder ({self.layout}) {self.dataset_dir}")
        )


register_once("folder", FolderReID)
