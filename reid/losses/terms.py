"""Named loss terms and their weighted sum.

An engine collects the terms of one step in a ``LossTerms`` dict, e.g.
``{"id": l_id, "triplet": l_tri, "sm": l_sm}``, and builds the objective with
``combine(terms, {"sm": gamma})``, i.e. ``L = L_ml + gamma * L_sm`` (SAM paper, eq. 3), the
weights coming from the config. The same dict, turned into floats by :func:`as_floats`, is what
torchreid's ``Engine.forward_backward`` returns for logging.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch

logger = logging.getLogger(__name__)

__all__ = ["LossTerms", "as_floats", "combine"]

LossTerms = dict[str, torch.Tensor]
"""Name -> scalar loss tensor."""


def combine(
    terms: Mapping[str, torch.Tensor], weights: Mapping[str, float] | None = None
) -> torch.Tensor:
    """Weighted sum of named loss terms.

    Reference: SAM paper, section 3.3, eq. 3: ``L = L_ml + gamma * L_sm``.

    Args:
        terms: Name -> scalar tensor; at least one term.
        weights: Name -> weight. A term without a weight counts with weight 1; a weight whose
            term is absent (e.g. similarity mining switched off) is ignored.

    Returns:
        Scalar tensor ``sum_name weights.get(name, 1) * terms[name]``.

    Raises:
        ValueError: If ``terms`` is empty or a term is not a scalar.
    """
    if not terms:
        raise ValueError("no loss terms to combine")
    weights = {} if weights is None else weights
    total: torch.Tensor | None = None
    for name, value in terms.items():
        if value.dim() != 0:
            raise ValueError(f"loss term {name!r} is not a scalar: shape {tuple(value.shape)}")
        weighted = value * float(weights.get(name, 1.0))
        total = weighted if total is None else total + weighted
    unused = sorted(set(weights) - set(terms))
    if unused:
        logger.debug("weights without a loss term: %s", unused)
    assert total is not None
    return total


def as_floats(terms: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Detached Python floats of the terms, for logging (name -> value)."""
    return {name: float(value.detach()) for name, value in terms.items()}
