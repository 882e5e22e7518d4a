"""The similarity-mining objective ``L_sm`` of one batch, as a loss object (PCB+SAM).

:class:`SimilarityMiningLoss` does everything between the batch's forward pass and the combined
loss; the engine (:class:`reid.engine.sam.SAMEngine`) only orchestrates. Called with the model,
the batch, its train-mode output and the tuples mined for the metric loss, it:

1. takes the tuples of the configured form (:func:`reid.losses.mining_tuples`; for quadruplets
   re-mined with two negatives, :meth:`SimilarityMiningLoss.mine`), optionally a random subset
   of ``max_tuples`` of them, and drops exact duplicates (see *Deduplication*);
2. computes the similarity weights ``w`` of each tuple from the detached, L2-normalised
   embeddings of its members, and one attention map per tuple member, from the SAME forward
   pass: the rows of ``output.feature_map`` of the members go through ``model.embed_features``
   only (:func:`reid.explain.attention_maps_from_features`); no second trunk pass;
3. soft-masks the member images (:func:`reid.losses.soft_mask`, ``omega``, ``sigma``) and passes
   all masked images once through the same encoder (``forward_features`` + ``embed_features``),
   BatchNorm in eval mode for that pass by default;
4. returns ``L_sm`` on the masked embeddings (:func:`reid.losses.similarity_mining_loss`, in
   the direction ``objective`` chooses: ``erase`` by default, ``printed`` as the ablation; see
   :mod:`reid.losses.similarity_mining`) with what it was computed from
   (:class:`SimilarityMiningStep`); the engine adds ``gamma * L_sm`` to ``L_ml``
   (:func:`reid.losses.combine`).

Decisions (docs/method.md sections 2-3 where it decides, ours otherwise):

- Weights come from the eval-style test embedding ``embed_features`` applied to the train-mode
  ``layer4`` map of the batch's pass (detached, then L2-normalised as a whole), not from the
  reduced training features: it is the embedding that is explained and that the test ranks with.
- The head that the maps differentiate (``embed_features``) runs with every module in eval mode
  (dropout off, BatchNorm on running statistics), so each map depends on its own image only and
  the maps are per-sample exact. With ``MODEL.TEST_FEATURE pooled`` the head has no such
  modules and this makes no difference.
- First order by default: ``alpha`` is a constant (``create_graph=False``), yet ``L_sm`` still
  reaches the network through ``A`` in ``M = ReLU(sum_k alpha_k A_k)`` (the map is built on the
  graph-carrying ``layer4`` map) and through the masked pass. ``second_order=True`` makes
  ``alpha`` differentiable too (``create_graph=True``). ``map_gradient=False`` detaches the
  maps (an ablation): ``L_sm`` then trains through the masked pass only.
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
- Mixed precision: the caller passes its ``autocast`` context; the masked pass (and the second
  trunk pass of another layer) run under it, and the masked embeddings are cast to float32, so
  that (with a float32 ``output``) the similarity weights, the head that the maps differentiate,
  ``alpha``, the weighted sum of Eq. 1, the soft masks and ``L_sm`` are all computed in float32.
- ``layer="layer4"`` (the map the PCB embedding is pooled from) uses the head-only path above.
  Any other layer falls back to :func:`reid.explain.attention_maps` on the whole model in eval
  mode: a second trunk pass over the member images (slower; the maps then come from eval-mode
  activations).
- ``max_tuples = n > 0`` draws the ``n`` tuples with ``torch.randperm`` on torch's global RNG,
  once per step, before anything else of ``L_sm`` (so a seed reproduces the draw).

Deduplication (exact): a member's map depends on its image and on its tuple's weights, so two
rows share a masked image only when they are the same tuple. Siamese weights and loss are
symmetric, so a pair and its reverse (``a``'s hardest positive is ``p`` and ``p``'s is ``a``) are
masked once; for triplets and quadruplets only identical tuples collapse (batch-hard gives one
tuple per anchor, so none do). The masked pass therefore holds ``R * U`` images (``R`` roles,
``U`` distinct tuples): ``3 B`` for batch-hard triplets, so a step costs about
``1 + R U / B`` times a PCB step (see ``benchmarks/sam_overhead.py``). ``max_tuples`` (off by
default) bounds that cost by averaging ``L_sm`` over a random subset of the tuples.

Reference: SAM paper (Zheng et al., "Learning Similarity Attention"), sections 3.1-3.3, Eq. 1-3;
docs/method.md sections 2-3.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator
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
from reid.losses.similarity_mining import (
    FORMS,
    OBJECTIVES,
    ROLES,
    mining_tuples,
    similarity_mining_loss,
    soft_mask,
)
from reid.losses.triplet import MinedTuples, batch_hard_mining
from reid.metrics.distance import euclidean_distance

logger = logging.getLogger(__name__)

__all__ = [
    "BN_MODES",
    "SimilarityMiningLoss",
    "SimilarityMiningStep",
    "batchnorm_modules",
    "eval_mode",
]


BN_MODES: tuple[str, ...] = ("eval", "train")
"""BatchNorm of the masked pass: ``"eval"`` (running statistics) or ``"train"`` (batch ones)."""


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
            ``embed_features`` returns them, in float32; the loss L2-normalises them).
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


def _identity(images: torch.Tensor) -> torch.Tensor:
    return images


class SimilarityMiningLoss:
    """``L_sm`` of a batch: tuples, weights, attention maps, soft masks, masked pass, loss.

    See the module docstring for the steps and the decisions. The model needs
    ``forward_features`` (images -> ``(B, C, h, w)`` map) and ``embed_features`` (map -> ``(B,
    D)`` embedding), e.g. :class:`reid.models.PCB`; :meth:`check_model` says so early.

    Reference: SAM paper, sections 3.1-3.3, Eq. 1-3; docs/method.md section 3.

    Args:
        form: ``siamese``, ``triplet`` or ``quadruplet`` (:data:`FORMS`: tuples and ``L_sm``
            of that form).
        gamma: weight of ``L_sm`` in ``L = L_ml + gamma L_sm`` (kept here for the caller).
        omega: sharpness of the soft mask ``1 - sigmoid(omega (M - sigma))``.
        sigma: threshold of the soft mask on the min-max normalised map.
        layer: the explained layer; None or the model's head layer
            (``model.explainability.head_layer``, PCB's ``layer4``) uses the head-only path (no
            second trunk pass), any other named layer a slower second pass in eval mode.
        bn_mode: BatchNorm during the masked pass (:data:`BN_MODES`): ``eval`` (frozen running
            statistics) or ``train`` (batch statistics, running statistics updated).
        second_order: back-propagate through ``alpha`` as well (``create_graph=True``).
        max_tuples: 0 (default, the method as published): ``L_sm`` over every mined tuple.
            ``n > 0``: over ``n`` tuples drawn at random (torch's global RNG) each step, an
            unbiased estimate of the full mean that bounds the masked pass to ``R n`` images
            (a cost knob: ``n = B / R`` brings a step to about 2x a PCB step).
        map_gradient: True (default, docs/method.md section 3): ``L_sm`` reaches the first pass
            through ``A`` in the maps. False: the maps (hence the masks) are constants and
            ``L_sm`` trains the network through the masked pass only, so the model cannot lower
            ``L_sm`` by moving its attention off the evidence (an ablation).
        objective: the direction of ``L_sm`` (:data:`reid.losses.OBJECTIVES`): ``"erase"``
            (default: minimising ``L_sm`` makes the masked tuple fail its similarity condition,
            as the SAM paper's text after eq. 2 and its Siamese form argue) or ``"printed"``
            (eq. 2 as printed, the ablation; the Siamese form is the same under both).

    Raises:
        ValueError: an unknown form, objective or BatchNorm mode, ``gamma < 0``,
            ``max_tuples < 0``, or ``second_order`` without ``map_gradient``.
    """

    def __init__(
        self,
        form: str = "triplet",
        gamma: float = 0.2,
        omega: float = 10.0,
        sigma: float = 0.5,
        layer: str | None = None,
        bn_mode: str = "eval",
        second_order: bool = False,
        max_tuples: int = 0,
        map_gradient: bool = True,
        objective: str = "erase",
    ) -> None:
        if form not in FORMS:
            raise ValueError(f"unknown similarity mining form {form!r}; expected one of {FORMS}")
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        if bn_mode not in BN_MODES:
            raise ValueError(f"bn_mode must be one of {BN_MODES}, got {bn_mode!r}")
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        if max_tuples < 0:
            raise ValueError(f"max_tuples must be >= 0 (0: all tuples), got {max_tuples}")
        if second_order and not map_gradient:
            raise ValueError("second_order needs map_gradient: with detached maps alpha gets no gradient")
        self.form = form
        self.roles = ROLES[form]
        self.gamma = gamma
        self.omega = omega
        self.sigma = sigma
        self.layer = layer
        self.bn_mode = bn_mode
        self.second_order = second_order
        self.max_tuples = max_tuples
        self.map_gradient = map_gradient
        self.objective = objective
        self.num_negatives = 2 if form == "quadruplet" else 1

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(form={self.form!r}, gamma={self.gamma}, omega={self.omega}, "
            f"sigma={self.sigma}, layer={self.layer!r}, bn_mode={self.bn_mode!r}, "
            f"second_order={self.second_order}, max_tuples={self.max_tuples}, "
            f"map_gradient={self.map_gradient}, objective={self.objective!r})"
        )

    def check_model(self, model: nn.Module) -> None:
        """Fails now, with a clear message, on a model this loss cannot run on.

        Raises:
            TypeError: no ``forward_features`` or ``embed_features``.
            ValueError: ``layer`` is not a module of ``model``.
        """
        for method in ("forward_features", "embed_features"):
            if not callable(getattr(model, method, None)):
                raise TypeError(
                    f"similarity mining needs a model with {method}() (e.g. PCB), got "
                    f"{type(model).__name__}"
                )
        if not self.head_only(model):
            resolve_layer(model, self.layer)  # fails now, naming the layer, if it does not exist
            logger.warning(
                "SAM layer %r is not %r: attention maps need a second trunk pass per step (slower)",
                self.layer, model.explainability.head_layer,
            )

    def head_only(self, model: nn.Module) -> bool:
        """Whether the maps come from the head map of the batch's forward pass (no second pass)."""
        return self.layer is None or self.layer == model.explainability.head_layer

    def mine(self, features: torch.Tensor, pids: torch.Tensor, mined: MinedTuples) -> MinedTuples:
        """The tuples of this form: ``mined`` (the metric loss's), or for quadruplets the same
        anchors re-mined with two negatives on the Euclidean distances of the detached
        ``features (B, D)`` that the metric loss used."""
        if self.num_negatives == 1:
            return mined
        dist = euclidean_distance(features.detach())
        return batch_hard_mining(dist, pids, num_negatives=self.num_negatives)

    def __call__(
        self,
        model: nn.Module,
        images: torch.Tensor,
        output: Any,
        mined: MinedTuples,
        *,
        autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
        prepare_images: Callable[[torch.Tensor], torch.Tensor] = _identity,
    ) -> SimilarityMiningStep:
        """Maps, soft masks, the masked pass and ``L_sm`` of one batch (no backward here).

        Args:
            model: the model being trained (its modes are restored on exit).
            images: ``(B, 3, H, W)`` the batch (not modified).
            output: the batch's train-mode output with ``feature_map (B, C, h, w)`` (e.g. a
                :class:`~reid.models.pcb.PCBOutput`), in float32; it must carry the graph for
                ``L_sm`` to train the first pass.
            mined: the tuples of this form (:meth:`mine` of the metric loss's tuples).
            autocast: the caller's mixed-precision context factory (no-op by default).
            prepare_images: the caller's input formatting of the masked images (e.g.
                channels_last); identity by default.

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
            weights = self._tuple_weights(model, output.feature_map, unique).repeat(len(self.roles), 1)
            maps = self._attention_maps(model, images, output.feature_map, flat, weights, autocast)
            if not self.map_gradient:
                maps = maps.detach()
        with record_function("sam/masked_forward"):
            masked = soft_mask(images[flat], maps, omega=self.omega, sigma=self.sigma)
            with self._masked_pass_mode(model), autocast():
                masked_maps = model.forward_features(prepare_images(masked))
                embedded = model.embed_features(masked_maps)
            if embedded.dtype in (torch.float16, torch.bfloat16):
                embedded = embedded.float()
        num_roles, num_unique = len(self.roles), unique.shape[0]

        def per_tuple(rows: torch.Tensor) -> dict[str, torch.Tensor]:
            split = rows.reshape(num_roles, num_unique, *rows.shape[1:])
            return {role: split[r][inverse] for r, role in enumerate(self.roles)}

        embeddings = per_tuple(embedded)
        loss = similarity_mining_loss(self.form, embeddings, objective=self.objective)
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
    def _tuple_weights(
        self, model: nn.Module, feature_map: torch.Tensor, unique: torch.Tensor
    ) -> torch.Tensor:
        """``(U, D)`` similarity weights of the tuples, from detached normalised embeddings.

        The embedding is ``embed_features`` (all modules in eval mode) of the train-mode
        ``(B, C, h, w)`` map of the batch, L2-normalised (SAM paper, section 3.1).
        """
        with eval_mode(model.modules()):
            embeddings = F.normalize(model.embed_features(feature_map.detach()), dim=1)
        f = [embeddings[unique[:, r]] for r in range(unique.shape[1])]
        if self.form == "siamese":
            return pair_weights(f[0], f[1], same=True)  # positive pairs only
        if self.form == "triplet":
            return triplet_weights(*f)
        return quadruplet_weights(*f)

    def _attention_maps(
        self,
        model: nn.Module,
        images: torch.Tensor,
        feature_map: torch.Tensor,
        rows: torch.Tensor,
        weights: torch.Tensor,
        autocast: Callable[[], contextlib.AbstractContextManager],
    ) -> torch.Tensor:
        """``(N, h, w)`` maps of the batch rows ``rows (N,)`` with weights ``(N, D)``.

        Head layer: differentiates ``embed_features`` on the rows of the batch's
        ``(B, C, h, w)`` map (no trunk pass). Another layer: a second pass over
        ``images[rows]`` with the whole model in eval mode.
        """
        with eval_mode(model.modules()):
            if self.head_only(model):
                maps, _ = attention_maps_from_features(
                    model.embed_features, feature_map[rows], weights,
                    create_graph=self.second_order,
                )
            else:
                with autocast():  # attention_maps keeps alpha and Eq. 1 in float32
                    maps, _ = attention_maps(
                        model, self.layer, images[rows], weights, create_graph=self.second_order
                    )
        return maps

    def _masked_pass_mode(self, model: nn.Module) -> contextlib.AbstractContextManager:
        """BatchNorm in eval mode for the masked pass when ``bn_mode == "eval"``."""
        if self.bn_mode == "eval":
            return eval_mode(batchnorm_modules(model))
        return contextlib.nullcontext()
