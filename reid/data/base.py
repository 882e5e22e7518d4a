"""Registering our datasets with torchreid, and configurable dataset variants.

torchreid's ``ImageDataManager`` passes a fixed set of keyword arguments to a dataset, so options
such as the synthetic set's size are bound with :func:`register_variant`, which also wraps the
datasets that do not check their images (torchreid's built-ins, :mod:`reid.data.checked`). The
safe image reading lives in :mod:`reid.data.images`; its names are importable from here too
(every dataset module imports them with the registry helpers).
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any, Callable

from torchreid.reid.data import ImageDataset, register_image_dataset
from torchreid.reid.data import datasets as _tr_datasets

from .checked import checked_factory
from .images import ON_BAD_IMAGE_MODES, ImageReadError, SafeImageDataset, check_images, read_image

__all__ = [
    "ON_BAD_IMAGE_MODES", "ImageReadError", "SafeImageDataset", "check_images", "checks_images", "read_image",
    "register_once", "register_variant", "registered_image_datasets",
]


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
        factory = checked_factory(factory)
    elif not options:
        return name
    digest = hashlib.sha1(json.dumps(options, sort_keys=True).encode()).hexdigest()[:8]
    variant = f"{name}[{digest}]"
    register_once(variant, functools.partial(factory, **options))
    return variant

