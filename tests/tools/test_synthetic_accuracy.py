"""benchmarks/synthetic_accuracy.py: the study's bookkeeping (resume, refusals, tables) with stand-in
trainers, and the torchreid reference arm trained for real on the tiny set."""

import json
import os

import pytest

from benchmarks import synthetic_accuracy as study
from tests.conftest import tiny_overrides

CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "synthetic_pcb.yaml")


def fake_trainers(calls):
    """rank-1 = 0.5 + 0.01 seed (+0.02 for pcb_sam); mAP half of it."""

    def make(arm):
        def train(config, output_dir, seed, opts, progress, **kwargs):
            calls.append((arm, seed))
            rank1 = 0.5 + 0.01 * seed + (0.02 if arm == "pcb_sam" else 0.0)
            return {"rank1": rank1, "rank5": 0.9, "mAP": rank1 / 2, "mINP": 0.1}
        return train

    return {arm: make(arm) for arm in study.ARMS}


def test_study_pairs_the_seeds_and_resumes(tmp_path):
    calls = []
    argv = ["--arms", "pcb", "pcb_sam", "--seeds", "0", "1", "2", "--output-root", str(tmp_path), "SEED", "0"]
    result = study.main(argv, trainers=fake_trainers(calls))
    assert calls == [("pcb", 0), ("pcb_sam", 0), ("pcb", 1), ("pcb_sam", 1), ("pcb", 2), ("pcb_sam", 2)]
    comparison = result["summary"]["comparisons"]["pcb_sam:pcb"]["rank1"]
    assert comparison["n"] == 3 and comparison["mean_difference"] == pytest.approx(0.02)
    assert comparison["wins"] == 3 and comparison["verdict"] == "a > b"
    assert result["summary"]["arms"]["pcb"]["rank1"]["mean"] == pytest.approx(0.51)
    table = (tmp_path / "study.md").read_text()
    assert "| pcb_sam - pcb | 3 | rank1 | +2.0 |" in table and "A > B" in table
    # a later call with one more seed trains only that seed, and keeps the recorded runs
    calls.clear()
    result = study.main([*argv[:7], "3", *argv[7:]], trainers=fake_trainers(calls))
    assert calls == [("pcb", 3), ("pcb_sam", 3)]
    assert result["summary"]["comparisons"]["pcb_sam:pcb"]["rank1"]["n"] == 4
    assert set(json.loads((tmp_path / "study.json").read_text())["runs"]["pcb"]) == {"0", "1", "2", "3"}


def test_study_refuses_other_settings_and_a_broken_file(tmp_path):
    study.main(["--arms", "pcb", "--seeds", "0", "--output-root", str(tmp_path), "SEED", "0"],
               trainers=fake_trainers([]))
    with pytest.raises(SystemExit, match="ran 'pcb' with other settings \\(overrides\\)"):
        study.main(["--arms", "pcb", "--seeds", "1", "--output-root", str(tmp_path), "OPTIM.MAX_EPOCH", "2"],
                   trainers=fake_trainers([]))
    (tmp_path / "study.json").write_text("{not json")
    with pytest.raises(SystemExit, match="cannot read the study"):
        study.main(["--arms", "pcb", "--output-root", str(tmp_path)], trainers=fake_trainers([]))


def test_study_argument_errors(tmp_path):
    with pytest.raises(SystemExit):
        study.parse_args(["--seeds", "1", "1"])
    with pytest.raises(SystemExit):
        study.parse_args(["--compare", "pcb:nothing"])


def test_torchreid_reference_trains_and_is_scored_by_our_evaluator(tiny_data_root, tmp_path):
    out = tmp_path / "torchreid"
    metrics = study.train_torchreid(CONFIG, str(out), 0, tiny_overrides(tiny_data_root, out), False)
    assert set(metrics) >= {"rank1", "rank5", "mAP", "mINP"}
    assert all(0.0 <= metrics[key] <= 1.0 for key in ("rank1", "mAP", "mINP"))
    assert (out / "torchreid_resnet18.pth").is_file()


def test_a_variant_is_an_arm_with_extra_overrides(tmp_path):
    seen = []

    def train(config, output_dir, seed, opts, progress):
        seen.append((os.path.basename(config), opts, os.path.basename(os.path.dirname(output_dir))))
        return {"rank1": 0.5 + (0.01 if "SAM.GAMMA" in opts else 0.0), "rank5": 0.9, "mAP": 0.3, "mINP": 0.1}

    result = study.main(["--variant", "sam_g1=pcb_sam SAM.GAMMA 1.0", "--arms", "pcb", "sam_g1", "--seeds", "0", "1",
                         "--compare", "sam_g1:pcb", "--output-root", str(tmp_path), "OPTIM.MAX_EPOCH", "2"],
                        trainers={arm: train for arm in study.ARMS})
    assert seen[:2] == [("synthetic_pcb.yaml", ["OPTIM.MAX_EPOCH", "2"], "pcb"),
                        ("synthetic_pcb_sam.yaml", ["OPTIM.MAX_EPOCH", "2", "SAM.GAMMA", "1.0"], "sam_g1")]
    assert result["arms"]["sam_g1"]["variant_overrides"] == ["SAM.GAMMA", "1.0"]
    assert result["summary"]["comparisons"]["sam_g1:pcb"]["rank1"]["mean_difference"] == pytest.approx(0.01)
    assert "with `SAM.GAMMA 1.0`" in (tmp_path / "study.md").read_text()
    with pytest.raises(SystemExit):
        study.parse_args(["--variant", "pcb=pcb_sam SAM.GAMMA 1.0"])
    with pytest.raises(SystemExit):
        study.parse_args(["--arms", "nothing"])


def test_explanations_are_pooled_over_seeds_and_can_be_rescored(tmp_path, monkeypatch):
    scores = {"value": 1.0}

    def fake_explain(config, run_dir, opts, triplets, curves):
        v = scores["value"]
        return {"sam_siamese": {"pointing_game": [v, 0.0], "energy_inside": [0.1, 0.1],
                                "deletion_auc": [0.5, 0.5], "insertion_auc": [0.6, 0.6], "sanity_top": 0.2}}

    monkeypatch.setattr(study, "explain_run", fake_explain)
    calls = []
    argv = ["--arms", "pcb", "--seeds", "0", "1", "--explanation-triplets", "2", "--output-root", str(tmp_path)]
    result = study.main(argv, trainers=fake_trainers(calls))
    row = result["summary"]["explanations"]["pcb"]["sam_siamese"]
    assert row["pointing_game"]["mean"] == pytest.approx(0.5) and row["sanity_top"]["mean"] == pytest.approx(0.2)
    assert "| pcb | `sam_siamese` | 0.500 [" in (tmp_path / "study.md").read_text()
    # rescoring replaces the explanation records and keeps the runs
    calls.clear()
    scores["value"] = 0.0
    result = study.main([*argv, "--rescore-explanations"], trainers=fake_trainers(calls))
    assert calls == []
    assert result["summary"]["explanations"]["pcb"]["sam_siamese"]["pointing_game"]["mean"] == 0.0
    assert result["summary"]["arms"]["pcb"]["rank1"]["mean"] == pytest.approx(0.505)


def test_time_matched_reference_gets_the_pcb_runs_training_time(tmp_path):
    seen = []

    def pcb(config, output_dir, seed, opts, progress):
        seen.append(("pcb", seed, opts))
        return {"rank1": 0.6, "rank5": 0.9, "mAP": 0.4, "mINP": 0.1, "train_seconds": 100.0 + seed, "epoch": 7}

    def reference(config, output_dir, seed, opts, progress, budget_seconds=None):
        seen.append(("torchreid_mobilenetv2_time", seed, budget_seconds))
        return {"rank1": 0.5, "rank5": 0.9, "mAP": 0.3, "mINP": 0.1, "train_seconds": budget_seconds - 1, "epochs": 9}

    def printed(config, output_dir, seed, opts, progress):
        seen.append(("pcb_sam_printed", seed, opts))
        return {"rank1": 0.55, "rank5": 0.9, "mAP": 0.35, "mINP": 0.1}

    trainers = {"pcb": pcb, "torchreid_mobilenetv2_time": reference, "pcb_sam_printed": printed}
    result = study.main(["--arms", "pcb", "torchreid_mobilenetv2_time", "pcb_sam_printed", "--seeds", "0", "1",
                         "--compare", "pcb:torchreid_mobilenetv2_time", "--output-root", str(tmp_path)],
                        trainers=trainers)
    assert ("torchreid_mobilenetv2_time", 1, 101.0) in seen
    assert ("pcb_sam_printed", 0, ["SAM.OBJECTIVE", "printed"]) in seen
    arms = result["summary"]["arms"]
    assert arms["torchreid_mobilenetv2_time"]["epochs"]["mean"] == 9 and arms["pcb"]["epochs"]["mean"] == 7
    assert arms["pcb"]["train_minutes"]["mean"] == pytest.approx(100.5 / 60)
    table = (tmp_path / "study.md").read_text()
    assert "| pcb_sam_printed | 2 (0, 1) |" in table and "with `SAM.OBJECTIVE printed`" in table
    # the time-matched arm refuses to run before the arm whose time it matches
    with pytest.raises(SystemExit, match="matches the training time of pcb seed 5"):
        study.main(["--arms", "torchreid_mobilenetv2_time", "--seeds", "5", "--output-root", str(tmp_path / "b")],
                   trainers=trainers)


def test_avsl_margin_arm_is_avsl_with_the_margin_loss(tmp_path):
    assert study.CONFIGS["avsl_margin"] == study.CONFIGS["avsl"] and "avsl_margin" not in study.DEFAULT_ARMS
    seen = []

    def make(arm, rank1):
        def train(config, output_dir, seed, opts, progress):
            seen.append((arm, os.path.basename(config), opts))
            return {"rank1": rank1 + 0.01 * seed, "rank5": 0.9, "mAP": 0.4, "mINP": 0.1}
        return train

    result = study.main(["--arms", "avsl", "avsl_margin", "--seeds", "0", "1", "--compare", "avsl_margin:avsl",
                         "--output-root", str(tmp_path), "NUM_THREADS", "1"],
                        trainers={"avsl": make("avsl", 0.6), "avsl_margin": make("avsl_margin", 0.55)})
    assert ("avsl", "synthetic_avsl.yaml", ["NUM_THREADS", "1"]) in seen
    assert ("avsl_margin", "synthetic_avsl.yaml", ["NUM_THREADS", "1", "AVSL.LOSS", "margin"]) in seen
    assert result["arms"]["avsl_margin"]["arm_overrides"] == ["AVSL.LOSS", "margin"]
    comparison = result["summary"]["comparisons"]["avsl_margin:avsl"]["rank1"]
    assert comparison["mean_difference"] == pytest.approx(-0.05) and comparison["losses"] == 2
    assert "with `AVSL.LOSS margin`" in (tmp_path / "study.md").read_text()


def test_torchreid_mobilenetv2_reference_starts_from_the_same_weights(tiny_data_root, tmp_path, monkeypatch):
    import torch
    import torchvision

    from reid.models.imagenet_weights import output_path

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    out = tmp_path / "torchreid"
    overrides = tiny_overrides(tiny_data_root, out, epochs=3)
    with pytest.raises(SystemExit, match="reid weights fetch mobilenet_v2"):
        study.train_torchreid(CONFIG, str(out), 0, overrides, False, arch="mobilenetv2_x1_0")
    torch.manual_seed(0)
    source = torchvision.models.mobilenet_v2().state_dict()
    os.makedirs(os.path.dirname(output_path()))
    torch.save(source, output_path())
    metrics = study.train_torchreid(CONFIG, str(out), 0, overrides, False, arch="mobilenetv2_x1_0",
                                    budget_seconds=1e-9)
    assert metrics["epochs"] == 1 and metrics["train_seconds"] > 0  # the budget fits one epoch only
    assert 0.0 <= metrics["rank1"] <= 1.0
    trained = torch.load(out / "torchreid_mobilenetv2_x1_0.pth", weights_only=True)
    assert isinstance(trained, dict) and "conv2.0.conv1.conv.weight" not in trained  # the identity expansion


def test_studies_on_disjoint_seeds_merge(tmp_path):
    calls = []
    first, second = str(tmp_path / "a"), str(tmp_path / "b")
    study.main(["--arms", "pcb", "pcb_sam", "--seeds", "0", "--output-root", first], trainers=fake_trainers(calls))
    study.main(["--arms", "pcb", "pcb_sam", "--seeds", "1", "--output-root", second], trainers=fake_trainers(calls))
    calls.clear()
    result = study.main(["--arms", "pcb", "pcb_sam", "--seeds", "0", "1", "--output-root", second, "--merge", first],
                        trainers=fake_trainers(calls))
    assert calls == [] and result["summary"]["comparisons"]["pcb_sam:pcb"]["rank1"]["n"] == 2
    assert result["runs"]["pcb"]["0"]["merged_from"] == first
    study.main(["--arms", "pcb", "--seeds", "2", "--output-root", str(tmp_path / "c"), "OPTIM.LR", "0.5"],
               trainers=fake_trainers(calls))
    with pytest.raises(SystemExit, match="ran 'pcb' with other settings: it cannot be merged"):
        study.main(["--arms", "pcb", "--seeds", "0", "--output-root", second, "--merge", str(tmp_path / "c")],
                   trainers=fake_trainers(calls))


def test_report_only_trains_nothing(tmp_path):
    calls = []
    study.main(["--arms", "pcb", "--seeds", "0", "--output-root", str(tmp_path)], trainers=fake_trainers(calls))
    calls.clear()
    result = study.main(["--arms", "pcb", "pcb_sam", "--seeds", "0", "1", "--report-only", "--output-root",
                         str(tmp_path)], trainers=fake_trainers(calls))
    assert calls == [] and result["summary"]["arms"]["pcb"]["seeds"] == [0]


def test_time_matched_schedule_by_hand():
    # 323.5 s of budget, 35.1 s per epoch: 9 whole epochs (9 x 35.1 = 315.9 <= 323.5 < 351); the
    # config steps after 6 of 7 epochs, so after 9 x 6 / 7 = 7.71 -> 8
    assert study.time_matched_schedule(323.5, 35.1, 7, 6) == (9, 8)
    assert study.time_matched_schedule(10.0, 35.1, 7, 6) == (1, 1)  # at least one epoch, step after it
    assert study.time_matched_schedule(70.2, 35.1, 7, 6) == (2, 2)  # exactly two epochs fit
