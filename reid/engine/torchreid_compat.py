"""What our engines keep, reroute or refuse of torchreid's ``Engine``.

The project plugs into torchreid 0.2.5's ``Engine`` (data manager, ``register_model``,
``forward_backward``), but its loop and evaluation ``print``, call ``.cuda()`` and use torchreid's
slow metrics. :class:`TorchreidEngine` therefore refuses torchreid's ``train()`` and ``test()``
with an error naming :meth:`ReidEngine.run` / :meth:`ReidEngine.evaluate`, refuses torchreid's
arguments of ``run`` (:func:`check_run_arguments`) and routes ``save_model`` to our checkpoint.
"""

from __future__ import annotations

import operator
from typing import Any, NoReturn

import torch
from torchreid.reid.engine import Engine

from .checkpoint import save_training_state

__all__ = ["TORCHREID_RUN_OPTIONS", "TorchreidEngine", "check_run_arguments"]

RUN_SIGNATURE = "run(max_epoch, eval_freq=0, checkpoint_freq=1, print_freq=10, resume=False)"

TORCHREID_RUN_OPTIONS = {
    "save_dir": "the engine's output_dir", "start_epoch": "resume=True", "test_only": "evaluate()",
    "dist_metric": "eval_options", "normalize_feature": "eval_options", "ranks": "eval_options",
    "use_metric_cuhk03": "eval_options", "rerank": "eval_options",
    "start_eval": "", "fixbase_epoch": "", "open_layers": "", "visrank": "", "visrank_topk": "",
}
"""Options of torchreid's ``Engine.run`` and where each went in our engines ("": not supported)."""


def check_run_arguments(max_epoch: Any, extra: dict[str, Any]) -> None:
    """Fails clearly when our ``run`` gets torchreid's ``Engine.run`` arguments.

    Raises:
        TypeError: ``max_epoch`` is not an integer (e.g. torchreid's positional ``save_dir``),
            or ``extra`` holds keyword arguments our ``run`` does not take.
    """
    try:
        operator.index(max_epoch)
    except TypeError:
        raise TypeError(
            f"max_epoch must be an int, got {max_epoch!r}: the engine's {RUN_SIGNATURE} is not "
            "torchreid's run(save_dir, max_epoch, ...)"
        ) from None
    if extra:
        notes = [
            f"{name} (torchreid's; use {TORCHREID_RUN_OPTIONS[name]})" if TORCHREID_RUN_OPTIONS.get(name)
            else f"{name} (torchreid's; not supported)" if name in TORCHREID_RUN_OPTIONS
            else f"{name} (unknown)"
            for name in extra
        ]
        raise TypeError(f"the engine's {RUN_SIGNATURE} got unexpected arguments: {', '.join(notes)}")


class TorchreidEngine(Engine):
    """torchreid's ``Engine`` with its loop and evaluation refused (see the module docstring)."""

    def train(self, *args: Any, **kwargs: Any) -> NoReturn:
        """Not supported: torchreid's epoch loop (``print``, ``.cuda()``, no hooks)."""
        raise NotImplementedError(
            f"{type(self).__name__}.train() is torchreid's epoch loop, which this engine replaces: "
            "train with run(max_epoch=...) (one epoch without hooks: train_epoch())"
        )

    def test(self, *args: Any, **kwargs: Any) -> NoReturn:
        """Not supported: torchreid's evaluation (``print``, ``.cuda()``, slow metrics)."""
        raise NotImplementedError(
            f"{type(self).__name__}.test() is torchreid's evaluation, which this engine replaces: "
            "evaluate with evaluate() (returns {target: {rank1, ..., mAP, mINP}}; the options "
            "are the engine's eval_options)"
        )

    def save_model(self, epoch: int, rank1: float, save_dir: str, is_best: bool = False) -> None:
        """torchreid's hook, routed to our atomic checkpoint (``save_dir`` and ``is_best`` unused)."""
        save_training_state(self, epoch + 1)

    def extract_features(self, input: torch.Tensor) -> torch.Tensor:
        """torchreid's forward of one batch (``extract_dataset_features`` does a whole split)."""
        return self.model(input)
