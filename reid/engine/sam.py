"""PCB + similarity mining (PCB+SAM): the attention-driven training objective in one step.

One training step (:meth:`SAMEngine.forward_backward`):

1. Forward the batch in train mode: ``output = model(images)``; ID + batch-hard triplet terms
   (``L_ml``, :meth:`PCBEngine.metric_terms`), whose mined tuples are reused.
2. Tuples of the configured form (:func:`reid.losses.mining_tuples`); exact duplicates are
   dropped (see *Deduplication*).
3. Similarity weights ``w`` of each tuple from the detached, L2-normalised embeddings of its
   members, and one attention map per tuple member, computed from the SAME forward pass: the
   rows of ``output.feature_map`` of the members go through ``model.embed_features`` only
   (:func:`reid.explain.attention_maps_from_features`); no second trunk pass.
4. Soft masks of the member images (:func:`reid.losses.soft_mask`, ``omega``, ``sigma``), and one
   pass of all masked images through the same encoder (``forward_features`` +
   ``embed_features``), BatchNorm in eval mode for that pass by default.
5. ``L_sm`` on the masked embeddings (:func:`reid.losses.similarity_mining_loss`);
   ``L = L_ml + gamma * L_sm`` (:func:`reid.losses.combine`); one backward, one optimiser step.

Decisions (``docs/method.md`` sections 2-3 where it decides, ours otherwise):

- Weights come from the eval-style test embedding ``embed_features`` applied to the train-mode
  ``layer4`` map of step 1 (detached, then L2-normalised as a whole), not from the reduced
  training features: it is the embedding that is explained and that the test ranks with.
- The head that the maps differentiate (``embed_features``) runs with every module in eval mode
  (dropout off, BatchNorm on running statistics), so each map depends on its own image only and
  the maps are per-sample exact. With ``MODEL.TEST_FEATURE pooled`` the head has no such
  modules and this makes no difference.
- First order by default: ``alpha`` is a constant (``create_graph=False``), yet ``L_sm`` still
  reaches the network through ``A`` in ``M = ReLU(sum_k alpha_k A_k)`` (the map is built on the
  graph-carrying ``layer4`` map) and through the masked pass. ``second_order=True`` makes
  ``alpha`` differentiable too (``create_graph=True``).
- BatchNorm of the masked pass: ``bn_mode="eval"`` puts every BatchNorm module in eval mode for
  that pass only (running statistics used, neither batch statistics used nor running statistics
  updated; affine parameters still trained), then restores each module's previous mode, also
  on error. ``bn_mode="train"`` uses the masked batch's statistics and updates the running ones.
  Other modules (dropout of a ``reduced`` head) keep the model's mode in the masked pass.
- Quadruplets: the metric loss keeps its hardest negative; the tuples are re-mined with two
  negatives per anchor on the same (detached) distances, so anchor, positive and first negative
  are exactly those of the metric loss (an anchor with a single negative in the batch is
  dropped from the quadruplets only).
- No tuple in the batch (e.g. no positive pair): ``L_sm`` is a zero connected to the graph and
  the masked pass is skipped.
- Mixed precision (``amp`` of the base engine): the batch's forward pass and the masked pass run
  under autocast; their outputs are cast to float32 (:meth:`ReidEngine.float32`) before the
  losses, so the similarity weights, the head that the maps differentiate, ``alpha``, the
  weighted sum of Eq. 1, the soft masks and ``L_sm`` are all computed in float32.
- ``layer="layer4"`` (the map the PCB embedding is pooled from) uses the head-only path above.
  Any other layer falls back to :func:`reid.explain.attention_maps` on the whole model in eval
  mode: a second trunk pass over the member images (slower; the maps then come from eval-mode
  activations).

Deduplication (exact): a member's map depends on its image and on its tuple's weights, so two
rows share a masked image only when they are the same tuple. Siamese weights and loss are
symmetric, so a pair and its reverse (``a``'s hardest positive is ``p`` and ``p``'s is ``a``) are
masked once; for triplets and quadruplets only identical tuples collapse (batch-hard gives one
tuple per anchor, so none do). The masked pass therefore holds ``R * U`` images (``R`` roles,
``U`` distinct tuples): ``3 B`` for batch-hard triplets, so a step costs about
``1 + R U / B`` times a PCB step (see ``benchmarks/sam_overhead.py``). ``max_tuples`` (off by
default) bounds that cost by averaging ``L_sm`` over a random subset of the tuples.

Reference: SAM paper (Zheng et al., "Learning Similarity Attention"), sections 3.1-3.3, Eq. 1-3;
``docs/method.md`` sections 2-3.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function

from reid.explain import (
    attention_maps,
    attention_maps_from_features,
    pair_weights,
    quadruplet_weights,
    resolve_layer,
    triplet_weights,
)
from reid.losses import (
    ROLES,
    MinedTuples,
    batch_hard_mining,
    mining_tuples,
    similarity_mining_loss,
    soft_mask,
)
from reid.metrics import euclidean_distance

from .pcb import PCBEngine, stripe_accuracy

logger = logging.getLogger(__name__)

__all__ = ["HEAD_ONLY_LAYER", "SAMEngine", "SimilarityMiningStep", "batchnorm_modules", "eval_mode"]

HEAD_ONLY_LAYER = "layer4"
"""The layer whose map ``embed_features`` pools: its maps need no second trunk pass."""

BN_MODES = ("eval", "train")


@dataclass
class SimilarityMiningStep:
    """What the similarity-mining part of one step computed (tensors keep their graph).

    Attributes:
        loss: scalar ``L_sm``.
        tuples: role -> ``(T,)`` batch index of each tuple's member, as used (Siamese pairs are
            put in canonical order, smaller index first, which the symmetric loss ignores).
        maps: role -> ``(T, h, w)`` raw attention maps of the members.
        masked: role -> ``(T, 3, H, W)`` masked images of the members.
        embeddings: role -> ``(T, D)`` embeddings ``f*`` of the masked images (as
            ``embed_features`` returns them; the loss L2-normalises them).
        num_masked: number of distinct masked images that went through the encoder.
    """

    loss: torch.Tensor
    tuples: dict[str, torch.Tensor]
    maps: dict[str, torch.Tensor]
    masked: dict[str, torch.Tensor]
    embeddings: dict[str, torch.Tensor]
    num_masked: int


@contextlib.contextmanager
def eval_mode(modules: Iterable[nn.Module]) -> Iterator[None]:
    """Puts exactly ``modules`` in eval mode and restores each one's previous mode on exit.

    Only the listed modules change (their ``training`` flag is set one by one, not
    recursively), and every flag is restored even when the body raises.

    Args:
        modules: the modules to switch, e.g. :func:`batchnorm_modules` of a model.
    """
    saved = [(module, module.training) for module in modules]
    try:
        for module, _ in saved:
            module.training = False
        yield
    finally:
        for module, flag in saved:
            module.training = flag


def batchnorm_modules(model: nn.Module) -> list[nn.Module]:
    """Every BatchNorm module (1d/2d/3d, sync, lazy) of ``model``."""
    # _BatchNorm is the common base of all of them (torch has no public one).
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


class SAMEngine(PCBEngine):
    """Trains PCB with ``L = id_weight L_id + triplet_weight L_triplet + gamma L_sm``.

    See the module docstring for the step and the decisions. Logged terms per step: ``id``,
    ``triplet`` (when its weight is positive), ``sm`` (``L_sm``, unweighted), ``loss`` (the
    total ``L``) and ``acc``; the base engine writes them to TensorBoard and to the history of
    ``metrics.json``.

    Reference: SAM paper, sections 3.2-3.3, Eq. 2-3; ``docs/method.md`` section 3.

    Args:
        form: ``siamese``, ``triplet`` or ``quadruplet`` (tuples and ``L_sm`` of that form).
        gamma: weight of ``L_sm``.
        omega: sharpness of the soft mask ``1 - sigmoid(omega (M - sigma))``.
        sigma: threshold of the soft mask on the min-max normalised map.
        layer: the explained layer; ``layer4`` uses the head-only path (no second trunk
            pass), any other named layer a slower second pass in eval mode.
        bn_mode: BatchNorm during the masked pass: ``eval`` (frozen running statistics) or
            ``train`` (batch statistics, running statistics updated).
        second_order: back-propagate through ``alpha`` as well (``create_graph=True``).
        max_tuples: 0 (default, the method as published): ``L_sm`` over every mined tuple.
            ``n > 0``: over ``n`` tuples drawn at random (torch's global RNG) each step, an
            unbiased estimate of the full mean that bounds the masked pass to ``R n`` images
            (a cost knob: ``n = B / R`` brings a step to about 2x a PCB step).
        map_gradient: True (default, ``docs/method.md`` section 3): ``L_sm`` reaches the
            first pass through ``A`` in the maps. False: the maps (hence the masks) are
            constants and ``L_sm`` trains the network through the masked pass only, so the model
            cannot lower ``L_sm`` by moving its attention off the evidence (an ablation, see the
            README's explanation-quality reading).
        *args: see :class:`~reid.engine.pcb.PCBEngine`.
        **kwargs: see :class:`~reid.engine.pcb.PCBEngine`.
    """

    def __init__(
        self,
        *args: Any,
        form: str = "triplet",
        gamma: float = 0.2,
        omega: float = 10.0,
        sigma: float = 0.5,
        layer: str = HEAD_ONLY_LAYER,
        bn_mode: str = "eval",
        second_order: bool = False,
        max_tuples: int = 0,
        map_gradient: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if form not in ROLES:
            raise ValueError(f"unknown similarity mining form {form!r}; expected one of {tuple(ROLES)}")
        if bn_mode not in BN_MODES:
            raise ValueError(f"bn_mode must be one of {BN_MODES}, got {bn_mode!r}")
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        if max_tuples < 0:
            raise ValueError(f"max_tuples must be >= 0 (0: all tuples), got {max_tuples}")
        if second_order and not map_gradient:
            raise ValueError("second_order needs map_gradient: with detached maps alpha gets no gradient")
        for method in ("forward_features", "embed_features"):
            if not callable(getattr(self.model, method, None)):
                raise TypeError(
                    f"similarity mining needs a model with {method}() (e.g. PCB), got "
                    f"{type(self.model).__name__}"
                )
        if layer != HEAD_ONLY_LAYER:
            resolve_layer(self.model, layer)  # fails now, naming the layer, if it does not exist
            logger.warning(
                "SAM layer %r is not %r: attention maps need a second trunk pass per step (slower)",
                layer, HEAD_ONLY_LAYER,
            )
        self.form = form
        self.roles = ROLES[form]
        self.omega = omega
        self.sigma = sigma
        self.layer = layer
        self.bn_mode = bn_mode
        self.second_order = second_order
        self.max_tuples = max_tuples
        self.map_gradient = map_gradient
        self.num_negatives = 2 if form == "quadruplet" else 1
        self.weights["sm"] = gamma

    # -- the step --------------------------------------------------------------------------------

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
        """``L_ml`` terms and the mined tuples (two negatives per anchor for quadruplets).

        Args:
            output: the train-mode :class:`~reid.models.pcb.PCBOutput` of the batch.
            pids: ``(B,)`` identity labels.

        Returns:
            ``(terms, mined)``: see :meth:`PCBEngine.metric_terms`.
        """
        terms, mined = super().metric_terms(output, pids)
        if self.num_negatives > 1:
            dist = euclidean_distance(output.features.flatten(1).detach())
            mined = batch_hard_mining(dist, pids, num_negatives=self.num_negatives)
        return terms, mined

    def similarity_mining(
        self, images: torch.Tensor, output: Any, mined: MinedTuples
    ) -> SimilarityMiningStep:
        """Maps, soft masks, the masked pass and ``L_sm`` of one batch (no backward here).

        Args:
            images: ``(B, 3, H, W)`` the batch (not modified).
            output: the batch's train-mode :class:`~reid.models.pcb.PCBOutput` (its
                ``feature_map (B, C, h, w)`` must carry the graph for ``L_sm`` to train the
                first pass).
            mined: the tuples of the metric loss (:meth:`metric_terms`).

        Returns:
            :class:`SimilarityMiningStep` with ``T`` tuples per role (``T <= max_tuples`` when
            that is set).
        """
        tuples = mining_tuples(mined, self.form)
        members = torch.stack([tuples[role] for role in self.roles], dim=1)  # (T, R)
        if 0 < self.max_tuples < members.shape[0]:
            keep = torch.randperm(members.shape[0], device=members.device)[: self.max_tuples]
            members = members[keep.sort().values]
        if members.shape[0] == 0:
            logger.debug("no %s tuple in the batch; L_sm is 0", self.form)
            zero = output.feature_map.sum() * 0.0
            empty = {role: members[:, r] for r, role in enumerate(self.roles)}
            return SimilarityMiningStep(zero, empty, {}, {}, {}, 0)
        unique, inverse = self._distinct_tuples(members)  # (U, R), (T,)
        flat = unique.t().reshape(-1)  # (R U,) role-major: all anchors, then all positives...
        with record_function("sam/maps"):
            weights = self._tuple_weights(output.feature_map, unique).repeat(len(self.roles), 1)
            maps = self._attention_maps(images, output.feature_map, flat, weights)  # (R U, h, w)
            if not self.map_gradient:
                maps = maps.detach()
        with record_function("sam/masked_forward"):
            masked = soft_mask(images[flat], maps, omega=self.omega, sigma=self.sigma)
            with self._masked_pass_mode(), self.autocast():
                masked_maps = self.model.forward_features(self.prepare_images(masked))
                embedded = self.model.embed_features(masked_maps)
            embedded = self.float32(embedded)
        num_roles, num_unique = len(self.roles), unique.shape[0]

        def per_tuple(rows: torch.Tensor) -> dict[str, torch.Tensor]:
            split = rows.reshape(num_roles, num_unique, *rows.shape[1:])
            return {role: split[r][inverse] for r, role in enumerate(self.roles)}

        embeddings = per_tuple(embedded)
        loss = similarity_mining_loss(self.form, embeddings)
        return SimilarityMiningStep(
            loss=loss,
            tuples={role: unique[inverse, r] for r, role in enumerate(self.roles)},
            maps=per_tuple(maps),
            masked=per_tuple(masked),
            embeddings=embeddings,
            num_masked=int(flat.numel()),
        )

    # -- pieces ----------------------------------------------------------------------------------

    def _distinct_tuples(self, members: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(T, R)`` tuples -> ``(U, R)`` distinct ones and the ``(T,)`` row of each tuple.

        Siamese pairs are unordered (weights and loss are symmetric), the other forms ordered.
        """
        if self.form == "siamese":
            members = members.sort(dim=1).values
        unique, inverse = torch.unique(members, dim=0, return_inverse=True)
        return unique, inverse

    @torch.no_grad()
    def _tuple_weights(self, feature_map: torch.Tensor, unique: torch.Tensor) -> torch.Tensor:
        """``(U, D)`` similarity weights of the tuples, from detached normalised embeddings.

        The embedding is ``embed_features`` (all modules in eval mode) of the train-mode
        ``(B, C, h, w)`` map of the batch, L2-normalised (SAM paper, section 3.1).
        """
        with eval_mode(self.model.modules()):
            embeddings = F.normalize(self.model.embed_features(feature_map.detach()), dim=1)
        f = [embeddings[unique[:, r]] for r in range(unique.shape[1])]
        if self.form == "siamese":
            return pair_weights(f[0], f[1], same=True)  # positive pairs only
        if self.form == "triplet":
            return triplet_weights(*f)
        return quadruplet_weights(*f)

    def _attention_maps(
        self,
        images: torch.Tensor,
        feature_map: torch.Tensor,
        rows: torch.Tensor,
        weights: torch.Tensor,
    ) -> torch.Tensor:
        """``(N, h, w)`` maps of the batch rows ``rows (N,)`` with weights ``(N, D)``.

        ``layer4``: differentiates ``embed_features`` on the rows of the batch's
        ``(B, C, h, w)`` map (no trunk pass). Another layer: a second pass over
        ``images[rows]`` with the whole model in eval mode.
        """
        with eval_mode(self.model.modules()):
            if self.layer == HEAD_ONLY_LAYER:
                maps, _ = attention_maps_from_features(
                    self.model.embed_features, feature_map[rows], weights,
                    create_graph=self.second_order,
                )
            else:
                with self.autocast():  # attention_maps keeps alpha and Eq. 1 in float32
                    maps, _ = attention_maps(
                        self.model, self.layer, images[rows], weights, create_graph=self.second_order
                    )
        return maps

    def _masked_pass_mode(self) -> contextlib.AbstractContextManager:
        """BatchNorm in eval mode for the masked pass when ``bn_mode == "eval"``."""
        if self.bn_mode == "eval":
            return eval_mode(batchnorm_modules(self.model))
        return contextlib.nullcontext()
