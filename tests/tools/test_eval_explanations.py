"""End to end: train PCB for one epoch on the tiny synthetic set, then measure explanation quality."""

import json
import os
from types import SimpleNamespace

import pytest

from tests.conftest import tiny_overrides
from reid.cli import eval_explanations
from reid.explain import quality

# What each model is measured with, in table order (explainer_names must give exactly these).
PCB_EXPLAINERS = ("sam_siamese", "sam_triplet", "id_gradcam", "dot_gradcam", "decomposition", "actmap", "centre",
                  "random")
AVSL_EXPLAINERS = ("avsl_nodes", "sam_siamese", "sam_triplet", "dot_gradcam", "actmap", "centre", "random")
from reid.cli import train as train_tool

CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "synthetic_pcb.yaml")


@pytest.fixture(scope="module")
def checkpoint(tiny_data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    train_tool.main(["--config", CONFIG, "--no-progress", *tiny_overrides(tiny_data_root, out)])
    return out / "checkpoints" / "checkpoint_last.pth"


def test_eval_explanations_writes_every_explainer(tiny_data_root, checkpoint, tmp_path, capsys):
    out = tmp_path / "explq"
    result = eval_explanations.main([
        "--config", CONFIG, "--weights", str(checkpoint), "--num-triplets", "6", "--num-curves", "3",
        "--steps", "3", "--batch-size", "4", "--seed", "3", "--no-progress", *tiny_overrides(tiny_data_root, out),
    ])
    on_disk = json.loads((out / quality.RESULT_FILE).read_text())
    assert on_disk["table"] == result["table"]
    # the shipped synthetic config sets TEST.EXPLAIN_LAYER layer1: two more explainers at that layer
    layer_names = ("sam_siamese@layer1", "sam_triplet@layer1")
    assert set(on_disk["table"]) == {*PCB_EXPLAINERS, *layer_names}
    for name, row in on_disk["table"].items():
        assert row["num_localised"] == 12, name  # anchor and negative of 6 triplets (2 batches)
        assert row["num_curves"] == 3, name
        assert 0.0 <= row["pointing_game"] <= 1.0 and 0.0 <= row["energy_inside"] <= 1.0, name
        assert -1.0 <= row["deletion_auc"] <= 1.0 and -1.0 <= row["insertion_auc"] <= 1.0, name
    # the centre prior and the random map are pair-independent floors: the centre prior points
    # at one fixed pixel, so anchor and negative (same region) agree on it
    centre = on_disk["table"]["centre"]
    assert centre["pointing_game_anchor"] == centre["pointing_game_negative"]
    assert 0.0 < on_disk["floors"]["region_area"] < on_disk["floors"]["dilated_region_area"] < 1.0
    assert on_disk["settings"]["num_triplets"] == len(on_disk["triplets"]) == 6
    # the sanity check ran on the 6 triplets (default 16, capped by the triplets there are)
    sanity = on_disk["sanity"]
    assert sanity["blocks"] == ["head", "layer4", "layer3", "layer2", "layer1", "stem"]
    assert sanity["num_triplets"] == 6 and sanity["top_blocks"] == ["head", "layer4"]
    for name, row in on_disk["table"].items():
        assert row["sanity_top"] == sanity["correlation"][name][1], name
        assert row["sanity_flagged"] == (row["sanity_top"] > 0.5), name
        # every image's value is kept, and the interval holds the mean
        assert len(on_disk["values"][name]["pointing_game"]) == 12
        low, high = row["pointing_game_interval"]
        assert low <= row["pointing_game"] <= high
    assert on_disk["table"]["centre"]["sanity_flagged"]  # a map that ignores the model
    printed = capsys.readouterr().out
    for name in (*PCB_EXPLAINERS, *layer_names):
        assert name in printed
    assert "pointing game" in printed and "floors:" in printed and "FLAGGED" in printed


def test_non_synthetic_target_is_refused(tmp_path):
    """A target dataset without a generated synthetic folder (no ground truth) is named and refused."""
    dataset = SimpleNamespace(dataset_dir=str(tmp_path))  # exists, but holds no synthetic set
    engine = SimpleNamespace(test_loader={"dukemtmc": {"query": SimpleNamespace(dataset=dataset)}})
    with pytest.raises(SystemExit, match="needs the synthetic set.*'dukemtmc'"):
        eval_explanations.synthetic_dir(engine)


def test_avsl_path_gives_every_avsl_explainer_and_curves():
    """AVSL (untrained, tiny): node-CAM maps, top-level SAM/dot maps, and -d_hat curves."""
    import torch

    from reid.models import create_model

    torch.manual_seed(0)
    model = create_model("avsl", num_classes=4, backbone="resnet18", embed_dim=8, topk=4, pretrained=False).eval()
    xa, xp, xn = (torch.randn(2, 3, 64, 32) for _ in range(3))
    maps = quality.explain_batch(model, xa, xp, xn, top_nodes=3)
    assert set(maps.negative) == set(AVSL_EXPLAINERS)
    for name in AVSL_EXPLAINERS:
        for role in (maps.anchor, maps.negative, maps.positive):
            if name in ("centre", "random"):
                assert role[name] is None
            else:
                assert role[name].shape == (2, 4, 2) and (role[name] >= 0).all(), name
    scores = quality.Scores()
    generator = torch.Generator().manual_seed(0)
    quality.score_curves(model, maps, AVSL_EXPLAINERS, xa, xp, 2, "mean", generator, scores)
    # the similarity is -d_hat: the intact pair's value is the model's distance, negated
    with torch.no_grad():
        expected = -model.attribute(xa, xp)["distance"]
    measured = torch.tensor(scores.values["_pairs"]["full_similarity"], dtype=torch.float64)
    assert torch.allclose(measured, expected.double(), atol=1e-5)
    assert len(scores.values["avsl_nodes"]["deletion_auc"]) == 2


def test_explain_layer_at_layer4_equals_the_head_only_maps(tiny_data_root, checkpoint, tmp_path):
    """``sam_*@layer4`` (full model) must score exactly like ``sam_*`` (head-only): the same maps."""
    out = tmp_path / "explq4"
    result = eval_explanations.main([
        "--config", CONFIG, "--weights", str(checkpoint), "--num-triplets", "6", "--num-curves", "3",
        "--steps", "3", "--batch-size", "4", "--seed", "3", "--no-progress", *tiny_overrides(tiny_data_root, out),
        "TEST.EXPLAIN_LAYER", "layer4",
    ])
    table = result["table"]
    for form in ("sam_siamese", "sam_triplet"):
        for key in ("pointing_game", "energy_inside", "deletion_auc", "insertion_auc"):
            assert table[f"{form}@layer4"][key] == pytest.approx(table[form][key], abs=1e-5), (form, key)
    with pytest.raises(SystemExit, match="cannot explain layer 'nope'"):
        eval_explanations.main([
            "--config", CONFIG, "--weights", str(checkpoint), "--no-progress",
            *tiny_overrides(tiny_data_root, tmp_path / "bad"), "TEST.EXPLAIN_LAYER", "nope",
        ])


def test_explainer_names_follow_what_the_model_can_explain():
    from reid.models import AVSL, PCB

    pooled = PCB(num_classes=2, backbone="resnet18", num_stripes=2, pretrained=False)
    reduced = PCB(num_classes=2, backbone="resnet18", num_stripes=2, pretrained=False, test_feature="reduced")
    assert quality.explainer_names(pooled.explainability) == PCB_EXPLAINERS
    assert "decomposition" not in quality.explainer_names(reduced.explainability)
    assert quality.explainer_names(AVSL.explainability) == AVSL_EXPLAINERS
    assert quality.explainer_names(PCB.explainability, "layer1")[-2:] == ("sam_siamese@layer1", "sam_triplet@layer1")

