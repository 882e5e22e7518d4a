"""End to end through the tools: train, test, resume, errors (tiny synthetic set, CPU)."""

import json
import os

import numpy as np
import pytest
import torch

from reid.data.images import ImageReadError
from reid.engine.pcb import PCBEngine
from tests.conftest import tiny_overrides
from reid.cli import test as test_tool
from reid.cli import train as train_tool

CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "synthetic_pcb.yaml")


def test_train_writes_metrics_and_test_reproduces_them(tiny_data_root, tmp_path):
    out = tmp_path / "run"
    metrics = train_tool.main(["--config", CONFIG, "--no-progress", *tiny_overrides(tiny_data_root, out)])
    on_disk = json.loads((out / "metrics.json").read_text())
    for key in ("rank1", "rank5", "mAP", "mINP"):
        assert 0.0 <= on_disk[key] <= 1.0
    assert on_disk["rank1"] == metrics["rank1"]
    assert on_disk["rank5"] >= on_disk["rank1"]
    assert on_disk["config"]["MODEL"]["BACKBONE"] == "resnet18"
    (epoch,) = on_disk["history"]
    assert {"id", "triplet", "loss", "lr"} <= set(epoch) and epoch["epoch"] == 1
    assert os.listdir(out / "tensorboard")
    # the CMC curve beside the metrics: one per target, rank-k entries equal the reported ones
    (target,) = on_disk["targets"]
    cmc = on_disk["cmc"][target]
    assert cmc[0] == on_disk["rank1"] and cmc[4] == on_disk["rank5"]
    assert all(a <= b for a, b in zip(cmc, cmc[1:])) and cmc[-1] <= 1.0
    assert (out / "cmc.png").read_bytes().startswith(b"\x89PNG")
    ckpt = out / "checkpoints" / "checkpoint_last.pth"
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1

    test_out = tmp_path / "test"
    tested = test_tool.main(
        ["--config", CONFIG, "--weights", str(ckpt), "--no-progress", *tiny_overrides(tiny_data_root, test_out)]
    )
    for key in ("rank1", "rank5", "rank10", "mAP", "mINP"):
        assert tested[key] == pytest.approx(on_disk[key], abs=1e-9), key
    assert json.loads((test_out / "test_metrics.json").read_text())["mAP"] == tested["mAP"]
    assert tested["cmc"][target] == pytest.approx(cmc, abs=1e-9)
    assert (test_out / "test_cmc.png").read_bytes().startswith(b"\x89PNG")


def test_resume_after_interruption_matches_uninterrupted_run(tiny_data_root, tmp_path, monkeypatch):
    full = tmp_path / "full"
    reference = train_tool.main(["--config", CONFIG, "--no-progress", *tiny_overrides(tiny_data_root, full, 2)])

    interrupted = tmp_path / "interrupted"
    args = ["--config", CONFIG, "--no-progress", *tiny_overrides(tiny_data_root, interrupted, 2)]
    original = PCBEngine.forward_backward

    def interrupt_in_second_epoch(self, data):
        if self.epoch == 1 and self.batch_idx == 1:
            raise KeyboardInterrupt
        return original(self, data)

    monkeypatch.setattr(PCBEngine, "forward_backward", interrupt_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_tool.main(args)
    assert torch.load(interrupted / "checkpoints" / "checkpoint_last.pth", weights_only=True)["epoch"] == 1
    monkeypatch.setattr(PCBEngine, "forward_backward", original)

    resumed = train_tool.main([*args[:2], "--resume", *args[2:]])
    for key in ("rank1", "mAP", "mINP"):
        assert resumed[key] == reference[key], key
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in reference["history"]]
    a = torch.load(full / "checkpoints" / "checkpoint_last.pth", weights_only=True)["model"]
    b = torch.load(interrupted / "checkpoints" / "checkpoint_last.pth", weights_only=True)["model"]
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_unknown_config_key_is_reported(tmp_path):
    with pytest.raises(SystemExit, match="did you mean 'OPTIM.MAX_EPOCH'"):
        train_tool.main(["--config", CONFIG, "OUTPUT_DIR", str(tmp_path), "OPTIM.MAX_EPOHC", "1"])


def test_data_root_that_is_a_file_is_named(tmp_path):
    root = tmp_path / "not-a-folder"
    root.write_text("x")
    with pytest.raises(NotADirectoryError, match=str(root)):
        train_tool.main(["--config", CONFIG, *tiny_overrides(root, tmp_path / "out")])


def test_missing_real_dataset_names_the_folder(tmp_path):
    from reid.data.validation import DatasetError

    with pytest.raises(DatasetError, match=str(tmp_path)):
        train_tool.main(
            ["--config", CONFIG, *tiny_overrides(tmp_path, tmp_path / "out"), "DATA.SOURCES", "['dukemtmc_reid']"]
        )


def test_corrupt_and_missing_images_are_named(tiny_data_root, tmp_path):
    import shutil

    from reid.data.synthetic import SyntheticReID
    from tests.conftest import TINY_SYNTHETIC

    root = tmp_path / "copy"
    shutil.copytree(tiny_data_root, root)
    dataset = SyntheticReID(root=str(root), progress=False, **TINY_SYNTHETIC)
    corrupt, missing = dataset.train[0][0], dataset.train[1][0]
    with open(corrupt, "r+b") as handle:
        handle.truncate(100)
    os.remove(missing)
    with pytest.raises(ImageReadError, match=os.path.basename(corrupt)):
        dataset[0]
    with pytest.raises(ImageReadError, match=os.path.basename(missing)):
        dataset[1]


def test_streaming_evaluation_and_saved_features_give_the_same_numbers(tiny_data_root, tmp_path, monkeypatch):
    out = tmp_path / "run"
    train_tool.main(["--config", CONFIG, "--no-progress", *tiny_overrides(tiny_data_root, out)])
    ckpt = str(out / "checkpoints" / "checkpoint_last.pth")
    dense = test_tool.main(["--config", CONFIG, "--weights", ckpt, "--no-progress", "--save-features",
                            str(tmp_path / "feats"), *tiny_overrides(tiny_data_root, tmp_path / "dense")])
    (saved,) = list((tmp_path / "feats").iterdir())
    assert saved.suffix == ".npz"
    # a tiny budget: the engine ranks blocks of rows instead of the whole matrix, same numbers
    from reid.engine import evaluation
    from reid.metrics import DistanceRows

    blocks, original = [], DistanceRows.from_features.__func__
    monkeypatch.setattr(evaluation.DistanceRows, "from_features", classmethod(
        lambda cls, *a, **k: blocks.append(original(cls, *a, **k)) or blocks[-1]
    ))
    streamed = test_tool.main(["--config", CONFIG, "--weights", ckpt, "--no-progress",
                               *tiny_overrides(tiny_data_root, tmp_path / "stream"), "TEST.MAX_MATRIX_MB", "0.0001"])
    monkeypatch.undo()
    (rows,) = blocks
    assert rows.block_rows < rows.shape[0]  # really by blocks
    for key in ("rank1", "rank5", "mAP", "mINP"):
        assert streamed[key] == dense[key], key
    assert streamed["cmc"] == dense["cmc"]
    # from the saved features: the model never runs on an image, the numbers are the same
    with pytest.MonkeyPatch.context() as patch:
        calls = []
        from reid.models.pcb import PCB

        original = PCB.forward
        patch.setattr(PCB, "forward", lambda self, x: calls.append(len(x)) or original(self, x))
        loaded = test_tool.main(["--config", CONFIG, "--weights", ckpt, "--no-progress", "--features",
                                 str(tmp_path / "feats"), *tiny_overrides(tiny_data_root, tmp_path / "loaded")])
    assert calls == []
    for key in ("rank1", "rank5", "mAP", "mINP"):
        assert loaded[key] == dense[key], key
    assert loaded["features"] == str((tmp_path / "feats").resolve())


def test_saved_features_are_checked(tiny_data_root, tmp_path, capsys):
    from reid.engine.evaluation import ExtractedFeatures, load_features, save_features

    query = ExtractedFeatures(torch.ones(2, 3), np.array([1, 2]), np.array([0, 1]), ["a.jpg", "b.jpg"])
    gallery = ExtractedFeatures(torch.zeros(3, 3), np.array([1, 2, 2]), np.array([1, 0, 1]), ["c", "d", "e"])
    path = save_features(str(tmp_path / "t.npz"), "synthetic", query, gallery)
    q, g = load_features(path, "synthetic")
    assert torch.equal(q.features, query.features) and q.paths == query.paths and list(g.pids) == [1, 2, 2]
    with pytest.raises(ValueError, match="not of 'duke'"):
        load_features(path, "duke")
    with pytest.raises(FileNotFoundError, match="save-features"):
        load_features(str(tmp_path / "missing.npz"))
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a features file"):
        load_features(str(tmp_path / "bad.npz"))
    np.savez(tmp_path / "other.npz", x=np.ones(3))
    with pytest.raises(ValueError, match="missing"):
        load_features(str(tmp_path / "other.npz"))
    with pytest.raises(SystemExit):
        test_tool.parse_args(["--config", CONFIG, "--weights", "w.pth", "--features", str(tmp_path / "nope")])
    assert "--features: no such folder" in capsys.readouterr().err


def test_rerank_beyond_the_memory_is_refused_with_its_size():
    from reid.engine.evaluation import check_rerank_memory

    check_rerank_memory(100, 1000, available_mb=1000)  # 4 MB: fine
    # MSMT17 size: 4 bytes x (11659^2 + 82161^2 + 4 x 11659 x 82161) = 42.87e9 bytes = 39.9 GiB
    with pytest.raises(MemoryError, match=r"needs at least 39\.9 GB.*24\.0 GB are available.*TEST.RERANK False"):
        check_rerank_memory(11659, 82161, available_mb=24 * 1024)


@pytest.mark.parametrize("metric", ["contrastive", "quadruplet"])
def test_other_metric_losses_train_and_are_logged_by_name(tiny_data_root, tmp_path, metric):
    out = tmp_path / metric
    train_tool.main(["--config", CONFIG, "--no-progress", *tiny_overrides(tiny_data_root, out), "LOSS.METRIC", metric,
                     "TEST.EVAL_FREQ", "0"])
    on_disk = json.loads((out / "metrics.json").read_text())
    (epoch,) = on_disk["history"]
    assert metric in epoch and "triplet" not in epoch
    assert 0.0 <= on_disk["mAP"] <= 1.0
