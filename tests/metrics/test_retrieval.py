"""Tests for reid.metrics.retrieval: dense top-k, tie order, FAISS equals dense."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reid.metrics import compute_distance_matrix, smallest_k, topk_retrieval


def _features(rows: int, dim: int, seed: int, integer: bool = False) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if integer:
        return torch.randint(0, 3, (rows, dim), generator=gen).float()
    return torch.randn(rows, dim, generator=gen)


def _reference(query: torch.Tensor, gallery: torch.Tensor, k: int, metric: str) -> np.ndarray:
    """Oracle: full distance matrix, rows sorted by (distance, gallery index)."""
    dist = compute_distance_matrix(query, gallery, metric).numpy()
    cols = np.arange(dist.shape[1])
    return np.stack([np.lexsort((cols, row))[:k] for row in dist])


def test_smallest_k_hand_computed_ties() -> None:
    dist = torch.tensor([[1.0, 0.0, 1.0, 0.0, 2.0, 1.0]])
    values, cols = smallest_k(dist, 3)
    # Both zeros (columns 1, 3), then the first of the three tied ones (column 0).
    assert values.tolist() == [[0.0, 0.0, 1.0]] and cols.tolist() == [[1, 3, 0]]
    values, cols = smallest_k(dist, 5)
    assert cols.tolist() == [[1, 3, 0, 2, 5]]
    assert smallest_k(dist, 0)[1].shape == (1, 0)


# Integer features give exact integer squared distances with many ties (cosine distances of
# them are not exact, so chunks rounded differently could swap near-equal ones).
@pytest.mark.parametrize(
    ("metric", "integer"), [("euclidean", False), ("cosine", False), ("euclidean", True)]
)
def test_dense_topk_equals_full_sort(metric: str, integer: bool) -> None:
    query, gallery = _features(23, 6, 0, integer), _features(140, 6, 1, integer)
    ref = _reference(query, gallery, 10, metric)
    for chunk in (None, 1, 5):
        got = topk_retrieval(query, gallery, 10, metric, chunk_size=chunk)
        assert np.array_equal(got.indices.numpy(), ref)
        full = compute_distance_matrix(query, gallery, metric).numpy()
        assert np.allclose(got.distances.numpy(), np.take_along_axis(full, ref, 1), atol=1e-5)


def test_k_larger_than_gallery_is_clipped_and_errors() -> None:
    query, gallery = _features(3, 4, 2), _features(5, 4, 3)
    assert topk_retrieval(query, gallery, 50).indices.shape == (3, 5)
    with pytest.raises(ValueError, match="backend"):
        topk_retrieval(query, gallery, 2, backend="annoy")
    with pytest.raises(ValueError, match="k must be"):
        topk_retrieval(query, gallery, -1)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_faiss_flat_equals_dense(metric: str) -> None:
    pytest.importorskip("faiss", reason="faiss-cpu not installed (optional extra 'faiss')")
    query, gallery = _features(40, 16, 4), _features(600, 16, 5)
    dense = topk_retrieval(query, gallery, 15, metric)
    for chunk in (None, 7):
        got = topk_retrieval(query, gallery, 15, metric, backend="faiss", chunk_size=chunk)
        assert np.array_equal(got.indices.numpy(), dense.indices.numpy())
        assert np.allclose(got.distances.numpy(), dense.distances.numpy(), rtol=1e-5, atol=1e-5)


def test_faiss_orders_ties_by_gallery_index() -> None:
    pytest.importorskip("faiss", reason="faiss-cpu not installed (optional extra 'faiss')")
    # Small integer features: squared distances are exact small integers with many ties.
    query, gallery = _features(30, 4, 6, integer=True), _features(300, 4, 7, integer=True)
    got = topk_retrieval(query, gallery, 25, backend="faiss")
    assert np.array_equal(got.indices.numpy(), _reference(query, gallery, 25, "euclidean"))
    assert topk_retrieval(query, gallery, 1000, backend="faiss").indices.shape == (30, 300)


def test_faiss_missing_gives_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_faiss(name, *args, **kwargs):
        if name == "faiss":
            raise ImportError("No module named 'faiss'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_faiss)
    with pytest.raises(ImportError, match="pip install faiss-cpu"):
        topk_retrieval(_features(2, 3, 8), _features(4, 3, 9), 2, backend="faiss")
