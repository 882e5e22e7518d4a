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

Delayed start (``mining_start_epoch``, key ``SAM.START_EPOCH``): in the epochs before it (epoch
indices ``0 .. mining_start_epoch - 1``, logged as epochs ``1 .. mining_start_epoch``) a step is a
plain PCB step (:meth:`PCBEngine.forward_backward`: no attention maps, no masked pass, no
re-mining, no ``sm`` term), so it costs what a PCB step costs. The switch reads the engine's
epoch, which a resumed run restores from its checkpoint, so a resumed run switches at the same
epoch as an uninterrupted one.

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
    unweighted; absent in the epochs before ``mining_start_epoch``), ``loss`` (the total ``L``)
    and ``acc``; the base engine writes them to TensorBoard and to the history of ``metrics.json``.

    Reference: SAM paper, sections 3.2-3.3, Eq. 2-3; docs/method.md section 3.

    Args:
        *args: see :class:`~reid.engine.pcb.PCBEngine`.
        mining_start_epoch: the first epoch index (0-based) that trains with similarity mining;
            the epochs before it are plain PCB epochs. 0 (default): from the start.
        **kwargs: the keyword arguments of :class:`reid.losses.SimilarityMiningLoss` (``form``,
            ``gamma``, ``omega``, ``sigma``, ``layer``, ``bn_mode``, ``second_order``,
            ``max_tuples``, ``map_gradient``, ``objective``; its defaults where absent), the
            rest go to :class:`~reid.engine.pcb.PCBEngine`.

    Raises:
        ValueError, TypeError: bad options (``mining_start_epoch`` not an integer >= 0
            included), or a model without ``forward_features`` and ``embed_features`` or
            without ``layer``.
    """

    def __init__(self, *args: Any, mining_start_epoch: int = 0, **kwargs: Any) -> None:
        valid = isinstance(mining_start_epoch, int) and not isinstance(mining_start_epoch, bool)
        if not valid or mining_start_epoch < 0:
            raise ValueError(f"mining_start_epoch must be an integer >= 0, got {mining_start_epoch!r}")
        mining = {name: kwargs.pop(name) for name in SIMILARITY_MINING_OPTIONS if name in kwargs}
        super().__init__(*args, **kwargs)
        self.sm_loss = SimilarityMiningLoss(**mining)
        self.sm_loss.check_model(self.model)
        self.weights["sm"] = self.sm_loss.gamma
        self.mining_start_epoch = mining_start_epoch

    def mining_active(self) -> bool:
        """Whether the current epoch (``self.epoch``, 0-based) trains with similarity mining."""
        return self.epoch >= self.mining_start_epoch

    def train_epoch(self, print_freq: int = 10) -> dict[str, float]:
        """One epoch (:meth:`ReidEngine.train_epoch`), after logging the delayed start of
        similarity mining: once at the first epoch of a run that starts without it, once at the
        epoch where it starts (or at the first epoch of a run resumed after that epoch)."""
        if self.mining_start_epoch > 0:
            self._log_mining_schedule()
        return super().train_epoch(print_freq)

    def _log_mining_schedule(self) -> None:
        start = self.mining_start_epoch
        if not self.mining_active():
            if self.epoch == self.start_epoch:
                logger.info(
                    "similarity mining starts at epoch %d (SAM.START_EPOCH %d): plain PCB steps "
                    "until then", start + 1, start,
                )
                if start >= self.max_epoch:
                    logger.warning(
                        "similarity mining never starts in this run: SAM.START_EPOCH %d >= "
                        "OPTIM.MAX_EPOCH %d", start, self.max_epoch,
                    )
        elif self.epoch == max(self.start_epoch, start):
            logger.info(
                "similarity mining on from epoch %d (SAM.START_EPOCH %d, objective %s)",
                start + 1, start, self.sm_loss.objective,
            )

    def forward_backward(self, data: dict[str, Any]) -> dict[str, float]:
        """One step of ``L = L_ml + gamma L_sm``; returns the logged terms (floats).

        Before ``mining_start_epoch``: a plain PCB step (no ``sm`` term)."""
        if not self.mining_active():
            return super().forward_backward(data)
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
            ``(terms, mined)``: see :meth:`PCBEngine.metric_terms`; before
            ``mining_start_epoch`` the metric loss's tuples as they are (nothing re-mined).
        """
        terms, mined = super().metric_terms(output, pids)
        if not self.mining_active():
            return terms, mined
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
