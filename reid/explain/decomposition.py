"""Exact decompositions of a query-gallery score over stripes, cells and cell pairs.

For models whose test embedding is the concatenation of the L2-normalised averages of ``P``
horizontal stripes of a head map (PCB with ``MODEL.TEST_FEATURE pooled``; ``P = 1`` is any
global-average-pooled embedding), the score of a pair is a sum over the cells of the two maps,
with nothing left over. Notation, per stripe ``s``: ``w_s(c)`` the average-pooling weight of cell
``c`` (``sum_c w_s(c) = 1``, the bins of ``adaptive_avg_pool2d``), ``g_s = sum_c w_s(c) A(c)`` the
stripe average, ``n_s = g_s / ||g_s||`` its unit vector and ``x_s(c) = A(c) / ||g_s||`` the cell's
feature on the same scale (so ``n_s = sum_c w_s(c) x_s(c)``). Query ``q``, gallery ``g``:

* **dot product** ``S = f_q . f_g = sum_s n_qs . n_gs``; the cell pair ``(c, c')`` holds
  ``K(c, c') = sum_s w_s(c) w_s(c') x_qs(c) . x_gs(c')``.
* **cosine** ``S / (||f_q|| ||f_g||)``: the dot decomposition scaled by the constant denominator.
* **squared Euclidean** ``d = ||f_q - f_g||^2 = sum_s ||n_qs - n_gs||^2``. Because the weights of a
  stripe sum to 1, ``n_qs - n_gs = sum_{c,c'} w_s(c) w_s(c') (x_qs(c) - x_gs(c'))``, hence
  ``K(c, c') = sum_s w_s(c) w_s(c') (x_qs(c) - x_gs(c')) . (n_qs - n_gs)``.

In every case ``K`` sums to the score, the stripe terms sum to the score, the row sums of ``K``
are the query's signed cell map and its column sums the gallery's, each summing to the score (for
a similarity a positive cell pulls the pair together, for a distance it pushes them apart). Only
cells of the same stripe are paired: PCB compares stripe with stripe.

Where the split is not exact: PCB's ``reduced`` test feature passes each stripe average through a
1x1 convolution, BatchNorm and a ReLU; the first two are affine and would split, the ReLU does not,
so those models are refused (:func:`check_decomposable`). AVSL has its own exact attribution
(``ReidModel.attribute``).

References (read for the idea; the formulas above are this project's own): Zhu et al., "Visual
Explanation for Deep Metric Learning" (IEEE TIP 2021); Stylianou et al., "Visualizing Deep
Similarity Networks" (WACV 2019).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

DECOMPOSITION_METRICS = ("dot", "cosine", "euclidean")


@dataclass
class Decomposition:
    """The parts of a batch of pair scores.

    Attributes:
        metric: ``dot``, ``cosine`` or ``euclidean`` (squared).
        score: ``(B,)`` the scores.
        stripes: ``(B, P)`` stripe terms, summing to ``score``.
        pairs: ``(B, h*w, h*w)`` cell-pair terms (query cell row, gallery cell column, cells in
            row-major order), summing to ``score``.
        query_cells: ``(B, h, w)`` the row sums of ``pairs``, a signed map summing to ``score``.
        gallery_cells: ``(B, h, w)`` the column sums, likewise.
    """

    metric: str
    score: torch.Tensor
    stripes: torch.Tensor
    pairs: torch.Tensor
    query_cells: torch.Tensor
    gallery_cells: torch.Tensor


def check_decomposable(model: Any) -> int:
    """The model's stripe count ``P`` when its scores split exactly (see the module docstring).

    Raises:
        ValueError: the model's embedding does not split (e.g. PCB with the ``reduced`` feature).
    """
    stripes = getattr(getattr(model, "explainability", None), "decomposable_stripes", 0)
    if not stripes:
        raise ValueError(
            f"{type(model).__name__}'s test embedding does not split exactly over cells: the decomposition "
            "needs L2-normalised stripe averages of the head map (PCB with MODEL.TEST_FEATURE pooled)"
        )
    return int(stripes)


def stripe_weights(height: int, width: int, num_stripes: int, device: torch.device | None = None,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(P, h, w)`` average-pooling weights of ``adaptive_avg_pool2d(map, (P, 1))``: stripe ``s``
    averages rows ``floor(s h / P)`` to ``ceil((s + 1) h / P) - 1`` (bins may overlap when ``P``
    does not divide ``h``) and every column."""
    if num_stripes < 1 or height < 1 or width < 1:
        raise ValueError(f"need positive sizes, got {num_stripes} stripes of a {height}x{width} map")
    weights = torch.zeros(num_stripes, height, width, device=device, dtype=dtype)
    for s in range(num_stripes):
        start, end = (s * height) // num_stripes, -((-(s + 1) * height) // num_stripes)
        weights[s, start:end] = 1.0 / ((end - start) * width)
    return weights


def decompose_pair(query_maps: torch.Tensor, gallery_maps: torch.Tensor, num_stripes: int,
                   metric: str = "dot", eps: float = 1e-12) -> Decomposition:
    """Splits the scores of pairs of head maps (module docstring).

    Args:
        query_maps: ``(B, C, h, w)`` head maps of the queries.
        gallery_maps: ``(B, C, h, w)`` head maps of their gallery images (pair ``i`` is row ``i``
            of both).
        num_stripes: ``P``.
        metric: ``dot``, ``cosine`` or ``euclidean`` (squared), of the embeddings
            ``concat_s n_s``.
        eps: floor of a stripe average's norm (as ``F.normalize``).

    Returns:
        :class:`Decomposition` (float64 internally, returned in the maps' dtype).
    """
    if metric not in DECOMPOSITION_METRICS:
        raise ValueError(f"metric must be one of {DECOMPOSITION_METRICS}, got {metric!r}")
    if query_maps.dim() != 4 or query_maps.shape != gallery_maps.shape:
        raise ValueError(
            f"need two (B, C, h, w) batches of the same shape, got {tuple(query_maps.shape)} and "
            f"{tuple(gallery_maps.shape)}"
        )
    dtype = query_maps.dtype
    q, g = query_maps.double(), gallery_maps.double()
    batch, _, height, width = q.shape
    weights = stripe_weights(height, width, num_stripes, q.device, torch.float64).flatten(1)  # (P, N)
    q_cells, g_cells = q.flatten(2).transpose(1, 2), g.flatten(2).transpose(1, 2)  # (B, N, C)
    q_avg = torch.einsum("pn,bnc->bpc", weights, q_cells)  # (B, P, C)
    g_avg = torch.einsum("pn,bnc->bpc", weights, g_cells)
    q_norm = q_avg.norm(dim=2).clamp_min(eps)  # (B, P)
    g_norm = g_avg.norm(dim=2).clamp_min(eps)
    # cell features on the unit scale of their stripe: x_s(c) = A(c) / ||g_s||   (B, P, N, C)
    q_x = q_cells.unsqueeze(1) / q_norm[:, :, None, None]
    g_x = g_cells.unsqueeze(1) / g_norm[:, :, None, None]
    pair_weights = weights[:, :, None] * weights[:, None, :]  # (P, N, N)
    if metric == "euclidean":
        delta = q_avg / q_norm[..., None] - g_avg / g_norm[..., None]  # n_q - n_g   (B, P, C)
        q_term = torch.einsum("bpnc,bpc->bpn", q_x, delta)
        g_term = torch.einsum("bpmc,bpc->bpm", g_x, delta)
        per_stripe = pair_weights * (q_term[:, :, :, None] - g_term[:, :, None, :])  # (B, P, N, N)
    else:
        per_stripe = pair_weights * torch.einsum("bpnc,bpmc->bpnm", q_x, g_x)
        if metric == "cosine":
            f_q = (q_avg / q_norm[..., None]).flatten(1)
            f_g = (g_avg / g_norm[..., None]).flatten(1)
            scale = f_q.norm(dim=1).clamp_min(eps) * f_g.norm(dim=1).clamp_min(eps)
            per_stripe = per_stripe / scale[:, None, None, None]
    pairs = per_stripe.sum(dim=1)  # (B, N, N)
    return Decomposition(
        metric=metric,
        score=pairs.sum(dim=(1, 2)).to(dtype),
        stripes=per_stripe.sum(dim=(2, 3)).to(dtype),
        pairs=pairs.to(dtype),
        query_cells=pairs.sum(dim=2).reshape(batch, height, width).to(dtype),
        gallery_cells=pairs.sum(dim=1).reshape(batch, height, width).to(dtype),
    )
