#!/usr/bin/env python
"""Explanation quality of several trained models on the same controlled synthetic triplets.

Runs ``tools/eval_explanations.py``'s ``main(argv)`` once per ``--run NAME=CONFIG:CHECKPOINT``
with the same triplets (same ``--seed`` and ``--num-triplets``), the same metric settings and the
same extra ``KEY VALUE`` overrides, each writing to ``<output-root>/<NAME>``, and prints one table
with a model column: explainer x (pointing game, energy inside, deletion AUC, insertion AUC).
The references in every model's rows are its floors, ``centre`` and ``random`` (see
``docs/explanation-quality.md`` for how to read the table).

Usage::

    python benchmarks/explanation_quality.py \\
        --run pcb=configs/synthetic_pcb.yaml:output/synthetic_pcb/checkpoints/checkpoint_last.pth \\
        --run pcb_sam=configs/synthetic_pcb_sam.yaml:output/synthetic_pcb_sam/checkpoints/checkpoint_last.pth
    python benchmarks/explanation_quality.py --run pcb=...:... --num-triplets 40 --num-curves 8  # quick
"""

from __future__ import annotations

import argparse
import json
import os


from reid.cli import eval_explanations
from reid.cli.common import parse_run, parse_with_overrides
from reid.explain.quality import format_tables


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=parse_run, action="append", required=True,
                        help="NAME=CONFIG:CHECKPOINT (repeat for each model)")
    parser.add_argument("--output-root", default="output/explanation_quality",
                        help="each run writes <root>/<NAME>/explanation_quality.json")
    parser.add_argument("--num-triplets", type=int, default=200)
    parser.add_argument("--num-curves", type=int, default=48)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--tolerance", type=int, default=3)
    parser.add_argument("--baseline", choices=("mean", "blur"), default="mean")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    parser.add_argument("opts", nargs="*", help="KEY VALUE overrides for every run")
    args = parse_with_overrides(parser, argv)
    names = [name for name, _, _ in args.run]
    if len(set(names)) != len(names):
        parser.error(f"run names must be distinct, got {names}")
    return args


def main(argv: list[str] | None = None) -> dict[str, dict]:
    args = parse_args(argv)
    results = {}
    for name, config, weights in args.run:
        tool_argv = [
            "--config", config, "--weights", weights, "--num-triplets", str(args.num_triplets),
            "--num-curves", str(args.num_curves), "--steps", str(args.steps), "--tolerance", str(args.tolerance),
            "--baseline", args.baseline, "--seed", str(args.seed), *([] if args.progress else ["--no-progress"]),
            *args.opts, "OUTPUT_DIR", os.path.join(args.output_root, name),
        ]
        results[name] = eval_explanations.main(tool_argv)
    print()
    print(f"Explanation quality on {args.num_triplets} controlled synthetic triplets (seed {args.seed}; "
          f"pointing game band {args.tolerance} px; deletion/insertion on {args.num_curves} positive pairs, "
          f"{args.steps} steps, {args.baseline} baseline)")
    print(format_tables({name: result["table"] for name, result in results.items()}))
    for name, result in results.items():
        floors = result["floors"]
        print(f"{name}: region area {floors['region_area']:.3f}, dilated {floors['dilated_region_area']:.3f} "
              f"(random-map expectations); positive-pair similarity "
              f"{json.dumps(result['positive_pairs'])}")
    return results


if __name__ == "__main__":
    main()
