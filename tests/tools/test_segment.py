"""``reid segment`` on a PCB trained 1 epoch on the tiny synthetic set (CPU, seconds)."""

import json
import os

import numpy as np
import pytest

from reid.cli import segment as segment_tool
from reid.cli import train as train_tool
from reid.data.synthetic import load_mask
from reid.explain.segment import grabcut_from_rect, whole_frame
from reid.metrics.segmentation import foreground_iou
from reid.vis import load_image
from tests.conftest import tiny_overrides

CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "synthetic_pcb.yaml")


@pytest.fixture(scope="module")
def checkpoint(tiny_data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("segment-train")
    train_tool.main(["--config", CONFIG, "--no-progress", *tiny_overrides(tiny_data_root, out)])
    return out / "checkpoints" / "checkpoint_last.pth"


def test_segment_scores_every_method_and_the_baselines_by_hand(checkpoint, tiny_data_root, tmp_path):
    summary = segment_tool.main([
        "--config", CONFIG, "--weights", str(checkpoint), "--pairs", "5", "--panels", "2", "--no-progress",
        "TEST.EXPLAIN_LAYER", "", *tiny_overrides(tiny_data_root, tmp_path),
    ])
    assert summary["pairs"] == 5 and summary["layer"] == "layer4" and summary["support_mask"] == "use"
    assert set(summary["methods"]) == set(segment_tool.METHODS)
    content = json.loads((tmp_path / "segmentation" / "segmentation.json").read_text())
    pairs = content["pairs"]
    assert len(pairs) == 5
    for record in pairs:
        for method in segment_tool.METHODS:
            assert 0.0 <= record[method]["iou"] <= 1.0 and 0.0 <= record[method]["fb_iou"] <= 1.0
        # the whole-frame baseline, recomputed by hand
        image, truth = load_image(record["query"]), load_mask(record["query"]) > 0
        expected = foreground_iou(grabcut_from_rect(image, whole_frame(*truth.shape)), truth)
        assert record["frame+grabcut"]["iou"] == pytest.approx(expected)
        # support and query: same identity, other camera
        support, query = os.path.basename(record["support"]), os.path.basename(record["query"])
        assert support.split("_")[0] == query.split("_")[0] and support.split("_")[1][:2] != query.split("_")[1][:2]
    for method, row in summary["methods"].items():
        values = [p[method]["iou"] for p in pairs]
        assert row["iou"] == pytest.approx(np.mean(values))
        assert row["iou_interval"][0] <= row["iou"] <= row["iou_interval"][1]
    assert summary["iou_difference_vs"]["box+grabcut"]["n"] == 5
    assert sorted(os.listdir(tmp_path / "segmentation" / "panels")) == ["pair0000.png", "pair0001.png"]


def test_bad_thresholds_are_refused(checkpoint, tiny_data_root, tmp_path):
    with pytest.raises(SystemExit, match="bg < probable_fg"):
        segment_tool.main(["--config", CONFIG, "--weights", str(checkpoint), "--bg", "0.5", "--probable-fg", "0.4",
                           *tiny_overrides(tiny_data_root, tmp_path)])


def test_segment_scores_pascal5i_episodes(checkpoint, tiny_data_root, tmp_path):
    from tests.data.test_pascal5i import make_voc

    voc_root = tmp_path / "voc"
    make_voc(voc_root)
    summary = segment_tool.main([
        "--config", CONFIG, "--weights", str(checkpoint), "--pascal5i", str(voc_root), "--fold", "0",
        "--pairs", "3", "--panels", "1", "--no-progress", "TEST.EXPLAIN_LAYER", "",
        *tiny_overrides(tiny_data_root, tmp_path / "out"),
    ])
    assert summary["source"] == "PASCAL-5i fold 0" and summary["pairs"] == 3
    content = json.loads((tmp_path / "out" / "segmentation" / "segmentation.json").read_text())
    for record in content["pairs"]:
        assert "VOCdevkit" in record["query"] and record["support"] != record["query"]
        for method in segment_tool.METHODS:
            assert 0.0 <= record[method]["fb_iou"] <= 1.0


def run_segment(checkpoint, root, out, *flags):
    summary = segment_tool.main([
        "--config", CONFIG, "--weights", str(checkpoint), "--no-progress", "TEST.EXPLAIN_LAYER", "", *flags,
        *tiny_overrides(root, out),
    ])
    return summary, json.loads((out / "segmentation" / "segmentation.json").read_text())["pairs"]


def test_two_way_on_the_synthetic_people_and_their_bags(checkpoint, tiny_data_root, tmp_path):
    from reid.cli.segment import MIN_BAG_FRACTION
    from reid.data.render import PART_LABELS

    # two shots: the tiny set has too few bags of other identities for five (PASCAL-5i's test has five)
    summary, records = run_segment(checkpoint, tiny_data_root, tmp_path, "--ways", "2", "--shots", "2",
                                   "--pairs", "3", "--panels", "1")
    assert (summary["ways"], summary["shots"], summary["pairs"]) == (2, 2, 3)
    assert [r["class"] for r in records] == ["person", "bag"] * 3
    for person, bag in zip(records[::2], records[1::2]):
        query = person["query"]
        assert bag["query"] == query
        labels = load_mask(query)
        assert (labels == PART_LABELS["bag"]).mean() >= MIN_BAG_FRACTION
        for record, name in ((person, "person"), (bag, "bag")):
            assert len(record["supports"]) == 2 and query not in record["supports"]
            pid = os.path.basename(query).split("_")[0]
            assert all(os.path.basename(s).split("_")[0] != pid for s in record["supports"])  # other identities
            if name == "bag":
                assert all((load_mask(s) == PART_LABELS["bag"]).mean() >= MIN_BAG_FRACTION for s in record["supports"])
            for method in segment_tool.METHODS:
                assert 0.0 <= record[method]["iou"] <= 1.0
    # the model-free baselines cannot tell the classes apart: the first class takes the box's pixels
    assert all(r["box+grabcut"]["iou"] == 0.0 for r in records[1::2])
    table = summary["classes"]["attention+grabcut"]
    assert set(table["per_class"]) == {"person", "bag"} and table["per_class"]["bag"]["episodes"] == 3
    assert table["mean_iou"] == pytest.approx(np.mean([r["iou"] for r in table["per_class"].values()]))
    assert sorted(os.listdir(tmp_path / "segmentation" / "panels")) == ["pair0000_bag.png", "pair0000_person.png"]


def test_one_way_five_shot_uses_five_images_of_the_identity(checkpoint, tiny_data_root, tmp_path):
    summary, records = run_segment(checkpoint, tiny_data_root, tmp_path, "--shots", "5", "--pairs", "2", "--panels", "0")
    assert (summary["ways"], summary["shots"]) == (1, 5)
    for record in records:
        pid = os.path.basename(record["query"]).split("_")[0]
        assert len(set(record["supports"])) == 5 and record["query"] not in record["supports"]
        assert all(os.path.basename(s).split("_")[0] == pid for s in record["supports"])
        assert record["support"] == record["supports"][0]
    # the class table of one class: its IoU over both episodes, summed pixel counts (by hand)
    row = summary["classes"]["frame+grabcut"]["per_class"]["person"]
    inter = union = 0
    for record in records:
        image, truth = load_image(record["query"]), load_mask(record["query"]) > 0
        mask = grabcut_from_rect(image, whole_frame(*truth.shape))
        inter, union = inter + (mask & truth).sum(), union + (mask | truth).sum()
    assert row["iou"] == pytest.approx(inter / union) and row["episodes"] == 2


def test_two_way_five_shot_on_pascal5i(checkpoint, tiny_data_root, tmp_path):
    from tests.data.test_pascal5i import TWO_WAY, make_voc

    voc_root = tmp_path / "voc"
    make_voc(voc_root, val=TWO_WAY)
    summary, records = run_segment(checkpoint, tiny_data_root, tmp_path / "out", "--pascal5i", str(voc_root),
                                   "--ways", "2", "--shots", "5", "--pairs", "2", "--panels", "0")
    assert summary["source"] == "PASCAL-5i fold 0" and (summary["pairs"], summary["shots"]) == (2, 5)
    assert [r["class"] for r in records] == ["aeroplane", "bicycle"] * 2
    assert all(len(r["supports"]) == 5 and r["query"] not in r["supports"] for r in records)
    assert set(summary["classes"]["attention+grabcut"]["per_class"]) == {"aeroplane", "bicycle"}
