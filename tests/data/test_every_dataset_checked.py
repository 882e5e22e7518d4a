"""Every dataset used through our tools reads every image of its splits when it is built:
ours (synthetic, DukeMTMC-reID, CUHK03-NP) and torchreid's built-ins (wrapped), with
``DATA.ON_BAD_IMAGE`` (``error``: one error naming the file; ``skip``: drop it and log)."""

from __future__ import annotations

import logging
import os
import shutil

import pytest
from PIL import Image
from torchreid.reid.data import ImageDataManager
from torchreid.reid.data.datasets import init_image_dataset

from reid.config import get_default_config, merge_from_list
from reid.data.base import register_variant
from reid.data.images import ImageReadError
from reid.data.synthetic import SyntheticReID
from reid.data.validation import DatasetError
from tests.conftest import TINY_SYNTHETIC

# torchreid's Market-1501 layout; pid -1 is junk (torchreid drops it), pid 0 background
MARKET = {
    "bounding_box_train": ["0002_c1s1_000451_03.jpg", "0002_c2s1_000301_01.jpg", "0007_c3s1_000551_01.jpg"],
    "query": ["0010_c1s1_001051_00.jpg"],
    "bounding_box_test": ["0010_c2s1_001101_02.jpg", "0000_c3s1_000001_01.jpg", "-1_c1s1_000002_01.jpg"],
}


def make_market(root):
    base = root / "market1501" / "Market-1501-v15.09.15"
    for folder, names in MARKET.items():
        os.makedirs(base / folder)
        for i, name in enumerate(names):
            Image.new("RGB", (4, 8), (20 * i, 60, 120)).save(base / folder / name)
    return base


def truncate(path):
    data = open(path, "rb").read()
    with open(path, "wb") as fh:
        fh.write(data[: len(data) // 2])


def market(root, on_bad_image="error", **kwargs):
    name = register_variant("market1501", {"on_bad_image": on_bad_image})
    return init_image_dataset(name, root=str(root), verbose=False, **kwargs)


# ------------------------------------------------------------------------- torchreid built-ins


def test_builtin_market_is_wrapped_with_its_lists_and_junk_pids(tmp_path):
    base = make_market(tmp_path)
    data = market(tmp_path)
    plain = init_image_dataset("market1501", root=str(tmp_path), verbose=False)
    assert sorted(data.train) == sorted(plain.train)
    assert sorted(data.query) == sorted(plain.query) and sorted(data.gallery) == sorted(plain.gallery)
    assert data.num_train_pids == 2
    assert str(base / "query" / "0010_c1s1_001051_00.jpg") == data.query[0][0]
    combined = market(tmp_path, combineall=True)  # the background pid 0 stays out (torchreid's junk pids)
    assert len(combined.train) == 3 + 1 + 1


def test_builtin_truncated_image_error_names_the_file(tmp_path):
    base = make_market(tmp_path)
    truncate(base / "bounding_box_train" / "0007_c3s1_000551_01.jpg")
    with pytest.raises(ImageReadError, match="0007_c3s1_000551_01.jpg"):
        market(tmp_path)


def test_builtin_skip_drops_the_image_logs_and_relabels(tmp_path, caplog):
    base = make_market(tmp_path)
    truncate(base / "bounding_box_train" / "0007_c3s1_000551_01.jpg")  # the only image of pid 7
    with caplog.at_level(logging.WARNING):
        data = market(tmp_path, on_bad_image="skip")
    assert "skipped 1 unreadable image" in caplog.text and "0007_c3s1_000551_01.jpg" in caplog.text
    assert sorted(os.path.basename(p) for p, *_ in data.train) == sorted(MARKET["bounding_box_train"][:2])
    assert {pid for _, pid, _, _ in data.train} == {0} and data.num_train_pids == 1


def test_builtin_reads_the_splits_of_its_mode(tmp_path):
    base = make_market(tmp_path)
    truncate(base / "bounding_box_test" / "0010_c2s1_001101_02.jpg")
    assert len(market(tmp_path, mode="query")) == 1
    with pytest.raises(ImageReadError, match="0010_c2s1_001101_02.jpg"):
        market(tmp_path, mode="gallery")
    with pytest.raises(ImageReadError, match="0010_c2s1_001101_02.jpg"):
        market(tmp_path, combineall=True)


def test_builtin_items_are_read_with_our_reader(tmp_path):
    base = make_market(tmp_path)
    data = market(tmp_path, mode="query")
    os.remove(base / "query" / "0010_c1s1_001051_00.jpg")
    with pytest.raises(ImageReadError, match="0010_c1s1_001051_00.jpg"):  # torchreid's reader loops forever
        data[0]


def test_builtin_missing_folder_is_named_and_nothing_downloaded(tmp_path, monkeypatch):
    from torchreid.reid.data.datasets import dataset as tr_dataset

    def no_network(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(tr_dataset, "download_url", no_network)
    with pytest.raises(DatasetError, match=str(tmp_path / "market1501")):
        market(tmp_path)
    assert not os.path.exists(tmp_path / "market1501")


def test_builtin_built_by_torchreid_data_manager_with_skip(tmp_path):
    base = make_market(tmp_path)
    truncate(base / "bounding_box_train" / "0002_c1s1_000451_03.jpg")
    name = register_variant("market1501", {"on_bad_image": "skip"})
    manager = ImageDataManager(
        root=str(tmp_path), sources=[name], height=8, width=4, batch_size_train=2,
        batch_size_test=2, workers=0, train_sampler="RandomSampler", use_gpu=False,
    )
    assert manager.num_train_pids == 2
    assert len(manager.train_loader.dataset) == 2
    assert next(iter(manager.test_loader[name]["gallery"]))["img"].shape == (2, 3, 8, 4)


# ------------------------------------------------------------------------------- synthetic


@pytest.fixture
def synthetic_copy(tiny_data_root, tmp_path):
    """A copy of the session's tiny synthetic root (so that it can be damaged) and its train list."""
    root = tmp_path / "copy"
    shutil.copytree(tiny_data_root, root)
    data = SyntheticReID(root=str(root), progress=False, verbose=False, **TINY_SYNTHETIC)
    return root, data


def synthetic(root, **kwargs):
    return SyntheticReID(root=str(root), progress=False, verbose=False, **TINY_SYNTHETIC, **kwargs)


def test_synthetic_truncated_image_error_or_skip(synthetic_copy, caplog):
    root, data = synthetic_copy
    bad = data.train[-1][0]
    truncate(bad)
    with pytest.raises(ImageReadError, match=os.path.basename(bad)):
        synthetic(root)
    with caplog.at_level(logging.WARNING):
        kept = synthetic(root, on_bad_image="skip")
    assert "skipped 1 unreadable image" in caplog.text
    assert [item[0] for item in kept.train] == [item[0] for item in data.train[:-1]]
    assert sorted({item[1] for item in kept.train}) == list(range(kept.num_train_pids))


def test_synthetic_reads_the_splits_of_its_mode(synthetic_copy):
    root, data = synthetic_copy
    bad = data.gallery[0][0]
    truncate(bad)
    assert len(synthetic(root, mode="query")) == len(data.query)
    with pytest.raises(ImageReadError, match=os.path.basename(bad)):
        synthetic(root, mode="gallery")


def test_synthetic_registered_variant_takes_on_bad_image(synthetic_copy):
    root, data = synthetic_copy
    truncate(data.query[0][0])
    name = register_variant("synthetic", {**TINY_SYNTHETIC, "on_bad_image": "skip"})
    query = init_image_dataset(name, root=str(root), mode="query", verbose=False, progress=False)
    assert len(query) == len(data.query) - 1


# ----------------------------------------------------------------------------------- builders


def test_every_dataset_gets_on_bad_image_from_the_config():
    from reid.builders import dataset_options

    cfg = get_default_config()
    cfg.DATA.ON_BAD_IMAGE = "skip"
    for name in ("synthetic", "market1501", "msmt17", "dukemtmc_reid", "cuhk03_np_labeled", "cuhk03"):
        assert dataset_options(cfg, name)["on_bad_image"] == "skip", name


def test_training_data_with_skip_never_meets_the_bad_image(synthetic_copy):
    import torch

    from reid.builders import build_datamanager
    from tests.conftest import tiny_overrides

    root, data = synthetic_copy
    truncate(data.train[3][0])
    cfg = get_default_config()
    merge_from_list(cfg, tiny_overrides(root, root / "out"))
    with pytest.raises(ImageReadError, match=os.path.basename(data.train[3][0])):
        build_datamanager(cfg, torch.device("cpu"))
    cfg.DATA.ON_BAD_IMAGE = "skip"
    manager = build_datamanager(cfg, torch.device("cpu"))
    assert len(manager.train_loader.dataset) == len(data.train) - 1
    assert sum(len(batch["pid"]) for batch in manager.train_loader) > 0  # a whole epoch, no error
