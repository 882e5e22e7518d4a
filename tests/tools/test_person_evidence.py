"""benchmarks/person_evidence.py: its formulas against hand oracles, and one run end to end."""

import os

import pytest
import torch

from benchmarks import person_evidence
from reid.explain import explain_pair_features
from reid.models.pcb import pcb
from tests.conftest import tiny_overrides
from reid.cli import train as train_tool

CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "synthetic_pcb.yaml")


def test_ceiling_of_a_half_mask_pooled_to_two_columns():
    # person = left half of a 4x4 image; pooled to 1x2 the map is [1, 0]; resized back bilinearly
    # (align_corners=False) each row is [1, 0.75, 0.25, 0]: 1.75 of 2.0 inside the person
    person = torch.zeros(4, 4)
    person[:, :2] = 1
    assert person_evidence.ceiling_fraction(person, (1, 2)) == pytest.approx(0.875)
    # at full resolution the mask itself is the map: all of its mass is inside
    assert person_evidence.ceiling_fraction(person, (4, 4)) == pytest.approx(1.0)


def test_third_share_by_hand():
    maps = torch.zeros(2, 2, 6)
    maps[0, :, 0:2] = 1.0  # all of the mass in the left third
    maps[1, 0, :] = torch.tensor([1.0, 0.0, 2.0, 1.0, 0.0, 0.0])  # 1/4, 3/4, 0
    assert person_evidence.third_share(maps, 0) == pytest.approx((1.0 + 0.25) / 2)
    assert person_evidence.third_share(maps, 1) == pytest.approx((0.0 + 0.75) / 2)
    # an all-zero map is skipped rather than dividing by zero
    assert person_evidence.third_share(torch.cat([maps, torch.zeros(1, 2, 6)]), 2) == pytest.approx(0.0)


def test_maps_against_equals_the_siamese_maps_of_reid_explain():
    torch.manual_seed(0)
    model = pcb(num_classes=4, backbone="resnet18", pretrained=False, num_stripes=2).eval()
    with torch.no_grad():
        features = model.forward_features(torch.randn(6, 3, 64, 32))
    first, second = features[:3], features[3:]
    _, expected = explain_pair_features(model.embed_features, first, second, torch.ones(3, dtype=torch.bool))
    got = person_evidence.maps_against(model, first, second, batch=2)
    torch.testing.assert_close(got, expected.float())
    assert got.abs().sum() > 0


def test_runs_end_to_end_on_the_tiny_set(tiny_data_root, tmp_path, capsys):
    train_out = tmp_path / "train"
    train_tool.main(["--config", CONFIG, "--no-progress", *tiny_overrides(tiny_data_root, train_out)])
    weights = train_out / "checkpoints" / "checkpoint_last.pth"
    overrides = tiny_overrides(tiny_data_root, tmp_path / "unused")[4:]  # all but DATA.ROOT/OUTPUT_DIR pairs
    overrides = ["DATA.ROOT", str(tiny_data_root), *overrides, "TEST.EXPLAIN_LAYER", "layer1"]
    results = person_evidence.main([
        "--run", f"tiny={CONFIG}:{weights}", "--num-pairs", "5", "--output-root", str(tmp_path / "pe"), *overrides,
    ])
    row = results["tiny"]
    assert row["pairs"] == 5
    for key in ("rank1", "mAP", "rank1_person_only", "mAP_person_only", "mass", "mass_person_only",
                "locality_left", "locality_middle", "locality_right"):
        assert 0.0 <= row[key] <= 1.0, key
    # a 4x2 map (64x32 input, stride 16) still concentrates a pooled mask on the person
    assert row["map_size"] == "4x2"
    assert 0.0 < row["area"] < row["ceiling"] < 1.0
    # the config's explained layer: layer1 of a 64x32 input is 16x8
    assert row["explain_layer"] == "layer1" and row["explain_layer_map_size"] == "16x8"
    assert 0.0 <= row["explain_layer_mass"] <= 1.0
    printed = capsys.readouterr().out
    assert "reliance on the person" in printed and "locality" in printed and "tiny" in printed
    assert "TEST.EXPLAIN_LAYER" in printed
