"""Ranking metrics of the evaluation: ranks beyond the gallery are not silently dropped."""

import logging

import numpy as np
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
