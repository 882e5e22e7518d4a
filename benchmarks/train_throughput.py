#!/usr/bin/env python
"""Images per second of PCB training steps (baseline and PCB+SAM, float32 and mixed precision)
and of feature extraction, against torchreid's own feature extraction, in one run.

Training: ``PCBEngine.forward_backward`` and ``SAMEngine.forward_backward`` (batch-hard triplets,
the published method: every mined tuple) on one P x K batch of random images, each in float32
and under autocast (``--amp``), optionally in channels_last (``--channels-last``). All engines
start from the same random weights; SGD with learning rate 0 keeps the weights, hence the work
per step, the same across repeats. Steps are interleaved (one of each, then again) after a
warm-up so that a load change on a shared machine hits all of them; medians are reported.

Feature extraction: our ``reid.engine.evaluation.extract_dataset_features`` (the path of
``tools/test.py``) with our PCB in eval mode, float32 and ``--amp``, against the named
reference, torchreid's ``FeatureExtractor`` (``torchreid.reid.utils``) with torchreid's
``pcb_p6`` model (ResNet-50, 6 stripes, last stride 1: the same architecture as ours with the
default flags) called on the same image batches, features moved to the CPU as torchreid's
``Engine`` does. Both consume the same in-memory batches, so image decoding is not measured.
Ratios printed: ours / torchreid (extraction), mixed / float32, PCB+SAM / PCB.

Usage::

    python benchmarks/train_throughput.py                                # ResNet-50, 384x128, CPU
    python benchmarks/train_throughput.py --batch-size 8 --eval-batch-size 16 --repeats 3
    python benchmarks/train_throughput.py --device cuda --batch-size 64 --amp bf16 --channels-last
    python benchmarks/train_throughput.py --backbone resnet18 --height 128 --width 64   # quick
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
from collections.abc import Callable

import numpy as np
import torch


from _timing import round_robin, seeded_pcb_setup, step_engine

from reid.engine.evaluation import extract_dataset_features
from reid.engine.pcb import PCBEngine
from reid.engine.sam import SAMEngine


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--backbone", default="resnet50", choices=["resnet18", "resnet34", "resnet50"])
    parser.add_argument("--height", type=int, default=384)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--stripes", type=int, default=6)
    parser.add_argument("--reduced-dim", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32, help="training batch P x K")
    parser.add_argument("--num-instances", type=int, default=4, help="K, images per identity")
    parser.add_argument("--amp", default="bf16", choices=["bf16", "fp16"],
                        help="mixed-precision dtype compared with float32 (fp16: CUDA only)")
    parser.add_argument("--channels-last", action="store_true", help="channels_last in every measurement")
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument("--eval-batches", type=int, default=2, help="batches per extraction pass")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-sam", action="store_true", help="skip the PCB+SAM steps")
    parser.add_argument("--no-train", action="store_true", help="only feature extraction")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def interleaved_medians(steps: dict[str, Callable[[], object]], device: torch.device,
                        warmup: int, repeats: int) -> dict[str, float]:
    """Median seconds of each step, timed round-robin after ``warmup`` rounds."""
    times = round_robin(steps, device, warmup, repeats)
    return {name: statistics.median(values) for name, values in times.items()}


def torchreid_extractor(device: torch.device, folder: str):
    """torchreid's ``FeatureExtractor`` with ``pcb_p6`` from random weights saved to ``folder``
    (a weights file, so that nothing is downloaded)."""
    from torchreid.reid.models import build_model
    from torchreid.reid.utils import FeatureExtractor

    torch.manual_seed(0)
    path = os.path.join(folder, "pcb_p6_random.pth")
    torch.save({"state_dict": build_model("pcb_p6", num_classes=1, pretrained=False).state_dict()}, path)
    return FeatureExtractor(model_name="pcb_p6", model_path=path, device=device.type, verbose=False)


def torchreid_pass(extractor, batches: list[dict]) -> torch.Tensor:
    """torchreid's ``Engine._evaluate`` loop: extract, move to the CPU, concatenate."""
    return torch.cat([extractor(batch["img"]).cpu() for batch in batches])


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    if args.amp == "fp16" and torch.device(args.device).type != "cuda":
        raise SystemExit("--amp fp16 needs --device cuda; use bf16 on the CPU")
    device, model, num_ids = seeded_pcb_setup(args)
    generator = torch.Generator().manual_seed(args.seed)
    shape = (3, args.height, args.width)
    name = "GPU " + torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"PCB {args.backbone} {args.height}x{args.width}, {args.stripes} stripes; device {device} ({name}), "
        f"threads {torch.get_num_threads()}; channels_last {args.channels_last}; "
        f"medians of {args.repeats} repeats after {args.warmup} warm-up"
    )
    result: dict[str, float] = {}

    if not args.no_train:
        images = torch.randn(args.batch_size, *shape, generator=generator)
        pids = torch.arange(num_ids).repeat_interleave(args.num_instances)
        batch = {"img": images, "pid": pids}
        kinds = [("pcb", PCBEngine)] + ([] if args.no_sam else [("pcb+sam", SAMEngine)])
        steps = {}
        for label, cls in kinds:
            for amp in ("off", args.amp):
                engine = step_engine(cls, copy.deepcopy(model), device, amp=amp, channels_last=args.channels_last)
                steps[f"{label} {'fp32' if amp == 'off' else amp}"] = (lambda e=engine: e.forward_backward(batch))
        medians = interleaved_medians(steps, device, args.warmup, args.repeats)
        print(f"training step, batch {args.batch_size} (K={args.num_instances}):")
        for key, seconds in medians.items():
            result[f"train {key} img/s"] = args.batch_size / seconds
            print(f"  {key:<16} {args.batch_size / seconds:9.2f} images/s  ({seconds * 1e3:8.1f} ms/step)")
        for label, _ in kinds:
            ratio = medians[f"{label} fp32"] / medians[f"{label} {args.amp}"]
            result[f"train {label} {args.amp}/fp32"] = ratio
            print(f"  {label}: {args.amp} / fp32 throughput {ratio:.2f}x")
        if not args.no_sam:
            for precision in ("fp32", args.amp):
                ratio = medians[f"pcb {precision}"] / medians[f"pcb+sam {precision}"]
                result[f"train sam/pcb {precision}"] = ratio
                print(f"  PCB+SAM / PCB throughput ({precision}): {ratio:.2f}x")

    eval_model = copy.deepcopy(model).eval().to(device)
    if args.channels_last:
        eval_model = eval_model.to(memory_format=torch.channels_last)
    batches = [
        {
            "img": torch.randn(args.eval_batch_size, *shape, generator=generator),
            "pid": np.zeros(args.eval_batch_size, dtype=np.int64),
            "camid": np.zeros(args.eval_batch_size, dtype=np.int64),
            "impath": [""] * args.eval_batch_size,
        }
        for _ in range(args.eval_batches)
    ]
    with tempfile.TemporaryDirectory() as folder:
        extractor = torchreid_extractor(device, folder)
        if args.channels_last:
            extractor.model = extractor.model.to(memory_format=torch.channels_last)

        def ours(amp: str) -> Callable[[], object]:
            return lambda: extract_dataset_features(eval_model, batches, device, progress=False, amp=amp,
                                                    channels_last=args.channels_last)

        passes = {"ours fp32": ours("off"), f"ours {args.amp}": ours(args.amp),
                  "torchreid fp32": lambda: torchreid_pass(extractor, batches)}
        medians = interleaved_medians(passes, device, args.warmup, args.repeats)
    num_images = args.eval_batch_size * args.eval_batches
    same = args.backbone == "resnet50" and args.stripes == 6
    print(f"feature extraction, {args.eval_batches} batches of {args.eval_batch_size} "
          f"(reference: torchreid FeatureExtractor + pcb_p6{'' if same else ', a different architecture'}):")
    for key, seconds in medians.items():
        result[f"extract {key} img/s"] = num_images / seconds
        print(f"  {key:<16} {num_images / seconds:9.2f} images/s")
    for key in ("ours fp32", f"ours {args.amp}"):
        ratio = medians["torchreid fp32"] / medians[key]
        result[f"extract {key}/torchreid"] = ratio
        print(f"  {key} / torchreid fp32 throughput: {ratio:.2f}x")
    return result


if __name__ == "__main__":
    main()
