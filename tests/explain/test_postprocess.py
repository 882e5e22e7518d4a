import torch

from reid.explain import normalize_maps, resize_maps


def test_normalize_maps_per_sample_by_hand():
    maps = torch.tensor([[[1.0, 3.0], [2.0, 5.0]], [[-2.0, 0.0], [2.0, 0.0]], [[4.0, 4.0], [4.0, 4.0]]])
    before = maps.clone()
    out = normalize_maps(maps)
    expected = torch.tensor(
        [[[0.0, 0.5], [0.25, 1.0]], [[0.0, 0.5], [1.0, 0.5]], [[0.0, 0.0], [0.0, 0.0]]]
    )
    assert torch.allclose(out, expected)
    assert torch.equal(maps, before)


def test_resize_maps_bilinear_by_hand():
    # 1 x 2 -> 1 x 4 with align_corners=False: samples at x = -0.25, 0.25, 0.75, 1.25 (clamped)
    maps = torch.tensor([[[0.0, 4.0]]])
    out = resize_maps(maps, (1, 4))
    assert out.shape == (1, 1, 4)
    assert torch.allclose(out, torch.tensor([[[0.0, 1.0, 3.0, 4.0]]]))
    assert resize_maps(torch.rand(3, 3, 1), (96, 32)).shape == (3, 96, 32)


def test_postprocess_is_differentiable():
    maps = torch.rand(2, 3, 2, requires_grad=True)
    normalize_maps(resize_maps(maps, (6, 4))).sum().backward()
    assert maps.grad is not None


# Moved from tests/losses/test_similarity_mining.py (reid.losses re-exported these two as
# normalize_maps / upsample_maps; reid.explain is their one home).


def test_normalize_maps_hand_example() -> None:
    maps = torch.tensor([[[1.0, 3.0], [2.0, 5.0]], [[-2.0, 0.0], [0.0, 2.0]]])
    expected = torch.tensor([[[0.0, 0.5], [0.25, 1.0]], [[0.0, 0.5], [0.5, 1.0]]])
    assert torch.allclose(normalize_maps(maps), expected)


def test_normalize_maps_constant_map_gives_zeros() -> None:
    maps = torch.stack([torch.full((2, 3), 7.0), torch.tensor([[0.0, 1.0, 2.0], [3.0, 4.0, 4.0]])])
    maps.requires_grad_(True)
    out = normalize_maps(maps)
    assert torch.equal(out[0], torch.zeros(2, 3))
    assert out[1].max().item() == 1.0 and out[1].min().item() == 0.0
    out.sum().backward()
    assert torch.isfinite(maps.grad).all()


def test_normalize_maps_does_not_modify_input() -> None:
    maps = torch.tensor([[[1.0, 3.0], [2.0, 5.0]]])
    before = maps.clone()
    normalize_maps(maps)
    assert torch.equal(maps, before)


def test_resize_maps_hand_example() -> None:
    # align_corners=False, 1x2 -> 1x4: source x = (i + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25
    # (clamped to [0, 1]), so the values are a, 0.75a + 0.25b, 0.25a + 0.75b, b.
    a, b = 2.0, 6.0
    out = resize_maps(torch.tensor([[[a, b]]]), (1, 4))
    assert out.shape == (1, 1, 4)
    assert torch.allclose(out, torch.tensor([[[a, 0.75 * a + 0.25 * b, 0.25 * a + 0.75 * b, b]]]))
