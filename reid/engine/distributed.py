"""Distributed data-parallel training with ``torchrun``: one process per GPU (or CPU process).

``torchrun`` starts the processes and sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``;
:func:`world_from_env` reads them and :func:`init_distributed` joins the process group (NCCL on
GPUs, gloo on the CPU). Without those variables everything here is a no-op for one process.

How the engine uses it (``reid/engine/base.py``), decisions:

- **Gradients**: the model stays unwrapped (no ``DistributedDataParallel``) because the
  similarity-mining step calls ``forward_features`` / ``embed_features`` on the module directly
  and AVSL calls its reliability and rectification methods outside ``forward``, which DDP's
  reducer does not see. After every backward :func:`all_reduce_gradients` averages the
  gradients over the processes (coalesced into a few flat buffers, one ``all_reduce`` each), so
  every process applies the same update to the same parameters, exactly as DDP would. The cost:
  communication does not overlap the backward pass.
- **BatchNorm statistics and other floating buffers** (AVSL's edge momentum buffers): averaged
  over the processes after every optimiser step (:func:`average_buffers`), so the model is
  identical on every process at all times (DDP instead copies rank 0's buffers at each forward).
  Batch statistics in the forward pass are per process (no SyncBatchNorm).
- **Start**: rank 0's parameters and buffers are broadcast once (:func:`broadcast_module_state`).
- **Loss terms** logged per step are averaged over the processes (:func:`mean_over_processes`),
  so every process sees the same values and stops together on a non-finite loss.
- **Evaluation** runs on rank 0 while the others wait at a barrier; **checkpoints** are written by
  rank 0 only and carry the RNG state of every process (:func:`gather_objects`), so ``--resume``
  with the same number of processes continues each process's random stream.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

logger = logging.getLogger(__name__)

__all__ = [
    "DistributedContext",
    "all_reduce_gradients",
    "average_buffers",
    "barrier",
    "broadcast_module_state",
    "destroy_distributed",
    "gather_objects",
    "init_distributed",
    "mean_over_processes",
    "world_from_env",
]

# Process-group backends (DIST.BACKEND): auto picks nccl on CUDA, gloo otherwise.
BACKENDS = ("auto", "nccl", "gloo")
BUCKET_ELEMENTS = 1 << 25
"""Largest flat buffer (elements) of one coalesced ``all_reduce``."""


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in the job.

    Attributes:
        rank: global rank of this process.
        world_size: number of processes.
        local_rank: rank on this node (picks the GPU).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_distributed(self) -> bool:
        """More than one process (the collectives below do something)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: evaluates, writes checkpoints, metrics and logs."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError as exc:
        raise ValueError(f"environment variable {name} must be an integer, got {text!r}") from exc


def world_from_env() -> DistributedContext:
    """The job as ``torchrun`` describes it in ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``.

    Without ``WORLD_SIZE`` (a plain ``python tools/train.py``): one process, rank 0.

    Raises:
        ValueError: inconsistent values (e.g. ``RANK >= WORLD_SIZE``).
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        raise ValueError(
            f"invalid torchrun environment: WORLD_SIZE={world_size}, RANK={rank}, LOCAL_RANK={local_rank}"
        )
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank)


def init_distributed(
    context: DistributedContext, device: torch.device, backend: str = "auto", timeout_min: int = 60
) -> None:
    """Joins the process group of ``context`` (no-op for one process or when already joined).

    Args:
        context: from :func:`world_from_env`.
        device: this process's device (``cuda:LOCAL_RANK`` or ``cpu``).
        backend: ``auto`` (``nccl`` for CUDA devices, ``gloo`` otherwise), ``nccl`` or ``gloo``.
        timeout_min: how long a collective may wait (rank 0's evaluation happens at a barrier).

    Raises:
        ValueError: ``nccl`` asked for a CPU device.
    """
    if not context.is_distributed or dist.is_initialized():
        return
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise ValueError(f"the nccl backend needs CUDA devices; this process runs on {device}")
    options: dict[str, Any] = {}
    if device.type == "cuda":
        torch.cuda.set_device(device)
        options["device_id"] = device
    dist.init_process_group(
        backend=backend, init_method="env://", world_size=context.world_size, rank=context.rank,
        timeout=datetime.timedelta(minutes=timeout_min), **options,
    )
    logger.info(
        "process group joined: rank %d of %d (local rank %d), backend %s, device %s",
        context.rank, context.world_size, context.local_rank, backend, device,
    )


def destroy_distributed() -> None:
    """Leaves the process group if one was joined."""
    if dist.is_initialized():
        dist.destroy_process_group()


def _active(context: DistributedContext) -> bool:
    if not context.is_distributed:
        return False
    if not dist.is_initialized():
        raise RuntimeError(
            f"world size {context.world_size} but no process group: call init_distributed() first"
        )
    return True


def barrier(context: DistributedContext) -> None:
    """Waits for every process (no-op for one process)."""
    if _active(context):
        dist.barrier()


def _buckets(tensors: list[torch.Tensor]) -> Iterable[list[torch.Tensor]]:
    """Groups tensors by dtype and device into lists of at most ``BUCKET_ELEMENTS`` elements."""
    groups: dict[tuple, list[torch.Tensor]] = {}
    for tensor in tensors:
        groups.setdefault((tensor.dtype, tensor.device), []).append(tensor)
    for group in groups.values():
        bucket: list[torch.Tensor] = []
        size = 0
        for tensor in group:
            if bucket and size + tensor.numel() > BUCKET_ELEMENTS:
                yield bucket
                bucket, size = [], 0
            bucket.append(tensor)
            size += tensor.numel()
        if bucket:
            yield bucket


def _all_reduce_mean(tensors: list[torch.Tensor], world_size: int) -> None:
    """Replaces each tensor by its mean over the processes (in place, coalesced)."""
    for bucket in _buckets(tensors):
        flat = torch.cat([t.reshape(-1) for t in bucket])
        dist.all_reduce(flat)
        flat.div_(world_size)
        offset = 0
        for tensor in bucket:
            tensor.copy_(flat[offset : offset + tensor.numel()].view(tensor.shape))
            offset += tensor.numel()


@torch.no_grad()
def all_reduce_gradients(parameters: Iterable[nn.Parameter], context: DistributedContext) -> None:
    """Averages the gradients of ``parameters`` over the processes, in place.

    A parameter with a gradient on some processes only (e.g. a term absent from one shard's
    batch) gets zeros where it had none, as DDP does; a parameter without a gradient anywhere
    keeps ``grad is None``, so the optimiser skips it as in a single process.

    Args:
        parameters: the model's parameters, in the same order on every process.
        context: this process's place in the job; one process: nothing happens.
    """
    if not _active(context):
        return
    params = [p for p in parameters if p.requires_grad]
    if not params:
        return
    device = params[0].device
    present = torch.tensor([float(p.grad is not None) for p in params], device=device)
    dist.all_reduce(present, op=dist.ReduceOp.MAX)
    grads = []
    for param, flag in zip(params, present.tolist()):
        if flag > 0:
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            if param.grad.is_sparse:
                raise TypeError("sparse gradients are not supported by all_reduce_gradients")
            grads.append(param.grad)
    _all_reduce_mean(grads, context.world_size)


@torch.no_grad()
def average_buffers(module: nn.Module, context: DistributedContext) -> None:
    """Averages the floating-point buffers of ``module`` (BatchNorm running statistics, AVSL
    edges) over the processes, in place; integer buffers (batch counters) are left alone."""
    if not _active(context):
        return
    floating = [b for b in module.buffers() if b.is_floating_point()]
    if floating:
        _all_reduce_mean(floating, context.world_size)


@torch.no_grad()
def broadcast_module_state(module: nn.Module, context: DistributedContext, src: int = 0) -> None:
    """Copies rank ``src``'s parameters and buffers to every process."""
    if not _active(context):
        return
    for tensor in list(module.parameters()) + list(module.buffers()):
        if tensor.is_contiguous():
            dist.broadcast(tensor.data, src)
        else:  # e.g. channels_last weights
            copy = tensor.data.contiguous()
            dist.broadcast(copy, src)
            tensor.data.copy_(copy)


def mean_over_processes(
    values: dict[str, float], context: DistributedContext, device: torch.device, check_keys: bool = True
) -> dict[str, float]:
    """The mean of each named float over the processes (every process must pass the same keys).

    Args:
        values: name -> value on this process.
        context: this process's place in the job; one process: ``values`` is returned.
        device: where the reduction runs (the process's GPU for NCCL).
        check_keys: first compare the names on every process (one more collective).

    Raises:
        RuntimeError: the processes passed different names.
    """
    if not _active(context):
        return dict(values)
    keys = sorted(values)
    if check_keys:
        names = gather_objects(keys, context)
        if any(other != keys for other in names):
            raise RuntimeError(f"processes logged different loss terms: {names}")
    if not keys:
        return {}
    stacked = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(stacked)
    stacked /= context.world_size
    return {key: float(value) for key, value in zip(keys, stacked.tolist())}


def gather_objects(obj: Any, context: DistributedContext) -> list[Any]:
    """Every process's ``obj`` (picklable), in rank order; ``[obj]`` for one process."""
    if not _active(context):
        return [obj]
    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, obj)
    return gathered
