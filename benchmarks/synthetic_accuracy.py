#!/usr/bin/env python
"""Rank-1 and mAP of PCB+SAM against the PCB baseline on the synthetic dataset.

Reference measured against: the PCB baseline (``SAM.ENABLED false``). Both runs go through
``tools/train.py``'s ``main(argv)`` with the SAME config file (``configs/synthetic_pcb_sam.yaml``
by default), seed, data, model and epochs; they differ only in ``SAM.ENABLED`` and their
``OUTPUT_DIR`` (``<output-root>/pcb`` and ``<output-root>/pcb_sam``), so the budget in epochs is
the same (a SAM step costs more time: see ``benchmarks/sam_overhead.py``). Each run starts afresh
(``--overwrite``): the runs of an earlier benchmark in the same folders are moved aside into their
``replaced-<date>-<time>`` subfolders.

Usage (full demo size takes a while on a CPU; extra ``KEY VALUE`` overrides go to both runs)::

    python benchmarks/synthetic_accuracy.py
    python benchmarks/synthetic_accuracy.py --seeds 0 1 2
    python benchmarks/synthetic_accuracy.py OPTIM.MAX_EPOCH 1 DATA.SYNTHETIC.NUM_IDS 16 \\
        DATA.SYNTHETIC.IMAGES_PER_ID 6 DATA.HEIGHT 64 DATA.WIDTH 32 SAMPLER.BATCH_SIZE_TRAIN 8 \\
        SAMPLER.NUM_INSTANCES 2                              # a smoke run (about a minute)
"""

from __future__ import annotations

import argparse
import os
import statistics


from reid.cli import train as train_tool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METRICS = ("rank1", "mAP")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=os.path.join(ROOT, "configs", "synthetic_pcb_sam.yaml"),
                        help="one config for both runs (SAM.ENABLED is set per run)")
    parser.add_argument("--output-root", default="output/synthetic_accuracy",
                        help="runs go to <root>/[seed<N>/]pcb and <root>/[seed<N>/]pcb_sam")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="SEED of each pair of runs")
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for both runs")
    return parser.parse_args(argv)


def train(config: str, output_dir: str, seed: int, sam: bool, opts: list[str], progress: bool) -> dict:
    argv = ["--config", config, "--overwrite", *([] if progress else ["--no-progress"]), *opts,
            "SEED", str(seed), "OUTPUT_DIR", output_dir, "SAM.ENABLED", str(sam)]
    return train_tool.main(argv)


def main(argv: list[str] | None = None) -> dict[str, dict[str, list[float]]]:
    args = parse_args(argv)
    results: dict[str, dict[str, list[float]]] = {
        name: {key: [] for key in METRICS} for name in ("pcb", "pcb_sam")
    }
    for seed in args.seeds:
        folder = args.output_root if len(args.seeds) == 1 else os.path.join(args.output_root, f"seed{seed}")
        for name, sam in (("pcb", False), ("pcb_sam", True)):
            metrics = train(args.config, os.path.join(folder, name), seed, sam, args.opts, args.progress)
            for key in METRICS:
                results[name][key].append(metrics[key])
    print(f"config {args.config}, seeds {args.seeds}, overrides {' '.join(args.opts) or 'none'}")
    print(f"{'model':<10}" + "".join(f"{key:>16}" for key in METRICS))
    for name, values in results.items():
        cells = []
        for key in METRICS:
            mean = statistics.mean(values[key])
            spread = f" ±{statistics.stdev(values[key]):.1%}" if len(values[key]) > 1 else ""
            cells.append(f"{mean:.1%}{spread}")
        print(f"{name:<10}" + "".join(f"{cell:>16}" for cell in cells))
    delta = {
        key: statistics.mean(results["pcb_sam"][key]) - statistics.mean(results["pcb"][key])
        for key in METRICS
    }
    print(f"{'SAM - PCB':<10}" + "".join(f"{value * 100:>+15.1f}p" for value in delta.values()))
    return results


if __name__ == "__main__":
    main()
