"""Ranking metrics of the evaluation: ranks beyond the gallery are not silently dropped."""

import logging

import numpy as np
import pytest
import torch

from reid.engine.evaluation import ExtractedFeatures, ranking_metrics


def features(pids, camids):
    return ExtractedFeatures(torch.zeros(len(pids), 2), np.asarray(pids), np.asarray(camids))


def test_ranks_beyond_the_gallery_are_named_in_a_warning(caplog):
    query = features([1, 2], [0, 0])
    gallery = features([1, 2, 3, 1, 2], [1, 1, 1, 1, 1])
    distmat = np.arange(10, dtype=np.float64).reshape(2, 5)
    with caplog.at_level(logging.WARNING, logger="reid.engine.evaluation"):
        metrics = ranking_metrics(distmat, query, gallery, ranks=(1, 5, 6, 100))
    assert {"rank1", "rank5"} <= set(metrics) and "rank6" not in metrics and "rank100" not in metrics
    (record,) = [r for r in caplog.records if r.name == "reid.engine.evaluation"]
    assert "ranks [6, 100]" in record.getMessage() and "5 gallery images" in record.getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="reid.engine.evaluation"):
        ranking_metrics(distmat, query, gallery, ranks=(1, 5))
    assert not [r for r in caplog.records if r.name == "reid.engine.evaluation"]


def test_a_retrieval_targets_rank_k_is_its_recall_at_k_when_distances_tie():
    from reid.engine.evaluation import EvalOptions, rank_features

    rng = np.random.default_rng(0)
    num, checked = 40, 0
    for trial in range(20):
        pids = rng.permutation(np.repeat(np.arange(8), 5))  # every class has other images (R >= 1)
        # integer coordinates: many equal distances, true matches tied with other classes
        feats = torch.from_numpy(rng.integers(0, 3, (num, 2)).astype(np.float32))
        test = ExtractedFeatures(feats, pids, np.arange(num))  # a retrieval set: camid = own index

        def distances(a, b):
            return torch.cdist(a, b) ** 2

        options = EvalOptions(ranks=(1, 2, 4, 8), recall_ks=(1, 2, 4, 8))
        metrics = rank_features(test, test, options, distances, retrieval=True)
        for k in (1, 2, 4, 8):
            # the same count of queries (CMC sums in float32 as torchreid, Recall@K in float64);
            # another tie order would differ by a query at least, 1/40
            assert metrics[f"rank{k}"] == pytest.approx(metrics[f"recall@{k}"], abs=1e-6), (trial, k)
        checked += 1
    assert checked == 20
