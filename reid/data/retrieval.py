"""Image-retrieval (deep metric learning) datasets as torchreid re-id datasets.

Registered with torchreid as ``cub200`` (CUB-200-2011), ``cars196`` (Cars196), ``sop`` (Stanford
Online Products) and ``synthetic_retrieval`` (the embedded synthetic person set, read as a
retrieval set). Each reads its official layout (see ``docs/retrieval-datasets.md``); nothing is
downloaded.

References:
    Wah et al. The Caltech-UCSD Birds-200-2011 Dataset. Caltech tech. report CNS-TR-2011-001.
    Krause et al. 3D Object Representations for Fine-Grained Categorization. ICCV workshops 2013.
    Song et al. Deep Metric Learning via Lifted Structured Feature Embedding. CVPR 2016 (the
    Stanford Online Products set and the class-disjoint splits of all three).

Mapping to torchreid's splits
-----------------------------
The metric-learning protocol splits the *classes*: a model is trained on the images of the train
classes and tested on the images of the other classes, each test image being a query against all
the other test images (Recall@K). torchreid's data manager only knows re-id splits, so the
datasets are presented as follows; the data manager, the samplers and the evaluation are used
unchanged:

* ``train``: the images of the train classes, in the order of the list file; ``pid`` = the class
  relabelled ``0..C-1`` (in increasing order of the original class id); ``camid`` = 0.
* ``query``: ALL images of the test classes, in the order of the list file; ``pid`` = the class
  relabelled ``0..C'-1`` among the test classes; ``camid`` = the image's index in that test list
  (``0..N-1``).
* ``gallery``: the very same list as ``query`` (same order, same pids, same camids).

torchreid's evaluation removes, from the ranking of each query, the gallery entries with the same
pid AND the same camid as the query. Since the camid is the image's own index, that removes exactly
the query itself and nothing else: every other test image is a gallery entry. The re-id CMC at
rank K (the fraction of queries with a same-class image among their K nearest gallery entries) is
then the Recall@K of the retrieval protocol, and the re-id mAP is the mean average precision over
all test images. One difference: a test class with a single image gives a query without a match,
which the re-id protocol skips and Recall@K counts as a miss; the standard splits have no such
class (a warning gives the count when there are some).

With ``combineall`` the test images join the training set once (not twice, as query and gallery),
with their classes after the train classes and ``camid`` 0.

The ``camid`` of the test images is not a camera, so there is no camera range to check: the
classes have ``num_cams`` set beyond any index (:data:`CAMID_LIMIT`) and the attribute
``retrieval = True`` (re-id datasets do not have it), which tells tools the split convention.

Every list line is checked (a malformed line is a :class:`~reid.data.validation.DatasetError`
naming the file and line), every listed image must exist, and every image of the splits that the
dataset's ``mode`` serves is read with ``on_bad_image`` (query and gallery share one read of the
test list, so they always stay the same list). Counts that differ from the published ones are
warnings only.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .base import SafeImageDataset, register_once
from .render import Difficulty
from .synthetic import load_metadata, prepare_synthetic, synthetic_config
from .validation import (
    DatasetError,
    PublishedCounts,
    count_mismatches,
    dataset_statistics,
    format_statistics,
    read_split_images,
    relabel,
    require_paths,
    split_statistics,
    splits_in_use,
)

logger = logging.getLogger(__name__)

CAMID_LIMIT = 2**31 - 1
"""``num_cams`` of the retrieval datasets: above any test-list index, so a camera-range check
passes (the camids of the test images are indices, not cameras)."""

# (path, original class id) pairs, before the mapping to re-id splits
ClassItems = list[tuple[str, int]]


# --------------------------------------------------------------------------------------------
# the mapping to re-id splits


def retrieval_splits(train: Sequence[tuple], test: Sequence[tuple]) -> dict[str, list[tuple]]:
    """Maps class-labelled image lists to torchreid's splits (see the module docstring).

    Args:
        train: ``(img_path, class_id)`` of the train classes, in order.
        test: ``(img_path, class_id)`` of the test classes, in order.

    Returns:
        ``{"train": [(path, label, 0)], "query": [(path, label, index)], "gallery": <the same>}``,
        labels ``0..C-1`` in increasing order of the class id within each of train and test.
    """
    train_items = relabel([(item[0], item[1], 0) for item in train])
    test_labelled = relabel([(item[0], item[1]) for item in test])
    test_items = [(path, label, index) for index, (path, label) in enumerate(test_labelled)]
    return {"train": train_items, "query": test_items, "gallery": list(test_items)}


def _warn_counts(name: str, split: str, items: Sequence[tuple], published: PublishedCounts | None) -> None:
    if published is None:
        return
    stats = split_statistics([(item[0], item[1], 0) for item in items], split)
    for problem in count_mismatches([stats], {split: published}):
        logger.warning("%s: counts differ from the published ones: %s", name, problem)


def build_retrieval_splits(
    name: str,
    train: Sequence[tuple],
    test: Sequence[tuple],
    *,
    published: Mapping[str, PublishedCounts],
    on_bad_image: str = "error",
    verify: Iterable[str] = ("train", "query", "gallery"),
    skipped: list[str] | None = None,
) -> dict[str, list[tuple]]:
    """Checks and reads the images of the splits in use, then maps them (:func:`retrieval_splits`).

    The train images are read when ``"train"`` is in ``verify``; the test images (one list, served
    as both query and gallery) when ``"query"`` or ``"gallery"`` is. Their counts are compared with
    ``published`` first (a warning). Unreadable images are dropped before the mapping with
    ``on_bad_image="skip"``, so labels stay ``0..C-1`` and camids ``0..N-1``.

    Args:
        name: the dataset's name, used in messages.
        train: ``(img_path, class_id)`` of the train classes.
        test: ``(img_path, class_id)`` of the test classes.
        published: published counts per split (``train``, ``query``; ``query`` is the test list).
        on_bad_image: ``error`` or ``skip`` (see :func:`reid.data.base.check_images`).
        verify: the splits that the dataset serves (:func:`reid.data.validation.splits_in_use`).
        skipped: if given, the paths of dropped images are appended to it.

    Raises:
        DatasetError: no train or no test image, or every image of a read split unreadable.
        reid.data.base.ImageReadError: an unreadable image with ``on_bad_image="error"``.
    """
    if not train:
        raise DatasetError(f"{name}: the train classes have no images")
    if not test:
        raise DatasetError(f"{name}: the test classes have no images")
    verify = set(verify)
    train, test = [tuple(item[:2]) for item in train], [tuple(item[:2]) for item in test]
    if "train" in verify:
        _warn_counts(name, "train", train, published.get("train"))
        train = [item[:2] for item in read_split_images(name, "train", train, on_bad_image, skipped)]
    if verify & {"query", "gallery"}:
        _warn_counts(name, "test", test, published.get("query"))
        test = [item[:2] for item in read_split_images(name, "test", test, on_bad_image, skipped)]
        sizes: dict[int, int] = {}
        for _, cls in test:
            sizes[cls] = sizes.get(cls, 0) + 1
        singles = sum(1 for n in sizes.values() if n == 1)
        if singles:
            logger.warning(
                "%s: %d test class(es) have a single image; the re-id protocol skips their queries "
                "(Recall@K would count them as misses)", name, singles,
            )
    return retrieval_splits(train, test)


# --------------------------------------------------------------------------------------------
# the torchreid dataset


class RetrievalDataset(SafeImageDataset):
    """A retrieval set served as torchreid re-id splits (see the module docstring).

    Subclasses implement :meth:`read_lists` (``(img_path, class_id)`` of the train and test
    classes, after checking the layout and the list files) and set ``name`` and ``published``.

    Args:
        root: data root (each subclass documents its folder under it).
        on_bad_image: ``error`` or ``skip`` an unreadable image.
        **kwargs: torchreid's dataset arguments (``transform``, ``mode``, ``combineall``,
            ``verbose``, ``k_tfm``); the CUHK03 and Market options the data manager passes are
            ignored.

    Attributes:
        retrieval: always True: query = gallery, camid = index in the test list.
        num_cams: :data:`CAMID_LIMIT` (no camera range applies).
        num_test_images: length of the test list (query = gallery).
        skipped_images: paths dropped with ``on_bad_image="skip"``.

    Raises:
        DatasetError: a missing file or folder, a malformed list line, a listed image missing on
            disk, no image in the train or test classes.
        reid.data.base.ImageReadError: an unreadable image with ``on_bad_image="error"``.
    """

    name = "retrieval"
    retrieval = True
    checks_images = True
    num_cams = CAMID_LIMIT
    published: Mapping[str, PublishedCounts] = {}

    def __init__(self, root: str = "", on_bad_image: str = "error", **kwargs: Any) -> None:
        self.root = os.path.abspath(os.path.expanduser(root))
        train, test = self.read_lists(self.root)
        self.skipped_images: list[str] = []
        splits = build_retrieval_splits(
            self.name,
            train,
            test,
            published=self.published,
            on_bad_image=on_bad_image,
            verify=splits_in_use(kwargs.get("mode", "train"), kwargs.get("combineall", False)),
            skipped=self.skipped_images,
        )
        self.num_test_images = len(splits["query"])
        super().__init__(splits["train"], splits["query"], splits["gallery"], **kwargs)

    def read_lists(self, root: str) -> tuple[ClassItems, ClassItems]:
        """``(img_path, class_id)`` of the train classes and of the test classes, in order."""
        raise NotImplementedError

    def combine_all(self) -> None:
        """Adds the test images to the training set once (query and gallery are the same list),
        their classes after the train classes, camid 0."""
        offset = self.num_train_pids
        extra = [(path, pid + offset, 0, dsetid) for path, pid, _, dsetid in self.gallery]
        self.train = list(self.train) + extra
        self.num_train_pids = self.get_num_pids(self.train)

    def show_summary(self) -> None:
        """Logs the statistics table (torchreid prints it); "cameras" of query and gallery is the
        number of test images (camid = index)."""
        logger.info("%s", format_statistics(dataset_statistics(self), title=f"=> {self.name}"))


# --------------------------------------------------------------------------------------------
# list-file helpers


def _line_error(name: str, path: str, lineno: int, problem: str, line: str) -> DatasetError:
    return DatasetError(f"{name}: {path}:{lineno}: {problem}: {line!r}")


def _numbered_lines(name: str, path: str) -> list[tuple[int, str]]:
    """The non-blank lines of a text file with their 1-based numbers (stripped)."""
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{name}: {path} is not a UTF-8 text file: {exc}") from exc
    return [(i, line.strip()) for i, line in enumerate(lines, 1) if line.strip()]


def _int_field(name: str, path: str, lineno: int, line: str, text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise _line_error(name, path, lineno, f"{what} is not an integer ({text!r})", line) from None


def _existing(name: str, where: str, img_path: str) -> str:
    if not os.path.isfile(img_path):
        raise DatasetError(f"{name}: {where}: image file not found: {img_path}")
    return img_path


def _find_dir(name: str, root: str, candidates: Sequence[str], tree: str) -> str:
    """The first of ``<root>/<candidate>`` that is a folder; else an error naming them all."""
    paths = [os.path.join(root, c) for c in candidates]
    for path in paths:
        if os.path.isdir(path):
            logger.info("%s: using %s", name, path)
            return path
    others = f" (nor {', '.join(paths[1:])})" if len(paths) > 1 else ""
    raise DatasetError(f"{name}: not found: {paths[0]}{others}\nExpected layout:\n{tree}")


# --------------------------------------------------------------------------------------------
# CUB-200-2011

CUB_TREE = """\
  <root>/CUB_200_2011/
      images.txt                 <image_id> <relative path>, one line per image
      image_class_labels.txt     <image_id> <class_id>, class ids 1-200
      images/001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg ..."""


class CUB200(RetrievalDataset):
    """CUB-200-2011: classes 1-100 train, 101-200 test (registered as ``cub200``).

    Layout: ``<root>/CUB_200_2011/{images.txt, image_class_labels.txt, images/}``. Published:
    5,864 train images, 5,924 test images (11,788 in all), 100 classes each. Images are taken in
    the order of ``images.txt``. See :class:`RetrievalDataset` for the arguments.
    """

    name = "CUB-200-2011"
    num_classes = 200
    num_train_classes = 100
    published = {
        "train": PublishedCounts(identities=100, images=5864),
        "query": PublishedCounts(identities=100, images=5924),
        "gallery": PublishedCounts(identities=100, images=5924),
    }

    def read_lists(self, root: str) -> tuple[ClassItems, ClassItems]:
        self.dataset_dir = os.path.join(root, "CUB_200_2011")
        images_txt = os.path.join(self.dataset_dir, "images.txt")
        labels_txt = os.path.join(self.dataset_dir, "image_class_labels.txt")
        images_dir = os.path.join(self.dataset_dir, "images")
        require_paths([self.dataset_dir, images_txt, labels_txt, images_dir], self.name, CUB_TREE)
        name = self.name

        images: dict[int, tuple[str, int]] = {}  # image id -> (relative path, line)
        for lineno, line in _numbered_lines(name, images_txt):
            fields = line.split()
            if len(fields) != 2:
                problem = f"expected 2 fields '<image_id> <relative path>', got {len(fields)}"
                raise _line_error(name, images_txt, lineno, problem, line)
            image_id = _int_field(name, images_txt, lineno, line, fields[0], "image id")
            if image_id in images:
                problem = f"image id {image_id} listed twice (first on line {images[image_id][1]})"
                raise _line_error(name, images_txt, lineno, problem, line)
            images[image_id] = (fields[1], lineno)
        if not images:
            raise DatasetError(f"{name}: {images_txt} lists no image")

        labels: dict[int, tuple[int, int]] = {}  # image id -> (class id, line)
        for lineno, line in _numbered_lines(name, labels_txt):
            fields = line.split()
            if len(fields) != 2:
                raise _line_error(name, labels_txt, lineno,
                                  f"expected 2 fields '<image_id> <class_id>', got {len(fields)}", line)
            image_id = _int_field(name, labels_txt, lineno, line, fields[0], "image id")
            class_id = _int_field(name, labels_txt, lineno, line, fields[1], "class id")
            if not 1 <= class_id <= self.num_classes:
                raise _line_error(name, labels_txt, lineno,
                                  f"class id {class_id} is outside 1..{self.num_classes}", line)
            if image_id in labels:
                problem = f"image id {image_id} listed twice (first on line {labels[image_id][1]})"
                raise _line_error(name, labels_txt, lineno, problem, line)
            if image_id not in images:
                problem = f"image id {image_id} is not in {images_txt}"
                raise _line_error(name, labels_txt, lineno, problem, line)
            labels[image_id] = (class_id, lineno)

        train: ClassItems = []
        test: ClassItems = []
        for image_id, (rel, lineno) in images.items():
            if image_id not in labels:
                raise DatasetError(
                    f"{name}: {images_txt}:{lineno}: image id {image_id} has no class in {labels_txt}"
                )
            path = _existing(name, f"{images_txt}:{lineno}", os.path.join(images_dir, *rel.split("/")))
            class_id = labels[image_id][0]
            (train if class_id <= self.num_train_classes else test).append((path, class_id))
        return train, test


# --------------------------------------------------------------------------------------------
# Cars196

CARS_FOLDERS = ("cars196", "CARS196", "stanford_cars")
"""Folders searched under the root for Cars196, in this order."""

CARS_TREE = """\
  <root>/cars196/                (or <root>/CARS196/, or <root>/stanford_cars/)
      cars_annos.mat             struct array 'annotations': relative_im_path, class (1-196),
                                 bbox_x1, bbox_y1, bbox_x2, bbox_y2, test
      car_ims/000001.jpg ... 016185.jpg"""


def _mat_int(value: Any) -> int | None:
    """An integer stored in a .mat field (a number, possibly as a 1x1 array); None otherwise."""
    array = np.asarray(value)
    if array.size != 1 or array.dtype.kind not in "iuf":
        return None
    number = array.reshape(()).item()
    if isinstance(number, float) and not number.is_integer():
        return None
    return int(number)


def _mat_str(value: Any) -> str | None:
    """A string stored in a .mat field; None otherwise."""
    if isinstance(value, str):
        return value
    array = np.asarray(value)
    if array.dtype.kind == "U" and array.size == 1:
        return str(array.reshape(()).item())
    return None


def read_cars_annotations(mat_path: str, name: str = "Cars196") -> list[tuple[str, int]]:
    """``(relative_im_path, class)`` of every record of ``annotations`` in ``cars_annos.mat``.

    Raises:
        DatasetError: the file cannot be read, has no struct array ``annotations`` with fields
            ``relative_im_path`` and ``class``, or a record (named by its 1-based number) has a
            path that is not a string or a class that is not an integer.
    """
    from scipy.io import loadmat

    try:
        content = loadmat(mat_path, squeeze_me=True, struct_as_record=True)
    except Exception as exc:  # scipy raises ValueError, TypeError, NotImplementedError (v7.3), ...
        raise DatasetError(f"{name}: cannot read {mat_path} as a MATLAB file: {exc}") from exc
    if "annotations" not in content:
        found = sorted(k for k in content if not k.startswith("__"))
        raise DatasetError(f"{name}: {mat_path} has no variable 'annotations' (found: {found})")
    annotations = np.atleast_1d(content["annotations"])
    fields = annotations.dtype.names or ()
    missing = [f for f in ("relative_im_path", "class") if f not in fields]
    if missing:
        raise DatasetError(
            f"{name}: {mat_path}: 'annotations' is not a struct array with the fields "
            f"relative_im_path and class (missing {missing}; found {list(fields)})"
        )
    records = []
    for number, record in enumerate(annotations.ravel(), 1):
        rel, class_id = _mat_str(record["relative_im_path"]), _mat_int(record["class"])
        if rel is None:
            raise DatasetError(
                f"{name}: {mat_path}: annotation {number}: relative_im_path is not a string: "
                f"{record['relative_im_path']!r}"
            )
        if class_id is None:
            raise DatasetError(
                f"{name}: {mat_path}: annotation {number} ({rel}): class is not an integer: "
                f"{record['class']!r}"
            )
        records.append((rel, class_id))
    return records


class Cars196(RetrievalDataset):
    """Cars196 (Stanford Cars): classes 1-98 train, 99-196 test (registered as ``cars196``).

    Layout: ``<root>/cars196/`` (else ``<root>/CARS196/``, else ``<root>/stanford_cars/``) with
    ``cars_annos.mat`` and ``car_ims/``. The ``test`` field of the annotations (the
    classification split) is ignored. Published: 8,054 train images, 8,131 test images (16,185 in
    all), 98 classes each. Images are taken in the order of the annotations; errors name an
    annotation by its 1-based number. See :class:`RetrievalDataset` for the arguments.
    """

    name = "Cars196"
    num_classes = 196
    num_train_classes = 98
    published = {
        "train": PublishedCounts(identities=98, images=8054),
        "query": PublishedCounts(identities=98, images=8131),
        "gallery": PublishedCounts(identities=98, images=8131),
    }

    def read_lists(self, root: str) -> tuple[ClassItems, ClassItems]:
        name = self.name
        self.dataset_dir = _find_dir(name, root, CARS_FOLDERS, CARS_TREE)
        mat_path = os.path.join(self.dataset_dir, "cars_annos.mat")
        require_paths([mat_path, os.path.join(self.dataset_dir, "car_ims")], name, CARS_TREE)
        records = read_cars_annotations(mat_path, name)
        if not records:
            raise DatasetError(f"{name}: {mat_path} lists no image")
        seen: dict[str, int] = {}
        train: ClassItems = []
        test: ClassItems = []
        for number, (rel, class_id) in enumerate(records, 1):
            where = f"{mat_path}: annotation {number}"
            if not 1 <= class_id <= self.num_classes:
                raise DatasetError(
                    f"{name}: {where} ({rel}): class {class_id} is outside 1..{self.num_classes}"
                )
            if rel in seen:
                raise DatasetError(
                    f"{name}: {where}: image {rel} listed twice (first in annotation {seen[rel]})"
                )
            seen[rel] = number
            path = _existing(name, where, os.path.join(self.dataset_dir, *rel.split("/")))
            (train if class_id <= self.num_train_classes else test).append((path, class_id))
        return train, test


# --------------------------------------------------------------------------------------------
# Stanford Online Products

SOP_HEADER = ("image_id", "class_id", "super_class_id", "path")
SOP_SUPER_CLASSES = 12

SOP_TREE = """\
  <root>/Stanford_Online_Products/
      Ebay_train.txt     header 'image_id class_id super_class_id path', then one line per image
      Ebay_test.txt      (same format)
      bicycle_final/111085122871_0.JPG ...   (paths relative to Stanford_Online_Products/)"""


class StanfordOnlineProducts(RetrievalDataset):
    """Stanford Online Products: the classes of ``Ebay_train.txt`` train, those of
    ``Ebay_test.txt`` test (registered as ``sop``).

    Published: 11,318 train classes with 59,551 images, 11,316 test classes with 60,502 images.
    Images are taken in the order of the files. See :class:`RetrievalDataset` for the arguments.
    """

    name = "Stanford Online Products"
    published = {
        "train": PublishedCounts(identities=11318, images=59551),
        "query": PublishedCounts(identities=11316, images=60502),
        "gallery": PublishedCounts(identities=11316, images=60502),
    }

    def read_lists(self, root: str) -> tuple[ClassItems, ClassItems]:
        self.dataset_dir = os.path.join(root, "Stanford_Online_Products")
        files = {split: os.path.join(self.dataset_dir, f"Ebay_{split}.txt") for split in ("train", "test")}
        require_paths([self.dataset_dir, *files.values()], self.name, SOP_TREE)
        paths_seen: dict[str, str] = {}
        class_lines: dict[str, dict[int, str]] = {}
        lists: dict[str, ClassItems] = {}
        for split, list_file in files.items():
            lists[split], class_lines[split] = self._read_file(list_file, paths_seen)
        shared = sorted(set(class_lines["train"]) & set(class_lines["test"]))
        if shared:
            cls = shared[0]
            raise DatasetError(
                f"{self.name}: class {cls} is in both the train and the test list "
                f"({class_lines['train'][cls]} and {class_lines['test'][cls]}); the classes of the "
                f"splits must be disjoint ({len(shared)} shared class(es))"
            )
        return lists["train"], lists["test"]

    def _read_file(self, list_file: str, paths_seen: dict[str, str]) -> tuple[ClassItems, dict[int, str]]:
        """The items of one list file, and where each class first appears (``file:line``)."""
        name = self.name
        lines = _numbered_lines(name, list_file)
        expected = " ".join(SOP_HEADER)
        if not lines:
            raise DatasetError(f"{name}: {list_file} is empty (expected the header {expected!r})")
        lineno, header = lines[0]
        if tuple(header.split()) != SOP_HEADER:
            raise _line_error(name, list_file, lineno, f"expected the header {expected!r}", header)
        items: ClassItems = []
        image_ids: dict[int, int] = {}
        classes: dict[int, str] = {}
        for lineno, line in lines[1:]:
            fields = line.split()
            if len(fields) != 4:
                raise _line_error(name, list_file, lineno,
                                  f"expected 4 fields '{' '.join(SOP_HEADER)}', got {len(fields)}", line)
            image_id = _int_field(name, list_file, lineno, line, fields[0], "image id")
            class_id = _int_field(name, list_file, lineno, line, fields[1], "class id")
            super_id = _int_field(name, list_file, lineno, line, fields[2], "super class id")
            if class_id < 1:
                raise _line_error(name, list_file, lineno, f"class id {class_id} is not >= 1", line)
            if not 1 <= super_id <= SOP_SUPER_CLASSES:
                raise _line_error(name, list_file, lineno,
                                  f"super class id {super_id} is outside 1..{SOP_SUPER_CLASSES}", line)
            if image_id in image_ids:
                problem = f"image id {image_id} listed twice (first on line {image_ids[image_id]})"
                raise _line_error(name, list_file, lineno, problem, line)
            where = f"{list_file}:{lineno}"
            rel = fields[3]
            if rel in paths_seen:
                problem = f"image {rel} listed twice (first at {paths_seen[rel]})"
                raise _line_error(name, list_file, lineno, problem, line)
            image_ids[image_id] = lineno
            paths_seen[rel] = where
            classes.setdefault(class_id, where)
            path = _existing(name, where, os.path.join(self.dataset_dir, *rel.split("/")))
            items.append((path, class_id))
        if not items:
            raise DatasetError(f"{name}: {list_file} lists no image (only the header)")
        return items, classes


# --------------------------------------------------------------------------------------------
# the synthetic set as a retrieval set


class SyntheticRetrieval(RetrievalDataset):
    """The embedded synthetic person set (:mod:`reid.data.synthetic`) read as a retrieval set
    (registered as ``synthetic_retrieval``).

    The set is the one ``synthetic`` uses with the same options: generated once under
    ``<root>/synthetic/<variant>`` (reused when already there, never rendered again). Train =
    its train split (identities as classes); test = its query and gallery images of the test
    identities (query images first, then gallery images, each sorted by path; the distractors,
    pid 0, are left out), mapped as every retrieval set (query = gallery, camid = index).

    Args:
        root: data root.
        num_ids, num_cams, images_per_id, height, width, seed, num_distractor_ids, difficulty,
            progress: as for :class:`reid.data.synthetic.SyntheticReID` (``num_cams`` is the
            generator's number of cameras; the attribute ``num_cams`` stays
            :data:`CAMID_LIMIT`).
        on_bad_image: ``error`` or ``skip`` an unreadable image.
        **kwargs: fields of :class:`~reid.data.render.Difficulty`, torchreid's dataset options
            and the options the data manager passes to every dataset (ignored).

    Raises:
        TypeError: an unknown keyword argument.
        ValueError: generation options out of range (:class:`~reid.data.synthetic.SyntheticConfig`).
    """

    name = "synthetic_retrieval"

    def __init__(self, root: str = "", num_ids: int = 300, num_cams: int = 6, images_per_id: int = 20,
                 height: int = 128, width: int = 64, seed: int = 0, num_distractor_ids: int = 0,
                 difficulty: Difficulty | Mapping[str, Any] | None = None, progress: bool = True,
                 on_bad_image: str = "error", **kwargs: Any) -> None:
        self.config = synthetic_config(
            "SyntheticRetrieval", kwargs, num_ids=num_ids, num_cams=num_cams, images_per_id=images_per_id,
            height=height, width=width, seed=seed, num_distractor_ids=num_distractor_ids, difficulty=difficulty,
        )
        self._progress = progress
        super().__init__(root=root, on_bad_image=on_bad_image, **kwargs)

    def read_lists(self, root: str) -> tuple[ClassItems, ClassItems]:
        self.dataset_dir = prepare_synthetic(root, self.config, self._progress)
        metadata = load_metadata(self.dataset_dir)
        by_split: dict[str, ClassItems] = {"train": [], "query": [], "gallery": []}
        for rel in sorted(metadata):
            entry = metadata[rel]
            pid = int(entry["pid"])
            if pid == 0:  # distractors: no class
                continue
            by_split[entry["split"]].append((os.path.join(self.dataset_dir, *rel.split("/")), pid))
        return by_split["train"], by_split["query"] + by_split["gallery"]


register_once("cub200", CUB200)
register_once("cars196", Cars196)
register_once("sop", StanfordOnlineProducts)
register_once("synthetic_retrieval", SyntheticRetrieval)
