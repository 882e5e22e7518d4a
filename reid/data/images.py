"""Reading images safely: one reader that fails at once naming the file, the check of a split's
images, and the torchreid dataset whose items are read with it.

torchreid's ``read_image`` retries forever on an unreadable file; ours fails at once with the
file's path. This is the lowest module of ``reid.data`` that the others build on: the validation
(:mod:`reid.data.validation`), the wrapper of torchreid's datasets (:mod:`reid.data.checked`) and
the registry helpers (:mod:`reid.data.base`, which re-exports these names for the datasets) import
it, and it imports none of them.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

from PIL import Image
from torchreid.reid.data import ImageDataset

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
            takes ``on_bad_image`` (see :func:`check_images`); :func:`reid.data.base.register_variant` wraps the
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
