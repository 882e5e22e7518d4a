"""Datasets registered with torchreid on import.

``synthetic`` (generated, embedded default), ``cuhk03_np_labeled``, ``cuhk03_np_detected`` and
``dukemtmc_reid``.
"""

from . import cuhk03_np, dukemtmc, synthetic  # noqa: F401  (register the datasets)
from .base import ImageReadError, SafeImageDataset, check_images, read_image, register_variant
from .validation import DatasetError, dataset_statistics, format_statistics

__all__ = [
    "DatasetError",
    "ImageReadError",
    "SafeImageDataset",
    "check_images",
    "dataset_statistics",
    "format_statistics",
    "read_image",
    "register_variant",
]
