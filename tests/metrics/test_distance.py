"""Tests for reid.metrics.distance: hand-computed values, torchreid equality, chunking."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from reid.metrics import (
    DISTANCE_METRICS,
    compute_distance_matrix,
    cosine_distance,
    euclidean_distance,
    euclidean_squared_distance,
    paired_euclidean_distance,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from torchreid.reid.metrics.distance import compute_distance_matrix as torchreid_distance


def _features(rows: int, dim: int, seed: int) -> torch.Tensor:
    return torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed))


def test_hand_computed_values() -> None:
    x = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    y = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    # Squared distances: |(3,4)|^2 = 25, |(1,0)|^2 = 1, |(2,2)|^2 = 8, |(0,2)|^2 = 4.
    assert compute_distance_matrix(x, y).tolist() == [[25.0, 1.0], [8.0, 4.0]]
    # Cosine: (1,2).(3,4) / (sqrt5 * 5) = 11 / (5 sqrt5); (1,2).(1,0) / sqrt5 = 1 / sqrt5;
    # a zero vector normalises to zero (eps), so its distance to anything is 1.
    expected = [[1.0, 1.0], [1 - 11 / (5 * math.sqrt(5)), 1 - 1 / math.sqrt(5)]]
    got = compute_distance_matrix(x, y, "cosine")
    assert torch.allclose(got, torch.tensor(expected), atol=1e-6)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("shape", [(7, 13, 5), (60, 150, 32)])
def test_equals_torchreid(metric: str, shape: tuple[int, int, int]) -> None:
    num_x, num_y, dim = shape
    x, y = _features(num_x, dim, 0), _features(num_y, dim, 1)
    ref = torchreid_distance(x, y, metric)
    got = compute_distance_matrix(x, y, metric)
    assert got.dtype == torch.float32 and got.shape == ref.shape
    # A BLAS may round a row block's products differently: a few float32 ulps of |x|^2.
    assert torch.allclose(got, ref, rtol=1e-6, atol=1e-5 * dim)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_chunked_equals_unchunked(metric: str) -> None:
    x, y = _features(37, 16, 2), _features(50, 16, 3)
    whole = compute_distance_matrix(x, y, metric, chunk_size=37)
    for chunk in (1, 5, 36):
        assert torch.allclose(
            compute_distance_matrix(x, y, metric, chunk_size=chunk), whole, rtol=1e-6, atol=1e-4
        )


def test_dtypes_numpy_and_float64() -> None:
    x, y = _features(4, 3, 4), _features(5, 3, 5)
    assert euclidean_squared_distance(x.double(), y.double()).dtype == torch.float64
    assert cosine_distance(x.half(), y).dtype == torch.float32
    from_numpy = compute_distance_matrix(x.numpy(), y.numpy())
    assert torch.equal(from_numpy, compute_distance_matrix(x, y))
    expected = ((x.double()[:, None, :] - y.double()[None]) ** 2).sum(-1)
    assert torch.allclose(euclidean_squared_distance(x.double(), y.double()), expected, atol=1e-12)


def test_errors() -> None:
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="Unknown distance metric"):
        compute_distance_matrix(x, x, "manhattan")
    with pytest.raises(ValueError, match="feature sizes"):
        compute_distance_matrix(x, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="2-D"):
        compute_distance_matrix(torch.zeros(3), x)
    with pytest.raises(ValueError, match="chunk_size"):
        compute_distance_matrix(x, x, chunk_size=0)


def test_empty_inputs() -> None:
    assert compute_distance_matrix(torch.zeros(0, 3), torch.zeros(4, 3)).shape == (0, 4)
    assert compute_distance_matrix(torch.zeros(2, 3), torch.zeros(0, 3), "cosine").shape == (2, 0)


# AVSL level distances d^l = sum_i delta^l_i (moved from tests/engine/test_avsl_engine.py).
def test_squared_distances_match_the_sum_of_nodes():
    torch.manual_seed(0)
    x, y = torch.randn(3, 5), torch.randn(4, 5)
    expected = (x[:, None] - y[None]).pow(2).sum(-1)
    assert torch.allclose(euclidean_squared_distance(x, y, clamp_min=0.0), expected, atol=1e-5)
    assert euclidean_squared_distance(x, clamp_min=0.0).shape == (3, 3)


# -- the one implementation for losses, evaluation and AVSL ----------------------------------


def test_every_named_metric_is_accepted() -> None:
    assert DISTANCE_METRICS == ("euclidean", "cosine")
    x = _features(3, 4, 6)
    for metric in DISTANCE_METRICS:
        assert compute_distance_matrix(x, x, metric).shape == (3, 3)


def test_squared_distance_clamp_and_default_second_input() -> None:
    # Rounding may leave tiny negatives on the diagonal of x against itself; clamp_min removes them.
    x = _features(20, 64, 7) * 100.0
    raw = euclidean_squared_distance(x)
    assert torch.equal(raw, euclidean_squared_distance(x, x))
    clamped = euclidean_squared_distance(x, clamp_min=0.0)
    assert torch.equal(clamped, raw.clamp_min(0.0)) and bool((clamped >= 0).all())


def test_euclidean_distance_is_the_clamped_square_root() -> None:
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [3.0, 4.0]])
    got = euclidean_distance(x)
    # 3-4-5 triangle; identical rows sit at sqrt(1e-12) = 1e-6 by the clamp
    assert torch.allclose(got, torch.tensor([[1e-6, 5.0, 5.0], [5.0, 1e-6, 1e-6], [5.0, 1e-6, 1e-6]]))
    assert torch.equal(got, euclidean_squared_distance(x).clamp_min(1e-12).sqrt())
    assert torch.allclose(euclidean_distance(x, eps=1e-4)[1, 2], torch.tensor(1e-2))


def test_chunked_squared_distance_keeps_the_gradient() -> None:
    x = _features(9, 6, 8).double().requires_grad_(True)
    y = _features(4, 6, 9).double().requires_grad_(True)
    whole = euclidean_squared_distance(x, y)
    chunked = euclidean_squared_distance(x, y, chunk_size=2)
    assert torch.allclose(chunked, whole, atol=1e-12)
    grads_whole = torch.autograd.grad(whole.pow(2).sum(), (x, y))
    grads_chunked = torch.autograd.grad(chunked.pow(2).sum(), (x, y))
    for a, b in zip(grads_whole, grads_chunked):
        assert torch.allclose(a, b, atol=1e-10)
    # the analytic gradient of sum_mn d_mn^2 with respect to x_m: 4 sum_n d_mn (x_m - y_n)
    d = whole.detach()
    expected = 4 * (d[:, :, None] * (x.detach()[:, None] - y.detach()[None])).sum(1)
    assert torch.allclose(grads_whole[0], expected, atol=1e-9)


def test_paired_euclidean_distance_by_hand() -> None:
    a = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]], requires_grad=True)
    b = torch.tensor([[3.0, 4.0], [1.0, 1.0], [2.0, 3.0]])
    got = paired_euclidean_distance(a, b)
    assert got.tolist() == [5.0, 0.0, 1.0]
    got.sum().backward()
    assert torch.isfinite(a.grad).all() and a.grad[1].tolist() == [0.0, 0.0]  # zero difference
    with pytest.raises(ValueError, match="one shape"):
        paired_euclidean_distance(a, b[:2])



def test_normalize_compares_unit_rows():
    from reid.metrics.distance import compute_distance_matrix

    a = torch.tensor([[3.0, 4.0]])
    b = torch.tensor([[0.0, 2.0], [1.0, 0.0]])
    # unit rows (0.6, 0.8) against (0, 1) and (1, 0): squared distances 0.4 and 0.8 by hand
    assert torch.allclose(compute_distance_matrix(a, b, "euclidean", normalize=True), torch.tensor([[0.4, 0.8]]))
    assert torch.allclose(compute_distance_matrix(a.numpy(), b.numpy(), "cosine", normalize=True),
                          torch.tensor([[0.2, 0.4]]))


def test_in_place_path_gives_the_autograd_numbers() -> None:
    # without autograd the squared distances are written in place (norms, then addmm_); with it
    # they are one out-of-place addmm: the same BLAS call, the same numbers, chunked or not
    x, y = _features(37, 24, 10), _features(53, 24, 11)
    with torch.no_grad():
        in_place = euclidean_squared_distance(x, y, chunk_size=5)
    tracked = euclidean_squared_distance(x.clone().requires_grad_(True), y, chunk_size=5)
    assert torch.equal(in_place, tracked.detach())


def test_blocks_of_whole_chunks_equal_the_whole_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    # DistanceRows rounds a block down to whole chunks, so its rows are computed by the very BLAS
    # calls of the whole matrix: bit-identical (a GEMM's rounding may depend on its row count)
    from reid.metrics import DistanceRows, distance

    monkeypatch.setattr(distance, "_CHUNK_BYTES", 4 * 200 * 7)  # 7 rows per chunk of 200 columns
    assert distance.chunk_rows(200) == 7
    query, gallery = _features(60, 32, 12), _features(200, 32, 13)
    whole = compute_distance_matrix(query, gallery).numpy()
    rows = DistanceRows.from_features(query, gallery, compute_distance_matrix, block_mb=4 * 200 * 17 / 2**20)
    assert rows.block_rows == 14  # 17 rows of budget, rounded down to two chunks
    for start in range(0, 60, rows.block_rows):
        assert (rows[start : start + rows.block_rows] == whole[start : start + rows.block_rows]).all()
    # a budget below one chunk keeps its own size
    assert DistanceRows.from_features(query, gallery, compute_distance_matrix, block_mb=4 * 200 * 3 / 2**20).block_rows == 3


def test_large_inputs_are_prepared_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from reid.metrics import distance

    monkeypatch.setattr(distance, "_PREPARE_ELEMENTS", 100)
    monkeypatch.setattr(distance, "_PREPARED", {})
    calls = []

    def norms(x: torch.Tensor) -> torch.Tensor:
        calls.append(x)
        return x.pow(2).sum(dim=1)

    gallery = _features(30, 8, 14)  # 240 numbers: prepared once
    first = distance._prepared(gallery, "squared_norms", norms)
    assert distance._prepared(gallery, "squared_norms", norms) is first and len(calls) == 1
    gallery.mul_(2)  # changed in place: prepared again, with the new values
    assert torch.allclose(distance._prepared(gallery, "squared_norms", norms), 4 * first) and len(calls) == 2
    small = _features(3, 8, 15)  # 24 numbers: every time
    distance._prepared(small, "squared_norms", norms)
    distance._prepared(small, "squared_norms", norms)
    assert len(calls) == 4
    del gallery, calls[:]  # freed: the remembered result goes with it
    assert "squared_norms" not in distance._PREPARED
    # and the distances themselves do not change
    query, other = _features(10, 8, 16), _features(40, 8, 17)
    assert torch.equal(compute_distance_matrix(query, other, normalize=True),
                       compute_distance_matrix(query, other, normalize=True))
    assert torch.equal(compute_distance_matrix(query, other, "cosine"), torchreid_distance(query, other, "cosine"))


def test_out_receives_the_distances() -> None:
    x, y = _features(9, 6, 18), _features(11, 6, 19)
    for metric in ("euclidean", "cosine"):
        buffer = torch.full((9, 11), float("nan"))
        got = compute_distance_matrix(x, y, metric, normalize=True, out=buffer)
        assert got is buffer and torch.equal(buffer, compute_distance_matrix(x, y, metric, normalize=True))
    with pytest.raises(ValueError, match="out must be a contiguous"):
        compute_distance_matrix(x, y, out=torch.empty(9, 10))
    with pytest.raises(ValueError, match="out must be a contiguous"):
        compute_distance_matrix(x, y, out=torch.empty(11, 9).t())
    with pytest.raises(ValueError, match="autograd"):
        euclidean_squared_distance(x.clone().requires_grad_(True), y, out=torch.empty(9, 11))


def test_streamed_blocks_into_one_buffer() -> None:
    from reid.metrics import DistanceRows

    query, gallery = _features(23, 8, 20), _features(40, 8, 21)
    budget = 4 * 40 * 5 / 2**20  # five rows a block
    fresh = DistanceRows.from_features(query, gallery, compute_distance_matrix, block_mb=budget)
    rows = DistanceRows.from_features(query, gallery, compute_distance_matrix, block_mb=budget, into_buffer=True)
    addresses = set()
    for start in range(0, 23, rows.block_rows):
        block = rows[start : start + rows.block_rows]
        addresses.add(block.__array_interface__["data"][0])
        assert (block == fresh[start : start + rows.block_rows]).all()
    assert rows.block_rows == 5 and addresses and len(addresses) == 1  # one buffer, every block
