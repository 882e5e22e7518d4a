"""Datasets registered with torchreid on import.

``synthetic`` (generated, embedded default), ``cuhk03_np_labeled``, ``cuhk03_np_detected``,
``dukemtmc_reid``, ``folder`` (a dataset folder of the user's, :mod:`reid.data.folder`); for image
retrieval ``cub200``, ``cars196``, ``sop`` and ``synthetic_retrieval`` (:mod:`reid.data.retrieval`:
query = gallery = the test set, ``camid`` = image index). Each reads every image of the splits it
serves when built (``on_bad_image``);
torchreid's built-in datasets (``market1501``, ``msmt17``, ...) get the same check through
:func:`register_variant` (see :mod:`reid.data.checked`).
"""

from . import cuhk03_np, dukemtmc, folder, retrieval, synthetic  # noqa: F401  (register the datasets)
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
