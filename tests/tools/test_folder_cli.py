"""Your own data through the command line only: a dataset folder given as plain list files is
checked, trained on, tested and explained by ``reid`` commands; ``--plugin`` imports a user's
module that registers its own dataset class."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from reid.cli.main import main as reid
from reid.data.folder import MARKET_PATTERN
from tests.conftest import TINY_SYNTHETIC, tiny_overrides

CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "synthetic_pcb.yaml")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def synthetic_set(tiny_data_root):
    """The tiny synthetic set (real person renders): its folder and its three splits."""
    from reid.data.synthetic import SyntheticReID

    data = SyntheticReID(root=str(tiny_data_root), progress=False, **TINY_SYNTHETIC)
    return data.dataset_dir, {"train": data.train, "query": data.query, "gallery": data.gallery}


def write_lists(folder, synthetic_set):
    """A user's folder: ``images/`` (a link to the synthetic set's images) and three list files
    naming them, with the identities of the file names and 0-based cameras."""
    dataset_dir, splits = synthetic_set
    os.makedirs(folder)
    os.symlink(dataset_dir, folder / "images")
    for split, name in (("train", "my_train.txt"), ("query", "my_query.txt"), ("gallery", "my_gallery.txt")):
        lines = [f"# {split}: path identity camera", ""]
        for path, _, camid, *_ in splits[split]:
            pid = int(MARKET_PATTERN.regex.fullmatch(os.path.basename(path)).group("pid"))
            lines.append(f"images/{os.path.relpath(path, dataset_dir)} {pid} {camid}")
        (folder / name).write_text("\n".join(lines) + "\n")
    return folder


def folder_overrides(data_root, out):
    """tiny_overrides with the folder as the dataset: DATA.FOLDER.ROOT relative to DATA.ROOT."""
    return [
        *tiny_overrides(data_root, out),
        "DATA.SOURCES", "['folder']", "DATA.FOLDER.ROOT", "mine", "DATA.FOLDER.LAYOUT", "lists",
        "DATA.FOLDER.TRAIN_LIST", "my_train.txt", "DATA.FOLDER.QUERY_LIST", "my_query.txt",
        "DATA.FOLDER.GALLERY_LIST", "my_gallery.txt",
    ]


def test_a_folder_of_list_files_is_checked_trained_tested_and_explained(synthetic_set, tmp_path, capsys):
    data_root = tmp_path / "data"
    write_lists(data_root / "mine", synthetic_set)
    _, splits = synthetic_set

    assert reid(["check-data", "--config", CONFIG, *folder_overrides(data_root, tmp_path / "check")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "folder"
    num_train_ids = len({pid for _, pid, *_ in splits["train"]})
    assert lines[3].split() == ["train", str(num_train_ids), str(len(splits["train"])), "2"]
    assert lines[4].split()[2] == str(len(splits["query"]))
    assert lines[5].split()[2] == str(len(splits["gallery"]))
    assert "1 of 1 dataset(s) OK" in lines[-1]

    run = tmp_path / "run"
    assert reid(["train", "--config", CONFIG, "--no-progress", *folder_overrides(data_root, run)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["mAP"] <= 1.0 and metrics["config"]["DATA"]["FOLDER"]["LAYOUT"] == "lists"
    ckpt = run / "checkpoints" / "checkpoint_last.pth"
    # the identity classifier has one class per training identity of the list (relabelled 0..N-1)
    import torch

    state = torch.load(ckpt, weights_only=True)["model"]
    assert {w.shape[0] for k, w in state.items() if "classifier" in k and k.endswith("weight")} == {num_train_ids}

    tested = tmp_path / "test"
    assert reid(["test", "--config", CONFIG, "--weights", str(ckpt), "--no-progress",
                 *folder_overrides(data_root, tested)]) == 0
    on_test = json.loads((tested / "test_metrics.json").read_text())
    assert on_test["mAP"] == pytest.approx(metrics["mAP"], abs=1e-9)

    explained = tmp_path / "explain"
    assert reid(["explain", "--config", CONFIG, "--weights", str(ckpt), "--num-queries", "2", "--topk", "2",
                 "--no-progress", *folder_overrides(data_root, explained)]) == 0
    dump = json.loads((explained / "explanations" / "explanations.json").read_text())
    query_paths = {os.path.realpath(p) for p, *_ in splits["query"]}
    assert len(dump["pairs"]) == 4
    assert all(os.path.realpath(pair["query_path"]) in query_paths for pair in dump["pairs"])
    assert (explained / "explanations" / "index.html").is_file()


def test_folder_errors_are_one_line_with_exit_status_2(synthetic_set, tmp_path, capsys):
    data_root = tmp_path / "data"
    folder = write_lists(data_root / "mine", synthetic_set)
    with open(folder / "my_query.txt", "a") as handle:
        handle.write("images/query/nobody.jpg 3 0\n")
    argv = ["train", "--config", CONFIG, "--no-progress", *folder_overrides(data_root, tmp_path / "run")]
    assert reid(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    line = len((folder / "my_query.txt").read_text().splitlines())
    assert err[-1] == f"data error: {folder}/my_query.txt:{line}: image not found: {folder}/images/query/nobody.jpg"
    assert "Traceback" not in "\n".join(err)
    assert reid(["train", "--config", CONFIG, *tiny_overrides(data_root, tmp_path / "run"),
                 "DATA.SOURCES", "['folder']"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        "config error: DATA.FOLDER.ROOT must name your dataset folder")


# ---------------------------------------------------------------------------------------- --plugin

PLUGIN = '''\
"""A user's dataset: two folders of person images, registered with torchreid as {name!r}."""
import os

from torchreid.reid.data import ImageDataset, register_image_dataset

IMAGES = {images!r}


class MyDataset(ImageDataset):
    def __init__(self, root="", **kwargs):
        def items(split):
            return [(path, pid, camid) for path, pid, camid, *_ in IMAGES[split]]
        super().__init__(items("train"), items("query"), items("gallery"), **kwargs)


register_image_dataset({name!r}, MyDataset)
'''


def write_plugin(path, name, synthetic_set):
    _, splits = synthetic_set
    images = {split: [tuple(item[:3]) for item in items] for split, items in splits.items()}
    path.write_text(PLUGIN.format(name=name, images=images))
    return path


def test_plugin_file_registers_a_dataset_for_check_data_and_train(synthetic_set, tmp_path, capsys):
    plugin = write_plugin(tmp_path / "my_datasets.py", "my_people", synthetic_set)
    overrides = [*tiny_overrides(tmp_path, tmp_path / "run"), "DATA.SOURCES", "['my_people']"]
    assert reid(["check-data", "--config", CONFIG, *overrides, "--plugin", str(plugin)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "my_people" and "1 of 1 dataset(s) OK" in out
    # the same module again (imported once), after the overrides, with --plugin=...
    assert reid(["train", "--config", CONFIG, "--no-progress", *overrides, f"--plugin={plugin}"]) == 0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["config"]["DATA"]["SOURCES"] == ["my_people"]


def test_plugin_dotted_module_from_the_current_directory(synthetic_set, tmp_path, monkeypatch, capsys):
    package = tmp_path / "work" / "lab_plugins"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    write_plugin(package / "people.py", "lab_people", synthetic_set)
    monkeypatch.chdir(tmp_path / "work")
    assert reid(["check-data", "--plugin", "lab_plugins.people", "--config", CONFIG,
                 *tiny_overrides(tmp_path, tmp_path / "run"), "DATA.SOURCES", "['lab_people']"]) == 0
    assert "1 of 1 dataset(s) OK" in capsys.readouterr().out


def test_unknown_dataset_without_its_plugin_names_the_key(tmp_path, capsys):
    argv = ["train", "--config", CONFIG, *tiny_overrides(tmp_path, tmp_path / "run"), "DATA.SOURCES", "['nobody_registered_this']"]
    assert reid(argv) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("config error: DATA.SOURCES: unknown dataset(s) ['nobody_registered_this']")
    assert last.endswith("(a module given with --plugin can register more)")


@pytest.mark.parametrize(
    "plugin, reason",
    [
        ("no_such_plugin_module", "No module named 'no_such_plugin_module'"),
        ("missing_plugin.py", "no such file: {tmp}/missing_plugin.py"),
        ("broken_plugin.py", "ZeroDivisionError: division by zero"),
    ],
)
def test_plugin_import_failure_is_one_line(tmp_path, monkeypatch, capsys, plugin, reason):
    (tmp_path / "broken_plugin.py").write_text("x = 1 / 0\n")
    monkeypatch.chdir(tmp_path)
    assert reid(["check-data", "--config", CONFIG, "--plugin", plugin]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"cannot import plugin {plugin}: {reason.format(tmp=os.path.realpath(tmp_path))}"]


def test_plugin_failure_exit_status_of_the_console_command(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "reid", "check-data", "--config", "configs/synthetic_pcb.yaml", "--plugin", "no_such_plugin_x"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == "cannot import plugin no_such_plugin_x: No module named 'no_such_plugin_x'"
