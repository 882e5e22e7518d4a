"""Capturing a layer's output with a forward hook that is always removed."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = ["CapturedOutput", "capture_output", "resolve_layer"]


def resolve_layer(model: nn.Module, layer: nn.Module | str) -> nn.Module:
    """Returns the module to explain.

    Args:
        model: the model.
        layer: a submodule of ``model`` or its dotted name, e.g. ``"layer4"`` or ``"layer4.1"``.

    Returns:
        The submodule.

    Raises:
        ValueError: ``layer`` names no submodule of ``model``, or is a module outside it.
    """
    if isinstance(layer, str):
        try:
            return model.get_submodule(layer)
        except AttributeError as err:
            raise ValueError(f"model {type(model).__name__} has no submodule {layer!r}") from err
    if not isinstance(layer, nn.Module):
        raise TypeError(f"layer must be a module or a dotted name, got {type(layer).__name__}")
    if not any(module is layer for module in model.modules()):
        raise ValueError(f"{type(layer).__name__} is not a submodule of {type(model).__name__}")
    return layer


@dataclass
class CapturedOutput:
    """The outputs a hooked module produced, in call order.

    Attributes:
        outputs: one ``(B, C, h, w)`` tensor per call; each requires grad, so
            ``torch.autograd.grad`` can be taken with respect to it.
    """

    outputs: list[torch.Tensor] = field(default_factory=list)

    def single(self, name: str = "layer") -> torch.Tensor:
        """The one output of a module that must have run exactly once.

        Raises:
            RuntimeError: the module ran zero or several times.
        """
        if len(self.outputs) != 1:
            raise RuntimeError(
                f"{name} ran {len(self.outputs)} times during the forward pass; "
                "explaining it needs exactly one call"
            )
        return self.outputs[0]


@contextmanager
def capture_output(module: nn.Module) -> Iterator[CapturedOutput]:
    """Records the tensor output of ``module`` during the forward passes in the ``with`` block.

    The hook stores the module's output tensor ``A`` (made a leaf that requires grad when it
    did not need a gradient, e.g. for a frozen trunk) and passes a *clone* of it on to the rest
    of the model, so later in-place operations (``ReLU(inplace=True)``, ``+=``) never change
    the recorded values nor break ``torch.autograd.grad(score, A)``. Values seen by the rest of
    the model are unchanged. The hook is removed when the block exits, also on an exception,
    which propagates unchanged.

    Args:
        module: the module whose output is recorded; it must return one tensor.

    Yields:
        A :class:`CapturedOutput` that fills while the block runs.
    """
    captured = CapturedOutput()

    def hook(_module: nn.Module, _inputs: tuple, output: object) -> torch.Tensor:
        if not isinstance(output, torch.Tensor):
            raise TypeError(
                f"{type(module).__name__} returned {type(output).__name__}; "
                "only a layer that returns one tensor can be explained"
            )
        if not output.requires_grad:
            output = output.detach().requires_grad_(True)
        captured.outputs.append(output)
        return output.clone()

    handle = module.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()
