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


def test_streamed_distances_are_written_into_one_buffer_when_they_take_out():
    # the engine's and the models' distances take out=: a streaming evaluation then writes every
    # block into one buffer; a plain two-argument function gets fresh blocks, same metrics
    from reid.engine.evaluation import EvalOptions, rank_features, takes_out
    from reid.metrics import compute_distance_matrix

    assert takes_out(compute_distance_matrix) and takes_out(lambda q, g, **options: q)
    assert not takes_out(lambda q, g: q) and not takes_out(len)
    rng = np.random.default_rng(3)
    query = ExtractedFeatures(torch.from_numpy(rng.random((30, 4), dtype=np.float32)), rng.integers(0, 5, 30),
                              np.zeros(30, dtype=np.int64))
    gallery = ExtractedFeatures(torch.from_numpy(rng.random((50, 4), dtype=np.float32)), rng.integers(0, 5, 50),
                                np.ones(50, dtype=np.int64))
    outs = []

    def with_out(q, g, out=None):
        outs.append(None if out is None else out.untyped_storage().data_ptr())
        return compute_distance_matrix(q, g, out=out)

    streamed = EvalOptions(ranks=(1, 5), max_matrix_mb=4 * 50 * 7 / 2**20)  # blocks of 7 rows
    dense = EvalOptions(ranks=(1, 5))
    plain = rank_features(query, gallery, streamed, lambda q, g: compute_distance_matrix(q, g))
    buffered = rank_features(query, gallery, streamed, with_out)
    assert len(outs) == 5 and None not in outs and len(set(outs)) == 1
    assert dict(buffered) == dict(plain) == dict(rank_features(query, gallery, dense, compute_distance_matrix))


def test_engine_distances_into_a_buffer_with_a_model_that_does_not_take_out():
    # a model of your own may override pairwise_distance without out=: the engine copies its result
    from types import SimpleNamespace

    from reid.engine.base import ReidEngine
    from reid.engine.evaluation import EvalOptions
    from reid.metrics import compute_distance_matrix

    class OldModel:
        def pairwise_distance(self, query, gallery, metric="euclidean", normalize=False, chunk_size=None):
            return compute_distance_matrix(query, gallery, metric)

    class NewModel(OldModel):
        def pairwise_distance(self, query, gallery, metric="euclidean", normalize=False, chunk_size=None, out=None):
            self.out = out
            return compute_distance_matrix(query, gallery, metric, out=out)

    query, gallery = torch.randn(4, 3), torch.randn(6, 3)
    expected = compute_distance_matrix(query, gallery)
    for model in (OldModel(), NewModel()):
        engine = SimpleNamespace(model=model, device=torch.device("cpu"), chunk_size=None, eval_options=EvalOptions())
        buffer = torch.empty(4, 6)
        assert ReidEngine.distance_matrix(engine, query, gallery, out=buffer) is buffer
        assert torch.equal(buffer, expected)
        assert torch.equal(ReidEngine.distance_matrix(engine, query, gallery), expected)
    assert model.out is None  # the last call had no buffer to pass on
