"""Training, evaluating and explaining an image-retrieval run end to end (tiny synthetic_retrieval).

The retrieval metrics of the run are checked against a brute-force oracle on the engine's own
features; the re-id CMC of a retrieval set equals its Recall@K (the query excludes only itself).
"""

import json
import os

import numpy as np
import pytest

from reid.builders import build_engine
from reid.cli import explain as explain_tool
from reid.cli import train as train_tool
from reid.config import load_config
from reid.engine.checkpoint import load_checkpoint, model_state_from_checkpoint
from reid.engine.evaluation import extract_dataset_features
from reid.metrics import compute_distance_matrix
from tests.conftest import tiny_overrides

CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "synthetic_retrieval.yaml")


@pytest.fixture(scope="module")
def run(tiny_data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("retrieval-run")
    overrides = [*tiny_overrides(tiny_data_root, out), "MODEL.NUM_STRIPES", "1", "TEST.EXPLAIN_LAYER", ""]
    metrics = train_tool.main(["--config", CONFIG, "--no-progress", *overrides])
    return metrics, out, overrides


def brute_force(dist, labels, ks):
    """Recall@K, MAP@R and R-Precision by loops: stable order of the others by (distance, index)."""
    n = len(labels)
    recall = {k: 0 for k in ks}
    maps, rps = [], []
    for q in range(n):
        order = sorted((j for j in range(n) if j != q), key=lambda j: (dist[q, j], j))
        hits = [labels[j] == labels[q] for j in order]
        for k in ks:
            recall[k] += any(hits[:k])
        r = sum(hits)
        if r:
            rps.append(sum(hits[:r]) / r)
            maps.append(sum(sum(hits[: i + 1]) / (i + 1) for i in range(r) if hits[i]) / r)
    return {k: v / n for k, v in recall.items()}, float(np.mean(maps)), float(np.mean(rps))


def test_retrieval_metrics_of_the_run_match_a_brute_force_oracle(run):
    metrics, out, overrides = run
    on_disk = json.loads((out / "metrics.json").read_text())
    for key in ("recall@1", "recall@2", "recall@4", "recall@8", "map@r", "r_precision", "nmi"):
        assert 0.0 <= on_disk[key] <= 1.0, key
    cfg = load_config(CONFIG, overrides)
    engine = build_engine(cfg, progress=False)
    engine.model.load_state_dict(model_state_from_checkpoint(load_checkpoint(str(out / "checkpoints" / "checkpoint_last.pth"))))
    engine.model.eval()
    loaders = next(iter(engine.test_loader.values()))
    test = extract_dataset_features(engine.model, loaders["query"], engine.device, progress=False)
    assert list(test.camids) == list(range(len(test.camids)))  # camid = index: only the query itself is removed
    dist = compute_distance_matrix(test.features, test.features, "euclidean").numpy()
    recall, map_at_r, r_precision = brute_force(dist, test.pids, (1, 2, 4, 8))
    for k, value in recall.items():
        assert on_disk[f"recall@{k}"] == pytest.approx(value), k
    assert on_disk["map@r"] == pytest.approx(map_at_r) and on_disk["r_precision"] == pytest.approx(r_precision)
    # the re-id CMC of a retrieval set is its Recall@K
    assert on_disk["rank1"] == pytest.approx(on_disk["recall@1"]) and on_disk["rank5"] >= on_disk["recall@4"]


def test_explaining_a_retrieval_run_never_matches_an_image_with_itself(run, tmp_path):
    _, out, overrides = run
    summary = explain_tool.main([
        "--config", CONFIG, "--weights", str(out / "checkpoints" / "checkpoint_last.pth"), "--num-queries", "3",
        "--topk", "3", "--no-progress", *overrides, "OUTPUT_DIR", str(tmp_path),
    ])
    content = json.loads((tmp_path / "explanations" / "explanations.json").read_text())
    assert summary["num_pairs"] == 9 and (tmp_path / "explanations" / "index.html").is_file()
    assert all(p["query_path"] != p["gallery_path"] for p in content["pairs"])
    assert summary["run"]["rank1"] == pytest.approx(json.loads((out / "metrics.json").read_text())["recall@1"])
