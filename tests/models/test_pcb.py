import pytest
import torch
import torch.nn.functional as F
import torchvision

from reid.models import PCB, PCBOutput, create_model, list_models


def small_pcb(backbone="resnet18", stripes=3, **kw):
    torch.manual_seed(0)
    return create_model("pcb", num_classes=5, backbone=backbone, num_stripes=stripes,
                        reduced_dim=16, pretrained=False, **kw)


@pytest.mark.parametrize("backbone, channels", [("resnet18", 512), ("resnet34", 512), ("resnet50", 2048)])
@pytest.mark.parametrize("stripes", [1, 4, 6])
def test_shapes_and_gradients(backbone, channels, stripes):
    model = small_pcb(backbone, stripes)
    x = torch.randn(4, 3, 64, 32)
    out = model(x)
    assert isinstance(out, PCBOutput)
    assert len(out.logits) == stripes and out.logits[0].shape == (4, 5)
    assert out.features.shape == (4, stripes, 16)
    # stride-1 layer4: 64x32 input -> 4x2 map (overall stride 16)
    assert out.feature_map.shape == (4, channels, 4, 2)
    loss = sum(l.logsumexp(1).mean() for l in out.logits) + out.features.pow(2).mean()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    model.eval()
    with torch.no_grad():
        emb = model(x)
    assert emb.shape == (4, stripes * channels) == (4, model.embedding_dim)
    assert torch.isfinite(emb).all()


def test_eval_embedding_is_normalised_stripes():
    model = small_pcb(stripes=2).eval()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        emb = model(x)
        fmap = model.forward_features(x)
    # oracle: mean over each half of the map's rows, per-stripe L2 normalisation
    top = fmap[:, :, :2].mean(dim=(2, 3))
    bottom = fmap[:, :, 2:].mean(dim=(2, 3))
    expected = torch.cat([F.normalize(top, dim=1), F.normalize(bottom, dim=1)], dim=1)
    assert torch.allclose(emb, expected, atol=1e-5)
    assert torch.allclose(emb.view(2, 2, -1).norm(dim=2), torch.ones(2, 2), atol=1e-5)


def test_reduced_test_feature():
    model = small_pcb(stripes=3, test_feature="reduced").eval()
    with torch.no_grad():
        emb = model(torch.randn(2, 3, 64, 32))
    assert emb.shape == (2, 3 * 16) == (2, model.embedding_dim)


def test_last_stride_two_halves_the_map():
    model = small_pcb(last_stride=2)
    assert model.forward_features(torch.randn(1, 3, 64, 32)).shape[-2:] == (2, 1)


def test_pretrained_weights_from_local_file(tmp_path, caplog):
    torch.manual_seed(1)
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18-test.pth"
    torch.save(reference.state_dict(), path)
    model = create_model("pcb", num_classes=3, backbone="resnet18", pretrained_path=str(path))
    assert torch.equal(model.stem[0].weight, reference.conv1.weight)
    assert torch.equal(model.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)


def test_missing_pretrained_file_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        create_model("pcb", num_classes=3, backbone="resnet18", pretrained_path=str(missing))


def test_no_weights_logs_random_init(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with caplog.at_level("WARNING"):
        create_model("pcb", num_classes=3, backbone="resnet18")
    assert "RANDOM weights" in caplog.text


def test_registry_and_bad_arguments():
    assert "pcb" in list_models()
    with pytest.raises(KeyError, match="unknown model"):
        create_model("nope", num_classes=2)
    with pytest.raises(ValueError, match="backbone"):
        PCB(num_classes=2, backbone="vgg", pretrained=False)
    with pytest.raises(ValueError, match="test_feature"):
        PCB(num_classes=2, backbone="resnet18", pretrained=False, test_feature="x")


@pytest.mark.parametrize("mode", ["reflect", "replicate"])
def test_padding_mode_removes_the_border_cue(mode):
    """A constant image gives a spatially constant layer4 map without zero padding (every conv
    and the max-pool see a constant field), but not with it; the parameters do not change."""
    zeros = small_pcb().eval()
    other = small_pcb(padding_mode=mode).eval()
    assert other.state_dict().keys() == zeros.state_dict().keys()
    other.load_state_dict(zeros.state_dict())
    padded = [m for m in other.modules() if isinstance(m, torch.nn.Conv2d) and max(m.padding) > 0]
    assert len(padded) == 17 and all(m.padding_mode == mode for m in padded)  # 7x7 stem + 16 3x3
    image = torch.full((1, 3, 64, 32), 0.7)
    with torch.no_grad():
        flat = other.forward_features(image)
        bordered = zeros.forward_features(image)
    torch.testing.assert_close(flat, flat[:, :, :1, :1].expand_as(flat))
    assert (bordered - bordered[:, :, :1, :1]).abs().max() > 1e-3
    # a non-constant image: the same weights, a different map
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        assert not torch.allclose(other(x), zeros(x))


def test_padding_mode_from_the_config_and_bad_value():
    from reid.config import load_config
    from reid.builders import build_model

    for name in ("pcb", "avsl"):
        cfg = load_config(None, ["MODEL.NAME", name, "MODEL.BACKBONE", "resnet18", "MODEL.PRETRAINED", "False",
                                 "MODEL.PADDING_MODE", "replicate"])
        model = build_model(cfg, num_classes=3)
        assert model.stem[0].padding_mode == "replicate", name
        assert model.layer1[0].conv1.padding_mode == "replicate", name
    with pytest.raises(ValueError, match="padding_mode"):
        small_pcb(padding_mode="circular")
