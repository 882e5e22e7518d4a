"""Training hooks: the cross-cutting work of :meth:`ReidEngine.run`, one small object per job.

In the style of fast-reid's trainer hooks: the engine owns the loop and, at fixed points, calls
the same method on every hook in the order the hooks were given. (Not to be confused with
PyTorch's module hooks of ``reid/explain/hooks.py``.) The events, in the order ``run`` calls them:

- ``before_train()``: once, after ``--resume`` restored the state, before the first epoch;
- ``before_epoch()`` and ``after_epoch(record)``: around each epoch; ``record`` is the epoch's
  entry of ``engine.history`` (already appended), to which a hook may add (the evaluation);
- ``before_step()`` and ``after_step(terms)``: around each iteration; ``terms`` are the step's
  logged floats, averaged over the processes and checked finite;
- ``before_evaluate()`` and ``after_evaluate(results)``: around each evaluation of the run
  (``results`` is ``{}`` on ranks other than 0);
- ``after_train()``: once, after the last epoch, on success only;
- ``close()``: always, last, also when the run fails.

:meth:`ReidEngine.default_hooks` gives, in this order (it matters):
:class:`EvaluationHook` (evaluates and adds ``test`` to the epoch's record), :class:`CheckpointHook`
(saves the history with that record, and the RNG state after the test loaders' draws), then on
rank 0 only :class:`TensorBoardHook` (closes its writer before the files below are written),
:class:`MetricsHook` (``metrics.json``) and :class:`CMCPlotHook` (``cmc.png``).

Checkpoint first, then evaluation: in an epoch where both are due, :class:`CheckpointHook` writes
the checkpoint in ``before_evaluate``, marked ``evaluation_pending``, so that a failed or killed
evaluation loses no training; after the evaluation it writes it again, now with the results in its
history and the RNG state after the evaluation (the checkpoint an uninterrupted run ends with). A
run resumed from a checkpoint marked ``evaluation_pending`` first evaluates that epoch
(:meth:`EvaluationHook.evaluate_pending`: the same random draws as the interrupted evaluation, so
the resumed run matches an uninterrupted one), then rewrites the checkpoint and goes on.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from torch.utils.tensorboard import SummaryWriter

from reid.io import names_file, write_json

from .checkpoint import save_training_state
from .interfaces import HookedRun

logger = logging.getLogger(__name__)

__all__ = [
    "CMCPlotHook", "CMC_PLOT_NAME", "CheckpointHook", "EvaluationHook", "Hook", "METRICS_NAME",
    "MetricsHook", "TensorBoardHook", "metrics_content",
]

METRICS_NAME = "metrics.json"
CMC_PLOT_NAME = "cmc.png"


class Hook:
    """Base class: every event is a no-op. ``engine`` is set by the engine before ``before_train``."""

    engine: HookedRun

    def before_train(self) -> None:
        """Once, before the first epoch of the run (after resuming)."""

    def before_epoch(self) -> None:
        """Before each epoch (``engine.epoch`` is the 0-based epoch about to run)."""

    def before_step(self) -> None:
        """Before each iteration (``engine.batch_idx`` is its 0-based index in the epoch)."""

    def after_step(self, terms: dict[str, float]) -> None:
        """After each iteration, with its logged terms."""

    def after_epoch(self, record: dict[str, Any]) -> None:
        """After each epoch, with its history entry (which a hook may extend)."""

    def before_evaluate(self) -> None:
        """Before each evaluation of the run (``engine.epoch + 1`` is the epoch evaluated)."""

    def after_evaluate(self, results: dict[str, dict[str, float]]) -> None:
        """After each evaluation of the run, with ``{target: {rank1, ..., mAP, mINP}}``."""

    def after_train(self) -> None:
        """Once, after the last epoch (not when the run fails)."""

    def close(self) -> None:
        """Always, last: release what the hook holds (also when the run fails)."""


class EvaluationHook(Hook):
    """Evaluates every ``period`` epochs (0: only at the end) and after the last epoch, storing
    the results under ``test`` in the epoch's record; a run resumed already complete evaluates
    once in ``after_train``. A run resumed from a checkpoint written before an evaluation that did
    not complete (``engine.evaluation_pending``) evaluates that epoch first."""

    def __init__(self, period: int = 0) -> None:
        self.period = period

    def due(self, epoch: int) -> bool:
        """Whether the run evaluates after ``epoch`` (1-based) epochs."""
        return epoch == self.engine.max_epoch or (self.period > 0 and epoch % self.period == 0)

    def before_epoch(self) -> None:
        if getattr(self.engine, "evaluation_pending", False):
            self.evaluate_pending()

    def after_epoch(self, record: dict[str, Any]) -> None:
        if self.due(self.engine.epoch + 1):
            record["test"] = self.engine.evaluate_on_main()

    def after_train(self) -> None:
        engine = self.engine
        if getattr(engine, "evaluation_pending", False):
            self.evaluate_pending()
            return
        if engine.results is not None:
            return
        if engine.start_epoch >= engine.max_epoch:
            logger.info("run already complete at epoch %d; evaluating only", engine.start_epoch)
            engine.epoch = engine.max_epoch - 1
        engine.evaluate_on_main()

    def evaluate_pending(self) -> None:
        """Evaluates the epoch of the resumed checkpoint, whose evaluation did not complete, and
        stores the results in its record (the last of the history)."""
        engine = self.engine
        record = engine.history[-1]
        logger.info(
            "the evaluation after epoch %d did not complete (its checkpoint was written before "
            "it): evaluating it now", record["epoch"],
        )
        current, engine.epoch = engine.epoch, record["epoch"] - 1
        try:
            record["test"] = engine.evaluate_on_main()
        finally:
            engine.epoch = current
        engine.evaluation_pending = False


class CheckpointHook(Hook):
    """Writes the resumable state (atomically, see :func:`save_training_state`) every
    ``period`` epochs and after the last; runs on every process (it gathers their RNG states).

    In an epoch that also evaluates, the checkpoint is written first, before the evaluation
    (``before_evaluate``, marked ``evaluation_pending``), and again after it (``after_epoch``),
    with the results in the history. After a resumed run evaluated its checkpoint's pending
    evaluation, the checkpoint is rewritten with the results.
    """

    def __init__(self, period: int = 1) -> None:
        self.period = max(period, 1)
        self.rewrite = False  # the checkpoint on disk waits for an evaluation of this run

    def due(self, epoch: int) -> bool:
        """Whether the run writes a checkpoint after ``epoch`` (1-based) epochs."""
        return epoch == self.engine.max_epoch or epoch % self.period == 0

    def before_train(self) -> None:
        self.rewrite = getattr(self.engine, "evaluation_pending", False)

    def before_epoch(self) -> None:
        self.rewrite_evaluated()

    def before_evaluate(self) -> None:
        engine = self.engine
        epoch = engine.epoch + 1
        just_trained = bool(engine.history) and engine.history[-1]["epoch"] == epoch
        if self.due(epoch) and just_trained and engine.saved_epoch != epoch:
            save_training_state(engine, epoch, evaluation_pending=True)

    def after_epoch(self, record: dict[str, Any]) -> None:
        epoch = self.engine.epoch + 1
        if self.due(epoch):
            save_training_state(self.engine, epoch)

    def after_train(self) -> None:
        self.rewrite_evaluated()

    def rewrite_evaluated(self) -> None:
        """Rewrites the resumed checkpoint once its pending evaluation is done."""
        if self.rewrite and not self.engine.evaluation_pending:
            self.rewrite = False
            save_training_state(self.engine, self.engine.saved_epoch)


class TensorBoardHook(Hook):
    """``Train/<term>`` and ``Train/lr`` at every iteration, ``Test/<target>/<metric>`` at every
    evaluation, in ``<output_dir>/tensorboard`` (rank 0 only)."""

    def __init__(self) -> None:
        self.writer: SummaryWriter | None = None
        self.lr = 0.0

    def before_train(self) -> None:
        self.folder = os.path.join(self.engine.output_dir, "tensorboard")
        with names_file(self.folder):
            self.writer = SummaryWriter(log_dir=self.folder)

    def before_epoch(self) -> None:
        self.lr = self.engine.optimizer.param_groups[-1]["lr"]  # the epoch's lr, as in the history

    def after_step(self, terms: dict[str, float]) -> None:
        engine = self.engine
        step = engine.epoch * engine.num_batches + engine.batch_idx
        with names_file(self.folder):  # the writer's thread raises a failed write here
            for name, value in terms.items():
                self.writer.add_scalar(f"Train/{name}", value, step)
            self.writer.add_scalar("Train/lr", self.lr, step)

    def after_evaluate(self, results: dict[str, dict[str, float]]) -> None:
        with names_file(self.folder):
            for name, metrics in results.items():
                for key, value in metrics.items():
                    self.writer.add_scalar(f"Test/{name}/{key}", value, self.engine.epoch + 1)

    def after_train(self) -> None:
        self.close()

    def close(self) -> None:
        writer, self.writer = self.writer, None
        if writer is not None:
            with names_file(self.folder):
                writer.close()


def metrics_content(engine: HookedRun) -> dict[str, Any]:
    """What ``metrics.json`` holds after ``engine.run``: the first target's metrics of the last
    evaluation at top level, the epoch count, all targets, their CMC curves, the history of every
    logged term, the seconds this call of ``run`` spent in training steps (``train_seconds``: no
    evaluation or checkpoint writing; a resumed run counts its own epochs only) and the config."""
    results = engine.results or {}
    return {
        **next(iter(results.values()), {}),
        "epoch": engine.max_epoch,
        "train_seconds": getattr(engine, "train_seconds", 0.0),
        "targets": results,
        "cmc": dict(engine.cmc_curves),
        "history": engine.history,
        "config": engine.config,
    }


class MetricsHook(Hook):
    """Writes ``<output_dir>/metrics.json`` (:func:`metrics_content`) at the end."""

    def after_train(self) -> None:
        path = os.path.join(self.engine.output_dir, METRICS_NAME)
        write_json(path, metrics_content(self.engine))
        logger.info("metrics written to %s", path)


class CMCPlotHook(Hook):
    """Plots the last evaluation's CMC curves to ``<output_dir>/cmc.png`` at the end."""

    def after_train(self) -> None:
        self.engine.plot_cmc(os.path.join(self.engine.output_dir, CMC_PLOT_NAME))
