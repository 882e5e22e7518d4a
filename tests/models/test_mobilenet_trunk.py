"""The MobileNetV2 trunk: the same stage names and strides as the ResNets, the last stride, the
padding modes, ImageNet weights from disk, and the refusal to train without them."""

import os

import pytest
import torch
import torchvision

from reid.models.avsl import AVSL
from reid.models.pcb import PCB
from reid.models.trunks import (
    STAGES,
    build_trunk,
    feature_map_size,
    find_pretrained_weights,
    missing_weights_message,
    stage_channels,
    trunk_stages,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _stage_outputs(trunk, x):
    stem, *stages = trunk_stages(trunk)
    x = stem(x)
    outputs = []
    for stage in stages:
        x = stage(x)
        outputs.append(x)
    return outputs


@pytest.mark.parametrize("height, width", [(64, 32), (96, 48), (70, 35)])
@pytest.mark.parametrize("last_stride", [1, 2])
def test_stages_have_the_resnet_strides_and_channels(height, width, last_stride):
    trunk = build_trunk("mobilenet_v2", last_stride, pretrained=False, path="").eval()
    with torch.no_grad():
        outputs = _stage_outputs(trunk, torch.zeros(1, 3, height, width))
    for stage, out in zip(STAGES, outputs):
        assert tuple(out.shape[-2:]) == feature_map_size(height, width, last_stride, stage), stage
        assert out.shape[1] == stage_channels("mobilenet_v2", stage), stage
    assert [stage_channels("mobilenet_v2", s) for s in STAGES] == [24, 32, 96, 1280]


def test_stages_are_torchvision_features_cut_in_five():
    """With the torchvision stride the five pieces compose to ``features`` exactly (same modules)."""
    torch.manual_seed(0)
    trunk = build_trunk("mobilenet_v2", 2, pretrained=False, path="").eval()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        assert torch.equal(_stage_outputs(trunk, x)[-1], trunk.features(x))
    pieces = trunk_stages(trunk)
    assert sum(len(piece) for piece in pieces) == len(trunk.features) == 19
    assert pieces[0][0] is trunk.features[0] and pieces[-1][-1] is trunk.features[18]


def test_last_stride_one_changes_only_the_depthwise_convolution_of_block_14():
    strided = build_trunk("mobilenet_v2", 2, pretrained=False, path="")
    unstrided = build_trunk("mobilenet_v2", 1, pretrained=False, path="")
    strides = lambda t: [m.stride for m in t.modules() if isinstance(m, torch.nn.Conv2d)]  # noqa: E731
    changed = [i for i, (a, b) in enumerate(zip(strides(strided), strides(unstrided))) if a != b]
    assert len(changed) == 1 and strides(unstrided)[changed[0]] == (1, 1)
    assert unstrided.features[14].conv[1][0].stride == (1, 1)


def test_padding_mode_reaches_every_padded_convolution():
    trunk = build_trunk("mobilenet_v2", 1, pretrained=False, path="", padding_mode="reflect")
    padded = [m for m in trunk.modules() if isinstance(m, torch.nn.Conv2d) and m.padding != (0, 0)]
    assert len(padded) == 18 and all(m.padding_mode == "reflect" for m in padded)


def test_imagenet_weights_load_from_disk_and_absence_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    message = missing_weights_message("mobilenet_v2")
    assert "reid weights fetch mobilenet_v2" in message and "MODEL.PRETRAINED False" in message
    assert "torchvision's ImageNet file resnet50" in missing_weights_message("resnet50")
    torch.manual_seed(1)
    source = torchvision.models.mobilenet_v2()
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("classifier.")}
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(state, cache / "mobilenet_v2-0000abcd.pth")
    assert find_pretrained_weights("mobilenet_v2") == str(cache / "mobilenet_v2-0000abcd.pth")
    assert missing_weights_message("mobilenet_v2") is None
    model = PCB(5, backbone="mobilenet_v2", num_stripes=2, reduced_dim=8, pretrained=True)
    assert torch.equal(model.stem[0][0].weight, source.features[0][0].weight)
    assert torch.equal(model.layer4[-1][1].running_var, source.features[18][1].running_var)
    # a ResNet file is not MobileNetV2 weights
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet.pth")
    with pytest.raises(ValueError, match="does not hold mobilenet_v2 weights"):
        build_trunk("mobilenet_v2", 1, pretrained=True, path=str(tmp_path / "resnet.pth"))


def test_pcb_and_avsl_run_on_the_trunk():
    x = torch.randn(2, 3, 64, 32)
    pcb = PCB(5, backbone="mobilenet_v2", num_stripes=2, reduced_dim=8, pretrained=False).eval()
    with torch.no_grad():
        assert pcb.forward_features(x).shape == (2, 1280, 4, 2)
        assert pcb(x).shape == (2, 2 * 1280)
    avsl = AVSL(5, backbone="mobilenet_v2", embed_dim=16, topk=4, pretrained=False).eval()
    with torch.no_grad():
        maps = avsl.level_maps(x)
    assert [m.shape[1] for m in maps] == [32, 96, 1280]


def test_train_refuses_a_pretrained_config_without_weights(tmp_path, monkeypatch, tiny_data_root):
    from reid.cli import train as train_tool
    from tests.conftest import tiny_overrides

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    overrides = tiny_overrides(tiny_data_root, tmp_path / "out")
    overrides[overrides.index("MODEL.PRETRAINED") + 1] = "True"
    overrides[overrides.index("MODEL.BACKBONE") + 1] = "mobilenet_v2"
    with pytest.raises(SystemExit, match="reid weights fetch mobilenet_v2"):
        train_tool.main(["--config", os.path.join(REPO, "configs", "synthetic_pcb.yaml"), *overrides])
    assert not (tmp_path / "out" / "checkpoints").exists()
