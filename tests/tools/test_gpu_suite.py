"""benchmarks/gpu_suite.py runs end to end in its --tiny CPU mode, so the GPU suite cannot rot."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "benchmarks", "gpu_suite.py")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-suite")
    done = subprocess.run([sys.executable, SCRIPT, "--tiny", "--device", "cpu", "--output-root", str(out)],
                          capture_output=True, text=True, timeout=900, cwd=str(out),
                          env={**os.environ, "PYTHONPATH": REPO})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((out / "gpu_suite.json").read_text()), (out / "gpu_suite.md").read_text()


def test_every_section_reports(report):
    data, text = report
    assert list(data["sections"]) == ["train", "nccl", "eval", "explain", "paper"]
    assert data["tiny"] and data["device"] == "cpu" and "TINY" in text
    for section in data["sections"].values():
        assert section["rows"], section


def test_training_rows_name_the_reference_and_skip_fp16_off_cuda(report):
    rows = {row["step"]: row for row in report[0]["sections"]["train"]["rows"]}
    assert rows["torchreid pcb_p6 fp32 (reference)"]["vs_torchreid"] == 1.0
    for arm in ("pcb", "pcb_sam"):
        for precision in ("fp32", "bf16"):
            for suffix in ("", " channels_last"):
                assert rows[f"{arm} {precision}{suffix}"]["images_per_s"] > 0
        assert rows[f"{arm} fp16"]["skipped"] == "fp16 needs CUDA"


def test_torchrun_training_and_the_paper_runs(report):
    sections = report[0]["sections"]
    (torchrun,) = sections["nccl"]["rows"]
    assert torchrun["backend"] == "gloo" and torchrun["returncode"] == 0 and 0 <= torchrun["rank1"] <= 1
    paper = sections["paper"]["rows"]
    assert [row["arm"] for row in paper] == ["pcb", "pcb_sam"]
    for row in paper:
        assert 0 <= row["rank1"] <= 1 and 0 <= row["mAP"] <= 1
        assert {"sam_siamese", "centre", "random"} <= set(row["explanations"])
    assert sections["eval"]["rows"][0]["images_per_s"] > 0
    assert sections["eval"]["rows"][-1]["identical_to_dense"] is True
    assert sections["explain"]["rows"][0]["pairs_per_s"] > 0


def test_cuda_without_a_gpu_is_one_clear_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the refusal cannot be observed")
    done = subprocess.run([sys.executable, SCRIPT, "--device", "cuda", "--output-root", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": REPO})
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1].startswith("--device cuda but CUDA is not available")
