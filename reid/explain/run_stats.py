"""The run's statistics of a dump: its ranking numbers, distance histograms and failure analysis.

What the explorer (``index.html``) shows beside the explained queries:

* :func:`run_summary`: CMC, mAP, mINP and every covered query's AP and first true match
  (:func:`reid.metrics.evaluate`, equal distances in gallery order as the shown ranking), and the
  histograms of the distances of true pairs (same identity, other camera) and wrong pairs (other
  identity). It covers all queries when their distances fit ``--max-matrix-mb``
  (:class:`reid.explain.ranking.GalleryRows`), the explained queries only otherwise.
* :func:`failure_analysis` and :func:`failure_table`: for a decomposable model (unit stripe
  vectors, :mod:`reid.explain.decomposition`), which stripe made the wrong top-1 matches close.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from reid.metrics.rank import NoValidQueryError, evaluate
from reid.vis.explorer import FailureTable, RunStatistics

HISTOGRAM_BINS = 40
# Query rows per block of the failure analysis (bounds its temporaries).
_FAILURE_ROWS = 1024


@dataclass
class RunSummary:
    """The run's ranking numbers over the queries it covers.

    Attributes:
        stats: what the explorer draws.
        ap: ``(R,)`` average precision of each covered query (NaN without a true match).
        first_match_rank: ``(R,)`` rank of each covered query's first true match (0: none).
        num_queries: queries covered.
    """

    stats: RunStatistics
    ap: np.ndarray
    first_match_rank: np.ndarray
    num_queries: int


def run_summary(
    distances: np.ndarray, q_pids: np.ndarray, q_camids: np.ndarray, g_pids: np.ndarray, g_camids: np.ndarray,
    source: str, bins: int = HISTOGRAM_BINS,
) -> RunSummary | None:
    """CMC, mAP, mINP and per-query AP (:func:`reid.metrics.evaluate`, equal distances in gallery
    order as the shown ranking), and histograms of the distances of true pairs (same identity,
    other camera) and wrong pairs (other identity) over ``bins`` equal bins; None when no query
    has a true match."""
    if distances.shape[1] == 0:
        return None
    try:
        result = evaluate(
            distances, q_pids, g_pids, q_camids, g_camids, max_rank=min(50, distances.shape[1]), tie_break="stable"
        )
    except NoValidQueryError:
        return None
    same_pid = q_pids[:, None] == g_pids[None, :]
    positive = same_pid & (q_camids[:, None] != g_camids[None, :])
    finite = np.isfinite(distances)
    values = distances[finite]
    low, high = float(values.min()), float(values.max())
    edges = np.linspace(low, high if high > low else low + 1.0, bins + 1)
    pos_counts, _ = np.histogram(distances[positive & finite], bins=edges)
    neg_counts, _ = np.histogram(distances[~same_pid & finite], bins=edges)
    stats = RunStatistics(
        source=source, cmc=[float(v) for v in result.cmc], mAP=float(result.mAP), mINP=float(result.mINP),
        edges=[float(e) for e in edges], positive_counts=[int(c) for c in pos_counts],
        negative_counts=[int(c) for c in neg_counts],
    )
    return RunSummary(stats, result.ap, result.first_match_rank, len(q_pids))


def failure_analysis(
    distances: np.ndarray, query_embeddings: torch.Tensor, gallery_embeddings: torch.Tensor, num_stripes: int,
    q_pids: np.ndarray, q_camids: np.ndarray, g_pids: np.ndarray, g_camids: np.ndarray,
) -> dict[str, Any]:
    """Which stripe made the wrong top-1 matches close, over every query whose top-1 is wrong.

    The top-1 match and the best true match follow the evaluation protocol (gallery images of the
    query's identity and camera removed, equal distances in gallery order). For a decomposable
    model the embedding is ``P`` unit stripe vectors, so the squared Euclidean embedding distance
    splits exactly into stripe terms ``||n_qs - n_gs||^2`` (:mod:`reid.explain.decomposition`).

    Returns:
        ``num_wrong_top1``; per stripe (top first): ``closest`` (how often it was the impostor's
        smallest term), ``most_favoured`` (how often it had the largest margin ``term(true) -
        term(impostor)``, i.e. did most to put the impostor ahead of the best true match) and
        ``mean_margin``.
    """
    q_emb = query_embeddings.double().reshape(len(q_pids), num_stripes, -1)
    g_emb = gallery_embeddings.double().reshape(len(g_pids), num_stripes, -1)
    closest, favoured = np.zeros(num_stripes, dtype=np.int64), np.zeros(num_stripes, dtype=np.int64)
    margins = []
    for start in range(0, len(q_pids), _FAILURE_ROWS):
        rows = slice(start, start + _FAILURE_ROWS)
        same_pid = q_pids[rows, None] == g_pids[None, :]
        junk = same_pid & (q_camids[rows, None] == g_camids[None, :])
        kept = np.where(junk, np.inf, distances[rows].astype(np.float64))
        top1 = np.argmin(kept, axis=1)  # the first of equal minima: gallery order
        true_rows = np.where(same_pid & ~junk, kept, np.inf)
        best_true = np.argmin(true_rows, axis=1)
        local = np.arange(kept.shape[0])
        failed = ~same_pid[local, top1] & np.isfinite(true_rows[local, best_true]) & np.isfinite(kept[local, top1])
        for q in np.flatnonzero(failed):
            query = q_emb[start + q]
            impostor = ((query - g_emb[top1[q]]) ** 2).sum(1).numpy()
            truth = ((query - g_emb[best_true[q]]) ** 2).sum(1).numpy()
            closest[int(np.argmin(impostor))] += 1
            favoured[int(np.argmax(truth - impostor))] += 1
            margins.append(truth - impostor)
    mean_margin = np.mean(margins, axis=0) if margins else np.full(num_stripes, np.nan)
    return {
        "num_wrong_top1": len(margins),
        "closest": closest.tolist(),
        "most_favoured": favoured.tolist(),
        "mean_margin": [None if np.isnan(v) else float(v) for v in mean_margin],
    }


def failure_table(failures: dict[str, Any], num_queries: int) -> FailureTable:
    """The explorer's table of :func:`failure_analysis`."""
    rows = [
        (f"stripe {s + 1}", closest, favoured, "n/a" if margin is None else f"{margin:+.4f}")
        for s, (closest, favoured, margin) in enumerate(
            zip(failures["closest"], failures["most_favoured"], failures["mean_margin"])
        )
    ]
    return FailureTable(
        f"Wrong top-1 matches: which stripe made the impostor close ({failures['num_wrong_top1']} of "
        f"{num_queries} queries)",
        ("stripe (top first)", "impostor's closest stripe", "most in the impostor's favour",
         "mean margin term(true) - term(impostor)"),
        rows,
        "Stripe terms of the squared embedding distance (exact: they sum to it). A positive margin means the "
        "stripe is closer to the impostor than to the best true match.",
    )
