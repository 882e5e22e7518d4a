#!/usr/bin/env python
"""Where the time of our demo's training step goes, against torchreid's own step, in one run.

Reference: torchreid's ``ImageTripletEngine.forward_backward`` (``torchreid.reid.engine``) on its
``mobilenetv2_x1_0`` (softmax + batch-hard triplet, label smoothing, last stride 2, zero padding,
one global head), with torchreid's Adam (``torchreid.reid.optim.build_optimizer``).

Ours as the demo runs it: ``PCBEngine.forward_backward`` built from ``configs/synthetic_pcb.yaml``
(random weights: ``MODEL.PRETRAINED False``, the work is the same): MobileNetV2, 4 stripes, reduced
dim 128, ``MODEL.LAST_STRIDE 1``, ``MODEL.PADDING_MODE zeros``, our Adam, and each step inside
``deterministic_algorithms`` as ``ReidEngine.run`` does on the CPU (``TRAIN.DETERMINISTIC``).
Then the same with one factor at a time turned back towards torchreid's: ``MODEL.LAST_STRIDE 2``,
``MODEL.NUM_STRIPES 1`` (one global head), ``TRAIN.DETERMINISTIC false``, and all three together;
and one turned away from it, ``MODEL.PADDING_MODE reflect`` (what the from-scratch ResNet-18 demo
needed, docs/person-evidence.md; the MobileNetV2 demo dropped it).

Every variant takes one step (forward, backward, optimiser step) on the same fixed random P x K
batch; every learning rate is set to 0, so the weights, hence the work of a step, stay the same
across repeats (Adam still does all of its arithmetic). Steps are timed round-robin (one of each
variant, then again) after ``--warmup`` rounds, so a load change on a shared machine hits all of
them; medians of ``--repeats`` are printed with the ratio to the reference and to ours-as-demo.

At 96x48 a last stride of 2 leaves a 3-row ``layer4`` map, fewer rows than 4 stripes, which the
config check of ``reid train`` refuses; the variant is built past that check (4 overlapping stripes
pooled from 3 rows) so that only the trunk's stride changes.

Usage::

    python benchmarks/step_breakdown.py                              # 96x48, batch 32 (8 x 4), CPU
    python benchmarks/step_breakdown.py --repeats 5 --threads 2
    python benchmarks/step_breakdown.py --device cuda --repeats 20
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from types import SimpleNamespace

import torch


from _timing import round_robin, step_benchmark_device

from reid.builders import MODEL_RECIPES, build_optimizer, build_scheduler
from reid.config import load_config
from reid.engine.determinism import deterministic_algorithms
from reid.engine.pcb import PCBEngine
from reid.models import create_model
from reid.models.trunks import feature_map_size

CONFIG = "configs/synthetic_pcb.yaml"
REFERENCE = "torchreid mobilenetv2_x1_0 (reference)"
DEMO = "ours as the demo"
# Variant -> config overrides on top of the demo's: factors turned back towards torchreid's, and reflect padding.
VARIANTS: dict[str, list[str]] = {
    DEMO: [],
    "ours, last stride 2": ["MODEL.LAST_STRIDE", "2"],
    "ours, 1 stripe": ["MODEL.NUM_STRIPES", "1"],
    "ours, not deterministic": ["TRAIN.DETERMINISTIC", "False"],
    "ours, all three": ["MODEL.LAST_STRIDE", "2", "MODEL.NUM_STRIPES", "1", "TRAIN.DETERMINISTIC", "False"],
    "ours, reflect padding": ["MODEL.PADDING_MODE", "reflect"],
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--width", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=32, help="P x K")
    parser.add_argument("--num-instances", type=int, default=4, help="K, images per identity")
    parser.add_argument("--num-classes", type=int, default=150,
                        help="identities of the classifiers (150: the demo's synthetic training set)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def demo_config(args: argparse.Namespace, overrides: list[str]):
    """The demo's config at this run's sizes, with ``overrides``."""
    return load_config(CONFIG, [
        "MODEL.BACKBONE", "mobilenet_v2", "MODEL.PRETRAINED", "False", "DEVICE", args.device,
        "DATA.HEIGHT", str(args.height), "DATA.WIDTH", str(args.width),
        "SAMPLER.BATCH_SIZE_TRAIN", str(args.batch_size), "SAMPLER.NUM_INSTANCES", str(args.num_instances),
        *overrides,
    ])


def stop_learning(optimizer: torch.optim.Optimizer) -> None:
    """Learning rate 0 in every group: the step's arithmetic is done, the weights stay."""
    for group in optimizer.param_groups:
        group["lr"] = 0.0


def no_data(num_classes: int) -> SimpleNamespace:
    """A data manager without data, for engines that only take steps."""
    return SimpleNamespace(train_loader=[], test_loader={}, num_train_pids=num_classes)


def our_step(cfg, args: argparse.Namespace, device: torch.device, batch: dict) -> Callable[[], object]:
    """One training step of the engine the config builds (``reid.builders``' PCB recipe; the
    recipe's config check is skipped, see the module docstring), inside the deterministic mode
    ``ReidEngine.run`` would use."""
    recipe = MODEL_RECIPES[cfg.MODEL.NAME]
    torch.manual_seed(args.seed)
    model = create_model(cfg.MODEL.NAME, num_classes=args.num_classes, **recipe.model_options(cfg)).train()
    optimizer = build_optimizer(cfg, model)
    stop_learning(optimizer)
    base = dict(progress=False, amp=cfg.TRAIN.AMP, channels_last=cfg.TRAIN.CHANNELS_LAST,
                deterministic=cfg.TRAIN.DETERMINISTIC)
    engine = recipe.engine(cfg, no_data(args.num_classes), model, optimizer, build_scheduler(cfg, optimizer),
                           device, base)
    assert type(engine) is PCBEngine, type(engine)
    deterministic = engine.deterministic and device.type == "cpu"

    def step() -> object:
        with deterministic_algorithms(deterministic):
            return engine.forward_backward(batch)

    return step


def torchreid_step(args: argparse.Namespace, device: torch.device, batch: dict) -> Callable[[], object]:
    """torchreid's ``ImageTripletEngine.forward_backward`` on its ``mobilenetv2_x1_0``."""
    from torchreid.reid.engine import ImageTripletEngine
    from torchreid.reid.models import build_model
    from torchreid.reid.optim import build_optimizer as torchreid_optimizer

    torch.manual_seed(args.seed)
    model = build_model("mobilenetv2_x1_0", args.num_classes, loss="triplet", pretrained=False).to(device).train()
    optimizer = torchreid_optimizer(model, optim="adam")
    stop_learning(optimizer)
    engine = ImageTripletEngine(no_data(args.num_classes), model, optimizer, use_gpu=device.type == "cuda")
    return lambda: engine.forward_backward(batch)


def map_size(cfg) -> str:
    rows, cols = feature_map_size(cfg.DATA.HEIGHT, cfg.DATA.WIDTH, cfg.MODEL.LAST_STRIDE)
    return f"{rows}x{cols}"


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    args = parse_args(argv)
    device = step_benchmark_device(args)
    num_ids = args.batch_size // args.num_instances
    if args.num_classes < num_ids:
        raise SystemExit(f"--num-classes must be at least the batch's {num_ids} identities")
    configs = {name: demo_config(args, overrides) for name, overrides in VARIANTS.items()}
    for name, cfg in configs.items():
        rows, cols = feature_map_size(args.height, args.width, cfg.MODEL.LAST_STRIDE)
        if cfg.MODEL.PADDING_MODE == "reflect" and min(rows, cols) < 2:
            raise SystemExit(f"{name}: a {args.height}x{args.width} input leaves a {rows}x{cols} layer4 map at "
                             f"last stride {cfg.MODEL.LAST_STRIDE}, too small for reflect padding; use a larger input")

    generator = torch.Generator().manual_seed(args.seed)
    images = torch.randn(args.batch_size, 3, args.height, args.width, generator=generator).to(device)
    pids = torch.arange(num_ids).repeat_interleave(args.num_instances).to(device)
    batch = {"img": images, "pid": pids}
    steps = {REFERENCE: torchreid_step(args, device, batch)}
    steps.update({name: our_step(cfg, args, device, batch) for name, cfg in configs.items()})
    times = round_robin(steps, device, args.warmup, args.repeats)
    medians = {name: statistics.median(values) for name, values in times.items()}

    name = "GPU " + torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"one training step (forward, backward, Adam at lr 0), {args.height}x{args.width}, batch "
          f"{args.batch_size} (P {num_ids} x K {args.num_instances}), {args.num_classes} classes; device {device} "
          f"({name}), threads {torch.get_num_threads()}; medians of {args.repeats} interleaved repeats after "
          f"{args.warmup} warm-up rounds")
    print(f"{'variant':<40} {'ms/step':>9} {'min ms':>9} {'/ reference':>12} {'/ demo':>8}  stripes  layer4  padding  det.")
    result: dict[str, dict[str, float]] = {}
    for variant, seconds in medians.items():
        result[variant] = {"ms": seconds * 1e3, "min_ms": min(times[variant]) * 1e3,
                           "vs_reference": seconds / medians[REFERENCE], "vs_demo": seconds / medians[DEMO]}
        if variant == REFERENCE:
            rows, cols = feature_map_size(args.height, args.width, 2)
            shape = f"{'1':>7}  {f'{rows}x{cols}':>6}  {'zeros':>7}  {'no':>4}"
        else:
            cfg = configs[variant]
            deterministic = "yes" if cfg.TRAIN.DETERMINISTIC and device.type == "cpu" else "no"
            shape = (f"{cfg.MODEL.NUM_STRIPES:>7}  {map_size(cfg):>6}  {cfg.MODEL.PADDING_MODE:>7}  "
                     f"{deterministic:>4}")
        row = result[variant]
        print(f"{variant:<40} {row['ms']:9.1f} {row['min_ms']:9.1f} {row['vs_reference']:11.2f}x "
              f"{row['vs_demo']:7.2f}x  {shape}")
    return result


if __name__ == "__main__":
    main()
