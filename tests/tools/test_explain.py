"""tools/explain.py on a PCB trained 1 epoch on the tiny synthetic set (CPU, seconds).

The ranking is checked against an independent oracle (the engine's own feature extraction and
distance matrix, evaluation protocol, stable sort); the trunk is counted per image.
"""

import json
import os
import re

import numpy as np
import pytest
import torch

from reid.config import load_config
from reid.builders import build_engine
from reid.engine.checkpoint import load_checkpoint, model_state_from_checkpoint
from reid.engine.evaluation import extract_dataset_features
from reid.metrics import compute_distance_matrix
from reid.metrics.rank import evaluate
from reid.models.pcb import PCB
from tests.conftest import tiny_overrides
from tests.vis.browser import canvas_pixels, open_page
from tests.vis.test_report_browser import find_browser, images_in_browser
from reid.cli import explain as explain_tool
from reid.explain.dump import person_energy
from reid.explain.ranking import choose_queries, spread_indices
from reid.metrics.streaming import MatchTracker
from reid.cli import train as train_tool

CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "synthetic_pcb.yaml")
NUM_QUERIES, TOPK = 4, 3


@pytest.fixture(scope="module")
def checkpoint(tiny_data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("explain-train")
    train_tool.main(["--config", CONFIG, "--no-progress", *tiny_overrides(tiny_data_root, out)])
    return out / "checkpoints" / "checkpoint_last.pth"


def run_explain(checkpoint, root, out, *flags):
    """Runs the tool; returns its summary, the JSON and how often the trunk/full model ran."""
    calls = {"trunk_images": 0, "forward": 0}
    forward_features, forward = PCB.forward_features, PCB.forward

    def counting_features(self, x):
        calls["trunk_images"] += x.shape[0]
        return forward_features(self, x)

    def counting_forward(self, x):
        calls["forward"] += 1
        return forward(self, x)

    argv = [
        "--config", CONFIG, "--weights", str(checkpoint), "--num-queries", str(NUM_QUERIES), "--topk", str(TOPK),
        # the shipped synthetic configs explain layer1; these tests start from the default (layer4,
        # head-only) and set the layer through ``flags``
        "--no-progress", "TEST.EXPLAIN_LAYER", "", *flags, *tiny_overrides(root, out),
    ]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(PCB, "forward_features", counting_features)
        patch.setattr(PCB, "forward", counting_forward)
        summary = explain_tool.main(argv)
    content = json.loads((out / "explanations" / "explanations.json").read_text())
    return summary, content, calls


@pytest.fixture(scope="module")
def head_run(checkpoint, tiny_data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("explain-head")
    return (*run_explain(checkpoint, tiny_data_root, out, "--triplets", "--same", "truth"), out)


@pytest.fixture(scope="module")
def oracle(checkpoint, tiny_data_root, tmp_path_factory):
    """Query/gallery features and the full distance matrix, computed the evaluation's way."""
    cfg = load_config(CONFIG, tiny_overrides(tiny_data_root, tmp_path_factory.mktemp("explain-oracle")))
    engine = build_engine(cfg, progress=False)
    engine.model.load_state_dict(model_state_from_checkpoint(load_checkpoint(str(checkpoint))))
    engine.model.eval()
    loaders = next(iter(engine.test_loader.values()))
    query = extract_dataset_features(engine.model, loaders["query"], engine.device, progress=False)
    gallery = extract_dataset_features(engine.model, loaders["gallery"], engine.device, progress=False)
    return query, gallery, compute_distance_matrix(query.features, gallery.features, "euclidean").numpy()


def oracle_order(oracle, query_index):
    """Gallery indices in rank order for a query: same identity and camera removed, stable."""
    query, gallery, dist = oracle
    keep = ~((gallery.pids == query.pids[query_index]) & (gallery.camids == query.camids[query_index]))
    order = np.argsort(dist[query_index], kind="stable")
    return [int(j) for j in order if keep[j]]


def test_spread_indices():
    assert spread_indices(16, 4) == [0, 5, 10, 15]
    assert spread_indices(3, 10) == [0, 1, 2]
    assert spread_indices(5, 1) == [0]


def test_tracker_matches_a_full_stable_sort():
    rng = np.random.default_rng(0)
    num_q, num_g, topk = 3, 40, 4
    dist = rng.integers(0, 6, size=(num_q, num_g)).astype(float)  # many ties
    q_pids, q_cams = np.array([1, 2, 3]), np.array([0, 1, 0])
    g_pids, g_cams = rng.integers(1, 5, size=num_g), rng.integers(0, 2, size=num_g)
    tracker = MatchTracker(q_pids, q_cams, topk, remove_same_camera=True)
    for start in range(0, num_g, 7):
        sl = slice(start, start + 7)
        idx = list(range(num_g))[sl]
        tracker.update(dist[:, sl], g_pids[sl], g_cams[sl], [f"g{j}" for j in idx], [f"map{j}" for j in idx])
        assert len(tracker.payload) <= num_q * (topk + 2)
    assert tracker.num_gallery == num_g
    for i in range(num_q):
        junk = (g_pids == q_pids[i]) & (g_cams == q_cams[i])
        order = [int(j) for j in np.argsort(dist[i], kind="stable") if not junk[j]]
        assert tracker.ranked(i) == order[:topk]
        correct = [bool(g_pids[j] == q_pids[i]) for j in order]
        b = next((j for j, c in zip(order, correct) if c != correct[0]), None)
        assert tracker.contrast(i) == b
        if b is not None:
            assert tracker.rank_of(i, b) == order.index(b) + 1
            assert tracker.payload[b] == f"map{b}"
        for j in tracker.ranked(i):
            assert tracker.payload[j] == f"map{j}"


def test_mask_fraction_by_hand(tmp_path):
    from reid.vis import save_image

    image = tmp_path / "set" / "query" / "0001_c1s1_000000_00.jpg"
    save_image(image, np.zeros((4, 2, 3), dtype=np.uint8))
    mask = np.array([[0, 1], [2, 0], [0, 0], [3, 0]], dtype=np.uint8)
    os.makedirs(tmp_path / "set" / "masks" / "query")
    import cv2

    cv2.imwrite(str(tmp_path / "set" / "masks" / "query" / "0001_c1s1_000000_00.png"), mask)
    raw = torch.tensor([[1.0, 2.0], [3.0, 0.0], [4.0, 0.0], [0.0, 0.0]])
    frac, area = person_energy(raw, str(image))
    assert frac == pytest.approx((2 + 3) / 10) and area == pytest.approx(3 / 8)
    assert person_energy(torch.zeros(4, 2), str(image)) == (None, pytest.approx(3 / 8))
    assert person_energy(raw, str(tmp_path / "elsewhere.jpg")) == (None, None)


def test_dump_files_ranks_and_correct_flags(head_run, oracle):
    summary, content, _, out = head_run
    report = out / "explanations"
    assert (report / "index.html").is_file() and (report / "panels.html").is_file()
    assert summary["report"] == str((report / "index.html").resolve())
    assert summary["explained_with"] == "head" and summary["same"] == "truth"
    pairs = content["pairs"]
    assert len(pairs) == summary["num_pairs"] == NUM_QUERIES * TOPK
    query, gallery, dist = oracle
    chosen = sorted({p["query_index"] for p in pairs})
    assert chosen == spread_indices(len(query.paths), NUM_QUERIES)
    for qi in chosen:
        rows = sorted((p for p in pairs if p["query_index"] == qi), key=lambda p: p["rank"])
        assert [p["rank"] for p in rows] == list(range(1, TOPK + 1))
        assert [p["gallery_path"] for p in rows] == [gallery.paths[j] for j in oracle_order(oracle, qi)[:TOPK]]
        for p in rows:
            j = gallery.paths.index(p["gallery_path"])
            assert p["query_path"] == query.paths[qi] and p["query_pid"] == int(query.pids[qi])
            assert p["gallery_pid"] == int(gallery.pids[j])
            assert p["distance"] == pytest.approx(float(dist[qi, j]), rel=1e-4, abs=1e-6)
            # PCB's pooled embedding: the stripe terms of the distance sum to the ranked distance
            assert len(p["stripe_terms"]) == 2 and sum(p["stripe_terms"]) == pytest.approx(p["distance"], rel=1e-4, abs=1e-6)
            assert p["correct"] == (p["query_pid"] == p["gallery_pid"]) == p["same"]
            assert (report / p["panel"]).is_file() and not os.path.isabs(p["panel"])
        assert all(a["distance"] <= b["distance"] for a, b in zip(rows, rows[1:]))
    wrong_top1 = [p for p in pairs if p["rank"] == 1 and not p["correct"]]
    if wrong_top1:
        closest = [int(np.argmin(p["stripe_terms"])) for p in wrong_top1]
        assert summary["wrong_top1_closest_stripe"] == [closest.count(0), closest.count(1)]
    else:
        assert "wrong_top1_closest_stripe" not in summary


def test_mask_fractions_in_unit_interval(head_run):
    summary, content, _, _ = head_run
    fractions = [p[k] for p in content["pairs"] for k in ("query_mask_fraction", "gallery_mask_fraction")]
    known = [f for f in fractions if f is not None]
    assert known, "the synthetic set has masks: fractions must be computed"
    assert all(0.0 <= f <= 1.0 for f in known)
    for key in ("mean_mask_fraction_correct", "mean_mask_fraction_wrong", "mean_mask_area"):
        assert summary[key] is None or 0.0 <= summary[key] <= 1.0


def test_trunk_runs_once_per_image(head_run, oracle):
    summary, _, calls, _ = head_run
    query, gallery, _ = oracle
    assert summary["num_gallery"] == len(gallery.paths)
    # every query once (the run's statistics need all of them), every gallery image once
    assert calls["trunk_images"] == len(query.paths) + len(gallery.paths)
    assert calls["forward"] == 0  # no full-model pass: everything after the trunk is head-only


def test_triplets(head_run, oracle):
    summary, content, _, out = head_run
    triplets = content["triplets"]
    assert len(triplets) == summary["num_triplets"] == NUM_QUERIES  # the tiny set has both kinds
    query, gallery, _ = oracle
    for t in triplets:
        order = oracle_order(oracle, t["query_index"])
        paths = [gallery.paths[j] for j in order]
        correct = [bool(gallery.pids[j] == query.pids[t["query_index"]]) for j in order]
        b = next(k for k, c in enumerate(correct) if c != correct[0])
        assert (t["a_path"], t["a_correct"], t["a_rank"]) == (paths[0], correct[0], 1)
        assert (t["b_path"], t["b_correct"], t["b_rank"]) == (paths[b], correct[b], b + 1)
        assert t["a_correct"] != t["b_correct"] and t["a_distance"] <= t["b_distance"]
        assert (out / "explanations" / t["panel"]).is_file()
    assert len(list((out / "explanations" / "triplets").iterdir())) == NUM_QUERIES


def test_panel_page_images_load_in_a_browser(head_run):
    browser = find_browser()
    if browser is None:
        pytest.skip("no Chromium/Chrome found; install one with: apt-get install -y chromium")
    _, content, _, out = head_run
    result = images_in_browser(out / "explanations" / "panels.html", browser)
    assert result["broken"] == []
    # per query: its thumb, a thumb and a panel per match, a triplet panel
    assert result["total"] == NUM_QUERIES * (1 + 2 * TOPK + 1)


def test_full_model_path_gives_the_same_explanations(checkpoint, tiny_data_root, tmp_path, head_run):
    summary, content, calls = run_explain(checkpoint, tiny_data_root, tmp_path, "--layer", "layer4", "--same", "truth")
    assert summary["explained_with"] == "model" and summary["num_triplets"] == 0
    assert not (tmp_path / "explanations" / "triplets").exists()
    assert calls["forward"] > 0
    key = lambda p: (p["query_index"], p["rank"])  # noqa: E731
    ours, head = sorted(content["pairs"], key=key), sorted(head_run[1]["pairs"], key=key)
    assert [(key(p), p["gallery_path"], p["correct"]) for p in ours] == [
        (key(p), p["gallery_path"], p["correct"]) for p in head
    ]
    for p, h in zip(ours, head):
        for field in ("query_mask_fraction", "gallery_mask_fraction", "distance"):
            assert p[field] == pytest.approx(h[field], rel=1e-4, abs=1e-6), field
        assert p["stripe_terms"] == pytest.approx(h["stripe_terms"], rel=1e-4, abs=1e-6)


def test_same_model_by_default_treats_every_shown_match_as_a_match(checkpoint, tiny_data_root, tmp_path, head_run):
    summary, content, _ = run_explain(checkpoint, tiny_data_root, tmp_path)  # no --same: the model's decision
    assert summary["same"] == "model"
    assert all(p["same"] for p in content["pairs"])
    page = (tmp_path / "explanations" / "index.html").read_text()
    assert "Maps explain the model&#x27;s decision" in page and "(--same model, the default)" in page
    assert "Maps explain the ground truth" in (head_run[3] / "explanations" / "index.html").read_text()
    key = lambda p: (p["query_index"], p["rank"])  # noqa: E731
    truth = {key(p): p for p in head_run[1]["pairs"]}
    changed = 0
    for p in content["pairs"]:
        t = truth[key(p)]
        if p["correct"]:  # same weights either way
            assert p["gallery_mask_fraction"] == pytest.approx(t["gallery_mask_fraction"], abs=1e-6)
        else:  # other weights, other maps
            changed += p["gallery_mask_fraction"] != pytest.approx(t["gallery_mask_fraction"], abs=1e-6)
    assert changed > 0


def test_config_layer_is_explained_and_the_flag_overrides_it(checkpoint, tiny_data_root, tmp_path, head_run):
    summary, content, calls = run_explain(checkpoint, tiny_data_root, tmp_path / "cfg", "TEST.EXPLAIN_LAYER", "layer1")
    assert summary["explained_with"] == "model" and summary["layer"] == "layer1"
    assert calls["forward"] > 0
    key = lambda p: (p["query_index"], p["rank"])  # noqa: E731
    head = {key(p): p for p in head_run[1]["pairs"]}
    # same ranking, other maps (layer1 is 16x8 here, layer4 4x2)
    assert {key(p): p["gallery_path"] for p in content["pairs"]} == {k: p["gallery_path"] for k, p in head.items()}
    assert any(p["gallery_mask_fraction"] != pytest.approx(head[key(p)]["gallery_mask_fraction"], abs=1e-4)
               for p in content["pairs"])
    # --layer wins over the config: layer4 on the full model equals the head-only maps
    summary, content, _ = run_explain(
        checkpoint, tiny_data_root, tmp_path / "flag", "--layer", "layer4", "TEST.EXPLAIN_LAYER", "layer1", "--same", "truth"
    )
    assert summary["layer"] == "layer4"
    for p in content["pairs"]:
        assert p["gallery_mask_fraction"] == pytest.approx(head[key(p)]["gallery_mask_fraction"], rel=1e-4, abs=1e-6)


def test_unknown_layer_is_refused_before_any_work(checkpoint, tiny_data_root, tmp_path):
    with pytest.raises(SystemExit, match="cannot explain layer 'layer9'.*TEST.EXPLAIN_LAYER"):
        run_explain(checkpoint, tiny_data_root, tmp_path, "TEST.EXPLAIN_LAYER", "layer9")
    assert not (tmp_path / "explanations").exists()


def oracle_result(oracle):
    query, gallery, dist = oracle
    return evaluate(dist, query.pids, gallery.pids, query.camids, gallery.camids, max_rank=min(50, dist.shape[1]),
                    tie_break="stable")


def test_run_statistics_cover_every_query(head_run, oracle):
    summary, content, _, _ = head_run
    query, _, _ = oracle
    truth = oracle_result(oracle)
    run = summary["run"]
    assert run["queries"] == f"all {len(query.paths)} queries"
    assert run["rank1"] == pytest.approx(float(truth.cmc[0])) and run["mAP"] == pytest.approx(float(truth.mAP))
    assert run["mINP"] == pytest.approx(float(truth.mINP))
    records = {r["query_index"]: r for r in content["queries"]}
    assert sorted(records) == spread_indices(len(query.paths), NUM_QUERIES)
    for qi, record in records.items():
        expected = truth.ap[qi]
        assert (record["ap"] is None) == bool(np.isnan(expected))
        if record["ap"] is not None:
            assert record["ap"] == pytest.approx(float(expected))
        assert record["first_match_rank"] == int(truth.first_match_rank[qi])


def test_failure_table_by_hand(head_run, oracle):
    summary, _, _, _ = head_run
    query, gallery, dist = oracle
    closest, favoured, margins = [0, 0], [0, 0], []
    for qi in range(len(query.paths)):
        order = oracle_order(oracle, qi)
        true = [j for j in order if gallery.pids[j] == query.pids[qi]]
        if not true or gallery.pids[order[0]] == query.pids[qi]:
            continue
        q = query.features[qi].double().reshape(2, -1)
        imp = ((q - gallery.features[order[0]].double().reshape(2, -1)) ** 2).sum(1).numpy()
        tru = ((q - gallery.features[true[0]].double().reshape(2, -1)) ** 2).sum(1).numpy()
        closest[int(np.argmin(imp))] += 1
        favoured[int(np.argmax(tru - imp))] += 1
        margins.append(tru - imp)
    failures = summary["failures"]
    assert failures["num_wrong_top1"] == len(margins) > 0
    assert failures["closest"] == closest and failures["most_favoured"] == favoured
    assert failures["mean_margin"] == pytest.approx(np.mean(margins, axis=0).tolist(), rel=1e-4, abs=1e-6)


def test_small_budget_keeps_the_statistics_to_the_explained_queries(checkpoint, tiny_data_root, tmp_path, head_run):
    summary, content, _ = run_explain(checkpoint, tiny_data_root, tmp_path, "--max-matrix-mb", "0")
    assert summary["run"]["queries"] == f"the {NUM_QUERIES} explained queries only"
    assert "failures" not in summary
    # the per-query AP does not depend on which other queries are covered
    assert [(r["query_index"], r["ap"]) for r in content["queries"]] == [
        (r["query_index"], pytest.approx(r["ap"]) if r["ap"] is not None else None) for r in head_run[1]["queries"]
    ]


def test_explorer_is_the_report_and_runs_in_a_browser(head_run):
    summary, content, _, out = head_run
    page = out / "explanations" / "index.html"
    text = page.read_text(encoding="utf-8")
    assert 'id="explorer-data"' in text and not re.search(r'<img[^>]+src="(?!data:)', text)
    # queries by AP, worst first
    aps = {r["query_index"]: r["ap"] for r in content["queries"]}
    shown = [int(i) for i in re.findall(r"\(query (\d+)\)</h2>", text)]
    assert sorted(shown) == sorted(aps)
    ordered = [aps[i] for i in shown]
    known = [a for a in ordered if a is not None]
    assert known == sorted(known) and ordered[: len(known)] == known
    with open_page(page) as opened:
        p = opened.page
        assert p.locator("canvas.view").count() == 2 * NUM_QUERIES * TOPK
        options = p.locator("#explainer option").evaluate_all("os => os.map(o => o.value)")
        assert options == ["attention", "decomposition", "none"]
        first = 'canvas.view[data-side="gallery"]'
        before = canvas_pixels(p, first)
        p.select_option("#explainer", "decomposition")
        assert canvas_pixels(p, first) != before
        query = p.locator('canvas.view[data-side="query"]').first
        query.hover(position={"x": 2, "y": 2})
        assert p.locator(first).first.get_attribute("data-highlight") == "0"
        assert opened.errors == []


def test_explaining_from_saved_features_runs_the_trunk_only_where_needed(checkpoint, tiny_data_root, tmp_path, head_run):
    from reid.cli import test as test_tool

    features = tmp_path / "feats"
    test_tool.main(["--config", CONFIG, "--weights", str(checkpoint), "--no-progress", "--save-features",
                    str(features), "TEST.EXPLAIN_LAYER", "", *tiny_overrides(tiny_data_root, tmp_path / "test")])
    summary, content, calls = run_explain(checkpoint, tiny_data_root, tmp_path / "saved", "--triplets",
                                          "--features", str(features), "--same", "truth")
    # the same explanations as embedding everything again
    key = lambda p: (p["query_index"], p["rank"])  # noqa: E731
    ours, head = sorted(content["pairs"], key=key), sorted(head_run[1]["pairs"], key=key)
    assert [(key(p), p["gallery_path"]) for p in ours] == [(key(p), p["gallery_path"]) for p in head]
    for p, h in zip(ours, head):
        assert p["distance"] == pytest.approx(h["distance"], rel=1e-5, abs=1e-6)
        assert p["gallery_mask_fraction"] == pytest.approx(h["gallery_mask_fraction"], rel=1e-4, abs=1e-6)
    assert summary["run"]["mAP"] == pytest.approx(head_run[0]["run"]["mAP"])
    # the trunk ran on the chosen queries and the needed gallery images only
    assert calls["trunk_images"] <= NUM_QUERIES + NUM_QUERIES * (TOPK + 2)
    assert calls["trunk_images"] < head_run[2]["trunk_images"]
    with pytest.raises(SystemExit, match="features file not found"):
        run_explain(checkpoint, tiny_data_root, tmp_path / "none", "--features", str(tmp_path))


def test_chosen_queries_are_explained(checkpoint, tiny_data_root, tmp_path, head_run):
    summary, content, _ = run_explain(checkpoint, tiny_data_root, tmp_path, "--queries", "5,1,5", "--same", "truth")
    assert summary["num_queries"] == 2
    assert sorted({p["query_index"] for p in content["pairs"]}) == [1, 5]
    head = {(p["query_index"], p["rank"]): p["gallery_path"] for p in head_run[1]["pairs"]}
    for p in content["pairs"]:  # a query also explained by the spread run ranks the same gallery
        if (p["query_index"], p["rank"]) in head:
            assert head[(p["query_index"], p["rank"])] == p["gallery_path"]
    with pytest.raises(SystemExit, match=r"--queries: \[999\] outside the query set of .* \(indices 0 to \d+\)"):
        run_explain(checkpoint, tiny_data_root, tmp_path / "bad", "--queries", "1,999")
    assert choose_queries(10, 3) == spread_indices(10, 3) and choose_queries(10, [4, 2, 4]) == [2, 4]
    with pytest.raises(ValueError, match=r"query indices \[10\] are outside the query set \(0 to 9\)"):
        choose_queries(10, [10])
