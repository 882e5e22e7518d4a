#!/usr/bin/env python
"""The GPU suite: one command that measures the paper-scale path on one GPU (under 8 minutes on a
modern GPU by design), writing ``gpu_suite.json`` and ``gpu_suite.md`` under ``--output-root``.

Sections (``--sections``, all by default; each row names its reference):

* ``train``: training images/s of ResNet-50 PCB and PCB+SAM (every mined tuple, as published)
  at 384x128, batch 64 (16 identities x 4), in fp32, bf16 and fp16 (with the loss scaler), each
  without and with channels_last; the engines' own ``forward_backward`` on one random batch,
  SGD at learning rate 0 so that every step does the same work, steps interleaved, medians. The
  named reference: torchreid's ``pcb_p6`` with its ``ImageSoftmaxEngine`` step at the same size
  and batch in fp32 (ratio ``ours / torchreid``).
* ``nccl``: ``torchrun --nproc_per_node 1`` running ``reid train`` for one short epoch on a small
  synthetic set with ``DIST.BACKEND nccl`` (``gloo`` on the CPU); its exit status, wall time and
  rank-1.
* ``eval``: evaluation at DukeMTMC-reID size (2,228 queries, 17,661 gallery images): feature
  extraction images/s (fp32 and bf16, extrapolated to the 19,889 images), then the distance
  matrix on the device and the exact ranking metrics on random features of that size.
* ``explain``: pairs explained per second (Siamese similarity attention, trunk once per image,
  head-only gradients: what ``reid explain`` does for a top-k dump).
* ``paper``: a time-boxed paper-scale training: ResNet-50 PCB and PCB+SAM (the demo configs'
  recipe, reflect padding, ``SAM.MAX_TUPLES 4``) at 256x128 on a synthetic set of 1,500 identities
  x 10 images (``--paper-epochs``, 8; ``--paper-seeds``), in bf16 on CUDA, each evaluated
  (rank-1, mAP, mINP) and its explanations scored (``reid eval-explanations``).

``--tiny`` shrinks every size (ResNet-18, 64x32, a few identities, one repeat) so that the suite
runs on a CPU in about a minute: the test suite runs ``--tiny --device cpu``, so the script
cannot rot. fp16 rows need CUDA and are reported as skipped elsewhere.

Usage::

    python benchmarks/gpu_suite.py                                  # on a machine with a GPU
    python benchmarks/gpu_suite.py --sections train eval explain    # the throughput part only
    python benchmarks/gpu_suite.py --tiny --device cpu              # the CPU smoke run
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from _timing import round_robin, step_engine, timed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTIONS = ("train", "nccl", "eval", "explain", "paper")
DUKE_QUERY, DUKE_GALLERY = 2228, 17661


@dataclass(frozen=True)
class Profile:
    backbone: str = "resnet50"
    height: int = 384
    width: int = 128
    batch: int = 64
    instances: int = 4
    stripes: int = 6
    reduced_dim: int = 256
    warmup: int = 2
    repeats: int = 5
    extract_images: int = 1024
    extract_batch: int = 256
    query: int = DUKE_QUERY
    gallery: int = DUKE_GALLERY
    explain_pairs: int = 320
    explain_batch: int = 64
    nccl_ids: int = 64
    nccl_height: int = 128
    nccl_width: int = 64
    paper_ids: int = 1500
    paper_images_per_id: int = 10
    paper_height: int = 256
    paper_width: int = 128
    paper_batch: int = 64
    paper_triplets: int = 200
    workers: int = 8


TINY = Profile(
    backbone="resnet18", height=64, width=32, batch=8, instances=2, stripes=2, reduced_dim=16, warmup=1,
    repeats=1, extract_images=32, extract_batch=16, query=60, gallery=300, explain_pairs=8, explain_batch=4,
    nccl_ids=8, nccl_height=64, nccl_width=32, paper_ids=12, paper_images_per_id=6, paper_height=64, paper_width=32, paper_batch=8,
    paper_triplets=6, workers=0,
)

logger = logging.getLogger("gpu_suite")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--tiny", action="store_true", help="CPU-sized smoke run of every section")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--output-root", default="output/gpu_suite")
    parser.add_argument("--paper-epochs", type=int, default=None, help="epochs of each paper-scale run (default 8; tiny 1)")
    parser.add_argument("--paper-seeds", type=int, nargs="+", default=[0], help="seeds of the paper-scale runs")
    parser.add_argument("--budget-minutes", type=float, default=8.0,
                        help="sections that would start after this much time are skipped (reported as such)")
    args = parser.parse_args(argv)
    if args.paper_epochs is not None and args.paper_epochs < 1:
        parser.error("--paper-epochs must be >= 1")
    return args


def device_or_exit(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but CUDA is not available here: run the suite on a GPU machine, "
                         "or --tiny --device cpu for the smoke run")
    if device.type not in ("cuda", "cpu"):
        raise SystemExit(f"--device must be cuda, cuda:N or cpu, got {name}")
    return device


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def precisions(device: torch.device) -> list[str]:
    return ["off", "bf16"] + (["fp16"] if device.type == "cuda" else [])


def label(amp: str) -> str:
    return "fp32" if amp == "off" else amp


# -- sections ----------------------------------------------------------------------------------------


def section_train(p: Profile, device: torch.device) -> list[dict[str, Any]]:
    """Training throughput of PCB and PCB+SAM steps, and of torchreid's pcb_p6 softmax step."""
    from torchreid.reid.engine import ImageSoftmaxEngine
    from torchreid.reid.models import build_model as torchreid_model

    from reid.engine.pcb import PCBEngine
    from reid.engine.sam import SAMEngine
    from reid.models.pcb import PCB

    num_ids = p.batch // p.instances
    torch.manual_seed(0)
    model = PCB(num_classes=num_ids, backbone=p.backbone, num_stripes=p.stripes, reduced_dim=p.reduced_dim,
                pretrained=False)
    batch = {"img": torch.randn(p.batch, 3, p.height, p.width),
             "pid": torch.arange(num_ids).repeat_interleave(p.instances)}
    steps, rows = {}, []
    for arm, cls in (("pcb", PCBEngine), ("pcb_sam", SAMEngine)):
        for amp in ("off", "bf16", "fp16"):
            for channels_last in (False, True):
                key = f"{arm} {label(amp)}{' channels_last' if channels_last else ''}"
                if amp == "fp16" and device.type != "cuda":
                    rows.append({"step": key, "skipped": "fp16 needs CUDA"})
                    continue
                engine = step_engine(cls, copy.deepcopy(model), device, amp=amp, channels_last=channels_last)
                steps[key] = lambda e=engine: e.forward_backward(batch)
    torch.manual_seed(0)
    reference = torchreid_model("pcb_p6", num_classes=num_ids, loss="softmax", pretrained=False).to(device)
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.0)
    softmax = ImageSoftmaxEngine(SimpleNamespace(train_loader=[], test_loader={}, num_train_pids=num_ids), reference, optimizer,
                                 use_gpu=device.type == "cuda")
    steps["torchreid pcb_p6 fp32 (reference)"] = lambda: softmax.forward_backward(batch)
    times = round_robin(steps, device, p.warmup, p.repeats)
    reference_rate = p.batch / statistics.median(times["torchreid pcb_p6 fp32 (reference)"])
    for key, values in times.items():
        rate = p.batch / statistics.median(values)
        rows.append({"step": key, "images_per_s": rate, "ms_per_step": 1e3 * statistics.median(values),
                     "vs_torchreid": rate / reference_rate})
    return rows


def synthetic_overrides(p: Profile, root: str, num_ids: int, images_per_id: int, height: int, width: int) -> list[str]:
    return ["DATA.ROOT", root, "DATA.SYNTHETIC.NUM_IDS", str(num_ids),
            "DATA.SYNTHETIC.IMAGES_PER_ID", str(images_per_id), "DATA.SYNTHETIC.IMG_HEIGHT", str(height),
            "DATA.SYNTHETIC.IMG_WIDTH", str(width), "DATA.HEIGHT", str(height), "DATA.WIDTH", str(width),
            "DATA.WORKERS", str(p.workers)]


def model_overrides(p: Profile) -> list[str]:
    # the demo configs now start from ImageNet MobileNetV2 weights; the suite's ResNet trunks start
    # from random weights, as they always did here (a GPU machine has no ImageNet file for them)
    return ["MODEL.BACKBONE", p.backbone, "MODEL.NUM_STRIPES", str(p.stripes),
            "MODEL.REDUCED_DIM", str(p.reduced_dim), "MODEL.PRETRAINED", "False"]


def section_nccl(p: Profile, device: torch.device, out: str) -> list[dict[str, Any]]:
    """``torchrun --nproc_per_node 1`` through ``reid train`` (NCCL on CUDA, gloo on the CPU)."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    run_dir = os.path.join(out, f"torchrun_{backend}")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
        "-m", "reid", "train", "--config", os.path.join(ROOT, "configs", "synthetic_pcb.yaml"), "--overwrite",
        "--no-progress",
        *synthetic_overrides(p, os.path.join(out, "data"), p.nccl_ids, 8, p.nccl_height, p.nccl_width),
        *model_overrides(p), "SAMPLER.BATCH_SIZE_TRAIN", str(p.batch), "SAMPLER.NUM_INSTANCES", str(p.instances),
        "OPTIM.MAX_EPOCH", "1", "OPTIM.STEPSIZE", "[1]", "DIST.BACKEND", backend,
        "DEVICE", "cuda" if device.type == "cuda" else "cpu", "OUTPUT_DIR", run_dir,
    ]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
    row: dict[str, Any] = {"backend": backend, "returncode": done.returncode, "seconds": time.perf_counter() - start}
    if done.returncode == 0:
        with open(os.path.join(run_dir, "metrics.json")) as handle:
            metrics = json.load(handle)
        row.update(rank1=metrics["rank1"], mAP=metrics["mAP"])
    else:
        row["error_tail"] = (done.stdout + done.stderr)[-2000:]
    return [row]


def section_eval(p: Profile, device: torch.device) -> list[dict[str, Any]]:
    """Extraction throughput, then distances and exact metrics at DukeMTMC size."""
    from reid.engine.evaluation import extract_dataset_features
    from reid.metrics import DistanceRows, compute_distance_matrix, evaluate
    from reid.models.pcb import PCB

    torch.manual_seed(0)
    model = PCB(num_classes=10, backbone=p.backbone, num_stripes=p.stripes, reduced_dim=p.reduced_dim,
                pretrained=False).to(device).eval()
    batches = [{"img": torch.randn(p.extract_batch, 3, p.height, p.width), "pid": np.zeros(p.extract_batch, int),
                "camid": np.zeros(p.extract_batch, int), "impath": [""] * p.extract_batch}
               for _ in range(max(1, p.extract_images // p.extract_batch))]
    images = p.extract_batch * len(batches)
    rows = []
    for amp in ("off", "bf16"):
        extract_dataset_features(model, batches[:1], device, progress=False, amp=amp)  # warm-up
        seconds = timed(lambda: extract_dataset_features(model, batches, device, progress=False, amp=amp), device)
        rows.append({"step": f"extract {label(amp)}", "images_per_s": images / seconds,
                     "duke_seconds": (DUKE_QUERY + DUKE_GALLERY) / (images / seconds)})
    rng = np.random.default_rng(0)
    dim = p.stripes * p.reduced_dim
    num_ids = max(2, p.gallery // 10)
    g_pids = np.arange(p.gallery) % num_ids
    q_pids = rng.integers(0, num_ids, p.query)
    g_cams, q_cams = rng.integers(0, 8, p.gallery), rng.integers(0, 8, p.query)
    centres = torch.randn(num_ids, dim)
    query = (centres[q_pids] + torch.randn(p.query, dim)).to(device)
    gallery = (centres[g_pids] + torch.randn(p.gallery, dim)).to(device)
    holder: dict[str, Any] = {}
    seconds = timed(lambda: holder.__setitem__("d", compute_distance_matrix(query, gallery, "euclidean")), device)
    rows.append({"step": f"distance matrix {p.query}x{p.gallery} on {device.type}", "seconds": seconds})
    distmat = holder["d"].cpu().numpy()
    start = time.perf_counter()
    result = evaluate(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=50)
    rows.append({"step": f"rank-k, mAP, mINP {p.query}x{p.gallery} (CPU)", "seconds": time.perf_counter() - start,
                 "rank1_random_features": float(result.cmc[0])})
    # streaming evaluation, blocks of rows sorted on the device (the rows are those of the matrix
    # above, so that the check is of the evaluator, not of the GEMM's blocking)
    start = time.perf_counter()
    block_rows = max(1, (16 << 20) // (4 * p.gallery))
    streamed = evaluate(
        DistanceRows(lambda a, b: holder["d"][a:b], (p.query, p.gallery), block_rows),
        q_pids, g_pids, q_cams, g_cams, max_rank=50, device=device,
    )
    same = bool(np.array_equal(streamed.cmc, result.cmc) and np.array_equal(streamed.ap, result.ap, equal_nan=True))
    rows.append({"step": f"streaming rank-k, mAP, mINP {p.query}x{p.gallery} ({device.type})",
                 "seconds": time.perf_counter() - start, "identical_to_dense": same})
    return rows


def section_explain(p: Profile, device: torch.device) -> list[dict[str, Any]]:
    """Siamese similarity-attention pairs per second (trunk once per image, head-only maps)."""
    from reid.explain import explain_pair_features
    from reid.models.pcb import PCB

    torch.manual_seed(0)
    model = PCB(num_classes=10, backbone=p.backbone, num_stripes=p.stripes, reduced_dim=p.reduced_dim,
                pretrained=False).to(device).eval()
    images = torch.randn(2 * p.explain_pairs, 3, p.height, p.width, device=device)

    def explain() -> None:
        with torch.no_grad():
            maps = torch.cat([model.forward_features(c) for c in images.split(p.explain_batch)])
        first, second = maps[: p.explain_pairs], maps[p.explain_pairs:]
        for a, b in zip(first.split(p.explain_batch), second.split(p.explain_batch)):
            explain_pair_features(model.embed_features, a, b, True)

    explain()  # warm-up
    seconds = timed(explain, device)
    return [{"step": f"sam_siamese pairs, {2 * p.explain_pairs} images", "pairs_per_s": p.explain_pairs / seconds}]


def section_paper(p: Profile, device: torch.device, out: str, epochs: int, seeds: list[int]) -> list[dict[str, Any]]:
    """Paper-scale PCB and PCB+SAM runs through ``reid train``, then ``reid eval-explanations``."""
    from reid.cli import eval_explanations
    from reid.cli import train as train_tool

    data = synthetic_overrides(p, os.path.join(out, "paper_data"), p.paper_ids, p.paper_images_per_id,
                               p.paper_height, p.paper_width)
    amp = "bf16" if device.type == "cuda" else "off"
    rows = []
    for seed in seeds:
        for arm, config in (("pcb", "synthetic_pcb.yaml"), ("pcb_sam", "synthetic_pcb_sam.yaml")):
            run_dir = os.path.join(out, "paper", arm, f"seed{seed}")
            opts = [*data, *model_overrides(p), "MODEL.PADDING_MODE", "reflect", "OPTIM.MAX_EPOCH", str(epochs),
                    "OPTIM.STEPSIZE", f"[{max(1, epochs - 1)}]", "SAMPLER.BATCH_SIZE_TRAIN", str(p.paper_batch),
                    "SAMPLER.NUM_INSTANCES", str(p.instances), "TRAIN.AMP", amp,
                    "DEVICE", "cuda" if device.type == "cuda" else "cpu", "SEED", str(seed)]
            config_path = os.path.join(ROOT, "configs", config)
            start = time.perf_counter()
            metrics = train_tool.main(["--config", config_path, "--overwrite", "--no-progress", *opts,
                                       "OUTPUT_DIR", run_dir])
            train_seconds = time.perf_counter() - start
            quality = eval_explanations.main([
                "--config", config_path, "--weights", os.path.join(run_dir, "checkpoints", "checkpoint_last.pth"),
                "--num-triplets", str(p.paper_triplets), "--num-curves", str(max(1, p.paper_triplets // 4)),
                "--no-progress", *opts, "OUTPUT_DIR", os.path.join(run_dir, "explanation_quality"),
            ])
            rows.append({"arm": arm, "seed": seed, "epochs": epochs, "train_seconds": train_seconds,
                         **{k: metrics[k] for k in ("rank1", "mAP", "mINP") if k in metrics},
                         "explanations": {name: {k: row[k] for k in ("pointing_game", "energy_inside",
                                                                      "deletion_auc", "insertion_auc")}
                                          for name, row in quality["table"].items()}})
    return rows


# -- report ------------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def markdown(report: dict[str, Any]) -> str:
    lines = [f"GPU suite on {report['device_name']} ({report['device']}), {report['date']}, torch "
             f"{report['torch']}{', TINY smoke profile' if report['tiny'] else ''}; total "
             f"{report['total_seconds'] / 60:.1f} min", ""]
    for section, result in report["sections"].items():
        lines.append(f"### {section} ({result.get('seconds', 0):.0f} s)")
        lines.append("")
        if "skipped" in result:
            lines += [f"skipped: {result['skipped']}", ""]
            continue
        rows = [{k: v for k, v in row.items() if k != "explanations"} for row in result["rows"]]
        keys = list(dict.fromkeys(k for row in rows for k in row))
        lines.append("| " + " | ".join(keys) + " |")
        lines.append("| " + " | ".join("---" for _ in keys) + " |")
        for row in rows:
            lines.append("| " + " | ".join(_fmt(row.get(k, "")) for k in keys) + " |")
        lines.append("")
        for row in result["rows"]:
            for name, scores in row.get("explanations", {}).items():
                lines.append(f"- {row['arm']} seed {row['seed']} `{name}`: "
                             + ", ".join(f"{k} {_fmt(v) if v is not None else 'n/a'}" for k, v in scores.items()))
        if any("explanations" in row for row in result["rows"]):
            lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from reid.io import atomic_write, write_json

    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    device = device_or_exit(args.device)
    profile = TINY if args.tiny else Profile()
    epochs = args.paper_epochs or (1 if args.tiny else 8)
    os.makedirs(args.output_root, exist_ok=True)
    report: dict[str, Any] = {
        "device": str(device), "device_name": device_name(device), "torch": torch.__version__,
        "date": datetime.date.today().isoformat(), "tiny": args.tiny, "profile": asdict(profile), "sections": {},
    }
    start = time.perf_counter()
    for section in args.sections:
        elapsed = time.perf_counter() - start
        if elapsed > args.budget_minutes * 60:
            report["sections"][section] = {"skipped": f"budget of {args.budget_minutes:g} min spent ({elapsed:.0f} s)"}
            continue
        print(f"[gpu_suite] {section} ...", flush=True)
        began = time.perf_counter()
        if section == "train":
            rows = section_train(profile, device)
        elif section == "nccl":
            rows = section_nccl(profile, device, args.output_root)
        elif section == "eval":
            rows = section_eval(profile, device)
        elif section == "explain":
            rows = section_explain(profile, device)
        else:
            rows = section_paper(profile, device, args.output_root, epochs, args.paper_seeds)
        report["sections"][section] = {"rows": rows, "seconds": time.perf_counter() - began}
    report["total_seconds"] = time.perf_counter() - start
    write_json(os.path.join(args.output_root, "gpu_suite.json"), report)
    text = markdown(report)
    with atomic_write(os.path.join(args.output_root, "gpu_suite.md")) as handle:
        handle.write(text + "\n")
    print(text)
    return report


if __name__ == "__main__":
    main()
