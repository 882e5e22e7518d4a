"""The worked example of docs/own-data-and-models.md, end to end: a network trained with
torchreid's own engine and checkpointing (examples/train_with_torchreid.py), then ``reid test``,
``explain``, ``eval-explanations`` and ``export`` on its ``model.pth.tar-1``; and ``reid train``
with the torchreid recipe."""

import importlib.util
import json
import re
import os
import warnings

import pytest
import torch

from reid.cli import eval_explanations as eval_tool
from reid.cli import explain as explain_tool
from reid.cli import export as export_tool
from reid.cli import test as test_tool
from reid.cli import train as train_tool

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from torchreid.reid.engine import Engine

REPO = os.path.join(os.path.dirname(__file__), "..", "..")
CONFIG = os.path.join(REPO, "configs", "torchreid_osnet.yaml")
# torchreid's evaluator needs 50 gallery images per query: a set a little larger than the tiny one
SYNTHETIC = {"num-ids": 20, "num-cams": 2, "images-per-id": 8, "img-height": 64, "img-width": 32, "data-seed": 3}


def _example():
    spec = importlib.util.spec_from_file_location("train_with_torchreid", os.path.join(REPO, "examples", "train_with_torchreid.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def overrides(root, out):
    s = SYNTHETIC
    return [
        "DATA.ROOT", str(root), "OUTPUT_DIR", str(out), "DATA.HEIGHT", "64", "DATA.WIDTH", "32",
        "DATA.SYNTHETIC.NUM_IDS", str(s["num-ids"]), "DATA.SYNTHETIC.NUM_CAMS", str(s["num-cams"]),
        "DATA.SYNTHETIC.IMAGES_PER_ID", str(s["images-per-id"]), "DATA.SYNTHETIC.IMG_HEIGHT", str(s["img-height"]),
        "DATA.SYNTHETIC.IMG_WIDTH", str(s["img-width"]), "DATA.SYNTHETIC.SEED", str(s["data-seed"]),
        "SAMPLER.BATCH_SIZE_TEST", "16",
    ]


@pytest.fixture(scope="module")
def torchreid_run(tmp_path_factory):
    """examples/train_with_torchreid.py for one epoch; torchreid's own final test's rank-1 and mAP."""
    root, save_dir = tmp_path_factory.mktemp("data"), tmp_path_factory.mktemp("torchreid-log")
    argv = ["--root", str(root), "--save-dir", str(save_dir), "--epochs", "1", "--height", "64", "--width", "32",
            "--batch-size", "16"]
    for key, value in SYNTHETIC.items():
        argv += [f"--{key}", str(value)]
    results = []
    evaluate = Engine._evaluate

    def recording(self, *args, **kwargs):
        results.append(evaluate(self, *args, **kwargs))
        return results[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Engine, "_evaluate", recording)
        _example().main(argv)
    (rank1, mAP), = results
    checkpoint = save_dir / "model" / "model.pth.tar-1"
    assert checkpoint.is_file()
    return root, checkpoint, float(rank1), float(mAP)


def test_reid_test_equals_torchreids_engine_test(torchreid_run, tmp_path):
    root, checkpoint, rank1, mAP = torchreid_run
    metrics = test_tool.main(["--config", CONFIG, "--weights", str(checkpoint), "--no-progress", *overrides(root, tmp_path)])
    assert metrics["rank1"] == pytest.approx(rank1, abs=1e-6)
    assert metrics["mAP"] == pytest.approx(mAP, abs=1e-6)
    assert mAP > 0.0  # a real ranking, not an empty one
    # DataParallel's module. prefixes and a bare state dict load the same
    state = torch.load(checkpoint, weights_only=False)["state_dict"]
    bare = tmp_path / "module.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, bare)
    again = test_tool.main(["--config", CONFIG, "--weights", str(bare), "--no-progress", *overrides(root, tmp_path / "bare")])
    assert again["mAP"] == metrics["mAP"] and again["rank1"] == metrics["rank1"]


def test_checkpoint_of_another_arch_is_one_line_naming_both(torchreid_run, tmp_path):
    root, checkpoint, _, _ = torchreid_run
    with pytest.raises(SystemExit, match=r"holds weights of MODEL.TORCHREID.ARCH osnet_x0_25, not of MODEL.NAME "
                                         r"torchreid, MODEL.TORCHREID.ARCH resnet18$"):
        test_tool.main(["--config", CONFIG, "--weights", str(checkpoint), "--no-progress",
                        *overrides(root, tmp_path), "MODEL.TORCHREID.ARCH", "resnet18"])


def test_explain_eval_explanations_and_export_on_the_checkpoint(torchreid_run, tmp_path):
    root, checkpoint, _, mAP = torchreid_run
    summary = explain_tool.main(["--config", CONFIG, "--weights", str(checkpoint), "--no-progress",
                                 "--num-queries", "2", "--topk", "2", "--triplets", *overrides(root, tmp_path / "x")])
    assert summary["explained_with"] == "model" and summary["layer"] == "conv2" and summary["same"] == "model"
    assert summary["run"]["mAP"] == pytest.approx(mAP, abs=1e-6)
    content = json.loads((tmp_path / "x" / "explanations" / "explanations.json").read_text())
    assert len(content["pairs"]) == 4 and (tmp_path / "x" / "explanations" / "index.html").is_file()
    # the head layer through the head only (no layer): one trunk pass per image
    head = explain_tool.main(["--config", CONFIG, "--weights", str(checkpoint), "--no-progress",
                              "--num-queries", "2", "--topk", "2", *overrides(root, tmp_path / "h"),
                              "TEST.EXPLAIN_LAYER", ""])
    assert head["explained_with"] == "head"

    eval_tool.main(["--config", CONFIG, "--weights", str(checkpoint), "--no-progress", "--num-triplets", "4",
                    "--num-curves", "1", "--steps", "3", "--sanity-triplets", "0", *overrides(root, tmp_path / "q")])
    quality = json.loads((tmp_path / "q" / "explanation_quality.json").read_text())
    explainers = set(quality["table"]) if isinstance(quality["table"], dict) else {row["explainer"] for row in quality["table"]}
    assert {"sam_siamese", "sam_triplet", "id_gradcam", "sam_siamese@conv2"} <= explainers

    export_tool.main(["--config", CONFIG, "--weights", str(checkpoint), *overrides(root, tmp_path / "e")])
    assert (tmp_path / "e" / "model.onnx").stat().st_size > 0


def test_reid_train_with_the_torchreid_recipe_and_similarity_mining(torchreid_run, tmp_path):
    root, checkpoint, _, _ = torchreid_run
    # fine-tuning the user's torchreid checkpoint with similarity mining: its weights are the start
    args = ["--config", CONFIG, "--no-progress", *overrides(root, tmp_path), "OPTIM.MAX_EPOCH", "1",
            "MODEL.PRETRAINED", "True", "MODEL.PRETRAINED_PATH", str(checkpoint),
            "SAMPLER.BATCH_SIZE_TRAIN", "8", "SAMPLER.NUM_INSTANCES", "2", "SAM.ENABLED", "True", "SAM.MAX_TUPLES", "2"]
    metrics = train_tool.main(args)
    (epoch,) = metrics["history"]
    assert {"id", "triplet", "sm", "loss"} <= set(epoch)
    state = torch.load(tmp_path / "checkpoints" / "checkpoint_last.pth", weights_only=True)["model"]
    assert "conv5.conv.weight" in state and "classifier.weight" in state  # torchreid's own names
    log = (tmp_path / "train.log").read_text()
    assert re.search(rf"loaded (\d+) of \1 weights of TorchreidOSNet from {re.escape(str(checkpoint))}", log)


def test_reid_train_refuses_pretrained_without_a_weights_file(tmp_path):
    with pytest.raises(SystemExit, match="MODEL.NAME torchreid starts from MODEL.PRETRAINED_PATH .* or set "
                                         "MODEL.PRETRAINED False"):
        train_tool.main(["--config", CONFIG, "--no-progress", "OUTPUT_DIR", str(tmp_path), "MODEL.PRETRAINED", "True"])
    with pytest.raises(SystemExit, match="MODEL.PRETRAINED_PATH .*nope.pth does not exist"):
        train_tool.main(["--config", CONFIG, "--no-progress", "OUTPUT_DIR", str(tmp_path), "MODEL.PRETRAINED", "True",
                         "MODEL.PRETRAINED_PATH", str(tmp_path / "nope.pth")])


def test_paper_figure_of_a_pair(torchreid_run, tmp_path):
    root, checkpoint, _, _ = torchreid_run
    spec = importlib.util.spec_from_file_location("paper_figure", os.path.join(REPO, "examples", "paper_figure.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    images = sorted((root / "synthetic").rglob("*.jpg"))
    out = tmp_path / "figure.png"
    panel = module.main(["--config", CONFIG, "--weights", str(checkpoint), "--query", str(images[0]),
                         "--gallery", str(images[1]), "--out", str(out), "--correct", "yes",
                         *overrides(root, tmp_path)])
    assert out.read_bytes().startswith(b"\x89PNG") and panel.ndim == 3 and panel.shape[2] == 3
