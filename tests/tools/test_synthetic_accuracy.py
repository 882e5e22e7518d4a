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
        def train(config, output_dir, seed, opts, progress):
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
