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
