"""Timing helpers shared by the benchmark scripts (run as ``python benchmarks/<script>.py``)."""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import torch


def sync(device: torch.device) -> None:
    """Waits for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of ``step()``, the device synchronised before and after."""
    sync(device)
    start = time.perf_counter()
    step()
    sync(device)
    return time.perf_counter() - start


def round_robin(
    steps: dict[str, Callable[[], object]], device: torch.device, warmup: int, repeats: int
) -> dict[str, list[float]]:
    """Seconds of every repeat of each step, timed in turn (A, B, A, B, ...) after ``warmup``
    untimed rounds, so that a change of load on a shared machine hits every step alike."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            times[name].append(timed(step, device))
    return times


def step_engine(cls: type, model: torch.nn.Module, device: torch.device, **kwargs: Any):
    """An engine of ``cls`` around ``model`` with no data and SGD at learning rate 0, so that the
    weights, and hence the work of a step, stay the same across repeats."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
    datamanager = SimpleNamespace(train_loader=[], test_loader={})
    return cls(datamanager, model, optimizer, scheduler, device, "unused", progress=False, **kwargs)


def step_benchmark_device(args: argparse.Namespace) -> torch.device:
    """The checks every step benchmark starts with: quiet logging, ``--threads``, the P x K check
    of ``--batch-size`` and ``--num-instances``, and ``--device`` (refused when CUDA is asked for
    and absent)."""
    logging.basicConfig(level=logging.WARNING)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.batch_size % args.num_instances:
        raise SystemExit("--batch-size must be a multiple of --num-instances")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but CUDA is not available")
    return device


def seeded_pcb_setup(args: argparse.Namespace) -> tuple[torch.device, torch.nn.Module, int]:
    """The common start of the step benchmarks (:func:`step_benchmark_device`), then ``--seed``
    and a random-weight PCB
    (``--backbone``, ``--stripes``, ``--reduced-dim``) with one class per identity of a batch.

    Returns:
        ``(device, model, num_ids)``.
    """
    from reid.models.pcb import PCB

    device = step_benchmark_device(args)
    torch.manual_seed(args.seed)
    num_ids = args.batch_size // args.num_instances
    model = PCB(num_classes=num_ids, backbone=args.backbone, num_stripes=args.stripes,
                reduced_dim=args.reduced_dim, pretrained=False)
    return device, model, num_ids
