"""What the engine's parts see of the engine: the checkpoint code and the training hooks.

:mod:`reid.engine.checkpoint` and :mod:`reid.engine.hooks` work on a running engine, and
:class:`reid.engine.base.ReidEngine` uses both. So that neither imports the engine (an import
circle, forbidden by ``tests/test_architecture.py``), they are typed with the protocols below,
which list exactly the attributes and methods they read or set; ``ReidEngine`` provides them
(``tests/engine/test_hooks.py`` checks it on a trained engine). Nothing here is checked at run
time: the protocols are the documented contract between the engine and its parts.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from .distributed import DistributedContext

__all__ = ["CheckpointedRun", "HookedRun"]


class CheckpointedRun(Protocol):
    """What :func:`~reid.engine.checkpoint.save_training_state`,
    :func:`~reid.engine.checkpoint.check_finite_state` and
    :func:`~reid.engine.checkpoint.restore_training_state` read and set.

    Attributes:
        model, optimizer, scheduler, scaler: what is saved and restored (the scaler's state only
            when it is enabled, i.e. fp16).
        dist: this process's place in the job (rank 0 writes; every process's RNG state is saved).
        device: where a restored checkpoint's tensors go.
        config: the run's config as a plain dict, stored in the checkpoint.
        history: one record per epoch done; restored from the checkpoint.
        saved_epoch: the epoch of the checkpoint on disk (set by saving and restoring).
        evaluation_pending: the restored checkpoint was written before its evaluation.
        resume_step, resume_progress: set by restoring a checkpoint written inside an epoch.
        checkpoint_path: where the checkpoint lives.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    dist: DistributedContext
    device: torch.device
    config: dict[str, Any]
    history: list[dict[str, Any]]
    saved_epoch: int | None
    evaluation_pending: bool
    resume_step: int
    resume_progress: dict[str, Any] | None

    @property
    def checkpoint_path(self) -> str: ...

    def checkpoint_status(self) -> str:
        """Where the run's last checkpoint stands, for error messages."""
        ...


class HookedRun(CheckpointedRun, Protocol):
    """What the training hooks (:mod:`reid.engine.hooks`) read and set, beside what their
    checkpoints need.

    Attributes:
        output_dir: the run's folder (TensorBoard, ``metrics.json``, ``cmc.png``).
        max_epoch, start_epoch, epoch: the run's epochs (``epoch`` 0-based, the current one).
        num_batches, batch_idx: the epoch's steps and the current one (0-based).
        results: the run's last evaluation (None before it).
        cmc_curves: the last evaluation's CMC curve per target.
        train_seconds: seconds spent in training steps by this call of ``run``.
    """

    output_dir: str
    max_epoch: int
    start_epoch: int
    epoch: int
    num_batches: int
    batch_idx: int
    results: dict[str, dict[str, float]] | None
    cmc_curves: dict[str, list[float]]
    train_seconds: float

    def evaluate_on_main(self) -> dict[str, dict[str, float]]:
        """Evaluates on rank 0 between the hooks' ``before_evaluate`` and ``after_evaluate``."""
        ...

    def plot_cmc(self, path: str) -> str | None:
        """Plots the last evaluation's CMC curves to ``path``."""
        ...
