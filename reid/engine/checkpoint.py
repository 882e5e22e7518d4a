"""Checkpoints written atomically and loadable with ``weights_only=True``, and the run's folder.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts only, so it loads under
PyTorch's safe loader (a file that is not one is refused with :class:`CheckpointError`). It
carries the RNG states needed for a resumed run to match an uninterrupted one:
:func:`save_training_state` writes an engine's resumable state (never one holding NaN or inf),
:func:`restore_training_state` reads it back (``--resume``). :func:`prepare_output_dir` refuses
to start a new run over a previous one unless told to continue or replace it, and
:func:`remove_orphan_files` removes what a killed write left behind.
"""

from __future__ import annotations

import io
import logging
import os
import random
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from reid.io import atomic_write, remove_temporary_files
from reid.models.state_files import StateFileError, read_state_file

from .distributed import DistributedContext, gather_objects
from .interfaces import CheckpointedRun

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint_last.pth"
"""The checkpoint of a run: ``<output_dir>/checkpoints/checkpoint_last.pth``."""

RUN_OUTPUTS = (
    # reid train
    "checkpoints", "metrics.json", "cmc.png", "tensorboard", "train.log",
    # reid test
    "test.log", "test_metrics.json", "test_cmc.png",
    # reid explain
    "explain.log", "explanations",
    # reid eval-explanations
    "eval_explanations.log", "explanation_quality.json",
    # reid segment
    "segment.log", "segmentation",
    # reid export (its default --output)
    "export.log", "model.onnx",
)
"""Every file and folder that the commands write into ``OUTPUT_DIR`` (docs/training.md, "Commands
and outputs"; ``reid check-data`` and ``reid weights`` write none there): moved aside together
when a new run replaces the previous one. Anything else in ``OUTPUT_DIR`` stays where it is."""


class ExistingRunError(FileExistsError):
    """``OUTPUT_DIR`` holds a previous run and neither resuming nor overwriting was asked for."""


def checkpoint_path(output_dir: str) -> str:
    """Where the checkpoint of the run in ``output_dir`` lives."""
    return os.path.join(output_dir, "checkpoints", CHECKPOINT_NAME)


def prepare_output_dir(output_dir: str, resume: bool, overwrite: bool, main_process: bool = True) -> str | None:
    """Checks that a new run may write into ``output_dir``, before anything is built or written.

    A folder holding a previous run (its checkpoint) is refused unless the run continues it
    (``resume``) or replaces it (``overwrite``): then the previous run's files (:data:`RUN_OUTPUTS`)
    are moved, whole, into a new folder ``<output_dir>/replaced-<date>-<time>``, so that no stale
    checkpoint, ``metrics.json``, ``cmc.png``, TensorBoard events, log, or output of the other
    commands (``reid test``, ``explain``, ``eval-explanations``, ``segment``, ``export``) made
    with the previous model stays beside the new run's. Other files and folders in
    ``output_dir`` (earlier ``replaced-*`` folders included) are left where they are.

    Args:
        output_dir: the run's ``OUTPUT_DIR``.
        resume: the run continues the previous one (``--resume``).
        overwrite: the run replaces the previous one (``--overwrite``).
        main_process: only the main process moves files (the others only check).

    Returns:
        A line for the log saying what was moved where, or None when nothing was.

    Raises:
        ExistingRunError: a previous run without ``resume`` or ``overwrite``, or both asked for;
            its message is one line that says what to do.
    """
    if resume and overwrite:
        raise ExistingRunError("--resume and --overwrite exclude each other: continue the run or replace it")
    path = checkpoint_path(output_dir)
    if resume or not os.path.isfile(path):
        return None
    if not overwrite:
        raise ExistingRunError(
            f"{output_dir} already holds a run ({path}): add --resume to continue it, or "
            f"--overwrite to start a new one there (the previous run is then moved aside)"
        )
    if not main_process:
        return None
    aside = base = os.path.join(output_dir, time.strftime("replaced-%Y%m%d-%H%M%S"))
    suffix = 1
    while os.path.lexists(aside):  # two replacements within a second
        suffix += 1
        aside = f"{base}-{suffix}"
    os.makedirs(aside)
    moved = []
    for name in RUN_OUTPUTS:
        source = os.path.join(output_dir, name)
        if os.path.lexists(source):
            os.replace(source, os.path.join(aside, name))
            moved.append(name)
    return f"--overwrite: moved the previous run's {', '.join(moved)} to {aside}"


def save_checkpoint(state: dict[str, Any], path: str) -> None:
    """Writes ``state`` to ``path`` atomically (:func:`reid.io.atomic_write`: a temporary file in
    the same folder, then a rename; mode ``0o666`` minus the umask). On an error (a full disk) the
    previous checkpoint is left as it was, no partial file remains, and the error is logged and
    raised again."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)  # serialised in memory: a failed write is then Python's OSError
    with atomic_write(path, binary=True) as handle:  # (with its errno), not torch's zip-writer error
        handle.write(buffer.getbuffer())
    logger.info("checkpoint written to %s", path)


def remove_orphan_files(output_dir: str) -> list[str]:
    """Removes the temporary files that a killed run's atomic writes left in ``output_dir`` and
    its ``checkpoints`` folder (``.tmp-*``, and ``*.json.tmp`` of earlier versions; see
    :func:`reid.io.remove_temporary_files`), and logs them in one line.

    Call it only when no other process writes into ``output_dir`` (at the start of a run).

    Returns:
        The paths removed.
    """
    removed = [*remove_temporary_files(output_dir),
               *remove_temporary_files(os.path.join(output_dir, "checkpoints"))]
    if removed:
        logger.info(
            "removed %d orphan temporary file(s) left by an interrupted write: %s",
            len(removed), ", ".join(removed),
        )
    return removed


class CheckpointError(ValueError):
    """A file that is not a checkpoint of this project: random bytes, a truncated or overwritten
    file, or one holding other objects than the safe loader reads."""


def load_checkpoint(path: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Loads a checkpoint with ``weights_only=True`` (ours, a state dict, or torchreid's
    ``model.pth.tar-N``, whose NumPy rank-1 is allowed): :func:`reid.models.state_files.read_state_file`.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: ``path`` is not a checkpoint of this project (it says so, naming the file,
            instead of torch's advice to load it with ``weights_only=False``, which could run
            code from the file).
    """
    try:
        return read_state_file(path, map_location=map_location)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint not found: {path}") from None
    except StateFileError as exc:
        if exc.holds is not None:
            raise CheckpointError(
                f"{path} is not a checkpoint of this project: it holds a {exc.holds}, not a dict"
            ) from None
        raise CheckpointError(
            f"{path} is not a checkpoint of this project, or it is damaged (truncated or "
            f"overwritten): {exc.reason}"
        ) from None


@dataclass(frozen=True)
class ReadCheckpoint:
    """A checkpoint read once and passed on (``reid train --resume`` reads it to check the config,
    the engine restores it), with what identified the file when it was read.

    Attributes:
        path: the file.
        state: what :func:`load_checkpoint` returned (tensors on the CPU).
        identity: ``(inode, size, modification time in ns)`` of the file, taken before reading it.
    """

    path: str
    state: dict[str, Any]
    identity: tuple[int, int, int]

    def is_current(self) -> bool:
        """Whether ``path`` is still the file that was read: a checkpoint is replaced by a rename
        (:func:`save_checkpoint`), which gives it another inode and modification time. (In a
        ``torchrun`` job whose processes run one command after another, a process may read the
        checkpoint before rank 0 has written the previous command's last one.)"""
        return os.path.isfile(self.path) and _file_identity(self.path) == self.identity


def _file_identity(path: str) -> tuple[int, int, int]:
    info = os.stat(path)
    return info.st_ino, info.st_size, info.st_mtime_ns


def read_checkpoint(path: str) -> ReadCheckpoint:
    """:func:`load_checkpoint` on the CPU, remembering which file was read (see
    :class:`ReadCheckpoint`); the same errors."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    identity = _file_identity(path)  # before reading: a file replaced meanwhile is read again later
    return ReadCheckpoint(path, load_checkpoint(path, map_location="cpu"), identity)


def model_state_from_checkpoint(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The model's state dict from one of our checkpoints or from a bare state dict."""
    state = checkpoint.get("model", checkpoint.get("state_dict", checkpoint))
    return {k.removeprefix("module."): v for k, v in state.items()}


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states in a ``weights_only``-loadable form."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restores what :func:`capture_rng_state` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(
    engine: CheckpointedRun, epoch: int, evaluation_pending: bool = False, step: int = 0,
    epoch_progress: dict[str, Any] | None = None,
) -> None:
    """Writes ``engine``'s resumable state after ``epoch`` epochs to ``engine.checkpoint_path``:
    model, optimiser, scheduler, epoch, history, RNG states, config (and the fp16 loss scaler).

    ``evaluation_pending``: the state is written before the evaluation of ``epoch`` (whose
    results are not in the history yet); a run resumed from it evaluates that epoch first.

    ``step`` > 0: the state is written inside epoch ``epoch + 1`` after that many of its steps
    (an interruption, :meth:`ReidEngine.interrupt`); ``epoch_progress`` is then that epoch's
    progress (the RNG state at its start, ``rng_at_epoch_start``, and the sums of its logged
    terms, ``sums``), from which a resumed run continues at the next step as the uninterrupted
    run would.

    Rank 0 writes; every process must call this, as it gathers every process's RNG state.

    Raises:
        FloatingPointError: a weight, buffer or optimiser state holds NaN or inf; nothing is
            written (every process holds the same model, so every process raises).
    """
    check_finite_state(engine, epoch)
    rng = gather_objects(capture_rng_state(), engine.dist)
    if not engine.dist.is_main:
        engine.saved_epoch = epoch
        return
    state = {
        "model": engine.model.state_dict(),
        "optimizer": engine.optimizer.state_dict(),
        "scheduler": engine.scheduler.state_dict(),
        "epoch": epoch,
        "evaluation_pending": evaluation_pending,
        "history": engine.history,
        "rng": rng[0],
        "config": engine.config,
    }
    if step:
        state["step"] = step
        state["epoch_progress"] = epoch_progress
    if engine.dist.is_distributed:
        state["rng_per_process"] = rng
    if engine.scaler.is_enabled():
        state["scaler"] = engine.scaler.state_dict()
    save_checkpoint(state, engine.checkpoint_path)
    engine.saved_epoch = epoch


def non_finite_tensors(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The names of the model's parameters and buffers that hold NaN or inf, and of the
    parameters whose optimiser state does."""
    bad = [name for name, tensor in model.state_dict().items()
           if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
    names = {id(param): name for name, param in model.named_parameters()}
    for param, state in optimizer.state.items():
        for key, value in state.items():
            if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
                bad.append(f"optimizer {key} of {names.get(id(param), 'a parameter')}")
    return bad


def check_finite_state(engine: CheckpointedRun, epoch: int) -> None:
    """Refuses to checkpoint a model or an optimiser that holds NaN or inf (a loss that stayed
    finite can still produce them).

    Raises:
        FloatingPointError: naming the epoch, the tensors and the checkpoint that stays as it was.
    """
    bad = non_finite_tensors(engine.model, engine.optimizer)
    if not bad:
        return
    shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
    message = (
        f"NaN or inf in the state after epoch {epoch}: {shown}; no checkpoint is written for this "
        f"epoch, and {engine.checkpoint_status()} (lower the learning rate)"
    )
    logger.error(message)
    raise FloatingPointError(message)


def restore_training_state(engine: CheckpointedRun, read: ReadCheckpoint | None = None) -> int:
    """Loads ``engine.checkpoint_path`` into ``engine`` (model, optimiser, scheduler, history,
    loss scaler, RNG states, whether its evaluation is pending) and returns the number of epochs
    it had done; 0, with a warning, when there is no checkpoint.

    ``read``: the checkpoint already read from ``engine.checkpoint_path`` (``reid train
    --resume`` reads it once, to compare its config before anything is built, and passes it
    on); it is restored without reading the file again, unless the file was replaced since
    (:meth:`ReadCheckpoint.is_current`; then it is read again, and a line logged). Its tensors
    are on the CPU: loading them copies them to the model's and the optimiser's device.
    """
    path = engine.checkpoint_path
    if read is not None and read.path == path and read.is_current():
        state = read.state
    else:
        if read is not None:
            logger.info("--resume: %s was replaced since it was read; reading it again", path)
        if not os.path.isfile(path):
            logger.warning("--resume: no checkpoint at %s, starting from scratch", path)
            return 0
        state = load_checkpoint(path, map_location=engine.device)
    engine.model.load_state_dict(state["model"])
    engine.optimizer.load_state_dict(state["optimizer"])
    engine.scheduler.load_state_dict(state["scheduler"])
    engine.history = list(state.get("history", []))
    if engine.scaler.is_enabled() and "scaler" in state:
        engine.scaler.load_state_dict(state["scaler"])
    restore_process_rng(state, engine.dist)
    engine.resume_step = int(state.get("step", 0))
    engine.resume_progress = {**state["epoch_progress"], "rng": state["rng"]} if engine.resume_step else None
    engine.saved_epoch = int(state["epoch"])
    engine.evaluation_pending = bool(state.get("evaluation_pending", False)) and bool(engine.history)
    if engine.resume_step:
        logger.info("resumed from %s inside epoch %d, after its step %d", path, int(state["epoch"]) + 1,
                    engine.resume_step)
        return int(state["epoch"])
    logger.info(
        "resumed from %s after epoch %d%s", path, state["epoch"],
        " (written before its evaluation, which did not complete: it runs first)"
        if engine.evaluation_pending else "",
    )
    return int(state["epoch"])


def restore_process_rng(state: dict[str, Any], dist: DistributedContext) -> None:
    """This process's saved RNG state; with another number of processes, rank 0's state
    offset by the rank (the run goes on, but not as an uninterrupted one would)."""
    per_process = state.get("rng_per_process")
    world, rank = dist.world_size, dist.rank
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
