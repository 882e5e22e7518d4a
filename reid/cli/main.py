"""``reid``: one console script for every command (``reid --help`` lists them)."""

from __future__ import annotations

import importlib
import sys

# command -> (module under reid.cli, one-line summary)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("train", "train a model (also under torchrun)"),
    "test": ("test", "evaluate a checkpoint: rank-k, mAP, mINP, CMC"),
    "explain": ("explain", "explain a model's top matches: panels, HTML report, explanations.json"),
    "eval-explanations": ("eval_explanations", "measure explanation quality on controlled synthetic triplets"),
    "check-data": ("check_data", "build and check the configured datasets"),
    "export": ("export", "export the embedding network to ONNX and check it with onnxruntime"),
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
    module = importlib.import_module(f"reid.cli.{COMMANDS[command][0]}")
    result = module.main(rest)
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
