"""Exact decompositions over stripes, cells and cell pairs: hand oracles and the model's own scores."""

import math

import pytest
import torch
import torch.nn.functional as F

from reid.explain.decomposition import check_decomposable, decompose_pair, stripe_weights
from reid.models.pcb import PCB

R2 = math.sqrt(2)


def hand_pair():
    """C = 2, a 2x1 map, P = 1. Query cells (1, 0) and (1, 0); gallery cells (0, 2) and (2, 0)."""
    query = torch.tensor([[1.0, 1.0], [0.0, 0.0]]).reshape(1, 2, 2, 1)
    gallery = torch.tensor([[0.0, 2.0], [2.0, 0.0]]).reshape(1, 2, 2, 1)
    return query, gallery


def test_stripe_weights_by_hand_and_as_adaptive_pooling():
    assert torch.equal(stripe_weights(4, 1, 2), torch.tensor([[[0.5], [0.5], [0.0], [0.0]], [[0.0], [0.0], [0.5], [0.5]]]))
    # 3 rows in 2 stripes: the bins overlap on the middle row (rows 0-1 and 1-2)
    assert torch.equal(stripe_weights(3, 1, 2)[:, :, 0], torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]]))
    maps = torch.randn(2, 3, 7, 3)
    weights = stripe_weights(7, 3, 3)
    pooled = torch.einsum("phw,bchw->bcp", weights, maps)
    assert torch.allclose(pooled, F.adaptive_avg_pool2d(maps, (3, 1))[..., 0], atol=1e-6)
    with pytest.raises(ValueError):
        stripe_weights(0, 1, 1)


def test_dot_product_by_hand():
    d = decompose_pair(*hand_pair(), num_stripes=1, metric="dot")
    # n_q = (1, 0), n_g = (1, 1)/sqrt 2: S = 1/sqrt 2. K = 0.25 x [[0, sqrt 2], [0, sqrt 2]]
    assert d.score.item() == pytest.approx(1 / R2)
    assert torch.allclose(d.pairs[0], torch.tensor([[0.0, R2 / 4], [0.0, R2 / 4]]))
    assert torch.allclose(d.query_cells[0, :, 0], torch.tensor([R2 / 4, R2 / 4]))
    # the gallery's lower cell (2, 0) carries the whole match
    assert torch.allclose(d.gallery_cells[0, :, 0], torch.tensor([0.0, R2 / 2]))
    assert d.stripes[0].tolist() == pytest.approx([1 / R2])


def test_squared_euclidean_by_hand():
    d = decompose_pair(*hand_pair(), num_stripes=1, metric="euclidean")
    # ||(1, 0) - (1, 1)/sqrt 2||^2 = 2 - sqrt 2
    assert d.score.item() == pytest.approx(2 - R2)
    # K(c, c') = 0.25 (x_q(c) - x_g(c')).(n_q - n_g): 0.25 (2 - 1/sqrt 2) and 0.25 (2 - 3/sqrt 2) per row
    row = torch.tensor([0.25 * (2 - 1 / R2), 0.25 * (2 - 3 / R2)])
    assert torch.allclose(d.pairs[0], torch.stack([row, row]))
    assert torch.allclose(d.query_cells[0, :, 0], torch.tensor([1 - R2 / 2, 1 - R2 / 2]))
    # the matching gallery cell pulls the pair together (negative), the other pushes it apart
    assert torch.allclose(d.gallery_cells[0, :, 0], torch.tensor([1 - 1 / (2 * R2), 1 - 3 / (2 * R2)]))


def test_cosine_is_the_dot_product_over_the_norms():
    query, gallery = hand_pair()
    two = [torch.cat([m, m], dim=2) for m in (query, gallery)]  # 4x1 maps, P = 2: ||f|| = sqrt 2 each
    dot = decompose_pair(*two, num_stripes=2, metric="dot")
    cos = decompose_pair(*two, num_stripes=2, metric="cosine")
    assert dot.score.item() == pytest.approx(2 / R2)
    assert cos.score.item() == pytest.approx(1 / R2)
    assert torch.allclose(cos.pairs, dot.pairs / 2)


@pytest.mark.parametrize("height,stripes", [(6, 3), (7, 3), (4, 1), (5, 4)])
def test_every_part_sums_to_the_model_score(height, stripes):
    torch.manual_seed(height * 10 + stripes)
    model = PCB(num_classes=3, backbone="resnet18", num_stripes=stripes, reduced_dim=8, pretrained=False).eval()
    assert check_decomposable(model) == stripes
    query, gallery = torch.randn(3, 512, height, 2).relu(), torch.randn(3, 512, height, 2).relu()
    with torch.no_grad():
        f_q, f_g = model.embed_features(query), model.embed_features(gallery)
    expected = {
        "dot": (f_q * f_g).sum(1),
        "cosine": F.cosine_similarity(f_q, f_g),
        "euclidean": ((f_q - f_g) ** 2).sum(1),
    }
    for metric, score in expected.items():
        d = decompose_pair(query, gallery, stripes, metric)
        for total in (d.score, d.stripes.sum(1), d.pairs.sum((1, 2)), d.query_cells.sum((1, 2)),
                      d.gallery_cells.sum((1, 2))):
            assert torch.allclose(total, score, atol=1e-5), metric
        assert d.pairs.shape == (3, height * 2, height * 2)
    # the dot product's stripe terms are the stripes' cosines
    n_q, n_g = f_q.reshape(3, stripes, -1), f_g.reshape(3, stripes, -1)
    assert torch.allclose(decompose_pair(query, gallery, stripes, "dot").stripes, (n_q * n_g).sum(2), atol=1e-5)


def test_cells_of_different_stripes_are_not_paired():
    d = decompose_pair(torch.randn(1, 4, 4, 1), torch.randn(1, 4, 4, 1), num_stripes=2, metric="dot")
    assert torch.all(d.pairs[0, :2, 2:] == 0) and torch.all(d.pairs[0, 2:, :2] == 0)


def test_refusals():
    reduced = PCB(num_classes=3, backbone="resnet18", num_stripes=2, reduced_dim=8, pretrained=False,
                  test_feature="reduced")
    with pytest.raises(ValueError, match="does not split exactly"):
        check_decomposable(reduced)
    with pytest.raises(ValueError, match="metric"):
        decompose_pair(torch.ones(1, 2, 2, 1), torch.ones(1, 2, 2, 1), 1, "manhattan")
    with pytest.raises(ValueError, match="same shape"):
        decompose_pair(torch.ones(1, 2, 2, 1), torch.ones(1, 2, 3, 1), 1)
