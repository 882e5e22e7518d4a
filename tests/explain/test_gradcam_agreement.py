"""Our similarity attention maps equal pytorch-grad-cam's GradCAM for the same score.

pytorch-grad-cam (PyPI ``grad-cam``, used here as a library only) explains a *target*: a callable
on one sample's model output. Given the target ``s = w . normalize(f)``, its GradCAM is Eq. 1 of
the SAM paper, so it must equal :func:`reid.explain.attention_maps` with weights ``w`` up to
grad-cam's post-processing: it min-max normalises the raw map, resizes it (OpenCV bilinear) to
the input, and min-max normalises again. Min-max normalisation is affine-invariant, so its output
is ``normalize_maps(resize_maps(raw, input size))`` of our raw map.

Reference: SAM paper, section 3.1, Eq. 1; ``docs/method.md`` section 2.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from reid.explain import attention_maps, normalize_maps, pair_weights, resize_maps

gradcam = pytest.importorskip(
    "pytorch_grad_cam", reason="pytorch-grad-cam is not installed: pip install -e '.[test]' (grad-cam)"
)

HEIGHT, WIDTH = 128, 64


class WeightedSimilarityTarget:
    """grad-cam target ``s = w . normalize(f)`` for one sample's ``(D,)`` embedding ``f``."""

    def __init__(self, weights: torch.Tensor) -> None:
        self.weights = weights

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return (F.normalize(output, dim=0) * self.weights).sum()


@pytest.fixture(scope="module")
def model() -> nn.Module:
    """A random resnet18 embedder in eval mode (``fc`` removed: 512-d embeddings)."""
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None)
    net.fc = nn.Identity()
    return net.eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(4, 3, HEIGHT, WIDTH)


def gradcam_maps(model: nn.Module, layer: str, images: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's GradCAM of ``layer`` with one weighted-similarity target per image."""
    with gradcam.GradCAM(model=model, target_layers=[model.get_submodule(layer)]) as cam:
        out = cam(input_tensor=images, targets=[WeightedSimilarityTarget(w) for w in weights])
    return torch.from_numpy(out)


def ours(model: nn.Module, layer: str, images: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Our maps, post-processed as grad-cam does: resized to the input, then min-max normalised."""
    with torch.no_grad():
        raw, _ = attention_maps(model, layer, images, weights)
    assert (raw.flatten(1).amax(dim=1) > 0).all(), "a raw map is all zero: the comparison would be trivial"
    return normalize_maps(resize_maps(raw, images.shape[-2:]))


def embeddings(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return F.normalize(model(images), dim=1)


@pytest.mark.parametrize("layer", ["layer4", "layer3"])
def test_dot_product_score_matches_gradcam(model, images, layer):
    # each image explained by its similarity to the next image: s_i = f_{i+1} . f_i
    weights = embeddings(model, images).roll(1, dims=0)
    theirs = gradcam_maps(model, layer, images, weights)
    mine = ours(model, layer, images, weights)
    assert theirs.shape == mine.shape == (4, HEIGHT, WIDTH)
    torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("same", [True, False])
def test_siamese_weights_match_gradcam(model, images, same):
    f = embeddings(model, images)
    weights = pair_weights(f, f.roll(1, dims=0), same)
    torch.testing.assert_close(
        ours(model, "layer4", images, weights), gradcam_maps(model, "layer4", images, weights), atol=1e-5, rtol=0
    )


def test_comparison_can_fail(model, images):
    # another score gives other maps, so the agreement above is not a property of any two maps
    f = embeddings(model, images)
    mine = ours(model, "layer4", images, f.roll(1, dims=0))
    other = gradcam_maps(model, "layer4", images, f.roll(2, dims=0))
    assert (mine - other).abs().amax() > 0.1
