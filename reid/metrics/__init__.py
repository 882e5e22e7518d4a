"""Ranking metrics, distances, re-ranking and top-k retrieval (numpy/torch only).

* :func:`evaluate_rank`: drop-in for ``torchreid.reid.metrics.evaluate_rank``, ``(cmc, mAP)``.
* :func:`evaluate`: the same numbers plus mINP and per-query AP, as a :class:`RankingResult`;
  both take a :class:`DistanceRows` (rows computed block by block from the features) in place of
  a matrix, for galleries whose full matrix does not fit in memory.
* :func:`compute_distance_matrix`: torchreid's squared Euclidean / cosine distances, by chunks.
  :mod:`reid.metrics.distance` holds the project's only distance implementations, also used by
  the losses and AVSL (:func:`euclidean_distance`, :func:`paired_euclidean_distance`).
* :func:`re_ranking`: k-reciprocal re-ranking, bit-identical to torchreid's and faster.
* :func:`topk_retrieval`: nearest gallery entries without a full distance matrix (dense chunks
  or FAISS, an optional dependency imported only when used).
"""

from reid.metrics.distance import (
    DISTANCE_METRICS,
    FeatureInput,
    Metric,
    compute_distance_matrix,
    cosine_distance,
    euclidean_distance,
    euclidean_squared_distance,
    paired_euclidean_distance,
)
from reid.metrics.rank import (
    CUHK03_NUM_REPEATS,
    DistanceRows,
    NoValidQueryError,
    RankingResult,
    evaluate,
    evaluate_rank,
)
from reid.metrics.rerank import re_ranking
from reid.metrics.retrieval import TopK, build_faiss_index, smallest_k, topk_retrieval

__all__ = [
    "CUHK03_NUM_REPEATS",
    "DISTANCE_METRICS",
    "DistanceRows",
    "FeatureInput",
    "Metric",
    "NoValidQueryError",
    "RankingResult",
    "TopK",
    "build_faiss_index",
    "compute_distance_matrix",
    "cosine_distance",
    "euclidean_distance",
    "euclidean_squared_distance",
    "evaluate",
    "evaluate_rank",
    "paired_euclidean_distance",
    "re_ranking",
    "smallest_k",
    "topk_retrieval",
]
