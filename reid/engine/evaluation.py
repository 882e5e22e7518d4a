"""Feature extraction and ranking evaluation of an embedding model on query/gallery loaders.

Also an engine's evaluation options (:class:`EvalOptions`); the mixed-precision switch shared by
training and feature extraction is in ``reid/engine/amp.py``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from reid.metrics import evaluate

from .amp import autocast_context, check_amp

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalOptions:
    """How test embeddings are compared and scored.

    Attributes:
        dist_metric: ``euclidean`` (squared, as torchreid) or ``cosine``.
        normalize_feature: L2-normalise embeddings before the distance.
        ranks: CMC ranks to report.
        use_metric_cuhk03: CUHK03 single-gallery-shot protocol.
        rerank: k-reciprocal re-ranking of the distance matrix.
    """

    dist_metric: str = "euclidean"
    normalize_feature: bool = False
    ranks: tuple[int, ...] = (1, 5, 10, 20)
    use_metric_cuhk03: bool = False
    rerank: bool = False


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


@torch.no_grad()
def evaluate_targets(
    model: nn.Module,
    test_loader: Mapping[str, Mapping[str, Iterable[dict]]],
    score: Callable[[ExtractedFeatures, ExtractedFeatures], Mapping[str, Any]],
    device: torch.device,
    progress: bool = True,
    amp: str = "off",
    channels_last: bool = False,
) -> tuple[dict[str, dict[str, float]], dict[str, list[float]]]:
    """Evaluates ``model`` on every target of a torchreid ``test_loader``.

    Args:
        model: the embedding model (put in eval mode here, its mode restored after).
        test_loader: ``{target: {"query": loader, "gallery": loader}}``.
        score: ranking metrics of query against gallery features (e.g. ``ReidEngine.score``);
            its result may carry the CMC curve as ``.cmc`` (see :func:`ranking_metrics`).
        device, progress, amp, channels_last: see :func:`extract_dataset_features`.

    Returns:
        ``{target: {rank1, ..., mAP, mINP}}`` and ``{target: CMC curve}`` (targets whose scores
        carry one).

    Raises:
        Exception: what extracting or scoring a target raised, with a note naming the target.
    """
    was_training = model.training
    model.eval()
    results, curves = {}, {}
    try:
        for name, loaders in test_loader.items():
            try:
                query, gallery = (
                    extract_dataset_features(
                        model, loaders[split], device, f"{name} {split}", progress, amp=amp,
                        channels_last=channels_last,
                    )
                    for split in ("query", "gallery")
                )
                scores = score(query, gallery)
            except Exception as exc:
                exc.add_note(f"while evaluating the target '{name}'")
                raise
            cmc = getattr(scores, "cmc", None)
            if cmc is not None:
                curves[name] = [float(x) for x in cmc]
            results[name] = {key: float(value) for key, value in scores.items()}
            logger.info("%s: %s", name, " ".join(f"{k} {v:.1%}" for k, v in results[name].items()))
    finally:
        model.train(was_training)
    return results, curves


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
    A requested rank beyond the CMC (a gallery smaller than the rank) is not reported: a warning
    names it.
    """
    result = evaluate(
        distmat, query.pids, gallery.pids, query.camids, gallery.camids,
        max_rank=max(max(ranks), 50), use_metric_cuhk03=use_metric_cuhk03,
    )
    out = RankMetrics()
    out.cmc = np.asarray(result.cmc, dtype=np.float64)
    out |= {f"rank{r}": float(result.cmc[r - 1]) for r in ranks if r <= len(result.cmc)}
    beyond = [r for r in ranks if r > len(result.cmc)]
    if beyond:
        logger.warning(
            "ranks %s are not reported: the CMC has %d ranks (%d gallery images); lower TEST.RANKS",
            beyond, len(result.cmc), distmat.shape[1],
        )
    out["mAP"] = float(result.mAP)
    if result.mINP is not None:
        out["mINP"] = float(result.mINP)
    return out


def rank_features(
    query: ExtractedFeatures,
    gallery: ExtractedFeatures,
    options: EvalOptions,
    distances: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> RankMetrics:
    """Ranking metrics (:func:`ranking_metrics`) of ``query`` against ``gallery`` under ``options``.

    Args:
        query: the query set's features.
        gallery: the gallery set's features.
        options: ranks, CUHK03 metric, re-ranking.
        distances: ``(N, D), (M, D)`` features -> ``(N, M)`` distances on the CPU (the model's own,
            see :meth:`reid.engine.base.ReidEngine.distance_matrix`); the query-query and
            gallery-gallery matrices come from it too when ``options.rerank`` (k-reciprocal).
    """
    distmat = distances(query.features, gallery.features).numpy()
    if options.rerank:
        from reid.metrics import re_ranking

        q_q = distances(query.features, query.features).numpy()
        g_g = distances(gallery.features, gallery.features).numpy()
        distmat = re_ranking(distmat, q_q, g_g)
    return ranking_metrics(distmat, query, gallery, options.ranks, options.use_metric_cuhk03)
