"""Shared fixtures: a tiny synthetic dataset generated once per test session; an empty weights
cache for the whole session."""

import os
import tempfile

import pytest


def pytest_configure(config):
    """The suite runs as on a fresh machine: an empty torch cache ($TORCH_HOME), whatever weights
    this machine has fetched (subprocesses inherit it; tests that need weights write fake ones)."""
    os.environ["TORCH_HOME"] = tempfile.mkdtemp(prefix="reid-tests-torch-home-")

TINY_SYNTHETIC = {"num_ids": 16, "num_cams": 2, "images_per_id": 6, "height": 64, "width": 32, "seed": 3}


@pytest.fixture(scope="session")
def tiny_data_root(tmp_path_factory):
    """A data root holding the tiny synthetic set described by ``TINY_SYNTHETIC``."""
    from reid.data.synthetic import SyntheticReID

    root = tmp_path_factory.mktemp("reid-data")
    SyntheticReID(root=str(root), progress=False, **TINY_SYNTHETIC)
    return root


def tiny_overrides(root, output_dir, epochs=1):
    """Command-line overrides that train PCB on the tiny synthetic set in seconds."""
    syn = TINY_SYNTHETIC
    return [
        "DATA.ROOT", str(root), "OUTPUT_DIR", str(output_dir),
        "DATA.SYNTHETIC.NUM_IDS", str(syn["num_ids"]), "DATA.SYNTHETIC.NUM_CAMS", str(syn["num_cams"]),
        "DATA.SYNTHETIC.IMAGES_PER_ID", str(syn["images_per_id"]),
        "DATA.SYNTHETIC.IMG_HEIGHT", str(syn["height"]), "DATA.SYNTHETIC.IMG_WIDTH", str(syn["width"]),
        "DATA.SYNTHETIC.SEED", str(syn["seed"]),
        "DATA.HEIGHT", "64", "DATA.WIDTH", "32", "DATA.WORKERS", "0",
        "MODEL.BACKBONE", "resnet18", "MODEL.NUM_STRIPES", "2", "MODEL.REDUCED_DIM", "16",
        "MODEL.PRETRAINED", "False",
        "SAMPLER.BATCH_SIZE_TRAIN", "8", "SAMPLER.NUM_INSTANCES", "2", "SAMPLER.BATCH_SIZE_TEST", "16",
        "OPTIM.NAME", "adam", "OPTIM.LR", "0.001", "OPTIM.MAX_EPOCH", str(epochs),
        "TRAIN.PRINT_FREQ", "1",
    ]
