"""A seed reproduces its run: each demo arm (PCB, PCB+SAM, AVSL) trained twice on the tiny set with
two threads gives the same losses, metrics and weights (TRAIN.DETERMINISTIC, the default)."""

import json
import os

import pytest
import torch

from reid.cli import train as train_tool
from tests.conftest import tiny_overrides

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "..", "configs")
ARMS = {
    "pcb": ("synthetic_pcb.yaml", []),
    # every tuple's mining drawn at random each step (MAX_TUPLES 2 of the batch's)
    "pcb_sam": ("synthetic_pcb_sam.yaml", ["SAM.MAX_TUPLES", "2"]),
    "avsl": ("synthetic_avsl.yaml", ["AVSL.EMBED_DIM", "16", "AVSL.TOPK", "4"]),
}


def train_twice(arm, root, tmp_path):
    config, extra = ARMS[arm]
    runs = []
    for name in ("first", "second"):
        out = tmp_path / name
        train_tool.main(["--config", os.path.join(CONFIGS, config), "--no-progress",
                         *tiny_overrides(root, out, epochs=2), *extra, "NUM_THREADS", "2", "SEED", "3"])
        metrics = json.loads((out / "metrics.json").read_text())
        weights = torch.load(out / "checkpoints" / "checkpoint_last.pth", weights_only=True)["model"]
        runs.append((metrics, weights))
    return runs


@pytest.mark.parametrize("arm", sorted(ARMS))
def test_same_seed_same_run(arm, tiny_data_root, tmp_path):
    threads = torch.get_num_threads()
    try:
        (first, first_weights), (second, second_weights) = train_twice(arm, tiny_data_root, tmp_path)
    finally:
        torch.set_num_threads(threads)
    assert [h["loss"] for h in first["history"]] == [h["loss"] for h in second["history"]]
    for key in ("rank1", "mAP", "mINP"):
        assert first[key] == second[key], key
    assert first_weights.keys() == second_weights.keys()
    for name in first_weights:
        assert torch.equal(first_weights[name], second_weights[name]), name
