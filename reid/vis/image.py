"""Image input/output and conversion helpers (numpy/PIL only, no model knowledge)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from reid.io import names_file
from PIL import Image

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "check_rgb", "denormalize_image", "load_image", "save_image"]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
"""Per-channel mean of the usual (torchreid) input normalisation."""

IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
"""Per-channel standard deviation of the usual (torchreid) input normalisation."""


def check_rgb(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Validates an RGB ``uint8`` image of shape ``(H, W, 3)`` and returns it as an array."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{name} must be an RGB uint8 array (H, W, 3), got {image.dtype} {image.shape}")
    return image


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Reads an image file as an RGB ``uint8`` array ``(H, W, 3)``."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def save_image(path: str | os.PathLike, image: np.ndarray) -> None:
    """Writes an RGB ``uint8`` array ``(H, W, 3)``; creates the parent folder; format from the suffix."""
    image = check_rgb(image)
    parent = os.path.dirname(os.fspath(path))
    if parent:
        os.makedirs(parent, exist_ok=True)
    with names_file(path):
        Image.fromarray(image).save(path)


def denormalize_image(
    image: np.ndarray,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> np.ndarray:
    """Undoes the input normalisation of a network input: ``(3, H, W)`` float -> ``(H, W, 3)`` uint8.

    Computes ``clip((x * std + mean) * 255)`` rounded to the nearest integer. For a torch tensor
    pass ``tensor.detach().cpu().numpy()``.

    Args:
        image: ``(3, H, W)`` normalised image.
        mean: per-channel mean used for the normalisation.
        std: per-channel standard deviation used for the normalisation.

    Returns:
        ``(H, W, 3)`` RGB uint8 image.
    """
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) image, got {image.shape}")
    rgb = image * np.asarray(std, dtype=np.float64)[:, None, None] + np.asarray(mean, dtype=np.float64)[:, None, None]
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8).transpose(1, 2, 0)
