"""Shared pieces of our datasets: safe image reading and configurable dataset variants.

torchreid's ``read_image`` retries forever on an unreadable file; ours fails at once with the
file's path. torchreid's ``ImageDataManager`` passes a fixed set of keyword arguments to a
dataset, so options such as the synthetic set's size are bound with :func:`register_variant`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from typing import Any, Callable, Sequence

from PIL import Image
from torchreid.reid.data import ImageDataset, register_image_dataset
from torchreid.reid.data import datasets as _tr_datasets

logger = logging.getLogger(__name__)

# What to do with an image that cannot be read (DATA.ON_BAD_IMAGE).
ON_BAD_IMAGE_MODES = ("error", "skip")


class ImageReadError(OSError):
    """An image file is missing, unreadable or truncated; the message names the file."""


def read_image(path: str) -> Image.Image:
    """Reads an RGB image, failing at once with the path (torchreid's reader loops forever).

    Raises:
        ImageReadError: the file is missing, not an image, or truncated.
    """
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except FileNotFoundError as exc:
        raise ImageReadError(f"image file does not exist: {path}") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"cannot read image {path}: {exc}") from exc


def check_images(
    items: list[tuple], on_bad_image: str = "error", split: str = "",
    skipped: list[str] | None = None,
) -> list[tuple]:
    """Verifies every image of a split (a full decode); fails on the first bad one or drops bad ones.

    Args:
        items: ``(img_path, pid, camid, ...)`` tuples.
        on_bad_image: ``error`` raises :class:`ImageReadError`; ``skip`` drops the item and logs
            how many were dropped.
        split: name used in the log message.
        skipped: if given, the paths of the dropped images are appended to it.

    Returns:
        The items whose images could be read.
    """
    if on_bad_image not in ON_BAD_IMAGE_MODES:
        raise ValueError(f"on_bad_image must be one of {ON_BAD_IMAGE_MODES}, got {on_bad_image!r}")
    kept, bad = [], []
    for item in items:
        try:
            read_image(item[0])
        except ImageReadError:
            if on_bad_image == "error":
                raise
            bad.append(item[0])
            continue
        kept.append(item)
    if bad:
        logger.warning(
            "skipped %d unreadable image(s) in %s, e.g. %s", len(bad), split or "split", bad[0]
        )
        if skipped is not None:
            skipped.extend(bad)
    return kept


class SafeImageDataset(ImageDataset):
    """torchreid ``ImageDataset`` whose items are read with :func:`read_image`.

    Attributes:
        checks_images: the class reads every image of the splits it serves when it is built and
            takes ``on_bad_image`` (see :func:`check_images`); :func:`register_variant` wraps the
            datasets that do not (torchreid's built-ins) so that they do.
        skipped_images: paths dropped at construction with ``on_bad_image="skip"``.
    """

    checks_images: bool = False
    skipped_images: Sequence[str] = ()

    def __getitem__(self, index: int) -> dict[str, Any]:
        img_path, pid, camid, dsetid = self.data[index]
        img = read_image(img_path)
        if self.transform is not None:
            img = self._transform_image(self.transform, self.k_tfm, img)
        return {"img": img, "pid": pid, "camid": camid, "impath": img_path, "dsetid": dsetid}


def registered_image_datasets() -> dict[str, Callable[..., ImageDataset]]:
    """torchreid's image dataset registry (name -> factory)."""
    return getattr(_tr_datasets, "__image_datasets")


def register_once(name: str, factory: Callable[..., ImageDataset]) -> None:
    """Registers ``factory`` under ``name`` with torchreid unless that name is already taken."""
    if name not in registered_image_datasets():
        register_image_dataset(name, factory)


def checks_images(factory: Callable[..., ImageDataset]) -> bool:
    """Whether the dataset ``factory`` builds reads its images when built (see
    :class:`SafeImageDataset`)."""
    return bool(getattr(factory, "checks_images", False))


def register_variant(name: str, options: dict[str, Any]) -> str:
    """Registers ``name``'s dataset with ``options`` bound and returns the name to use.

    A dataset that does not check its images itself (torchreid's built-ins such as
    ``market1501`` or ``msmt17``) is wrapped by :func:`reid.data.checked.checked_factory`, which
    builds it and then reads every image of the splits in use with ``on_bad_image``; its variant
    is registered even without options. For our datasets, no options return ``name`` itself.
    Otherwise the variant is registered under ``name[<hash of options>]`` (once), so torchreid's
    data manager can build it.

    Raises:
        KeyError: ``name`` is not a registered dataset (the message lists the registered ones).
    """
    registry = registered_image_datasets()
    if name not in registry:
        raise KeyError(f"unknown dataset '{name}'; registered datasets: {sorted(registry)}")
    factory = registry[name]
    if not checks_images(factory):
        from .checked import checked_factory  # (imports this module)

        factory = checked_factory(factory)
    elif not options:
        return name
    digest = hashlib.sha1(json.dumps(options, sort_keys=True).encode()).hexdigest()[:8]
    variant = f"{name}[{digest}]"
    register_once(variant, functools.partial(factory, **options))
    return variant

