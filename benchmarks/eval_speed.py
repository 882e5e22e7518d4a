"""Speed of reid.metrics against torchreid on synthetic problems of real dataset sizes.

Reference: ``torchreid.reid.metrics.evaluate_rank`` (its Python version, ``use_cython=False``;
torchreid 0.2.5 ships no compiled Cython module) and, with ``--rerank``,
``torchreid.reid.utils.rerank.re_ranking``. Both sides run in the same process on the same
distance matrices; the results must be identical (``np.array_equal`` and ``==``), else the
script exits with status 1.

Problems (identity centres plus noise, squared Euclidean distances as torchreid computes them):

* ``duke``: DukeMTMC-reID sized, 2228 queries x 17661 gallery, 702 identities, 8 cameras;
* ``cuhk03``: CUHK03-NP sized, 1400 queries x 5332 gallery, 700 identities, 2 cameras.

Usage::

    python benchmarks/eval_speed.py                      # both problems, evaluation only
    python benchmarks/eval_speed.py --rerank             # also re-ranking on cuhk03
    python benchmarks/eval_speed.py --problems cuhk03 --device cuda --repeats 5
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

import numpy as np
import torch


from reid.metrics import compute_distance_matrix, evaluate_rank, re_ranking

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
        "--problems", nargs="+", choices=sorted(PROBLEMS), default=["duke", "cuhk03"]
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
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
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
