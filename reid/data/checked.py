"""Datasets that do not check their images themselves (torchreid's built-ins), wrapped so that they do.

torchreid's ``market1501``, ``msmt17``, ``dukemtmcreid``, ``cuhk03``, ... parse their folders but
never open an image before training; an unreadable one then stops training mid-epoch (and
torchreid's reader retries it forever). :func:`checked_factory` wraps such a dataset without
copying its code: the wrapper builds torchreid's dataset (which parses the folders and labels the
splits), then runs the validation every dataset of ours runs
(:func:`reid.data.validation.check_split_images`: every image of the splits that ``mode`` serves
is read, ``on_bad_image`` ``error`` or ``skip``), and serves the checked lists with our reader.
:func:`reid.data.base.register_variant` applies it to every registered dataset whose class does
not declare ``checks_images``, so the tools never use an unchecked dataset.

The wrapper downloads nothing: when the folder of a torchreid dataset (``<root>/<dataset_dir>``,
e.g. ``<root>/market1501``) is missing, it names it instead of letting torchreid start a download.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any, Callable

from torchreid.reid.data.datasets.dataset import ImageDataset

from .images import SafeImageDataset
from .validation import (
    SPLITS,
    DatasetError,
    check_split_images,
    dataset_statistics,
    format_statistics,
    splits_in_use,
)

logger = logging.getLogger(__name__)

# torchreid's Dataset arguments, applied by the wrapper; every other keyword argument (split_id,
# cuhk03_labeled, market1501_500k, ...) goes to the wrapped dataset.
_WRAPPER_KWARGS = ("transform", "k_tfm", "mode", "combineall", "verbose")


def required_folder(factory: Callable[..., ImageDataset], root: str) -> str | None:
    """The folder torchreid's dataset class ``factory`` downloads into when it is missing
    (``<root>/<dataset_dir>``); ``None`` for a factory that is not one of torchreid's."""
    folder = getattr(factory, "dataset_dir", None)
    module = getattr(factory, "__module__", "") or ""
    if not (isinstance(factory, type) and module.startswith("torchreid.") and isinstance(folder, str)):
        return None
    return os.path.join(os.path.abspath(os.path.expanduser(root)), folder)


class CheckedDataset(SafeImageDataset):
    """A wrapped dataset: the lists of ``source``'s dataset, every image of the splits in use read.

    Subclasses made by :func:`checked_factory` set ``source``. The train pids keep the labels of
    the wrapped dataset (relabelled to ``0..N-1`` only when skipped images removed an identity);
    its junk pids (ignored by ``combineall``) and train-only flag are kept.

    Args:
        root: data root, passed to the wrapped dataset.
        on_bad_image: ``error`` or ``skip`` an unreadable image.
        **kwargs: torchreid's dataset arguments (``transform``, ``mode``, ``combineall``,
            ``verbose``, ``k_tfm``) are applied here; the others (``split_id``,
            ``cuhk03_labeled``, ``market1501_500k``, ...) go to the wrapped dataset.

    Raises:
        DatasetError: the folder is missing (nothing is downloaded), torchreid rejected a file
            name or camera (an assertion of its parser), a verified split is entirely unreadable.
        reid.data.images.ImageReadError: an unreadable image with ``on_bad_image="error"``.
        RuntimeError: a file the wrapped dataset requires is missing (torchreid's message).
    """

    checks_images = True
    source: Callable[..., ImageDataset]

    def __init__(self, root: str = "", on_bad_image: str = "error", **kwargs: Any) -> None:
        own = {key: kwargs.pop(key) for key in _WRAPPER_KWARGS if key in kwargs}
        self.name = getattr(self.source, "__name__", type(self).__name__)
        inner = self._build_source(root, kwargs)
        for attr in ("root", "dataset_dir", "data_dir"):
            if hasattr(inner, attr):
                setattr(self, attr, getattr(inner, attr))
        self._junk_pids = list(getattr(inner, "_junk_pids", []))
        self._train_only = bool(getattr(inner, "_train_only", False))
        self.skipped_images: list[str] = []
        splits = check_split_images(
            self.name,
            {split: list(getattr(inner, split)) for split in SPLITS},
            on_bad_image=on_bad_image,
            verify=splits_in_use(own.get("mode", "train"), own.get("combineall", False)),
            skipped=self.skipped_images,
        )
        super().__init__(splits["train"], splits["query"], splits["gallery"], **own)

    def _build_source(self, root: str, options: dict[str, Any]) -> ImageDataset:
        """The wrapped dataset (mode ``train``, nothing combined, silent), without downloads."""
        folder = required_folder(self.source, root)
        if folder is not None and not os.path.exists(folder):
            raise DatasetError(
                f"{self.name}: not found: {folder} (nothing is downloaded: put the dataset there, "
                "in the layout torchreid documents for it)"
            )
        try:
            return self.source(root=root, verbose=False, **options)
        except AssertionError as exc:  # torchreid checks pids and cameras with assertions
            raise DatasetError(
                f"{self.name}: torchreid's parser rejected the data under "
                f"{os.path.abspath(os.path.expanduser(root))} (a file name, identity or camera "
                f"it does not expect): {exc!r}"
            ) from exc

    def show_summary(self) -> None:
        """Logs the statistics table (torchreid prints it)."""
        logger.info("%s", format_statistics(dataset_statistics(self), title=f"=> {self.name}"))


@functools.lru_cache(maxsize=None)
def checked_factory(factory: Callable[..., ImageDataset]) -> type[CheckedDataset]:
    """A :class:`CheckedDataset` subclass wrapping the dataset that ``factory`` builds (one class
    per factory)."""
    name = getattr(factory, "__name__", "Dataset")
    return type(
        f"Checked{name}", (CheckedDataset,), {"source": staticmethod(factory), "__module__": __name__}
    )
