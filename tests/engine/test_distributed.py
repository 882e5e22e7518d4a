"""Distributed training on the CPU: a real 2-process gloo job started with torchrun."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from reid.config import ConfigError, load_config, validate_world_size
from reid.builders import resolve_device
from reid.engine.distributed import DistributedContext, all_reduce_gradients, world_from_env
from tests.conftest import tiny_overrides
from reid.cli import test as test_tool
from reid.cli import train as train_tool

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "configs", "synthetic_pcb.yaml")

# Runs inside each torchrun worker. It probes the collectives on hand-made tensors, then runs
# tools/train.py three times in the same process group: 2 epochs ("full"), then 1 epoch and a
# --resume to 2 epochs ("resumed"); after each run it saves that rank's final model state.
DRIVER = textwrap.dedent(
    """
    import json, os, sys
    import torch
    sys.path.insert(0, sys.argv[1])
    from reid.engine import distributed as d
    from reid.engine.base import ReidEngine
    from reid.cli import train

    out = os.environ["DDP_TEST_OUT"]
    ctx = d.world_from_env()
    d.init_distributed(ctx, torch.device("cpu"), "gloo")
    r = ctx.rank
    a, b, c = (torch.nn.Parameter(torch.zeros(2, 2)) for _ in range(3))
    a.grad = torch.full((2, 2), 1.0 + 2 * r)          # rank 0: 1, rank 1: 3
    b.grad = torch.full((2, 2), 2.0) if r == 1 else None  # on rank 1 only
    d.all_reduce_gradients([a, b, c], ctx)
    bn = torch.nn.BatchNorm1d(2)
    bn.running_mean.fill_(float(r))
    d.average_buffers(bn, ctx)
    probe = {
        "a": a.grad.tolist(), "b": b.grad.tolist(), "c_is_none": c.grad is None,
        "running_mean": bn.running_mean.tolist(), "batches": int(bn.num_batches_tracked),
        "mean": d.mean_over_processes({"x": float(r), "y": 10.0 * r}, ctx, torch.device("cpu")),
        "gathered": d.gather_objects(r * 7, ctx),
    }
    with open(os.path.join(out, f"probe{r}.json"), "w") as handle:
        json.dump(probe, handle)

    original = ReidEngine.run
    def run_and_save(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        torch.save(state, f"{self.output_dir}-rank{r}.pth")
        return result
    ReidEngine.run = run_and_save
    train.destroy_distributed = lambda: None  # keep one process group for the three runs

    def train_run(name, epochs, resume=False):
        argv = ["--config", sys.argv[2], "--no-progress", *sys.argv[3:],
                "OUTPUT_DIR", os.path.join(out, name), "OPTIM.MAX_EPOCH", str(epochs)]
        train.main(argv[:2] + ["--resume"] + argv[2:] if resume else argv)

    train_run("full", 2)
    train_run("resumed", 1)
    train_run("resumed", 2, resume=True)
    d.destroy_distributed()
    """
)


def without(overrides, *keys):
    out = list(overrides)
    for key in keys:
        i = out.index(key)
        del out[i : i + 2]
    return out


@pytest.fixture(scope="module")
def ddp_run(tiny_data_root, tmp_path_factory):
    """The output folder of the torchrun job (2 gloo processes on the CPU)."""
    out = tmp_path_factory.mktemp("ddp")
    driver = out / "driver.py"
    driver.write_text(DRIVER)
    # Batch 8 = 2 processes x (2 identities x K = 2); TEST.EVAL_FREQ 1 so that the uninterrupted
    # run evaluates after epoch 1 as the 1-epoch run does (evaluation draws from rank 0's RNG).
    overrides = without(tiny_overrides(tiny_data_root, out), "OUTPUT_DIR", "OPTIM.MAX_EPOCH")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(driver), REPO, CONFIG, *overrides, "TEST.EVAL_FREQ", "1",
    ]
    env = {**os.environ, "DDP_TEST_OUT": str(out), "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return out


def load(path):
    return torch.load(path, weights_only=True)


def test_collectives_average_gradients_and_buffers(ddp_run):
    probes = [json.loads((ddp_run / f"probe{r}.json").read_text()) for r in range(2)]
    for probe in probes:
        assert probe["a"] == [[2.0, 2.0], [2.0, 2.0]]  # mean of 1 and 3
        assert probe["b"] == [[1.0, 1.0], [1.0, 1.0]]  # zeros where missing, then the mean
        assert probe["c_is_none"]  # no gradient anywhere: stays None
        assert probe["running_mean"] == [0.5, 0.5] and probe["batches"] == 0
        assert probe["mean"] == {"x": 0.5, "y": 5.0}
        assert probe["gathered"] == [0, 7]


def test_both_ranks_end_with_the_same_model(ddp_run):
    rank0, rank1 = load(ddp_run / "full-rank0.pth"), load(ddp_run / "full-rank1.pth")
    assert rank0.keys() == rank1.keys()
    for name in rank0:  # parameters and BatchNorm statistics
        assert torch.equal(rank0[name], rank1[name]), name
    checkpoint = load(ddp_run / "full" / "checkpoints" / "checkpoint_last.pth")
    assert checkpoint["epoch"] == 2 and len(checkpoint["rng_per_process"]) == 2
    for name in rank0:
        assert torch.equal(checkpoint["model"][name], rank0[name]), name


def test_resume_matches_the_uninterrupted_distributed_run(ddp_run):
    full, resumed = load(ddp_run / "full-rank0.pth"), load(ddp_run / "resumed-rank1.pth")
    for name in full:
        assert torch.equal(full[name], resumed[name]), name
    a = json.loads((ddp_run / "full" / "metrics.json").read_text())
    b = json.loads((ddp_run / "resumed" / "metrics.json").read_text())
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]
    assert a["mAP"] == b["mAP"]


def test_rank0_writes_the_outputs_and_test_tool_reproduces_its_metrics(ddp_run, tiny_data_root, tmp_path):
    metrics = json.loads((ddp_run / "full" / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert all("test" in h for h in metrics["history"])  # rank 0's history, with its evaluations
    assert os.listdir(ddp_run / "full" / "tensorboard")
    tested = test_tool.main(
        ["--config", CONFIG, "--weights", str(ddp_run / "full" / "checkpoints" / "checkpoint_last.pth"),
         "--no-progress", *tiny_overrides(tiny_data_root, tmp_path / "test")]
    )
    for key in ("rank1", "rank5", "mAP", "mINP"):
        assert tested[key] == pytest.approx(metrics[key], abs=1e-9), key


def test_world_size_must_split_the_batch_into_pk_batches(tmp_path, monkeypatch):
    cfg = load_config(None, ["SAMPLER.BATCH_SIZE_TRAIN", "8", "SAMPLER.NUM_INSTANCES", "2"])
    validate_world_size(cfg, 2)
    validate_world_size(cfg, 4)
    with pytest.raises(ConfigError, match="use a multiple of 6"):
        validate_world_size(cfg, 3)
    with pytest.raises(ConfigError, match="use a multiple of 16"):
        validate_world_size(cfg, 8)
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(SystemExit, match="must split over 3 processes"):
        train_tool.main(["--config", CONFIG, *tiny_overrides(tmp_path, tmp_path / "out")])
    with pytest.raises(SystemExit, match="not torchrun"):
        test_tool.main(["--config", CONFIG, "--weights", "x.pth", *tiny_overrides(tmp_path, tmp_path / "out")])


def test_environment_and_device_resolution(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert world_from_env() == DistributedContext(0, 1, 0)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "6")
    with pytest.raises(ValueError, match="RANK=6"):
        world_from_env()
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert world_from_env() == DistributedContext(rank=3, world_size=4, local_rank=1)
    assert resolve_device("cpu", local_rank=1) == torch.device("cpu")
    param = torch.nn.Parameter(torch.ones(2))
    param.grad = torch.ones(2)
    all_reduce_gradients([param], DistributedContext())  # one process: untouched
    assert torch.equal(param.grad, torch.ones(2))
    with pytest.raises(RuntimeError, match="no process group"):
        all_reduce_gradients([param], DistributedContext(rank=0, world_size=2))
