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
