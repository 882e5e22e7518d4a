"""Feature extraction and ranking evaluation of an embedding model on query/gallery loaders."""

from __future__ import annotations

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


@dataclass
class Features:
    """Embeddings of one split with their labels.

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
def extract_features(
    model: nn.Module,
    loader: Iterable[dict],
    device: torch.device,
    desc: str = "features",
    progress: bool = True,
) -> Features:
    """Runs ``model`` (expected in eval mode) over ``loader`` and collects the embeddings."""
    feats, pids, camids, paths = [], [], [], []
    for batch in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=not progress):
        out = model(batch["img"].to(device, non_blocking=True))
        feats.append(out.float().cpu())
        pids.append(np.asarray(batch["pid"]))
        camids.append(np.asarray(batch["camid"]))
        paths.extend(batch["impath"])
    return Features(torch.cat(feats), np.concatenate(pids), np.concatenate(camids), paths)


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
    query: Features,
    gallery: Features,
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
