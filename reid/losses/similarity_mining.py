"""Similarity mining: soft-masking with attention maps and the losses on masked embeddings.

Pipeline (SAM paper, section 3.2; docs/method.md section 3): the tuples mined for the metric loss
(:func:`reid.losses.triplet.batch_hard_mining`) give, per role, the indices of the images in
the batch (:func:`mining_tuples`). Their similarity-attention maps are upsampled to the image
size, min-max normalised per sample and turned into a soft mask (:func:`soft_mask`). The masked
images go through the encoder again and their embeddings ``f*`` enter one of the losses below
(:func:`similarity_mining_loss`).

Objectives (:data:`OBJECTIVES`; docs/method.md section 3). The SAM paper prints its equation 2 as
``L_sm = ||f*a - f*p|| - ||f*a - f*n||``, yet the sentence after it says that "by minimizing
L_sm, the model has difficulties in predicting whether the input triplet would satisfy the
triplet condition", and its Siamese form "attempts to maximize the distance between f*1 and f*2"
(``L_sm = -|f*1 - f*2|``). Minimising the printed triplet form pulls the masked positive
towards the anchor, the opposite of what the text and the Siamese form ask. So:

- ``"erase"`` (default, the direction the text argues): minimising ``L_sm`` makes the masked
  tuple FAIL its similarity condition. Triplet ``||f*a - f*n|| - ||f*a - f*p||``; quadruplet
  ``(||f*a - f*n1|| - ||f*a - f*p||) + (||f*a - f*n2|| - ||f*a - f*p||)``; Siamese
  ``-||f*1 - f*2||``. ``d L_sm / d ||f*a - f*p|| < 0`` in every form.
- ``"printed"`` (the ablation): equation 2 as printed, and the quadruplet sum of it over both
  negatives. The Siamese form has no printed triplet counterpart and is the same under both.

Roles: ``"anchor"``, ``"positive"`` (Siamese: the positive pair), plus ``"negative"``
(triplet) or ``"negative1"``, ``"negative2"`` (quadruplet).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from reid.explain.postprocess import normalize_maps, resize_maps
from reid.losses.triplet import MinedTuples
from reid.metrics.distance import paired_euclidean_distance

logger = logging.getLogger(__name__)

__all__ = [
    "FORMS",
    "OBJECTIVES",
    "ROLES",
    "mining_tuples",
    "quadruplet_mining_loss",
    "quadruplets",
    "siamese_mining_loss",
    "siamese_pairs",
    "similarity_mining_loss",
    "soft_mask",
    "soft_mask_weights",
    "triplet_mining_loss",
    "triplets",
]

ROLES: dict[str, tuple[str, ...]] = {
    "siamese": ("anchor", "positive"),
    "triplet": ("anchor", "positive", "negative"),
    "quadruplet": ("anchor", "positive", "negative1", "negative2"),
}
"""The roles of each form of similarity mining, in order."""

FORMS: tuple[str, ...] = tuple(ROLES)
"""The forms of similarity mining: ``"siamese"``, ``"triplet"``, ``"quadruplet"``."""

OBJECTIVES: tuple[str, ...] = ("erase", "printed")
"""The directions of ``L_sm`` (see the module docstring): ``"erase"`` (default: minimising
``L_sm`` makes the masked tuple fail its similarity condition, as the SAM paper's text argues) and
``"printed"`` (the SAM paper's equation 2 as printed, kept as an ablation)."""


# --------------------------------------------------------------------------------------------
# Maps and masks
# --------------------------------------------------------------------------------------------


def soft_mask_weights(
    maps: torch.Tensor,
    size: tuple[int, int],
    omega: float = 10.0,
    sigma: float = 0.5,
    eps: float = 1e-12,
) -> torch.Tensor:
    """The multiplicative soft mask ``1 - sigmoid(omega * (M - sigma))`` at image size.

    ``M`` is the map upsampled to ``size`` (bilinear, :func:`reid.explain.resize_maps`) and then
    min-max normalised per sample (:func:`reid.explain.normalize_maps`),
    so high-attention pixels get weights near 0 and low-attention pixels near 1.

    Reference: SAM paper, section 3.2: ``x_hat = x * (1 - Sigma(M))``,
    ``Sigma(Z) = sigmoid(alpha (Z - beta))`` (``alpha = omega``, ``beta = sigma`` here; the
    paper does not print its values, the defaults are docs/method.md section 3's).

    Args:
        maps: ``(B, h, w)`` raw attention maps (any scale).
        size: Image size ``(H, W)``.
        omega: Sharpness of the sigmoid.
        sigma: Threshold in the normalised map.
        eps: Passed to :func:`reid.explain.normalize_maps`.

    Returns:
        ``(B, H, W)`` weights in ``(0, 1)``, differentiable w.r.t. ``maps``.
    """
    normalized = normalize_maps(resize_maps(maps, size), eps=eps)
    return 1.0 - torch.sigmoid(omega * (normalized - sigma))


def soft_mask(
    images: torch.Tensor,
    maps: torch.Tensor,
    omega: float = 10.0,
    sigma: float = 0.5,
    eps: float = 1e-12,
) -> torch.Tensor:
    """Erases the high-attention regions of images with a soft mask.

    ``x_hat = x * (1 - sigmoid(omega * (M - sigma)))``, the mask from
    :func:`soft_mask_weights` broadcast over the channels.

    Reference: SAM paper, section 3.2.

    Args:
        images: ``(B, 3, H, W)`` (any number of channels).
        maps: ``(B, h, w)`` raw attention maps for the same samples.
        omega: Sharpness of the sigmoid.
        sigma: Threshold in the normalised map.
        eps: Passed to :func:`reid.explain.normalize_maps`.

    Returns:
        ``(B, 3, H, W)`` masked images, differentiable w.r.t. ``images`` and ``maps``.
    """
    if images.dim() != 4:
        raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(images.shape)}")
    if maps.dim() != 3 or maps.shape[0] != images.shape[0]:
        raise ValueError(
            f"expected maps of shape ({images.shape[0]}, h, w), got {tuple(maps.shape)}"
        )
    weights = soft_mask_weights(maps, images.shape[-2:], omega=omega, sigma=sigma, eps=eps)
    return images * weights.unsqueeze(1).to(images.dtype)


# --------------------------------------------------------------------------------------------
# Tuples
# --------------------------------------------------------------------------------------------


def siamese_pairs(tuples: MinedTuples) -> dict[str, torch.Tensor]:
    """Positive pairs (anchor, hardest positive): role -> ``(T,)`` batch indices.

    Reference: SAM paper, section 3.2 (Siamese case: positive pairs only).
    """
    return {"anchor": tuples.anchor, "positive": tuples.positive}


def triplets(tuples: MinedTuples) -> dict[str, torch.Tensor]:
    """Triplets (anchor, hardest positive, hardest negative): role -> ``(T,)`` batch indices."""
    return {"anchor": tuples.anchor, "positive": tuples.positive, "negative": tuples.negative}


def quadruplets(tuples: MinedTuples) -> dict[str, torch.Tensor]:
    """Quadruplets (anchor, hardest positive, two hardest negatives): role -> ``(T,)`` indices.

    Raises:
        ValueError: If fewer than two negatives were mined (``num_negatives=2`` needed).
    """
    if tuples.negatives.dim() != 2 or tuples.negatives.shape[1] < 2:
        raise ValueError(
            "quadruplets need two mined negatives per anchor (batch_hard_mining with "
            f"num_negatives=2), got negatives of shape {tuple(tuples.negatives.shape)}"
        )
    return {
        "anchor": tuples.anchor,
        "positive": tuples.positive,
        "negative1": tuples.negatives[:, 0],
        "negative2": tuples.negatives[:, 1],
    }


def mining_tuples(tuples: MinedTuples, form: str) -> dict[str, torch.Tensor]:
    """Role -> ``(T,)`` batch indices for a form (see :data:`ROLES`)."""
    builders = {"siamese": siamese_pairs, "triplet": triplets, "quadruplet": quadruplets}
    if form not in builders:
        raise ValueError(f"unknown similarity mining form {form!r}; expected one of {FORMS}")
    return builders[form](tuples)


# --------------------------------------------------------------------------------------------
# Losses on masked embeddings
# --------------------------------------------------------------------------------------------


def _check_objective(objective: str) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(
            f"unknown similarity mining objective {objective!r}; expected one of {OBJECTIVES}"
        )


def _prepare(embeddings: tuple[torch.Tensor, ...], normalize: bool) -> tuple[torch.Tensor, ...]:
    """Checks that all embeddings are ``(T, D)`` alike and L2-normalises them if asked."""
    shape = embeddings[0].shape
    for emb in embeddings:
        if emb.dim() != 2 or emb.shape != shape:
            shapes = [tuple(e.shape) for e in embeddings]
            raise ValueError(f"expected embeddings of one shape (T, D), got {shapes}")
    if not normalize:
        return embeddings
    return tuple(F.normalize(emb, p=2.0, dim=1) for emb in embeddings)


def _empty_loss(embeddings: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """A zero that stays connected to the (empty) inputs in the autograd graph."""
    logger.debug("no tuples for similarity mining; returning a zero loss")
    return sum(emb.sum() for emb in embeddings) * 0.0


def triplet_mining_loss(
    fa: torch.Tensor,
    fp: torch.Tensor,
    fn: torch.Tensor,
    normalize: bool = True,
    objective: str = "erase",
) -> torch.Tensor:
    """Triplet similarity-mining loss, mean over triplets.

    - ``objective="erase"`` (default): ``||f*a - f*n|| - ||f*a - f*p||``. Minimising it pushes
      the masked positive away from the masked anchor and pulls the masked negative in, so the
      masked triplet fails the triplet condition: what the SAM paper's text after equation 2
      asks ("by minimizing L_sm, the model has difficulties in predicting whether the input
      triplet would satisfy the triplet condition").
    - ``objective="printed"``: ``||f*a - f*p|| - ||f*a - f*n||``, equation 2 as printed (the
      ablation; minimising it helps the masked triplet satisfy the condition).

    Reference: SAM paper, section 3.2, eq. 2 and the paragraph after it; docs/method.md
    section 3.

    Args:
        fa: ``(T, D)`` masked-anchor embeddings.
        fp: ``(T, D)`` masked-positive embeddings.
        fn: ``(T, D)`` masked-negative embeddings.
        normalize: L2-normalise each embedding first (docs/method.md: ``f`` is always
            L2-normalised before the formulas). Harmless if they already are.
        objective: ``"erase"`` or ``"printed"`` (:data:`OBJECTIVES`).

    Returns:
        Scalar tensor; a zero connected to the inputs when ``T = 0``.

    Raises:
        ValueError: an unknown objective, or embeddings of different shapes.
    """
    _check_objective(objective)
    fa, fp, fn = _prepare((fa, fp, fn), normalize)
    if fa.shape[0] == 0:
        return _empty_loss((fa, fp, fn))
    d_ap = paired_euclidean_distance(fa, fp)
    d_an = paired_euclidean_distance(fa, fn)
    return (d_an - d_ap).mean() if objective == "erase" else (d_ap - d_an).mean()


def siamese_mining_loss(
    f1: torch.Tensor, f2: torch.Tensor, normalize: bool = True, objective: str = "erase"
) -> torch.Tensor:
    """Siamese similarity-mining loss ``-||f*1 - f*2||`` on positive pairs, mean over pairs.

    The paper's Siamese objective "attempts to maximize the distance between f*1 and f*2, i.e.,
    Lsm = -|f*1 - f*2|", so that after erasing "the model can no longer predict that the data
    pair belongs to the same class". It is the same under both objectives (the paper prints no
    other sign for it) and agrees with the triplet ``"erase"`` form on the positive pair.

    Reference: SAM paper, section 3.2, "Extensions to Other Architectures" (Siamese case);
    docs/method.md section 3.

    Args:
        f1: ``(T, D)`` masked embeddings of the first images of the positive pairs.
        f2: ``(T, D)`` masked embeddings of the second images.
        normalize: L2-normalise each embedding first.
        objective: ``"erase"`` or ``"printed"`` (:data:`OBJECTIVES`); checked, same value.

    Returns:
        Scalar tensor; a zero connected to the inputs when ``T = 0``.

    Raises:
        ValueError: an unknown objective, or embeddings of different shapes.
    """
    _check_objective(objective)
    f1, f2 = _prepare((f1, f2), normalize)
    if f1.shape[0] == 0:
        return _empty_loss((f1, f2))
    return (-paired_euclidean_distance(f1, f2)).mean()


def quadruplet_mining_loss(
    fa: torch.Tensor,
    fp: torch.Tensor,
    fn1: torch.Tensor,
    fn2: torch.Tensor,
    normalize: bool = True,
    objective: str = "erase",
) -> torch.Tensor:
    """Quadruplet similarity-mining loss, mean over quadruplets of the two triplet terms.

    The paper builds it from the triplets ``T1 = (f*a, f*p, f*n1)`` and ``T2 = (f*a, f*p, f*n2)``
    as ``L_sm = L_sm^T1 + L_sm^T2``, each the triplet loss of :func:`triplet_mining_loss` with the
    same ``objective``:

    - ``"erase"`` (default): ``(||f*a - f*n1|| - ||f*a - f*p||) + (||f*a - f*n2|| - ||f*a - f*p||)``;
    - ``"printed"``: ``(||f*a - f*p|| - ||f*a - f*n1||) + (||f*a - f*p|| - ||f*a - f*n2||)``.

    Reference: SAM paper, section 3.2, "Extensions to Other Architectures" (quadruplet case)
    and eq. 2; docs/method.md section 3.

    Args:
        fa: ``(T, D)`` masked-anchor embeddings.
        fp: ``(T, D)`` masked-positive embeddings.
        fn1: ``(T, D)`` masked embeddings of the first negatives.
        fn2: ``(T, D)`` masked embeddings of the second negatives.
        normalize: L2-normalise each embedding first.
        objective: ``"erase"`` or ``"printed"`` (:data:`OBJECTIVES`).

    Returns:
        Scalar tensor; a zero connected to the inputs when ``T = 0``.

    Raises:
        ValueError: an unknown objective, or embeddings of different shapes.
    """
    _check_objective(objective)
    fa, fp, fn1, fn2 = _prepare((fa, fp, fn1, fn2), normalize)
    if fa.shape[0] == 0:
        return _empty_loss((fa, fp, fn1, fn2))
    d_ap = paired_euclidean_distance(fa, fp)
    d_an1 = paired_euclidean_distance(fa, fn1)
    d_an2 = paired_euclidean_distance(fa, fn2)
    if objective == "erase":
        return ((d_an1 - d_ap) + (d_an2 - d_ap)).mean()
    return ((d_ap - d_an1) + (d_ap - d_an2)).mean()


def similarity_mining_loss(
    form: str,
    embeddings: Mapping[str, torch.Tensor],
    normalize: bool = True,
    objective: str = "erase",
) -> torch.Tensor:
    """Dispatches to the similarity-mining loss of a form.

    Args:
        form: ``"siamese"``, ``"triplet"`` or ``"quadruplet"``.
        embeddings: Role -> ``(T, D)`` masked embeddings, with exactly the roles of
            ``ROLES[form]`` (the keys that :func:`mining_tuples` returns).
        normalize: L2-normalise each embedding first.
        objective: ``"erase"`` (default) or ``"printed"`` (:data:`OBJECTIVES`; see the module
            docstring).

    Returns:
        Scalar tensor ``L_sm``.

    Raises:
        ValueError: On an unknown form or objective, or missing/extra roles.
    """
    _check_objective(objective)
    if form not in ROLES:
        raise ValueError(f"unknown similarity mining form {form!r}; expected one of {FORMS}")
    roles = ROLES[form]
    if set(embeddings) != set(roles):
        raise ValueError(f"form {form!r} needs roles {roles}, got {tuple(embeddings)}")
    ordered = [embeddings[role] for role in roles]
    if form == "siamese":
        return siamese_mining_loss(*ordered, normalize=normalize, objective=objective)
    if form == "triplet":
        return triplet_mining_loss(*ordered, normalize=normalize, objective=objective)
    return quadruplet_mining_loss(*ordered, normalize=normalize, objective=objective)
