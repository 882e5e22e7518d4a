"""Cascading randomisation of a model's weights, from the top, for the sanity checks of
explanations (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018).

An explanation of a model's decision must change when the model does. :func:`cascade_blocks`
lists a :class:`~reid.models.base.ReidModel`'s blocks from the top: first the ``head`` (every
child module outside the trunk, e.g. PCB's reductions and classifiers, AVSL's projections and
graph parameters), then the trunk's stages from the last to the stem (``ReidModel.trunk_modules``).
:func:`randomized_copy` returns a copy of the model whose first ``k`` blocks are re-initialised
(the cascade); the original is never touched. ``reid eval-explanations`` compares each explainer's
maps on the trained model with its maps on those copies (:func:`reid.metrics.explanation.rank_correlation`).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def cascade_blocks(model: nn.Module) -> list[tuple[str, list[nn.Module]]]:
    """``[(name, modules), ...]`` from the top: ``head``, then the trunk stages last to first.

    Raises:
        ValueError: the model has no trunk stages (``trunk_modules``) to randomise.
    """
    trunk = list(getattr(model, "trunk_modules", []))
    if not trunk:
        raise ValueError(f"{type(model).__name__} lists no trunk_modules: nothing to randomise in cascade")
    names = {id(module): name for name, module in model.named_children()}
    trunk_ids = {id(module) for module in trunk}
    head = [module for _, module in model.named_children() if id(module) not in trunk_ids]
    blocks = [("head", head)] if head or _own_parameters(model) else []
    blocks += [(names.get(id(module), f"stage{i}"), [module]) for i, module in reversed(list(enumerate(trunk)))]
    return blocks


def _own_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters held outside the model's child modules (none for most models)."""
    inside = {id(p) for child in model.children() for p in child.parameters()}
    return [p for p in model.parameters() if id(p) not in inside]


@torch.no_grad()
def _reinitialise(modules: list[nn.Module], generator: torch.Generator) -> None:
    for block in modules:
        for module in block.modules():
            if hasattr(module, "reset_parameters") and callable(module.reset_parameters):
                module.reset_parameters()
            if hasattr(module, "reset_running_stats") and callable(module.reset_running_stats):
                module.reset_running_stats()
        # parameters no module resets (e.g. parameter lists): redrawn at their own scale
        reset = {id(p) for m in block.modules() if hasattr(m, "reset_parameters") for p in m.parameters(recurse=False)}
        for parameter in block.parameters():
            if id(parameter) not in reset:
                _redraw(parameter, generator)


def _redraw(parameter: torch.Tensor, generator: torch.Generator) -> None:
    scale = float(parameter.std()) if parameter.numel() > 1 and float(parameter.std()) > 0 else 1.0
    noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float32)
    parameter.copy_((noise * scale).to(parameter.device, parameter.dtype))


def randomized_copy(model: nn.Module, depth: int, seed: int = 0) -> nn.Module:
    """A copy of ``model`` with its first ``depth`` cascade blocks re-initialised (module defaults;
    BatchNorm statistics reset; loose parameters redrawn at their scale), seeded by ``seed``.

    Raises:
        ValueError: ``depth`` outside ``1..len(cascade_blocks(model))``.
    """
    blocks = cascade_blocks(model)
    if not 1 <= depth <= len(blocks):
        raise ValueError(f"depth must be in 1..{len(blocks)} for {type(model).__name__}, got {depth}")
    copied = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)  # module initialisers draw from the global stream
    try:
        for name, modules in cascade_blocks(copied)[:depth]:
            _reinitialise(modules, generator)
            if name == "head":
                for parameter in _own_parameters(copied):
                    with torch.no_grad():
                        _redraw(parameter, generator)
    finally:
        torch.random.set_rng_state(state)
    return copied
