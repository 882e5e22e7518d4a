"""A thin torchreid ``Engine`` subclass: training loop, evaluation, checkpoints, metrics.json.

Subclasses fill in ``forward_backward(data) -> dict`` (torchreid's contract). What this class adds
to torchreid's ``Engine.run``: ``logging`` instead of ``print``, a device instead of ``.cuda()``,
atomic checkpoints that load with ``weights_only=True`` and resume bit-for-bit, our fast evaluator
with mINP, a ``metrics.json`` with the history of every loss term, and the three switches every
engine's step shares through :meth:`ReidEngine.autocast`, :meth:`ReidEngine.float32` and
:meth:`ReidEngine.backward_step`:

- mixed precision (``amp``): the forward passes run under ``torch.autocast`` (bfloat16, or
  float16 with a dynamic loss scaler on CUDA); the outputs are cast back to float32 before the
  losses, so losses, mining and similarity weights are computed in float32;
- ``channels_last`` memory format of the weights and of the input images;
- distributed data parallelism (``reid/engine/distributed.py``): gradients averaged over the
  processes after each backward, buffers after each step; evaluation, checkpoints, metrics and
  TensorBoard on rank 0 only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import random
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from torchreid.reid.engine import Engine
from tqdm import tqdm

from reid.io import write_json
from reid.losses import as_floats, combine

from .checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from .distributed import (
    DistributedContext,
    all_reduce_gradients,
    average_buffers,
    barrier,
    broadcast_module_state,
    gather_objects,
    mean_over_processes,
)
from .evaluation import autocast_context, check_amp, distance_matrix, extract_dataset_features, ranking_metrics

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint_last.pth"
METRICS_NAME = "metrics.json"
CMC_PLOT_NAME = "cmc.png"


@dataclass(frozen=True)
class EvalOptions:
    """How test embeddings are compared and scored.

    Attributes:
        dist_metric: ``euclidean`` (squared, as torchreid) or ``cosine``.
        normalize_feature: L2-normalise embeddings before the distance.
        ranks: CMC ranks to report.
        use_metric_cuhk03: CUHK03 single-gallery-shot protocol.
        rerank: k-reciprocal re-ranking of the distance matrix.
    """

    dist_metric: str = "euclidean"
    normalize_feature: bool = False
    ranks: tuple[int, ...] = (1, 5, 10, 20)
    use_metric_cuhk03: bool = False
    rerank: bool = False


def to_float32(value: Any) -> Any:
    """``value`` with every float16 / bfloat16 tensor cast to float32 (tensors, lists, tuples,
    dicts and dataclasses such as ``PCBOutput``, recursively; other tensors are returned as
    they are); the casts keep the autograd graph."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.dtype in (torch.float16, torch.bfloat16) else value
    if isinstance(value, (list, tuple)):
        return type(value)(to_float32(v) for v in value)
    if isinstance(value, dict):
        return {k: to_float32(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {f.name: to_float32(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
        return dataclasses.replace(value, **changes)
    return value


class ReidEngine(Engine):
    """Base engine: one model, one optimiser, one scheduler stepped per epoch.

    Args:
        datamanager: torchreid ``ImageDataManager``.
        model: the model; moved to ``device``.
        optimizer: its optimiser.
        scheduler: a learning-rate scheduler stepped after each epoch.
        device: where training and feature extraction run.
        output_dir: folder for checkpoints, TensorBoard logs and ``metrics.json``.
        eval_options: see :class:`EvalOptions`.
        config: plain dict of the config, stored in checkpoints and ``metrics.json``.
        progress: show tqdm progress bars.
        amp: mixed precision: ``off`` (float32), ``bf16`` (CPU or CUDA) or ``fp16`` (CUDA only,
            with ``torch.amp.GradScaler``).
        channels_last: weights and input images in channels_last memory format.
        dist: this process's place in a ``torchrun`` job (default: a single process).

    Raises:
        RuntimeError: ``amp`` cannot run on ``device`` (fp16 off CUDA).
    """

    def __init__(
        self,
        datamanager: Any,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        device: torch.device,
        output_dir: str,
        eval_options: EvalOptions = EvalOptions(),
        config: dict | None = None,
        progress: bool = True,
        amp: str = "off",
        channels_last: bool = False,
        dist: DistributedContext | None = None,
    ) -> None:
        check_amp(amp, device)
        super().__init__(datamanager, use_gpu=device.type == "cuda")
        self.device = device
        self.amp = amp
        self.channels_last = channels_last
        self.dist = dist or DistributedContext()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model.to(device)
        # fp16 needs loss scaling; disabled, scale/step/update are plain backward/step.
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
        broadcast_module_state(self.model, self.dist)
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.output_dir = output_dir
        self.eval_options = eval_options
        self.config = config or {}
        self.progress = progress
        self.history: list[dict[str, Any]] = []
        self.cmc_curves: dict[str, list[float]] = {}
        self.register_model("model", self.model, optimizer, scheduler)

    # -- training ------------------------------------------------------------------------------

    @property
    def checkpoint_path(self) -> str:
        """Where the last checkpoint of this run lives."""
        return os.path.join(self.output_dir, "checkpoints", CHECKPOINT_NAME)

    def run(  # type: ignore[override]
        self,
        max_epoch: int,
        eval_freq: int = 0,
        checkpoint_freq: int = 1,
        print_freq: int = 10,
        resume: bool = False,
    ) -> dict[str, Any]:
        """Trains for ``max_epoch`` epochs, evaluates, writes ``metrics.json``.

        In a distributed job every process calls this; rank 0 evaluates, writes the checkpoints
        and ``metrics.json``, and the others return an empty dict.

        Args:
            max_epoch: total number of epochs (counting those of a resumed run).
            eval_freq: evaluate every N epochs as well as after the last (0: only after the last).
            checkpoint_freq: write the checkpoint every N epochs (and always after the last).
            print_freq: log the running losses every N iterations.
            resume: continue from ``checkpoint_path`` when it exists.

        Returns:
            The content of ``metrics.json`` (``{}`` on ranks other than 0).
        """
        main = self.dist.is_main
        if main:
            os.makedirs(self.output_dir, exist_ok=True)
        start_epoch = self._resume() if resume else 0
        self.max_epoch = max_epoch
        self.writer = SummaryWriter(log_dir=os.path.join(self.output_dir, "tensorboard")) if main else None
        try:
            started = time.time()
            for self.epoch in range(start_epoch, max_epoch):
                record = {"epoch": self.epoch + 1, **self.train_epoch(print_freq)}
                last = self.epoch + 1 == max_epoch
                if last or (eval_freq > 0 and (self.epoch + 1) % eval_freq == 0):
                    record["test"] = self.evaluate_on_main()
                self.history.append(record)
                if last or (self.epoch + 1) % max(checkpoint_freq, 1) == 0:
                    self.save_checkpoint(self.epoch + 1)
            if start_epoch >= max_epoch:
                logger.info("run already complete at epoch %d; evaluating only", start_epoch)
                self.epoch = max_epoch - 1
                results = self.evaluate_on_main()
            elif "test" in self.history[-1]:
                results = self.history[-1]["test"]
            else:
                results = self.evaluate_on_main()
            logger.info("training took %.1f s", time.time() - started)
        finally:
            if self.writer is not None:
                self.writer.close()
            self.writer = None
        if not main:
            return {}
        return self.write_metrics(results, max_epoch)

    def evaluate_on_main(self) -> dict[str, dict[str, float]]:
        """:meth:`evaluate` on rank 0 while the other processes wait; ``{}`` on those."""
        results = self.evaluate() if self.dist.is_main else {}
        barrier(self.dist)
        return results

    def train_epoch(self, print_freq: int = 10) -> dict[str, float]:
        """One epoch over the training loader; returns the mean of each logged term and the lr."""
        self.model.train()
        sampler = getattr(self.train_loader, "sampler", None)
        if callable(getattr(sampler, "set_epoch", None)):
            sampler.set_epoch(self.epoch)
        sums: dict[str, float] = defaultdict(float)
        num_batches = len(self.train_loader)
        lr = self.optimizer.param_groups[-1]["lr"]
        bar = tqdm(
            self.train_loader, total=num_batches, desc=f"epoch {self.epoch + 1}/{self.max_epoch}",
            leave=False, dynamic_ncols=True, disable=not self.progress,
        )
        for self.batch_idx, data in enumerate(bar):
            terms = self.forward_backward(data)
            terms = mean_over_processes(terms, self.dist, self.device, check_keys=self.batch_idx == 0)
            for name, value in terms.items():
                if not math.isfinite(value):
                    raise FloatingPointError(
                        f"loss term '{name}' is {value} at epoch {self.epoch + 1}, "
                        f"iteration {self.batch_idx + 1}"
                    )
                sums[name] += value
            step = self.epoch * num_batches + self.batch_idx
            if self.writer is not None:
                for name, value in terms.items():
                    self.writer.add_scalar(f"Train/{name}", value, step)
                self.writer.add_scalar("Train/lr", lr, step)
            bar.set_postfix({k: f"{v:.3f}" for k, v in terms.items()})
            if (self.batch_idx + 1) % max(print_freq, 1) == 0:
                logger.info(
                    "epoch %d/%d iter %d/%d %s lr %.2e", self.epoch + 1, self.max_epoch,
                    self.batch_idx + 1, num_batches,
                    " ".join(f"{k} {v:.4f}" for k, v in terms.items()), lr,
                )
        self.scheduler.step()
        means = {name: total / max(num_batches, 1) for name, total in sums.items()}
        logger.info(
            "epoch %d/%d done: %s", self.epoch + 1, self.max_epoch,
            " ".join(f"{k} {v:.4f}" for k, v in means.items()),
        )
        return {**means, "lr": lr}

    def to_device(self, data: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and identity labels of a training batch, on the engine's device."""
        images = self.prepare_images(data["img"].to(self.device, non_blocking=True))
        return images, data["pid"].to(self.device)

    # -- the shared step helpers ------------------------------------------------------------------

    def prepare_images(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` in the engine's memory format (channels_last when switched on)."""
        if self.channels_last:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    def autocast(self) -> contextlib.AbstractContextManager:
        """The mixed-precision context of the forward passes (a no-op when ``amp`` is off)."""
        return autocast_context(self.device, self.amp)

    def float32(self, output: Any) -> Any:
        """A forward output with its floating tensors in float32 (see :func:`to_float32`), for
        the losses; returned as is when ``amp`` is off."""
        return output if self.amp == "off" else to_float32(output)

    def optimise(self, terms: dict[str, torch.Tensor]) -> dict[str, float]:
        """One optimiser step on ``L = sum_k weights[k] * terms[k]`` (``self.weights``, set by
        the subclass); returns the terms and the total ``loss`` as floats, for the log."""
        loss = combine(terms, self.weights)
        self.backward_step(loss)
        logged = as_floats(terms)
        logged["loss"] = float(loss.detach())
        return logged

    def backward_step(self, loss: torch.Tensor) -> None:
        """Zeroes the gradients, back-propagates ``loss`` (scaled for fp16), averages the
        gradients over the processes, steps the optimiser (skipped by the scaler on an fp16
        overflow) and averages the buffers over the processes."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        all_reduce_gradients(self.model.parameters(), self.dist)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        average_buffers(self.model, self.dist)

    # -- checkpoints ----------------------------------------------------------------------------

    def save_checkpoint(self, epoch: int) -> None:
        """Writes the resumable state after ``epoch`` epochs (rank 0 writes; every process must
        call this, as it gathers every process's RNG state)."""
        rng = gather_objects(capture_rng_state(), self.dist)
        if not self.dist.is_main:
            return
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": epoch,
            "history": self.history,
            "rng": rng[0],
            "config": self.config,
        }
        if self.dist.is_distributed:
            state["rng_per_process"] = rng
        if self.scaler.is_enabled():
            state["scaler"] = self.scaler.state_dict()
        save_checkpoint(state, self.checkpoint_path)

    def save_model(self, epoch: int, rank1: float, save_dir: str, is_best: bool = False) -> None:
        """torchreid's hook, routed to our atomic checkpoint."""
        self.save_checkpoint(epoch + 1)

    def _resume(self) -> int:
        if not os.path.isfile(self.checkpoint_path):
            logger.warning("--resume: no checkpoint at %s, starting from scratch", self.checkpoint_path)
            return 0
        state = load_checkpoint(self.checkpoint_path, map_location=self.device)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.history = list(state.get("history", []))
        if self.scaler.is_enabled() and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self._restore_rng(state)
        logger.info("resumed from %s after epoch %d", self.checkpoint_path, state["epoch"])
        return int(state["epoch"])

    def _restore_rng(self, state: dict[str, Any]) -> None:
        """Each process's saved RNG state; with another number of processes, rank 0's state
        offset by the rank (the run goes on, but not as an uninterrupted one would)."""
        per_process = state.get("rng_per_process")
        world, rank = self.dist.world_size, self.dist.rank
        if per_process is not None and len(per_process) == world:
            restore_rng_state(per_process[rank])
            return
        restore_rng_state(state["rng"])
        if per_process is not None or world > 1:
            saved = len(per_process) if per_process is not None else 1
            logger.warning(
                "checkpoint holds the RNG state of %d process(es), this run has %d: random "
                "streams restart from rank 0's saved state offset by the rank", saved, world,
            )
            if rank > 0:
                seed = int(torch.randint(2**31 - 1, (1,))) + rank
                random.seed(seed)
                np.random.seed(seed)
                torch.manual_seed(seed)

    # -- evaluation ------------------------------------------------------------------------------

    def extract_features(self, input: torch.Tensor) -> torch.Tensor:
        return self.model(input)

    @torch.no_grad()
    def evaluate(self) -> dict[str, dict[str, float]]:
        """Evaluates on every target; returns ``{target: {rank1, ..., mAP, mINP}}``."""
        was_training = self.model.training
        self.model.eval()
        results = {}
        try:
            for name, loaders in self.test_loader.items():
                query = extract_dataset_features(
                    self.model, loaders["query"], self.device, f"{name} query", self.progress,
                    amp=self.amp, channels_last=self.channels_last,
                )
                gallery = extract_dataset_features(
                    self.model, loaders["gallery"], self.device, f"{name} gallery", self.progress,
                    amp=self.amp, channels_last=self.channels_last,
                )
                scores = self.score(query, gallery)
                cmc = getattr(scores, "cmc", None)
                if cmc is not None:
                    self.cmc_curves[name] = [float(x) for x in cmc]
                results[name] = {key: float(value) for key, value in scores.items()}
                logger.info(
                    "%s: %s", name, " ".join(f"{k} {v:.1%}" for k, v in results[name].items())
                )
                if self.writer is not None:
                    for key, value in results[name].items():
                        self.writer.add_scalar(f"Test/{name}/{key}", value, self.epoch + 1)
        finally:
            self.model.train(was_training)
        return results

    def score(self, query: Any, gallery: Any) -> dict[str, float]:
        """Ranking metrics of query against gallery features (subclasses may change the distance)."""
        opts = self.eval_options
        distmat = distance_matrix(query.features, gallery.features, opts.dist_metric, opts.normalize_feature)
        if opts.rerank:
            from reid.metrics import re_ranking

            q_q = distance_matrix(query.features, query.features, opts.dist_metric, opts.normalize_feature)
            g_g = distance_matrix(gallery.features, gallery.features, opts.dist_metric, opts.normalize_feature)
            distmat = re_ranking(distmat, q_q, g_g)
        return ranking_metrics(distmat, query, gallery, opts.ranks, opts.use_metric_cuhk03)

    def write_metrics(self, results: dict[str, dict[str, float]], epoch: int) -> dict[str, Any]:
        """Writes ``metrics.json`` (the first target's metrics at top level, all targets, their
        CMC curves, the history of every logged term) and the CMC plot ``cmc.png`` beside it."""
        first = next(iter(results.values()), {})
        content = {
            **first,
            "epoch": epoch,
            "targets": results,
            "cmc": dict(self.cmc_curves),
            "history": self.history,
            "config": self.config,
        }
        path = os.path.join(self.output_dir, METRICS_NAME)
        write_json(path, content)
        logger.info("metrics written to %s", path)
        self.plot_cmc(os.path.join(self.output_dir, CMC_PLOT_NAME))
        return content

    def plot_cmc(self, path: str) -> str | None:
        """Plots the last evaluation's CMC curves to ``path`` (None when nothing was evaluated)."""
        if not self.cmc_curves:
            return None
        from reid.vis.curves import plot_cmc

        return plot_cmc(self.cmc_curves, path, title=f"CMC: {os.path.basename(os.path.normpath(self.output_dir))}")

