"""Speed of reid.metrics against torchreid on synthetic problems of real dataset sizes.

Reference: ``torchreid.reid.metrics.evaluate_rank`` (its Python version, ``use_cython=False``;
torchreid 0.2.5 ships no compiled Cython module) and, with ``--rerank``,
``torchreid.reid.utils.rerank.re_ranking``. Both sides run in the same process on the same
distance matrices; the results must be identical (``np.array_equal`` and ``==``), else the
script exits with status 1.

Problems (identity centres plus noise, squared Euclidean distances as torchreid computes them):

* ``duke``: DukeMTMC-reID sized, 2228 queries x 17661 gallery, 702 identities, 8 cameras;
* ``cuhk03``: CUHK03-NP sized, 1400 queries x 5332 gallery, 700 identities, 2 cameras.

**Large galleries** (``--sizes``): each evaluator runs in its own subprocess, which builds the
features, then times the evaluation (distances and ranking) and reports its peak resident memory
during the evaluation (``VmHWM`` after resetting it with ``/proc/self/clear_refs``; torch's
libraries and the features included) and the evaluation's own share, that peak minus the resident
memory when the evaluation started. Sizes:

* ``msmt17``: MSMT17 sized, 11659 queries x 82161 gallery, 3060 identities, 15 cameras;
* ``market500k``: Market-1501 with the 500k distractors, 3368 queries x 515913 gallery (15913
  images of 750 identities plus 500000 distractors of their own identities), 6 cameras.

Evaluators: ``streaming`` (blocks of rows written into one reused buffer,
:class:`reid.metrics.DistanceRows`, what the engine uses above ``TEST.MAX_MATRIX_MB``), ``dense`` (the whole matrix, then :func:`reid.metrics.evaluate`)
and torchreid's ``evaluate_rank`` on the whole matrix. One that would need more memory than is
available (estimated before it starts: 4 bytes per cell for the matrix, about 25 for torchreid's
argsort and label matrices) is not run, and the table says how much it would have needed. The
streaming and dense results must be identical (CMC, mAP and every query's AP), else exit 1. The
subprocesses run without any ``MALLOC_*`` environment variable: the streaming evaluator sets the
allocator threshold it needs itself (:func:`reid.metrics.rank.return_freed_blocks`). ``floor``
times the distance product alone, computed block by block as streaming computes it and dropped:
the work no evaluation can avoid; every evaluator's line gives its time as a multiple of it.

Usage::

    python benchmarks/eval_speed.py                      # both problems, evaluation only
    python benchmarks/eval_speed.py --rerank             # also re-ranking on cuhk03
    python benchmarks/eval_speed.py --problems cuhk03 --device cuda --repeats 5
    python benchmarks/eval_speed.py --sizes msmt17 market500k   # large galleries, time and memory
    python benchmarks/eval_speed.py --sizes msmt17 market500k --problems duke   # both, one invocation
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import logging
import os
import resource
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

import numpy as np
import torch


from reid.engine.evaluation import available_memory_mb
from reid.metrics import DistanceRows, compute_distance_matrix, evaluate, evaluate_rank, re_ranking

logger = logging.getLogger("eval_speed")

T = TypeVar("T")


@dataclass(frozen=True)
class ProblemSpec:
    """Size of a synthetic evaluation problem."""

    name: str
    num_query: int
    num_gallery: int
    num_ids: int
    num_cams: int


PROBLEMS = {
    "duke": ProblemSpec("duke", 2228, 17661, 702, 8),
    "cuhk03": ProblemSpec("cuhk03", 1400, 5332, 700, 2),
}


@dataclass(frozen=True)
class SizeSpec:
    """A large evaluation problem: identities with query and gallery images, plus distractors."""

    name: str
    num_query: int
    num_gallery: int  # images of the query identities
    num_ids: int
    num_cams: int
    num_distractors: int = 0


SIZES = {
    "msmt17": SizeSpec("msmt17", 11659, 82161, 3060, 15),
    "market500k": SizeSpec("market500k", 3368, 15913, 750, 6, 500000),
}
EVALUATORS = ("floor", "streaming", "dense", "torchreid")
# Bytes per query x gallery cell: the float32 matrix; torchreid adds its int64 argsort, the
# int64 label gather, the bool and int32 match matrices.
_CELL_BYTES = {"floor": 0.0, "streaming": 0.0, "dense": 4.0, "torchreid": 25.0}


def make_large(spec: SizeSpec, dim: int, noise: float, seed: int) -> tuple[torch.Tensor, ...]:
    """Features and labels of a :class:`SizeSpec` (identity centres plus noise; every
    distractor is an identity of its own, so it is never a true match)."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(spec.num_ids, dim, generator=gen)
    g_pids = torch.cat([torch.arange(spec.num_ids), torch.randint(0, spec.num_ids, (spec.num_gallery - spec.num_ids,),
                                                                 generator=gen)])
    q_pids = torch.randint(0, spec.num_ids, (spec.num_query,), generator=gen)
    query = centres[q_pids] + noise * torch.randn(spec.num_query, dim, generator=gen)
    # filled in place, by blocks: the generation's peak memory is the gallery itself
    gallery = torch.empty(spec.num_gallery + spec.num_distractors, dim)
    for start in range(0, len(gallery), 50000):
        stop = min(start + 50000, len(gallery))
        torch.randn(stop - start, dim, generator=gen, out=gallery[start:stop])
        if start < spec.num_gallery:  # images of the query identities: centre plus noise
            own = slice(start, min(stop, spec.num_gallery))
            gallery[own] *= noise
            gallery[own] += centres[g_pids[own]]
        if stop > spec.num_gallery:  # distractors: identities of their own, same spread
            extra = slice(max(start, spec.num_gallery), stop)
            gallery[extra] *= (1 + noise**2) ** 0.5
    if spec.num_distractors:
        g_pids = torch.cat([g_pids, spec.num_ids + torch.arange(spec.num_distractors)])
    q_cams = torch.randint(0, spec.num_cams, (spec.num_query,), generator=gen)
    g_cams = torch.randint(0, spec.num_cams, (len(g_pids),), generator=gen)
    return query, gallery, q_pids.numpy(), g_pids.numpy(), q_cams.numpy(), g_cams.numpy()


def _status_mb(key: str) -> float:
    """A memory line of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in MB; NaN where unknown."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def _start_peak() -> float:
    """Resets the kernel's peak resident size of this process to its current size (``clear_refs``
    5) and returns that size in MB: the peak read later is then the evaluation's own."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
            refs.write("5")
    except OSError:
        return float("nan")
    return _status_mb("VmRSS")


def run_size_child(size: str, evaluator: str, dim: int, noise: float, seed: int, device: str,
                   block_mb: float = 256.0) -> dict:
    """One evaluator on one size, in this (child) process: time, peak memory and the result."""
    spec = SIZES[size]
    query, gallery, q_pids, g_pids, q_cams, g_cams = make_large(spec, dim, noise, seed)
    before_mb = _start_peak()
    start = time.perf_counter()
    if evaluator == "floor":  # the product alone, block by block as streaming computes it: the work no
        rows = DistanceRows.from_features(query, gallery, compute_distance_matrix, block_mb=block_mb, into_buffer=True)
        for row in range(0, rows.shape[0], rows.block_rows):  # evaluation can avoid
            rows[row : row + rows.block_rows]
        seconds = time.perf_counter() - start
        return {"seconds": seconds, **_memory(before_mb), "mAP": float("nan"), "cmc": [float("nan")],
                "ap_sha256": None, "cells": int(len(q_pids)) * int(len(g_pids))}
    if evaluator == "streaming":
        rows = DistanceRows.from_features(query, gallery, compute_distance_matrix, block_mb=block_mb, into_buffer=True)
        result = evaluate(rows, q_pids, g_pids, q_cams, g_cams, max_rank=50, device=device)
        cmc, m_ap, ap = result.cmc, float(result.mAP), result.ap
    elif evaluator == "dense":
        distmat = compute_distance_matrix(query, gallery).numpy()
        result = evaluate(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=50, device=device)
        cmc, m_ap, ap = result.cmc, float(result.mAP), result.ap
    else:
        distmat = compute_distance_matrix(query, gallery).numpy()
        with contextlib.redirect_stdout(io.StringIO()):
            cmc, m_ap = torchreid_evaluate_rank()(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=50,
                                                  use_cython=False)
        m_ap, ap = float(m_ap), None
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        **_memory(before_mb),
        "mAP": m_ap,
        "cmc": [float(v) for v in cmc],
        "ap_sha256": None if ap is None else hashlib.sha256(np.ascontiguousarray(ap).tobytes()).hexdigest(),
        "cells": int(len(q_pids)) * int(len(g_pids)),
    }


def _memory(before_mb: float) -> dict:
    """Peak resident memory of the process during the evaluation (MB, features and libraries
    included), what it was when the evaluation started, and the evaluation's own share (the
    difference: distances, ranking, buffers)."""
    peak = _status_mb("VmHWM")
    if peak != peak:  # no /proc: the process's lifetime peak
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {"peak_mb": peak, "before_mb": before_mb, "added_mb": peak - before_mb}


def bench_size(size: str, evaluator: str, args: argparse.Namespace) -> dict:
    """Runs :func:`run_size_child` in a subprocess (unless it could not fit in memory)."""
    spec = SIZES[size]
    cells = spec.num_query * (spec.num_gallery + spec.num_distractors)
    features_mb = 4.0 * args.scale_dim * (spec.num_query + spec.num_gallery + spec.num_distractors) / 2**20
    needed = features_mb + _CELL_BYTES[evaluator] * cells / 2**20
    free = available_memory_mb()
    if free is not None and needed > 0.9 * free:
        return {"skipped": f"needs about {needed / 1024:.1f} GB, {free / 1024:.1f} GB available"}
    command = [
        sys.executable, __file__, "--child", size, evaluator, "--scale-dim", str(args.scale_dim), "--noise",
        str(args.noise), "--seed", str(args.seed), "--device", args.device, "--block-mb", str(args.block_mb),
    ] + ([] if args.threads is None else ["--threads", str(args.threads)])
    logger.info("%s: %s (about %.1f GB)", size, evaluator, needed / 1024)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}  # the evaluator sets what it needs
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        return {"skipped": f"failed (exit {done.returncode}): {done.stderr.strip().splitlines()[-1:]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_sizes(args: argparse.Namespace) -> int:
    rows = []
    for size in args.sizes:
        results = {evaluator: bench_size(size, evaluator, args) for evaluator in args.evaluators}
        rows.append((size, results))
    print(f"\n{'size':11} {'evaluator':10} {'time [s]':>9} {'peak [MB]':>10} {'added [MB]':>10} {'vs streaming':>13}  result")
    identical = True
    for size, results in rows:
        reference = results.get("streaming")
        for evaluator, r in results.items():
            if "skipped" in r:
                print(f"{size:11} {evaluator:10} {'-':>9} {'-':>10} {'-':>10} {'-':>13}  not run: {r['skipped']}")
                continue
            ratio = "" if not reference or "skipped" in reference else f"{r['seconds'] / reference['seconds']:12.2f}x"
            floor = results.get("floor")
            if evaluator == "floor":
                print(f"{size:11} {evaluator:10} {r['seconds']:9.1f} {r['peak_mb']:10.0f} {r['added_mb']:10.0f} {ratio:>13}  "
                      "the distance product alone, block by block (the floor)")
                continue
            to_floor = "" if not floor or "skipped" in floor else f", {r['seconds'] / floor['seconds']:.2f}x the floor"
            same = ""
            if reference and "skipped" not in reference and evaluator != "streaming":
                equal = r["cmc"] == reference["cmc"] and r["mAP"] == reference["mAP"]
                if r["ap_sha256"] is not None:
                    equal = equal and r["ap_sha256"] == reference["ap_sha256"]
                identical = identical and equal
                same = ", identical to streaming" if equal else ", DIFFERS from streaming"
            print(f"{size:11} {evaluator:10} {r['seconds']:9.1f} {r['peak_mb']:10.0f} {r['added_mb']:10.0f} {ratio:>13}  "
                  f"mAP {r['mAP']:.4f} rank1 {r['cmc'][0]:.4f}{same}{to_floor}")
    print(f"features: {args.scale_dim} floats per image; streaming blocks of {args.block_mb:.0f} MB; device {args.device}; torch threads "
          f"{args.threads or torch.get_num_threads()}; peak = the subprocess's maximum resident memory during the "
          "evaluation (torch's libraries and the features included), added = peak minus the resident memory when "
          "the evaluation started (the evaluator's own); time = distances and ranking, after the features exist")
    return 0 if identical else 1


@dataclass(frozen=True)
class Problem:
    """Features, labels and query-gallery distances of a synthetic problem."""

    query: torch.Tensor
    gallery: torch.Tensor
    q_pids: np.ndarray
    g_pids: np.ndarray
    q_camids: np.ndarray
    g_camids: np.ndarray
    distmat: np.ndarray


def make_problem(spec: ProblemSpec, dim: int, noise: float, seed: int) -> Problem:
    """Identity centres plus Gaussian noise; every identity has gallery entries.

    Args:
        spec: sizes.
        dim: feature dimension.
        noise: standard deviation of the per-image noise (centres have unit variance).
        seed: random seed.
    """
    rng = np.random.default_rng(seed)
    g_pids = np.concatenate(
        [np.arange(spec.num_ids), rng.integers(0, spec.num_ids, spec.num_gallery - spec.num_ids)]
    )
    q_pids = rng.integers(0, spec.num_ids, spec.num_query)
    centres = rng.standard_normal((spec.num_ids, dim)).astype(np.float32)
    query = centres[q_pids] + noise * rng.standard_normal((spec.num_query, dim)).astype(np.float32)
    gallery = centres[g_pids] + noise * rng.standard_normal((spec.num_gallery, dim)).astype(
        np.float32
    )
    query_t, gallery_t = torch.from_numpy(query), torch.from_numpy(gallery)
    return Problem(
        query=query_t,
        gallery=gallery_t,
        q_pids=q_pids,
        g_pids=g_pids,
        q_camids=rng.integers(0, spec.num_cams, spec.num_query),
        g_camids=rng.integers(0, spec.num_cams, spec.num_gallery),
        distmat=compute_distance_matrix(query_t, gallery_t).numpy(),
    )


def timed(fn: Callable[[], T], repeats: int, label: str) -> tuple[T, list[float]]:
    """Runs ``fn`` ``repeats`` times; returns its last result and the wall times."""
    times, result = [], None
    for i in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
        logger.info("  %s run %d/%d: %.3f s", label, i + 1, repeats, times[-1])
    return result, times


def torchreid_evaluate_rank() -> Callable:
    """torchreid's ``evaluate_rank``, imported without its Cython warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchreid.reid.metrics.rank import evaluate_rank as reference
    return reference


def torchreid_re_ranking() -> Callable:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchreid.reid.utils.rerank import re_ranking as reference
    return reference


def bench_evaluation(problem: Problem, args: argparse.Namespace, cuhk03_metric: bool) -> dict:
    """Times both evaluators on one problem and checks that they agree exactly."""
    reference = torchreid_evaluate_rank()
    labels = (problem.q_pids, problem.g_pids, problem.q_camids, problem.g_camids)
    seed = args.seed

    def ours() -> tuple[np.ndarray, float]:
        return evaluate_rank(
            problem.distmat,
            *labels,
            max_rank=50,
            use_metric_cuhk03=cuhk03_metric,
            device=args.device,
            seed=seed,
        )

    def theirs() -> tuple[np.ndarray, float]:
        np.random.seed(seed)  # the CUHK03 sampling draws from numpy's global state
        with contextlib.redirect_stdout(io.StringIO()):
            return reference(
                problem.distmat,
                *labels,
                max_rank=50,
                use_metric_cuhk03=cuhk03_metric,
                use_cython=False,
            )

    got, our_times = timed(ours, args.repeats, "reid.metrics.evaluate_rank")
    ref, ref_times = timed(theirs, args.reference_repeats, "torchreid evaluate_rank")
    identical = bool(np.array_equal(got[0], ref[0]) and got[1] == ref[1])
    return {
        "ours": min(our_times),
        "torchreid": min(ref_times),
        "identical": identical,
        "detail": f"mAP {got[1]:.4f} rank1 {got[0][0]:.4f}",
    }


def bench_rerank(problem: Problem, args: argparse.Namespace) -> dict:
    """Times both k-reciprocal re-rankings on one problem and checks bit-equality."""
    reference = torchreid_re_ranking()
    q_q = compute_distance_matrix(problem.query, problem.query).numpy()
    g_g = compute_distance_matrix(problem.gallery, problem.gallery).numpy()
    args_rr = (problem.distmat, q_q, g_g)
    got, our_times = timed(
        lambda: re_ranking(*args_rr, device=args.device), args.repeats, "reid.metrics.re_ranking"
    )
    ref, ref_times = timed(
        lambda: reference(*args_rr), args.reference_repeats, "torchreid re_ranking"
    )
    return {
        "ours": min(our_times),
        "torchreid": min(ref_times),
        "identical": bool(np.array_equal(got, ref)),
        "detail": f"max |diff| {float(np.max(np.abs(got - ref))):.1e}",
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--problems", nargs="+", choices=sorted(PROBLEMS), default=None,
        help="problems timed against torchreid (default: all; with --sizes: none unless named)",
    )
    parser.add_argument("--device", default="cpu", help="device of reid.metrics (torchreid: numpy)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs of reid.metrics (best is kept)"
    )
    parser.add_argument("--reference-repeats", type=int, default=1, help="runs of torchreid")
    parser.add_argument(
        "--cuhk03-metric",
        action="store_true",
        help="also time the CUHK03 single-gallery-shot metric (torchreid: minutes)",
    )
    parser.add_argument("--rerank", action="store_true", help="also time k-reciprocal re-ranking")
    parser.add_argument(
        "--rerank-problems",
        nargs="+",
        choices=sorted(PROBLEMS),
        default=["cuhk03"],
        help="problems for --rerank (torchreid needs ~10 GB and many minutes on duke)",
    )
    parser.add_argument("--dim", type=int, default=128, help="feature dimension")
    parser.add_argument(
        "--noise",
        type=float,
        default=1.4,
        help="per-image noise, centres have unit variance (1.4: mAP about 0.6)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--sizes", nargs="+", choices=sorted(SIZES), default=None,
        help="large galleries instead of --problems: time and peak memory of each evaluator in a subprocess",
    )
    parser.add_argument("--evaluators", nargs="+", choices=EVALUATORS, default=list(EVALUATORS),
                        help="evaluators of --sizes")
    parser.add_argument(
        "--scale-dim", type=int, default=512,
        help="feature dimension of the --sizes problems (OSNet's 512; a ResNet-50 embedding has 2048)",
    )
    parser.add_argument("--block-mb", type=float, default=256.0,
                        help="streaming: MB of float32 distances per block of rows (the engine uses 32)")
    parser.add_argument("--child", nargs=2, metavar=("SIZE", "EVALUATOR"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(run_size_child(*args.child, args.scale_dim, args.noise, args.seed, args.device, args.block_mb)))
        return 0
    status = bench_sizes(args) if args.sizes else 0
    if args.sizes and args.problems is None:  # --sizes alone: the large galleries only
        return status
    args.problems = args.problems or list(PROBLEMS)
    return bench_problems(args) or status


def bench_problems(args: argparse.Namespace) -> int:
    """Times reid.metrics against torchreid on the ``--problems`` (and ``--rerank``)."""
    rows = []
    needed = set(args.problems) | (set(args.rerank_problems) if args.rerank else set())
    for name in [p for p in PROBLEMS if p in needed]:
        spec = PROBLEMS[name]
        logger.info(
            "Building %s problem: %d x %d, %d ids, %d cams",
            name,
            spec.num_query,
            spec.num_gallery,
            spec.num_ids,
            spec.num_cams,
        )
        problem = make_problem(spec, args.dim, args.noise, args.seed)
        tasks = []
        if name in args.problems:
            tasks.append(("evaluate_rank", lambda: bench_evaluation(problem, args, False)))
            if args.cuhk03_metric:
                tasks.append(
                    ("evaluate_rank cuhk03", lambda: bench_evaluation(problem, args, True))
                )
        if args.rerank and name in args.rerank_problems:
            tasks.append(("re_ranking", lambda: bench_rerank(problem, args)))
        for task, run in tasks:
            logger.info("%s: %s", name, task)
            rows.append((name, task, run()))
    header = ("problem", "task", "ours [s]", "torchreid [s]", "speed-up", "identical", "detail")
    print("\n{:8} {:22} {:>9} {:>14} {:>9}  {:9}  {}".format(*header))
    for name, task, r in rows:
        ratio = r["torchreid"] / r["ours"]
        print(
            f"{name:8} {task:22} {r['ours']:9.3f} {r['torchreid']:14.3f} {ratio:8.1f}x"
            f"  {str(r['identical']):9}  {r['detail']}"
        )
    print(
        f"device: {args.device}, torch threads: {torch.get_num_threads()}, "
        f"best of {args.repeats} (ours) and {args.reference_repeats} (torchreid) runs"
    )
    return 0 if all(r["identical"] for _, _, r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
