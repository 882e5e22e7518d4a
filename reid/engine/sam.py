"""PCB + similarity mining (PCB+SAM): the attention-driven training objective in one step.

One training step (:meth:`SAMEngine.forward_backward`):

1. Forward the batch in train mode: ``output = model(images)``; ID + batch-hard triplet terms
   (``L_ml``, :meth:`PCBEngine.metric_terms`), whose mined tuples are reused (re-mined with two
   negatives for quadruplets, :meth:`~reid.losses.SimilarityMiningLoss.mine`).
2. ``L_sm`` of the batch (:class:`reid.losses.SimilarityMiningLoss`): tuples, similarity
   weights, attention maps from the same forward pass, soft masks, one pass of the masked images,
   the loss on their embeddings. :mod:`reid.losses.sam` describes these steps and their
   decisions (deduplication, BatchNorm of the masked pass, first/second order, other layers).
3. ``L = L_ml + gamma * L_sm`` (:func:`reid.losses.combine`); one backward, one optimiser step.

Mixed precision (``amp`` of the base engine): the batch's forward pass and the masked pass run
under the engine's autocast; the batch's output is cast to float32 (:meth:`ReidEngine.float32`)
before the losses, and the loss object casts the masked embeddings.

Reference: SAM paper (Zheng et al., "Learning Similarity Attention"), sections 3.1-3.3, Eq. 1-3;
docs/method.md sections 2-3.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import torch
from torch.profiler import record_function

from reid.losses import MinedTuples, SimilarityMiningLoss, SimilarityMiningStep

from .pcb import PCBEngine, stripe_accuracy

logger = logging.getLogger(__name__)

__all__ = ["SAMEngine"]

# The keyword arguments that configure the similarity-mining loss rather than the PCB engine.
SIMILARITY_MINING_OPTIONS = tuple(inspect.signature(SimilarityMiningLoss).parameters)


class SAMEngine(PCBEngine):
    """Trains PCB with ``L = id_weight L_id + triplet_weight L_triplet + gamma L_sm``.

    Logged terms per step: ``id``, ``triplet`` (when its weight is positive), ``sm`` (``L_sm``,
    unweighted), ``loss`` (the total ``L``) and ``acc``; the base engine writes them to
    TensorBoard and to the history of ``metrics.json``.

    Reference: SAM paper, sections 3.2-3.3, Eq. 2-3; docs/method.md section 3.

    Args:
        *args: see :class:`~reid.engine.pcb.PCBEngine`.
        **kwargs: the keyword arguments of :class:`reid.losses.SimilarityMiningLoss` (``form``,
            ``gamma``, ``omega``, ``sigma``, ``layer``, ``bn_mode``, ``second_order``,
            ``max_tuples``, ``map_gradient``; its defaults where absent), the rest go to
            :class:`~reid.engine.pcb.PCBEngine`.

    Raises:
        ValueError, TypeError: bad options, or a model without ``forward_features`` and
            ``embed_features`` or without ``layer``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        mining = {name: kwargs.pop(name) for name in SIMILARITY_MINING_OPTIONS if name in kwargs}
        super().__init__(*args, **kwargs)
        self.sm_loss = SimilarityMiningLoss(**mining)
        self.sm_loss.check_model(self.model)
        self.weights["sm"] = self.sm_loss.gamma

    def forward_backward(self, data: dict[str, Any]) -> dict[str, float]:
        """One step of ``L = L_ml + gamma L_sm``; returns the logged terms (floats)."""
        imgs, pids = self.to_device(data)
        with record_function("sam/batch_forward"):
            with self.autocast():
                output = self.model(imgs)
            output = self.float32(output)
            terms, mined = self.metric_terms(output, pids)
        mining = self.similarity_mining(imgs, output, mined)
        terms["sm"] = mining.loss
        with record_function("sam/backward"):
            logged = self.optimise(terms)
        logged["acc"] = stripe_accuracy(output.logits, pids)
        return logged

    def metric_terms(self, output: Any, pids: torch.Tensor) -> tuple[dict, MinedTuples]:
        """``L_ml`` terms and the tuples of the mining form (two negatives for quadruplets).

        Args:
            output: the train-mode :class:`~reid.models.pcb.PCBOutput` of the batch.
            pids: ``(B,)`` identity labels.

        Returns:
            ``(terms, mined)``: see :meth:`PCBEngine.metric_terms`.
        """
        terms, mined = super().metric_terms(output, pids)
        return terms, self.sm_loss.mine(output.features.flatten(1), pids, mined)

    def similarity_mining(
        self, images: torch.Tensor, output: Any, mined: MinedTuples
    ) -> SimilarityMiningStep:
        """``L_sm`` of one batch (no backward here) under the engine's autocast and image format.

        Args:
            images: ``(B, 3, H, W)`` the batch (not modified).
            output: the batch's train-mode float32 :class:`~reid.models.pcb.PCBOutput`.
            mined: the tuples of :meth:`metric_terms`.

        Returns:
            :class:`~reid.losses.SimilarityMiningStep`.
        """
        return self.sm_loss(
            self.model, images, output, mined,
            autocast=self.autocast, prepare_images=self.prepare_images,
        )
