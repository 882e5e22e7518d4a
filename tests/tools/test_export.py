"""tools/export.py: ONNX export of a random-weight PCB matches PyTorch; AVSL is refused clearly."""

import os

import numpy as np
import pytest
import torch

from reid.engine.checkpoint import save_checkpoint
from reid.models.pcb import PCB
from reid.cli import export as export_tool

onnx = pytest.importorskip("onnx", reason="onnx not installed (pip install '.[export]')")
onnxruntime = pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install '.[export]')")

CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "synthetic_pcb.yaml")
SIZE = ["DATA.HEIGHT", "64", "DATA.WIDTH", "32", "MODEL.BACKBONE", "resnet18", "MODEL.NUM_STRIPES", "2",
        "MODEL.REDUCED_DIM", "16", "MODEL.PADDING_MODE", "zeros"]


@pytest.fixture(scope="module")
def random_pcb(tmp_path_factory):
    """A checkpoint of a random-weight PCB (resnet18, 2 stripes) with non-trivial BN statistics."""
    torch.manual_seed(0)
    model = PCB(num_classes=5, backbone="resnet18", num_stripes=2, reduced_dim=16, pretrained=False)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("export") / "checkpoint_last.pth"
    save_checkpoint({"model": model.state_dict(), "epoch": 1}, str(path))
    return model.eval(), path


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_onnx_embeddings_match_pytorch_with_a_dynamic_batch(random_pcb, tmp_path, exporter):
    if exporter == "dynamo":
        pytest.importorskip("onnxscript", reason="the dynamo exporter needs onnxscript")
    model, weights = random_pcb
    output = tmp_path / "pcb.onnx"
    result = export_tool.main(
        ["--config", CONFIG, "--weights", str(weights), "--output", str(output), "--exporter", exporter,
         "OUTPUT_DIR", str(tmp_path), *SIZE]
    )
    assert result["output"] == str(output) and result["embedding_dim"] == 2 * 512
    assert result["max_abs_diff"] <= 1e-4
    onnx.checker.check_model(str(output))
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [o.name for o in session.get_outputs()] == ["embeddings"]
    images = torch.randn(5, 3, 64, 32, generator=torch.Generator().manual_seed(1))
    (embeddings,) = session.run(None, {"images": images.numpy()})
    with torch.no_grad():
        expected = model(images).numpy()
    assert embeddings.shape == (5, 1024)
    assert np.abs(embeddings - expected).max() <= 1e-4


def test_avsl_export_is_refused_with_the_reason(random_pcb, tmp_path):
    _, weights = random_pcb
    with pytest.raises(SystemExit, match="AVSL export is not supported"):
        export_tool.main(["--config", CONFIG, "--weights", str(weights), "OUTPUT_DIR", str(tmp_path),
                          "MODEL.NAME", "avsl"])


def test_bad_inputs_are_named(random_pcb, tmp_path):
    _, weights = random_pcb
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        export_tool.main(["--config", CONFIG, "--weights", str(tmp_path / "missing.pth"),
                          "OUTPUT_DIR", str(tmp_path), *SIZE])
    state_dict = tmp_path / "not_pcb.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, state_dict)
    with pytest.raises(SystemExit, match="not a PCB checkpoint"):
        export_tool.main(["--config", CONFIG, "--weights", str(state_dict), "OUTPUT_DIR", str(tmp_path), *SIZE])
    with pytest.raises(SystemExit, match="--batch-size must be"):
        export_tool.main(["--config", CONFIG, "--weights", str(weights), "--batch-size", "2",
                          "OUTPUT_DIR", str(tmp_path), *SIZE])


def test_reflect_padding_exports_with_dynamo_and_torchscript_is_refused(random_pcb, tmp_path):
    """The shipped synthetic configs pad with reflect: the dynamo exporter matches PyTorch (checked by
    the tool itself); the torchscript exporter cannot, so it is refused before any work."""
    pytest.importorskip("onnxscript", reason="the dynamo exporter needs onnxscript")
    _, weights = random_pcb  # same parameters; only the padding differs
    reflect = [*SIZE[:-1], "reflect"]
    result = export_tool.main(
        ["--config", CONFIG, "--weights", str(weights), "--output", str(tmp_path / "r.onnx"),
         "OUTPUT_DIR", str(tmp_path), *reflect]
    )
    assert result["max_abs_diff"] <= 1e-4
    session = onnxruntime.InferenceSession(str(tmp_path / "r.onnx"), providers=["CPUExecutionProvider"])
    model = PCB(num_classes=5, backbone="resnet18", num_stripes=2, reduced_dim=16, pretrained=False,
                padding_mode="reflect").eval()
    model.load_state_dict(random_pcb[0].state_dict())
    images = torch.randn(3, 3, 64, 32, generator=torch.Generator().manual_seed(2))
    (embeddings,) = session.run(None, {"images": images.numpy()})
    with torch.no_grad():
        assert np.abs(embeddings - model(images).numpy()).max() <= 1e-4
        assert np.abs(embeddings - random_pcb[0](images).numpy()).max() > 1e-3  # the padding matters
    with pytest.raises(SystemExit, match="torchscript exporter cannot export MODEL.PADDING_MODE reflect"):
        export_tool.main(
            ["--config", CONFIG, "--weights", str(weights), "--output", str(tmp_path / "t.onnx"),
             "--exporter", "torchscript", "OUTPUT_DIR", str(tmp_path), *reflect]
        )
    assert not (tmp_path / "t.onnx").exists()


def test_a_failed_comparison_exits_with_status_1(random_pcb, tmp_path, capsys):
    """A check that fails is not a usage error: the runner exits with 1 (usage errors: 2)."""
    from reid.cli.main import main

    _, weights = random_pcb
    status = main(["export", "--config", CONFIG, "--weights", str(weights), "--output", str(tmp_path / "m.onnx"),
                   "--exporter", "torchscript", "--tolerance", "-1", "OUTPUT_DIR", str(tmp_path), *SIZE])
    assert status == 1
    assert "ONNX and PyTorch embeddings differ by" in capsys.readouterr().err.strip().splitlines()[-1]
