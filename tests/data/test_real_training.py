"""A few training steps through torchreid's ImageDataManager on fake copies of every real layout.

Trains PCB for one epoch with ``tools/train.py`` (then evaluates) on: the CUHK03-NP folder
release, the CUHK03-NP original ``.mat`` release (torchreid's extraction, then our moved-root-safe
splits) and DukeMTMC-reID in both accepted places.
"""

import json
import os
import shutil

import pytest

from tests.data.test_cuhk03_np import make_folder_release, make_mat_release
from tests.data.test_dukemtmc import make_duke
from reid.cli import train as train_tool

CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "pcb_duke.yaml")

# Enough images per split for P x K = 2 x 2 batches (names follow each release's pattern).
CUHK_TREE = {
    "bounding_box_train": ["0003_c1_1.png", "0003_c2_2.png", "0008_c1_1.png", "0008_c2_3.png"],
    "query": ["0004_c1_1.png", "0006_c2_1.png"],
    "bounding_box_test": ["0004_c2_2.png", "0006_c1_2.png", "0006_c1_3.png"],
}
DUKE_TREE = {
    "bounding_box_train": [
        "0005_c1_f0000001.jpg", "0005_c3_f0000002.jpg", "0009_c8_f0000003.jpg", "0009_c2_f0000007.jpg",
    ],
    "query": ["0002_c2_f0000004.jpg"],
    "bounding_box_test": ["0002_c5_f0000005.jpg", "0007_c1_f0000006.jpg"],
}


def train_one_epoch(root, source, out):
    overrides = [
        "DATA.ROOT", str(root), "OUTPUT_DIR", str(out), "DATA.SOURCES", f"['{source}']",
        "DATA.HEIGHT", "32", "DATA.WIDTH", "16", "DATA.WORKERS", "0",
        "MODEL.BACKBONE", "resnet18", "MODEL.NUM_STRIPES", "2", "MODEL.REDUCED_DIM", "8",
        "MODEL.PRETRAINED", "False", "OPTIM.NAME", "adam", "OPTIM.LR", "0.001",
        "SAMPLER.BATCH_SIZE_TRAIN", "4", "SAMPLER.NUM_INSTANCES", "2", "SAMPLER.BATCH_SIZE_TEST", "4",
        "OPTIM.MAX_EPOCH", "1", "TRAIN.PRINT_FREQ", "1",
    ]
    metrics = train_tool.main(["--config", CONFIG, "--no-progress", *overrides])
    on_disk = json.loads((out / "metrics.json").read_text())
    (epoch,) = on_disk["history"]
    assert epoch["loss"] == epoch["loss"] and epoch["loss"] > 0  # finite and positive
    assert 0.0 <= on_disk["rank1"] <= 1.0 and on_disk["mAP"] == metrics["mAP"]
    assert (out / "checkpoints" / "checkpoint_last.pth").is_file()
    return on_disk


@pytest.mark.parametrize("image_type", ["labeled", "detected"])
def test_cuhk03_np_folder_release_trains(tmp_path, image_type):
    make_folder_release(tmp_path / "data", image_type, tree=CUHK_TREE)
    metrics = train_one_epoch(tmp_path / "data", f"cuhk03_np_{image_type}", tmp_path / "out")
    assert metrics["config"]["DATA"]["SOURCES"] == [f"cuhk03_np_{image_type}"]


def test_cuhk03_np_mat_release_trains_after_the_root_moves(tmp_path):
    make_mat_release(tmp_path / "data")
    train_one_epoch(tmp_path / "data", "cuhk03_np_labeled", tmp_path / "out1")
    shutil.move(str(tmp_path / "data"), str(tmp_path / "moved"))
    train_one_epoch(tmp_path / "moved", "cuhk03_np_labeled", tmp_path / "out2")


@pytest.mark.parametrize("where", ["dukemtmc-reid/DukeMTMC-reID", "DukeMTMC-reID"])
def test_dukemtmc_reid_trains(tmp_path, where):
    make_duke(tmp_path / "data" / where, tree=DUKE_TREE)
    train_one_epoch(tmp_path / "data", "dukemtmc_reid", tmp_path / "out")
