"""Peak memory and time of ``AVSL.pairwise_distance`` on a DukeMTMC-reID sized problem.

What is measured: the model's chunked ``pairwise_distance`` (``d_hat`` for every query-gallery
pair, AVSL paper section 3.4 "Evaluation"; ``docs/method.md`` section 5) at its default chunk
size (``chunk_size=None``: about ``2**25`` elements per ``(chunk, M, R)`` node tensor) on random
features in the flat layout that ``AVSL.split_features`` expects (unit-norm level embeddings and
positive CAM statistics), with random positive edges and random reliability parameters.

Named reference, measured in the same run: the **unchunked** computation (one chunk holding every
query, i.e. the dense ``(N, M, R)`` broadcast) on the first ``--reference-queries`` queries
against the full gallery; its time and peak memory are extrapolated linearly to all ``N``
queries (both are linear in the number of queries). The memory of a single dense ``(N, M, R)``
float32 tensor is printed as well. The first reference rows of both computations are compared
(they must agree to float precision, else the script exits with status 1). With fewer queries
than ``--project-to`` (default 2228), the figures are also projected linearly to that many queries
(the work is linear in the number of queries; the chunked peak does not depend on it beyond the
``(N, M)`` output).

Peak memory is measured honestly: each computation runs in a fresh subprocess that first builds
its inputs, then resets the peak (CPU: writes ``5`` to ``/proc/self/clear_refs`` and reads
``VmHWM`` - ``VmRSS`` from ``/proc/self/status``; CUDA: ``torch.cuda.reset_peak_memory_stats``
and ``max_memory_allocated`` - ``memory_allocated``), so the figure is the extra memory the call
needed, its ``(N, M)`` output included.

Usage::

    python benchmarks/avsl_distance.py                              # 2228 x 17661, R 512, 3 levels
    python benchmarks/avsl_distance.py --num-query 32          # full gallery, projected to 2228 queries
    python benchmarks/avsl_distance.py --num-query 64 --num-gallery 2000   # a quick check
    python benchmarks/avsl_distance.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np
import torch


from reid.models.avsl import AVSL

_LEVELS = {1: ("layer4",), 2: ("layer3", "layer4"), 3: ("layer2", "layer3", "layer4"),
           4: ("layer1", "layer2", "layer3", "layer4")}
_MIB = 2.0**20


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-query", type=int, default=2228, help="N (DukeMTMC-reID: 2228)")
    parser.add_argument("--num-gallery", type=int, default=17661, help="M (DukeMTMC-reID: 17661)")
    parser.add_argument("--embed-dim", type=int, default=512, help="R, nodes per level")
    parser.add_argument("--levels", type=int, default=3, choices=sorted(_LEVELS), help="L")
    parser.add_argument("--topk", type=int, default=128, help="k of the rectification")
    parser.add_argument("--chunk-size", type=int, default=0, help="queries per chunk (0: the default)")
    parser.add_argument("--reference-queries", type=int, default=8, help="queries of the unchunked reference")
    parser.add_argument(
        "--project-to", type=int, default=2228,
        help="when --num-query is smaller, also print the figures projected linearly to this many queries",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.num_query, args.num_gallery, args.embed_dim, args.reference_queries) < 1:
        parser.error("sizes must be positive")
    if not 1 <= args.topk <= args.embed_dim:
        parser.error("--topk must be in [1, --embed-dim]")
    return args


# -- the measured computation (runs in a child process) -------------------------------------------


def build_model(embed_dim: int, levels: int, topk: int, seed: int, device: torch.device) -> AVSL:
    """An AVSL head with random positive edges and random reliability parameters (trunk unused)."""
    torch.manual_seed(seed)
    model = AVSL(1, backbone="resnet18", levels=_LEVELS[levels], embed_dim=embed_dim, topk=topk, pretrained=False)
    with torch.no_grad():
        for edge in model.edges:
            edge.copy_(torch.rand(embed_dim, embed_dim))
        model.edges_initialised.fill_(True)
        for scale, bias in zip(model.reliability_scale, model.reliability_bias):
            scale.normal_(0.0, 1.0)
            bias.normal_(0.0, 1.0)
    return model.eval().to(device)


def random_features(count: int, embed_dim: int, levels: int, generator: torch.Generator) -> torch.Tensor:
    """``(count, 2 L R)`` flat features: L unit-norm embeddings, then L positive CAM statistics."""
    out = torch.empty(count, 2 * levels * embed_dim)
    for level in range(levels):
        block = out[:, level * embed_dim : (level + 1) * embed_dim]
        block.normal_(generator=generator)
        block.div_(block.norm(dim=1, keepdim=True))
        stats = out[:, (levels + level) * embed_dim : (levels + level + 1) * embed_dim]
        stats.uniform_(0.5, 2.0, generator=generator)
    return out


def _status_kib(key: str) -> int:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not found in /proc/self/status")


def _reset_cpu_peak() -> None:
    with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
        handle.write("5")


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Builds the inputs, resets the peak, runs ``pairwise_distance`` once, reports time and peak."""
    device = torch.device(spec["device"])
    if spec["threads"] > 0:
        torch.set_num_threads(spec["threads"])
    model = build_model(spec["embed_dim"], spec["levels"], spec["topk"], spec["seed"], device)
    generator = torch.Generator().manual_seed(spec["seed"] + 1)
    gallery = random_features(spec["num_gallery"], spec["embed_dim"], spec["levels"], generator)
    query = random_features(spec["num_query"], spec["embed_dim"], spec["levels"], generator)
    query, gallery = query[: spec["use_queries"]].clone().to(device), gallery.to(device)
    # Warm-up on a tiny problem (library initialisation is not the computation's memory).
    model.pairwise_distance(query[:1], gallery[:8])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        _reset_cpu_peak()
        before = _status_kib("VmRSS") * 1024
    start = time.perf_counter()
    distances = model.pairwise_distance(query, gallery, chunk_size=spec["chunk_size"])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - before
    else:
        peak = _status_kib("VmHWM") * 1024 - before
    np.save(spec["rows_file"], distances[: spec["keep_rows"]].cpu().numpy())
    return {"seconds": seconds, "peak_bytes": int(peak), "finite": bool(torch.isfinite(distances).all())}


# -- the parent -------------------------------------------------------------------------------------


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs :func:`run_child` in a fresh Python process and returns its report."""
    completed = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)],
        check=True, capture_output=True, text=True,
    )
    return json.loads(completed.stdout.strip().splitlines()[-1])


def default_chunk(num_gallery: int, embed_dim: int) -> int:
    """The chunk size ``pairwise_distance`` picks with ``chunk_size=None`` (mirrors the model)."""
    from reid.models.avsl import _CHUNK_ELEMENTS

    return max(1, _CHUNK_ELEMENTS // max(num_gallery * embed_dim, 1))


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(run_child(json.loads(args.child))))
        return {}
    logging.basicConfig(level=logging.WARNING)
    n, m, r = args.num_query, args.num_gallery, args.embed_dim
    n_ref = min(args.reference_queries, n)
    chunk = args.chunk_size or None
    with tempfile.TemporaryDirectory() as tmp:
        base = {
            "device": args.device, "threads": args.threads, "embed_dim": r, "levels": args.levels,
            "topk": args.topk, "seed": args.seed, "num_query": n, "num_gallery": m, "keep_rows": n_ref,
        }
        chunked = measure({**base, "use_queries": n, "chunk_size": chunk, "rows_file": os.path.join(tmp, "c.npy")})
        reference = measure(
            {**base, "use_queries": n_ref, "chunk_size": n_ref, "rows_file": os.path.join(tmp, "r.npy")}
        )
        rows_c, rows_r = np.load(os.path.join(tmp, "c.npy")), np.load(os.path.join(tmp, "r.npy"))
    max_diff = float(np.abs(rows_c - rows_r).max())
    scale = n / n_ref
    ref_seconds, ref_peak = reference["seconds"] * scale, reference["peak_bytes"] * scale
    dense_tensor = n * m * r * 4
    used_chunk = chunk or default_chunk(m, r)
    print(f"AVSL.pairwise_distance: {n} queries x {m} gallery, R = {r}, {args.levels} levels, k = {args.topk}, "
          f"device {args.device}, torch threads {args.threads or torch.get_num_threads()}")
    print(f"  chunked (chunk_size {'default = ' if chunk is None else ''}{used_chunk} queries): "
          f"{chunked['seconds']:.2f} s, peak {chunked['peak_bytes'] / _MIB:.0f} MiB "
          f"(output matrix {n * m * 4 / _MIB:.0f} MiB included)")
    print(f"  reference, unchunked on {n_ref} queries: {reference['seconds']:.2f} s, "
          f"peak {reference['peak_bytes'] / _MIB:.0f} MiB")
    print(f"  reference extrapolated to {n} queries: {ref_seconds:.2f} s, peak {ref_peak / _MIB:.0f} MiB "
          f"(one dense (N, M, R) float32 tensor alone: {dense_tensor / _MIB:.0f} MiB)")
    print(f"  ratio peak memory unchunked / chunked: {ref_peak / max(chunked['peak_bytes'], 1):.1f}x; "
          f"time chunked / unchunked: {chunked['seconds'] / ref_seconds:.2f}")
    if args.project_to > n and n < used_chunk:
        print(f"  not projected to {args.project_to} queries: fewer queries than one chunk ({used_chunk})")
    elif args.project_to > n:
        factor, big = args.project_to / n, args.project_to
        extra_output = (big - n) * m * 4
        print(f"  projected to {big} queries (time and the unchunked peak linear in N; the chunked peak grows by "
              f"the output matrix only): chunked {chunked['seconds'] * factor:.0f} s, peak "
              f"{(chunked['peak_bytes'] + extra_output) / _MIB:.0f} MiB; unchunked {ref_seconds * factor:.0f} s, "
              f"peak {ref_peak * factor / _MIB:.0f} MiB (one dense (N, M, R) tensor: {big * m * r * 4 / _MIB:.0f} MiB)")
    print(f"  first {n_ref} rows: max |chunked - unchunked| = {max_diff:.2e}; all finite: {chunked['finite']}")
    result = {
        "chunked_seconds": chunked["seconds"], "chunked_peak_mib": chunked["peak_bytes"] / _MIB,
        "reference_seconds": ref_seconds, "reference_peak_mib": ref_peak / _MIB,
        "dense_tensor_mib": dense_tensor / _MIB, "max_diff": max_diff,
    }
    if not chunked["finite"] or not np.allclose(rows_c, rows_r, rtol=1e-5, atol=1e-6):
        print("FAILED: the chunked and unchunked distances differ (or are not finite)")
        raise SystemExit(1)
    return result


if __name__ == "__main__":
    main()
