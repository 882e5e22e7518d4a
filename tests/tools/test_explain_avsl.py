"""AVSL through the tools on the tiny synthetic set (CPU, seconds): train, test, explain.

The explanations are checked against independent computations: the engine's own feature
extraction and ``distance_matrix`` (the evaluation's ``d_hat``), the attribution identity
``d_hat = sum_l sum_i lambda^l_i delta^l_i`` (AVSL paper eq. 11) and eq. 8 for the rectified node.
"""

import json
import math
import os
import re

import numpy as np
import pytest
import torch

from reid.config import load_config
from reid.engine.avsl import AVSLEngine
from reid.builders import build_engine
from reid.engine.checkpoint import load_checkpoint, model_state_from_checkpoint
from reid.engine.evaluation import extract_dataset_features
from tests.conftest import tiny_overrides
from reid.cli import explain as explain_tool
from reid.cli import test as test_tool
from reid.cli import train as train_tool

CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "synthetic_avsl.yaml")
NUM_QUERIES, TOPK, TOP_NODES = 3, 2, 3
LEVELS = ["layer2", "layer3", "layer4"]


def avsl_overrides(root, out):
    """The tiny PCB overrides plus a small AVSL head (R = 16, k = 4)."""
    return [*tiny_overrides(root, out), "AVSL.EMBED_DIM", "16", "AVSL.TOPK", "4"]


@pytest.fixture(scope="module")
def trained(tiny_data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("avsl-train")
    metrics = train_tool.main(["--config", CONFIG, "--no-progress", *avsl_overrides(tiny_data_root, out)])
    return out / "checkpoints" / "checkpoint_last.pth", metrics


@pytest.fixture(scope="module")
def explained(trained, tiny_data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("avsl-explain")
    summary = explain_tool.main([
        "--config", CONFIG, "--weights", str(trained[0]), "--num-queries", str(NUM_QUERIES), "--topk", str(TOPK),
        "--top-nodes", str(TOP_NODES), "--no-progress", *avsl_overrides(tiny_data_root, out),
    ])
    content = json.loads((out / "explanations" / "explanations.json").read_text())
    return summary, content, out / "explanations"


@pytest.fixture(scope="module")
def oracle_distances(trained, tiny_data_root, tmp_path_factory):
    """``(Q, G)`` d_hat of the whole query and gallery sets, the evaluation's way, and labels."""
    cfg = load_config(CONFIG, avsl_overrides(tiny_data_root, tmp_path_factory.mktemp("avsl-oracle")))
    engine = build_engine(cfg, progress=False)
    engine.model.load_state_dict(model_state_from_checkpoint(load_checkpoint(str(trained[0]))))
    engine.model.eval()
    loaders = next(iter(engine.test_loader.values()))
    query = extract_dataset_features(engine.model, loaders["query"], engine.device, progress=False)
    gallery = extract_dataset_features(engine.model, loaders["gallery"], engine.device, progress=False)
    return engine.distance_matrix(query.features, gallery.features).numpy(), query, gallery


def test_test_tool_reproduces_the_training_metrics(trained, tiny_data_root, tmp_path):
    checkpoint, metrics = trained
    assert {"metric_layer2", "metric_layer4", "overall", "reliability"} <= set(metrics["history"][0])
    tested = test_tool.main(
        ["--config", CONFIG, "--weights", str(checkpoint), "--no-progress", *avsl_overrides(tiny_data_root, tmp_path)]
    )
    for key in ("rank1", "rank5", "rank10", "mAP", "mINP"):
        assert tested[key] == pytest.approx(metrics[key], abs=1e-9), key


def test_fresh_avsl_evaluates_without_nans(tiny_data_root, tmp_path, monkeypatch):
    cfg = load_config(CONFIG, avsl_overrides(tiny_data_root, tmp_path / "build"))
    model = build_engine(cfg, progress=False).model
    assert not model.edges_initialised.any()  # never trained: zero edges
    weights = tmp_path / "fresh.pth"
    torch.save(model.state_dict(), weights)
    seen = []
    original = AVSLEngine.distance_matrix

    def spy(self, query, gallery):
        result = original(self, query, gallery)
        seen.append(result)
        return result

    monkeypatch.setattr(AVSLEngine, "distance_matrix", spy)
    tested = test_tool.main(
        ["--config", CONFIG, "--weights", str(weights), "--no-progress", *avsl_overrides(tiny_data_root, tmp_path)]
    )
    assert seen and all(torch.isfinite(d).all() for d in seen)
    for key in ("rank1", "mAP", "mINP"):
        assert math.isfinite(tested[key]) and 0.0 <= tested[key] <= 1.0, key


def test_attribution_panels_join_the_report(explained):
    summary, content, out = explained
    assert summary["explained_with"] == "attribution" and summary["levels"] == LEVELS
    pairs = content["pairs"]
    assert len(pairs) == NUM_QUERIES * TOPK == summary["num_pairs"]
    page = (out / "panels.html").read_text()
    assert "AVSL attribution" in page and "similarity attention" not in page
    linked = set(re.findall(r'src="([^"]+)"', page))
    for pair in pairs:
        assert pair["panel"].startswith("attributions/") and (out / pair["panel"]).is_file()
        assert pair["panel"] in linked
    assert not (out / "panels").exists()
    shares = summary["mean_level_share"]
    assert list(shares) == LEVELS and sum(shares.values()) == pytest.approx(1.0, abs=1e-4)


def test_contributions_sum_to_the_engine_distance(explained, oracle_distances):
    _, content, _ = explained
    distmat, query, gallery = oracle_distances
    for pair in content["pairs"]:
        attribution = pair["attribution"]
        total = sum(sum(level["contributions"]) for level in attribution["levels"])
        assert total == pytest.approx(pair["distance"], abs=1e-4)
        assert sum(level["total"] for level in attribution["levels"]) == pytest.approx(total, abs=1e-6)
        engine_distance = distmat[pair["query_index"], pair["gallery_index"]]
        assert pair["distance"] == pytest.approx(engine_distance, rel=1e-5, abs=1e-7)
        assert pair["attributed_distance"] == pytest.approx(engine_distance, rel=1e-4, abs=1e-6)
        assert pair["query_pid"] == query.pids[pair["query_index"]]
        assert pair["gallery_pid"] == gallery.pids[pair["gallery_index"]]


def test_ranking_follows_the_engine_distance(explained, oracle_distances):
    _, content, _ = explained
    distmat, query, gallery = oracle_distances
    for pair in content["pairs"]:
        qi = pair["query_index"]
        junk = (gallery.pids == query.pids[qi]) & (gallery.camids == query.camids[qi])
        row = np.where(junk, np.inf, distmat[qi])
        order = np.argsort(row, kind="stable")
        assert pair["gallery_index"] == order[pair["rank"] - 1]


def test_top_nodes_and_rectified_node(explained):
    _, content, _ = explained
    for pair in content["pairs"]:
        attribution = pair["attribution"]
        for level, name in zip(attribution["levels"], LEVELS):
            contributions = np.array(level["contributions"])
            assert level["level"] == name and contributions.size == 16
            top = [node["node"] for node in level["top"]]
            assert top == list(np.argsort(-contributions, kind="stable")[:TOP_NODES])
            for node in level["top"]:
                assert node["contribution"] == pytest.approx(node["weight"] * node["delta"])
        rect = attribution["rectified_node"]
        assert (rect["level"], rect["lower_level"]) == ("layer4", "layer3")
        assert 0.0 < rect["reliability"] < 1.0
        expected = rect["reliability"] * rect["delta"] + (1 - rect["reliability"]) * rect["carried"]
        assert rect["rectified"] == pytest.approx(expected, rel=1e-5)
        assert 1 <= len(rect["feeders"]) <= 3
        assert sum(f["fed"] for f in rect["feeders"]) <= rect["carried"] * (1 + 1e-6)


def test_triplets_are_refused_for_avsl(trained, tiny_data_root, tmp_path):
    with pytest.raises(SystemExit, match="attribution panels"):
        explain_tool.main([
            "--config", CONFIG, "--weights", str(trained[0]), "--triplets", "--no-progress",
            *avsl_overrides(tiny_data_root, tmp_path),
        ])


def test_explorer_offers_one_view_per_level(explained):
    summary, content, out = explained
    text = (out / "index.html").read_text(encoding="utf-8")
    found = re.search(r'<script type="application/json" id="explorer-data">(.*?)</script>', text, re.DOTALL)
    data = json.loads(found.group(1))
    assert [e["key"] for e in data["explainers"]] == [f"level{k}" for k in range(len(LEVELS))]
    assert summary["run"]["queries"].startswith("all ") and "failures" not in summary
    records = {(p["query_index"], p["rank"]): p for p in content["pairs"]}
    for query in data["queries"]:
        for match in query["matches"]:
            assert sorted(match["maps"]) == [f"level{k}" for k in range(len(LEVELS))]
            assert "corr" not in match
    # the level bars are the attribution's level totals, which sum to d_hat
    bars = re.findall(r'<span class="bar-value">([^<]+)</span>', text)
    assert len(bars) == len(LEVELS) * len(records)
