"""Optimisers and learning-rate schedules (plain keyword arguments; the builders read the config).

Both recipes of the papers are here: SGD with Nesterov momentum and a lower learning rate on the
pretrained trunk (PCB: 0.1 for new layers, 0.01 for the trunk), and Adam (the SAM paper, the
synthetic demo). The schedule is stepped once per epoch (``docs/method.md`` section 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

OPTIMIZERS = ("sgd", "adam")
SCHEDULERS = ("single_step", "multi_step", "cosine")


def make_optimizer(
    model: nn.Module,
    name: str,
    lr: float,
    trunk_lr_mult: float = 1.0,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    adam_betas: Sequence[float] = (0.9, 0.999),
) -> torch.optim.Optimizer:
    """SGD (Nesterov when ``momentum > 0``) or Adam, with ``trunk_lr_mult * lr`` on the parameters
    of ``model.trunk_modules`` (their group first) and ``lr`` on every other parameter."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimiser must be one of {OPTIMIZERS}, got {name!r}")
    trunk_ids = {id(p) for m in model.trunk_modules for p in m.parameters()}
    trunk = [p for p in model.parameters() if id(p) in trunk_ids]
    new = [p for p in model.parameters() if id(p) not in trunk_ids]
    groups = [{"params": new, "lr": lr}]
    if trunk:
        groups.insert(0, {"params": trunk, "lr": lr * trunk_lr_mult})
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0)
    return torch.optim.Adam(groups, lr=lr, betas=tuple(adam_betas), weight_decay=weight_decay)


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    name: str,
    stepsize: Sequence[int] = (),
    gamma: float = 0.1,
    max_epoch: int = 1,
) -> torch.optim.lr_scheduler.LRScheduler:
    """``single_step`` (x ``gamma`` every ``stepsize[0]`` epochs), ``multi_step`` (x ``gamma`` at
    each epoch of ``stepsize``) or ``cosine`` (annealed to 0 over ``max_epoch`` epochs)."""
    if name not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {name!r}")
    if name == "single_step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=stepsize[0], gamma=gamma)
    if name == "multi_step":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(stepsize), gamma=gamma)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(max_epoch, 1))
