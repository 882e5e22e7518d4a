#!/usr/bin/env python
"""Time per training step of PCB+SAM against the PCB baseline, same batch, same run.

Reference measured against: ``PCBEngine.forward_backward`` (ID + batch-hard triplet, one forward
and one backward of the batch). Measured: ``SAMEngine.forward_backward`` (the same, plus
attention maps from the batch's own ``layer4`` map, soft masks, one forward and backward of the
masked images, ``L_sm``). Both engines start from the same random weights; the optimiser is SGD
with learning rate 0 so the weights, and hence the work per step, stay the same across repeats.
Steps alternate (PCB, SAM, PCB, ...) after a warm-up, so a load change on a shared machine hits
both; medians are reported.

The floor of the exact method is not 2x: every member of every tuple has its own map (the weights
belong to the tuple), so the masked pass holds ``N = R x U`` images (``R`` roles, ``U`` distinct
tuples; batch-hard triplets: ``N = 3 B``). The script also times a PCB step on a batch of ``N``
images (the batch repeated), so ``floor = (t_pcb(B) + t_pcb(N)) / t_pcb(B)`` is the cost of "one
more forward and backward of the masked images" measured on the same machine.

Usage::

    python benchmarks/sam_overhead.py                       # resnet18, 96x48, batch 16, triplet
    python benchmarks/sam_overhead.py --form siamese --num-instances 2
    python benchmarks/sam_overhead.py --backbone resnet50 --height 384 --width 128 --batch-size 64 \\
        --device cuda
    python benchmarks/sam_overhead.py --profile            # where the SAM step spends its time
    python benchmarks/sam_overhead.py --max-tuples 5       # L_sm on 5 random tuples: N = 15
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch


from _timing import round_robin, seeded_pcb_setup, step_engine

from reid.engine.pcb import PCBEngine
from reid.engine.sam import SAMEngine


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backbone", default="resnet18", choices=["resnet18", "resnet34", "resnet50"])
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--width", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16, help="P x K")
    parser.add_argument("--num-instances", type=int, default=4, help="K, images per identity")
    parser.add_argument("--stripes", type=int, default=4)
    parser.add_argument("--reduced-dim", type=int, default=128)
    parser.add_argument("--form", default="triplet", choices=["siamese", "triplet", "quadruplet"])
    parser.add_argument("--bn-mode", default="eval", choices=["eval", "train"])
    parser.add_argument("--second-order", action="store_true")
    parser.add_argument("--max-tuples", type=int, default=0,
                        help="tuples of L_sm per step (0: all, the published method)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-floor", action="store_true", help="skip timing the PCB step on N images")
    parser.add_argument("--profile", action="store_true", help="print the SAM step's time per stage")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def num_masked_images(engine: SAMEngine, batch: dict) -> int:
    images, pids = engine.to_device(batch)
    output = engine.model(images)
    _, mined = engine.metric_terms(output, pids)
    return engine.similarity_mining(images, output, mined).num_masked


def profile_step(engine: SAMEngine, batch: dict) -> None:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        engine.forward_backward(batch)
    rows = [e for e in prof.key_averages() if e.key.startswith("sam/")]
    total = sum(e.cpu_time_total for e in rows)
    print("SAM step by stage (CPU time, record_function labels of reid/engine/sam.py, reid/losses/sam.py):")
    for event in sorted(rows, key=lambda e: -e.cpu_time_total):
        print(f"  {event.key:<22} {event.cpu_time_total / 1e3:9.1f} ms  {event.cpu_time_total / total:6.1%}")


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    device, model, num_ids = seeded_pcb_setup(args)
    pcb = step_engine(PCBEngine, copy.deepcopy(model), device)
    sam = step_engine(SAMEngine, copy.deepcopy(model), device, form=args.form, bn_mode=args.bn_mode,
                      second_order=args.second_order, max_tuples=args.max_tuples)
    images = torch.randn(args.batch_size, 3, args.height, args.width)
    pids = torch.arange(num_ids).repeat_interleave(args.num_instances)
    batch = {"img": images, "pid": pids}
    num_masked = num_masked_images(sam, batch)
    repeat = -(-num_masked // args.batch_size)
    big = {"img": images.repeat(repeat, 1, 1, 1)[:num_masked], "pid": pids.repeat(repeat)[:num_masked]}

    steps = {"pcb": lambda: pcb.forward_backward(batch), "sam": lambda: sam.forward_backward(batch)}
    if not args.no_floor:
        steps["pcb_masked_n"] = lambda: pcb.forward_backward(big)
    times = round_robin(steps, device, args.warmup, args.repeats)
    median = {name: statistics.median(values) for name, values in times.items()}

    print(
        f"{args.backbone} {args.height}x{args.width}, batch {args.batch_size} (K={args.num_instances}), "
        f"form {args.form}, bn {args.bn_mode}, {'second' if args.second_order else 'first'} order, "
        f"max tuples {args.max_tuples or 'all'}, "
        f"device {device}, threads {torch.get_num_threads()}, "
        f"{args.repeats} repeats after {args.warmup} warm-up"
    )
    print(f"masked images per step: N = {num_masked} ({num_masked / args.batch_size:.2f} x batch)")
    print(f"PCB step      : {median['pcb'] * 1e3:8.1f} ms (median; min {min(times['pcb']) * 1e3:.1f})")
    print(f"PCB+SAM step  : {median['sam'] * 1e3:8.1f} ms (median; min {min(times['sam']) * 1e3:.1f})")
    result = {"pcb_s": median["pcb"], "sam_s": median["sam"], "ratio": median["sam"] / median["pcb"],
              "num_masked": float(num_masked)}
    print(f"ratio SAM/PCB : {result['ratio']:.2f}x")
    if not args.no_floor:
        floor = (median["pcb"] + median["pcb_masked_n"]) / median["pcb"]
        result["floor"] = floor
        print(f"floor (PCB step on B + on N images) / PCB step: {floor:.2f}x; "
              f"SAM at {result['ratio'] / floor:.2f}x of its floor")
    if args.profile:
        profile_step(sam, batch)
    return result


if __name__ == "__main__":
    main()
