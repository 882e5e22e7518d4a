"""Feature extraction and ranking evaluation of an embedding model on query/gallery loaders.

Also the mixed-precision switch shared by training and feature extraction
(:func:`autocast_context`, :func:`check_amp`).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from reid.metrics import compute_distance_matrix, evaluate

logger = logging.getLogger(__name__)

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
"""Autocast dtype of each mixed-precision mode (``off`` runs in float32)."""


def check_amp(amp: str, device: torch.device) -> None:
    """Fails clearly when ``amp`` cannot run on ``device``.

    Raises:
        ValueError: unknown mode.
        RuntimeError: ``fp16`` off CUDA, or ``bf16`` on a GPU without bfloat16 support.
    """
    if amp != "off" and amp not in AMP_DTYPES:
        raise ValueError(f"amp must be one of {['off', *AMP_DTYPES]}, got {amp!r}")
    if amp == "fp16" and device.type != "cuda":
        raise RuntimeError(
            f"mixed precision fp16 needs a CUDA device (float16 autocast with a loss scaler), "
            f"this run uses {device}; use bf16 on the CPU"
        )
    if amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise RuntimeError(f"{torch.cuda.get_device_name(device)} does not support bfloat16; use fp16")


def autocast_context(device: torch.device, amp: str = "off") -> contextlib.AbstractContextManager:
    """``torch.autocast`` on ``device``'s type in the dtype of ``amp``; a no-op for ``off``."""
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp])


@dataclass
class ExtractedFeatures:
    """Embeddings of one split with their labels, as :func:`extract_dataset_features` returns
    them (not to be confused with ``reid.metrics``' plain tensor-or-array feature type).

    Attributes:
        features: ``(N, D)`` float32 on the CPU.
        pids: ``(N,)`` identities.
        camids: ``(N,)`` cameras.
        paths: N image paths.
    """

    features: torch.Tensor
    pids: np.ndarray
    camids: np.ndarray
    paths: list[str] = field(default_factory=list)


@torch.no_grad()
def extract_dataset_features(
    model: nn.Module,
    loader: Iterable[dict],
    device: torch.device,
    desc: str = "features",
    progress: bool = True,
    amp: str = "off",
    channels_last: bool = False,
) -> ExtractedFeatures:
    """Runs ``model`` (expected in eval mode) over ``loader`` and collects the embeddings.

    A whole split at once; torchreid's ``Engine.extract_features`` (kept on our engines) is the
    forward pass of one batch.

    Args:
        model: maps ``(B, 3, H, W)`` images to ``(B, D)`` embeddings.
        loader: batches with ``img``, ``pid``, ``camid`` and ``impath``.
        device: where the model runs.
        desc: progress-bar label.
        progress: show the progress bar.
        amp: ``off``, ``bf16`` or ``fp16``: the forward pass under :func:`autocast_context`.
        channels_last: feed the images in channels_last memory format.

    Returns:
        :class:`ExtractedFeatures`, float32 on the CPU whatever ``amp``.
    """
    check_amp(amp, device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    feats, pids, camids, paths = [], [], [], []
    for batch in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=not progress):
        images = batch["img"].to(device, non_blocking=True).contiguous(memory_format=memory_format)
        with autocast_context(device, amp):
            out = model(images)
        feats.append(out.float().cpu())
        pids.append(np.asarray(batch["pid"]))
        camids.append(np.asarray(batch["camid"]))
        paths.extend(batch["impath"])
    return ExtractedFeatures(torch.cat(feats), np.concatenate(pids), np.concatenate(camids), paths)


def distance_matrix(
    query: torch.Tensor, gallery: torch.Tensor, metric: str = "euclidean", normalize: bool = False
) -> np.ndarray:
    """``(Q, G)`` distances between embeddings (squared Euclidean as torchreid, or cosine)."""
    if normalize:
        query, gallery = F.normalize(query, dim=1), F.normalize(gallery, dim=1)
    return compute_distance_matrix(query, gallery, metric).cpu().numpy()


class RankMetrics(dict):
    """``{rank1, ..., mAP, mINP}`` as floats, with the whole CMC curve in :attr:`cmc`."""

    cmc: np.ndarray


def ranking_metrics(
    distmat: np.ndarray,
    query: ExtractedFeatures,
    gallery: ExtractedFeatures,
    ranks: Iterable[int] = (1, 5, 10, 20),
    use_metric_cuhk03: bool = False,
) -> dict[str, float]:
    """rank-k, mAP and mINP (fractions in [0, 1]) of a distance matrix, and the CMC curve.

    The CMC goes up to rank 50 (or the largest requested rank, or the gallery size if smaller).
    """
    result = evaluate(
        distmat, query.pids, gallery.pids, query.camids, gallery.camids,
        max_rank=max(max(ranks), 50), use_metric_cuhk03=use_metric_cuhk03,
    )
    out = RankMetrics()
    out.cmc = np.asarray(result.cmc, dtype=np.float64)
    out |= {f"rank{r}": float(result.cmc[r - 1]) for r in ranks if r <= len(result.cmc)}
    out["mAP"] = float(result.mAP)
    if result.mINP is not None:
        out["mINP"] = float(result.mINP)
    return out
