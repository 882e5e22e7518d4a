"""A thin torchreid ``Engine`` subclass: training loop, evaluation, checkpoints, metrics.json.

Subclasses fill in ``forward_backward(data) -> dict`` (torchreid's contract). What this class adds
to torchreid's ``Engine.run``: ``logging`` instead of ``print``, a device instead of ``.cuda()``,
atomic checkpoints that load with ``weights_only=True`` and resume bit-for-bit, our fast evaluator
with mINP, and a ``metrics.json`` with the history of every loss term.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from torchreid.reid.engine import Engine
from tqdm import tqdm

from .checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from .evaluation import distance_matrix, extract_features, ranking_metrics

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
    ) -> None:
        super().__init__(datamanager, use_gpu=device.type == "cuda")
        self.device = device
        self.model = model.to(device)
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

        Args:
            max_epoch: total number of epochs (counting those of a resumed run).
            eval_freq: evaluate every N epochs as well as after the last (0: only after the last).
            checkpoint_freq: write the checkpoint every N epochs (and always after the last).
            print_freq: log the running losses every N iterations.
            resume: continue from ``checkpoint_path`` when it exists.

        Returns:
            The content of ``metrics.json``.
        """
        os.makedirs(self.output_dir, exist_ok=True)
        start_epoch = self._resume() if resume else 0
        self.max_epoch = max_epoch
        self.writer = SummaryWriter(log_dir=os.path.join(self.output_dir, "tensorboard"))
        try:
            started = time.time()
            for self.epoch in range(start_epoch, max_epoch):
                record = {"epoch": self.epoch + 1, **self.train_epoch(print_freq)}
                last = self.epoch + 1 == max_epoch
                if last or (eval_freq > 0 and (self.epoch + 1) % eval_freq == 0):
                    record["test"] = self.evaluate()
                self.history.append(record)
                if last or (self.epoch + 1) % max(checkpoint_freq, 1) == 0:
                    self.save_checkpoint(self.epoch + 1)
            if start_epoch >= max_epoch:
                logger.info("run already complete at epoch %d; evaluating only", start_epoch)
                self.epoch = max_epoch - 1
                results = self.evaluate()
            else:
                results = self.history[-1].get("test") or self.evaluate()
            logger.info("training took %.1f s", time.time() - started)
        finally:
            self.writer.close()
            self.writer = None
        return self.write_metrics(results, max_epoch)

    def train_epoch(self, print_freq: int = 10) -> dict[str, float]:
        """One epoch over the training loader; returns the mean of each logged term and the lr."""
        self.model.train()
        sums: dict[str, float] = defaultdict(float)
        num_batches = len(self.train_loader)
        lr = self.optimizer.param_groups[-1]["lr"]
        bar = tqdm(
            self.train_loader, total=num_batches, desc=f"epoch {self.epoch + 1}/{self.max_epoch}",
            leave=False, dynamic_ncols=True, disable=not self.progress,
        )
        for self.batch_idx, data in enumerate(bar):
            terms = self.forward_backward(data)
            for name, value in terms.items():
                if not math.isfinite(value):
                    raise FloatingPointError(
                        f"loss term '{name}' is {value} at epoch {self.epoch + 1}, "
                        f"iteration {self.batch_idx + 1}"
                    )
                sums[name] += value
            step = self.epoch * num_batches + self.batch_idx
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
        return data["img"].to(self.device, non_blocking=True), data["pid"].to(self.device)

    # -- checkpoints ----------------------------------------------------------------------------

    def save_checkpoint(self, epoch: int) -> None:
        """Writes the resumable state after ``epoch`` epochs."""
        save_checkpoint(
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "epoch": epoch,
                "history": self.history,
                "rng": capture_rng_state(),
                "config": self.config,
            },
            self.checkpoint_path,
        )

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
        restore_rng_state(state["rng"])
        logger.info("resumed from %s after epoch %d", self.checkpoint_path, state["epoch"])
        return int(state["epoch"])

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
                query = extract_features(
                    self.model, loaders["query"], self.device, f"{name} query", self.progress
                )
                gallery = extract_features(
                    self.model, loaders["gallery"], self.device, f"{name} gallery", self.progress
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


def write_json(path: str, content: dict[str, Any]) -> None:
    """Writes ``content`` as indented JSON atomically."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(content, handle, indent=2)
    os.replace(tmp, path)
