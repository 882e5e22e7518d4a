"""A thin torchreid ``Engine`` subclass: the training loop, the step plumbing and evaluation.

Subclasses fill in ``forward_backward(data) -> dict`` (torchreid's contract). :meth:`ReidEngine.run`
replaces torchreid's ``Engine.run``, whose ``train()`` and ``test()`` raise naming ``run()`` and
``evaluate()`` (``reid/engine/torchreid_compat.py``): ``logging`` instead of ``print``, a device
instead of ``.cuda()``, our fast evaluator with mINP. Checkpoints, the evaluation schedule,
TensorBoard, ``metrics.json`` and the CMC plot are hooks (``reid/engine/hooks.py``). Every engine's
step shares three switches through :meth:`ReidEngine.autocast`, :meth:`ReidEngine.float32` and
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
import logging
import math
import os
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from reid.losses import as_floats, combine

from .amp import autocast_context, check_amp, to_float32
from .checkpoint import capture_rng_state, checkpoint_path, remove_orphan_files, restore_rng_state
from .checkpoint import ReadCheckpoint, restore_training_state, save_training_state
from .determinism import deterministic_algorithms
from .distributed import DistributedContext, all_reduce_gradients, average_buffers, barrier
from .distributed import broadcast_module_state, mean_over_processes
from .evaluation import EvalOptions, FeatureFiles, evaluate_targets, rank_features, takes_out
from .hooks import CheckpointHook, CMCPlotHook, EvaluationHook, Hook, MetricsHook, TensorBoardHook
from .hooks import metrics_content
from .torchreid_compat import TorchreidEngine, check_run_arguments

logger = logging.getLogger(__name__)

__all__ = ["EvalOptions", "ReidEngine", "TrainingInterrupted", "to_float32"]

#: The signals that stop training at the end of the current step with a resumable checkpoint.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(BaseException):
    """Training stopped on a signal after writing a resumable checkpoint (like KeyboardInterrupt,
    not an ``Exception``: nothing on the way out mistakes it for an error to handle).

    Attributes:
        signum: the signal (``SIGINT`` or ``SIGTERM``); the commands exit with ``128 + signum``.
    """

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum


class ReidEngine(TorchreidEngine):
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
        deterministic: on the CPU, :meth:`run` uses torch's deterministic algorithms, so the same
            seed gives the same run (``TRAIN.DETERMINISTIC``; see
            :func:`reid.engine.determinism.deterministic_algorithms`).
        dist: this process's place in a ``torchrun`` job (default: a single process).

    Raises:
        RuntimeError: ``amp`` cannot run on ``device`` (fp16 off CUDA).
    """

    # Queries per chunk of the test distance matrix (None: the model's automatic size); AVSL's
    # engine sets AVSL.EVAL_CHUNK_SIZE here.
    chunk_size: int | None = None

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
        deterministic: bool = True,
        dist: DistributedContext | None = None,
    ) -> None:
        check_amp(amp, device)
        super().__init__(datamanager, use_gpu=device.type == "cuda")
        self.device = device
        self.amp = amp
        self.channels_last = channels_last
        self.deterministic = deterministic
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
        # reid test --save-features / --features: where evaluate() writes or reads the features
        self.feature_files: FeatureFiles | None = None
        self.hooks: list[Hook] = []  # extra hooks of run(), after the default ones
        self.results: dict[str, dict[str, float]] | None = None  # the run's last evaluation
        self.start_epoch = self.max_epoch = self.num_batches = self.batch_idx = 0
        self.saved_epoch: int | None = None  # the epoch of the checkpoint on disk, once known
        self.evaluation_pending = False  # that checkpoint was written before its evaluation
        self._active_hooks: list[Hook] = []
        # interruption (SIGINT/SIGTERM): the signal received, and where a resumed run continues
        self.stop_signal: int | None = None
        self.resume_step = 0  # steps of epoch ``start_epoch`` done before the interruption
        self.resume_progress: dict[str, Any] | None = None  # that epoch's RNG states and sums
        self.epoch_start_rng: dict[str, Any] | None = None
        self.register_model("model", self.model, optimizer, scheduler)

    # -- training ------------------------------------------------------------------------------

    @property
    def checkpoint_path(self) -> str:
        """Where the last checkpoint of this run lives."""
        return checkpoint_path(self.output_dir)

    def register_hooks(self, hooks: Iterable[Hook]) -> None:
        """Adds ``hooks`` to every later :meth:`run`, called after the default ones in this order."""
        self.hooks.extend(hooks)

    def default_hooks(self, eval_freq: int = 0, checkpoint_freq: int = 1) -> list[Hook]:
        """Evaluation schedule and checkpoints; TensorBoard, ``metrics.json`` and the CMC plot on
        rank 0 (in this order, see ``reid/engine/hooks.py``)."""
        hooks: list[Hook] = [EvaluationHook(eval_freq), CheckpointHook(checkpoint_freq)]
        if self.dist.is_main:
            hooks += [TensorBoardHook(), MetricsHook(), CMCPlotHook()]
        return hooks

    def run(  # type: ignore[override]
        self,
        max_epoch: int,
        eval_freq: int = 0,
        checkpoint_freq: int = 1,
        print_freq: int = 10,
        resume: bool = False,
        resume_state: ReadCheckpoint | None = None,
        **torchreid_options: Any,
    ) -> dict[str, Any]:
        """Trains for ``max_epoch`` epochs, evaluates, writes ``metrics.json`` (through the hooks).

        In a distributed job every process calls this; rank 0 evaluates, writes the checkpoints
        and ``metrics.json``, and the others return an empty dict.

        Args:
            max_epoch: total number of epochs (counting those of a resumed run).
            eval_freq: evaluate every N epochs as well as after the last (0: only after the last).
            checkpoint_freq: write the checkpoint every N epochs (and always after the last).
            print_freq: log the running losses every N iterations.
            resume: continue from ``checkpoint_path`` when it exists.
            resume_state: with ``resume``, the checkpoint at ``checkpoint_path`` already read by
                the caller (``reid train --resume`` reads it once to check the config): it is
                restored without reading the file again, unless the file was replaced since
                (:func:`restore_training_state`).
            **torchreid_options: refused with a TypeError that says where each one went.

        Returns:
            The content of ``metrics.json`` (``{}`` on ranks other than 0).
        """
        check_run_arguments(max_epoch, torchreid_options)
        if self.dist.is_main:
            os.makedirs(self.output_dir, exist_ok=True)
            remove_orphan_files(self.output_dir)  # temporary files of a killed run's writes
        self.saved_epoch, self.evaluation_pending = None, False
        self.start_epoch = restore_training_state(self, resume_state) if resume else 0
        self.max_epoch, self.results = max_epoch, None
        self._active_hooks = [*self.default_hooks(eval_freq, checkpoint_freq), *self.hooks]
        for hook in self._active_hooks:
            hook.engine = self
        with deterministic_algorithms(self.deterministic and self.device.type == "cpu"), self.stop_signals():
            try:
                self.call_hooks("before_train")
                started = time.time()
                self.train_seconds = 0.0  # in train_epoch only (no evaluation, no checkpoints)
                for self.epoch in range(self.start_epoch, max_epoch):
                    self.stop_if_asked()
                    self.call_hooks("before_epoch")
                    epoch_started = time.perf_counter()
                    record = {"epoch": self.epoch + 1, **self.train_epoch(print_freq)}
                    self.train_seconds += time.perf_counter() - epoch_started
                    self.history.append(record)
                    self.call_hooks("after_epoch", record)
                logger.info("training took %.1f s", time.time() - started)
                self.call_hooks("after_train")
            finally:
                self.call_hooks("close")
                self._active_hooks = []
        return metrics_content(self) if self.dist.is_main else {}

    @contextlib.contextmanager
    def stop_signals(self):
        """For the duration: SIGINT (Ctrl-C) and SIGTERM (a scheduler's preemption or time limit)
        only record that the run must stop; :meth:`train_epoch` then stops at the end of the
        current step and :meth:`interrupt` writes a resumable checkpoint of that step. A second
        signal (e.g. during that write) is recorded too, so nothing cuts the write short. Only in
        the main thread of a single-process run (a torchrun job keeps the default handlers: its
        processes would have to agree on the step)."""
        if self.dist.is_distributed or threading.current_thread() is not threading.main_thread():
            yield
            return
        self.stop_signal = None

        def record(signum: int, _frame: Any) -> None:
            if self.stop_signal is None:
                self.stop_signal = signum

        previous = {signum: signal.signal(signum, record) for signum in STOP_SIGNALS}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def stop_if_asked(self) -> None:
        """Before epoch ``self.epoch`` starts: when a signal arrived (during the previous epoch's
        evaluation or checkpoint), makes sure the checkpoint holds the epochs done (writes it when
        the checkpoint period skipped the last one) and stops the run."""
        if self.stop_signal is None:
            return
        done = self.epoch
        if done and self.saved_epoch != done:
            save_training_state(self, done)
        self._raise_interrupted(f"after epoch {done}" if done else "before the first step")

    def interrupt(self, sums: dict[str, float]) -> None:
        """Writes the checkpoint of the step just done (the epoch's progress: its step, its RNG
        state at the start, the sums of its logged terms; every RNG state now) and stops the run
        with :class:`TrainingInterrupted`."""
        step = self.batch_idx + 1
        progress = {"rng_at_epoch_start": self.epoch_start_rng, "sums": dict(sums)}
        save_training_state(self, self.epoch, step=step, epoch_progress=progress)
        self._raise_interrupted(f"at epoch {self.epoch + 1}/{self.max_epoch}, step {step}/{self.num_batches}")

    def _raise_interrupted(self, where: str) -> None:
        name = signal.Signals(self.stop_signal).name
        message = (
            f"interrupted by {name} {where}: the checkpoint {self.checkpoint_path} holds this point of the run; "
            f"continue it with reid train ... --resume"
        )
        logger.warning(message)
        raise TrainingInterrupted(self.stop_signal, message)

    def call_hooks(self, event: str, *args: Any) -> None:
        """Calls ``event`` on the hooks of the running :meth:`run`, in order."""
        for hook in self._active_hooks:
            getattr(hook, event)(*args)

    def train_epoch(self, print_freq: int = 10) -> dict[str, float]:
        """One epoch over the training loader; returns the mean of each logged term and the lr.

        A run resumed from a checkpoint written inside this epoch (:meth:`interrupt`) continues
        at the next step, as the uninterrupted run would have: the RNG state of the epoch's start
        is restored, the loader is replayed (its batches loaded and dropped, which consumes the
        random draws of sampling and augmentation as the first pass did) up to the step, then
        the RNG state of the interruption and the epoch's sums are restored."""
        self.model.train()
        resume_step, progress = self.resume_step, self.resume_progress
        self.resume_step, self.resume_progress = 0, None
        if resume_step:
            restore_rng_state(progress["rng_at_epoch_start"])
        self.epoch_start_rng = capture_rng_state()
        sampler = getattr(self.train_loader, "sampler", None)
        if callable(getattr(sampler, "set_epoch", None)):
            sampler.set_epoch(self.epoch)
        sums: dict[str, float] = defaultdict(float, progress["sums"] if resume_step else {})
        self.num_batches = num_batches = len(self.train_loader)
        lr = self.optimizer.param_groups[-1]["lr"]
        batches = iter(self.train_loader)
        if resume_step:
            for _ in range(resume_step):
                next(batches)
            restore_rng_state(progress["rng"])
            logger.info("epoch %d: continuing after step %d of %d", self.epoch + 1, resume_step, num_batches)
        bar = tqdm(
            batches, total=num_batches, initial=resume_step, desc=f"epoch {self.epoch + 1}/{self.max_epoch}",
            leave=False, dynamic_ncols=True, disable=not self.progress,
        )
        steps = resume_step  # the steps this epoch ran (torchreid's identity sampler may yield fewer
        for self.batch_idx, data in enumerate(bar, start=resume_step):  # batches than its len says)
            steps = self.batch_idx + 1
            self.call_hooks("before_step")
            terms = self.forward_backward(data)
            terms = mean_over_processes(terms, self.dist, self.device, check_keys=self.batch_idx == 0)
            for name, value in terms.items():
                if not math.isfinite(value):
                    raise FloatingPointError(
                        f"loss term '{name}' is {value} at epoch {self.epoch + 1}, "
                        f"iteration {self.batch_idx + 1}"
                    )
                sums[name] += value
            self.call_hooks("after_step", terms)
            bar.set_postfix({k: f"{v:.3f}" for k, v in terms.items()})
            if (self.batch_idx + 1) % max(print_freq, 1) == 0:
                logger.info(
                    "epoch %d/%d iter %d/%d %s lr %.2e", self.epoch + 1, self.max_epoch,
                    self.batch_idx + 1, num_batches,
                    " ".join(f"{k} {v:.4f}" for k, v in terms.items()), lr,
                )
            if self.stop_signal is not None:
                bar.close()
                self.interrupt(sums)
        self.scheduler.step()
        means = {name: total / max(steps, 1) for name, total in sums.items()}
        logger.info(
            "epoch %d/%d done: %s", self.epoch + 1, self.max_epoch,
            " ".join(f"{k} {v:.4f}" for k, v in means.items()),
        )
        return {**means, "lr": lr}

    # -- the shared step helpers ------------------------------------------------------------------

    def to_device(self, data: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and identity labels of a training batch, on the engine's device."""
        images = self.prepare_images(data["img"].to(self.device, non_blocking=True))
        return images, data["pid"].to(self.device)

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
        the subclass); returns the terms and the total ``loss`` as floats, for the log.

        Raises:
            FloatingPointError: ``L`` is NaN or infinite (on any process), before the backward
                pass: the weights stay those before this step (:meth:`check_finite_loss`).
        """
        loss = combine(terms, self.weights)
        logged = as_floats(terms)
        logged["loss"] = float(loss.detach())
        self.check_finite_loss(logged)
        self.backward_step(loss)
        return logged

    def check_finite_loss(self, terms: dict[str, float]) -> None:
        """Stops the run in the step where the loss stops being finite, before the step changes
        the weights, with a message (also logged) naming the epoch, the step and every term.

        In a distributed job every process learns whether the loss is finite on all of them
        (one scalar all-reduce), so that they stop together.

        Raises:
            FloatingPointError: ``terms["loss"]`` is NaN or infinite here or on another process.
        """
        total = terms["loss"]
        if self.dist.is_distributed:
            total = mean_over_processes({"loss": total}, self.dist, self.device, check_keys=False)["loss"]
        if math.isfinite(total):
            return
        shown = ", ".join(f"{name} {value:.4g}" for name, value in terms.items())
        elsewhere = " (finite on this process, not on another)" if math.isfinite(terms["loss"]) else ""
        message = (
            f"loss is not finite at epoch {self.epoch + 1}/{self.max_epoch}, step "
            f"{self.batch_idx + 1}/{self.num_batches}: {shown}{elsewhere}; the run stops before "
            f"this step changes the weights, and {self.checkpoint_status()} (lower the learning "
            f"rate, or look for broken images or labels)"
        )
        logger.error(message)
        raise FloatingPointError(message)

    def checkpoint_status(self) -> str:
        """Where this run's last checkpoint stands, for error messages."""
        if self.saved_epoch is None:
            return f"this run wrote no checkpoint ({self.checkpoint_path})"
        return f"the checkpoint {self.checkpoint_path} holds epoch {self.saved_epoch}, unchanged"

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

    # -- evaluation ------------------------------------------------------------------------------

    def evaluate_on_main(self) -> dict[str, dict[str, float]]:
        """:meth:`evaluate` on rank 0 while the other processes wait (``{}`` on those), after the
        hooks' ``before_evaluate`` (which writes a due checkpoint first); the hooks'
        ``after_evaluate`` sees the results, which become :attr:`results`. A failed evaluation is
        logged in one line (the epoch, the target, the error, the checkpoint) and raised again."""
        self.call_hooks("before_evaluate")
        try:
            results = self.evaluate() if self.dist.is_main else {}
        except Exception as exc:
            self.log_failed_evaluation(exc)
            raise
        self.call_hooks("after_evaluate", results)
        barrier(self.dist)
        self.results = results
        return results

    def log_failed_evaluation(self, exc: Exception) -> None:
        """One error line for an evaluation that raised ``exc``: where, why, and what to do."""
        epoch = self.epoch + 1
        where = " ".join(getattr(exc, "__notes__", []))  # evaluate_targets names the target
        if self.saved_epoch == epoch:
            then = (
                f"the checkpoint {self.checkpoint_path} holds epoch {epoch}, written before this "
                f"evaluation: fix the cause and resume the run (reid train ... --resume), which "
                f"evaluates epoch {epoch} first"
            )
        else:
            then = f"{self.checkpoint_status()}: fix the cause and resume the run (reid train ... --resume)"
        logger.error(
            "evaluation after epoch %d failed%s: %s: %s; %s", epoch, f" {where}" if where else "",
            type(exc).__name__, exc, then,
        )

    def evaluate(self) -> dict[str, dict[str, float]]:
        """Evaluates on every target (:func:`evaluate_targets` with :meth:`score`); returns
        ``{target: {rank1, ..., mAP, mINP}}``, keeps each target's CMC curve in :attr:`cmc_curves`."""
        results, curves = evaluate_targets(
            self.model, self.test_loader, self.score, self.device, self.progress, self.amp,
            self.channels_last, self.feature_files, self.score_retrieval,
        )
        self.cmc_curves.update(curves)
        return results

    def distance_matrix(
        self, query: torch.Tensor, gallery: torch.Tensor, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(N, M)`` distances on the CPU between eval features: the model's own
        :meth:`~reid.models.base.ReidModel.pairwise_distance` (``TEST.DIST_METRIC``,
        ``TEST.NORMALIZE_FEATURE``; AVSL's ``d_hat``), computed on the engine's device in chunks of
        :attr:`chunk_size` queries (None: the model's automatic size); written into ``out`` (a CPU
        tensor, returned) when given."""
        opts = self.eval_options
        # written in place where the model's distance takes out= (a model of your own may not)
        into = {"out": out} if out is not None and self.device.type == "cpu" and takes_out(
            self.model.pairwise_distance) else {}
        result = self.model.pairwise_distance(
            query.to(self.device), gallery.to(self.device), opts.dist_metric, opts.normalize_feature,
            chunk_size=self.chunk_size, **into,
        )
        if out is not None and result is not out:
            return out.copy_(result)
        return result.cpu()

    def score_retrieval(self, test: Any) -> dict[str, float]:
        """Ranking and retrieval metrics of a retrieval target's test set, every image against every
        other, with :meth:`distance_matrix` (one matrix for both when it fits ``TEST.MAX_MATRIX_MB``;
        above it, one pass over streamed blocks of rows feeds both)."""
        return rank_features(test, test, self.eval_options, self.distance_matrix, retrieval=True)

    def score(self, query: Any, gallery: Any) -> dict[str, float]:
        """Ranking metrics of query against gallery features with :meth:`distance_matrix`."""
        return rank_features(query, gallery, self.eval_options, self.distance_matrix)

    def plot_cmc(self, path: str) -> str | None:
        """Plots the last evaluation's CMC curves to ``path`` (None when nothing was evaluated)."""
        if not self.cmc_curves:
            return None
        from reid.vis.curves import plot_cmc

        run_name = os.path.basename(os.path.normpath(self.output_dir))
        return plot_cmc(self.cmc_curves, path, title=f"CMC: {run_name}")

