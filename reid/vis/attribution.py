"""AVSL attribution panels: which nodes, at which level, made two images (dis)similar.

An AVSL distance decomposes exactly into node contributions,
``d_hat = sum_l sum_i lambda^l_i delta^l_i`` (AVSL paper, section 3.4, eq. 11;
``docs/method.md`` section 5). This module turns one pair's arrays (nodes ``delta^l``, weights
``lambda^l``, reliabilities ``p^l``, rectified nodes ``delta_hat^l``, normalised edges ``W~^l``)
into a :class:`PairAttribution` summary (plain numbers, also written to JSON) and draws it.

What is selected (all ties broken by the lower node index):

* **top nodes per level**: the ``top`` nodes with the largest contribution
  ``lambda^l_i * delta^l_i``; the rest of the level's sum is reported as ``rest``;
* **the rectified node**: among the ``top`` top-level nodes with the largest rectified value
  ``delta_hat^L_i`` (the terms of ``d_hat = sum_i delta_hat^L_i``), the one with the lowest
  reliability ``p^L_i``, i.e. the large term of the distance that leaned most on the level below.
  Its breakdown follows eq. 8: ``delta_hat^L_i = p delta^L_i + (1 - p) carried`` with
  ``carried = sum_j W~^L_ij delta_hat^(L-1)_j``; the ``feeders`` shown are the lower nodes ``j``
  with the largest ``W~^L_ij delta_hat^(L-1)_j`` among the top-k edges (``W~^L_ij > 0``).

Panel layout (rows of :func:`~reid.vis.panels.compose_panel`, each padded on the right to the
widest row, stacked top to bottom, each row ``layout.size(tiles)`` high; a row's two header
lines are written across the full panel width)::

    row 0          query | gallery                 header: rank, d_hat, verdict; d_hat per level
    row 1..L       per level, top nodes: query CAM | gallery CAM (two tiles per node)
    row L+1        the rectified node's CAMs, then each feeder's CAMs (absent for one level)

CAMs are overlaid on the images; pass them normalised to ``[0, 1]`` per map.

Reference: AVSL paper, section 3.3 (eq. 8-9) and section 3.4 (eq. 11, "Attribution").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .image import check_rgb
from .overlay import overlay_heatmap
from .panels import CORRECT_COLOR, WRONG_COLOR, PanelLayout, Tile, compose_panel

__all__ = [
    "ATTRIBUTION_LAYOUT",
    "Feeder",
    "LevelAttribution",
    "NodeContribution",
    "PairAttribution",
    "Rectification",
    "attribution_panel",
    "attribution_text",
    "summarize_attribution",
    "top_contributions",
]

ATTRIBUTION_LAYOUT = PanelLayout(tile_height=160, tile_width=80, margin=8, header_height=40, caption_height=20)
"""Default pixel sizes of an attribution panel's rows."""

_BACKGROUND = 255
_TEXT = (0, 0, 0)


@dataclass(frozen=True)
class NodeContribution:
    """One node's share of the distance: ``contribution = weight * delta``.

    Attributes:
        node: node index ``i`` within its level.
        contribution: ``lambda_i * delta_i``.
        weight: ``lambda_i``.
        delta: ``delta_i``.
    """

    node: int
    contribution: float
    weight: float
    delta: float


@dataclass(frozen=True)
class LevelAttribution:
    """A level's share of the distance and its top nodes.

    Attributes:
        name: level name (e.g. ``layer3``).
        total: ``sum_i lambda_i delta_i`` over all nodes of the level.
        top: the nodes with the largest contributions, largest first.
        contributions: every node's contribution, node order.
    """

    name: str
    total: float
    top: tuple[NodeContribution, ...]
    contributions: tuple[float, ...]

    @property
    def rest(self) -> float:
        """The level's total minus its top nodes' contributions."""
        return self.total - sum(n.contribution for n in self.top)


@dataclass(frozen=True)
class Feeder:
    """A lower-level node feeding a rectified node through a top-k edge.

    Attributes:
        node: lower node index ``j``.
        edge_weight: normalised edge ``W~_ij``.
        rectified: its rectified value ``delta_hat^(l-1)_j``.
    """

    node: int
    edge_weight: float
    rectified: float

    @property
    def fed(self) -> float:
        """``W~_ij * delta_hat^(l-1)_j``, its part of the carried value."""
        return self.edge_weight * self.rectified


@dataclass(frozen=True)
class Rectification:
    """How one high-level node was rectified (eq. 8): ``rectified = p delta + (1 - p) carried``.

    Attributes:
        level: the node's level name.
        lower_level: the level it was rectified from.
        node: node index ``i``.
        delta: raw node ``delta^l_i``.
        reliability: ``p^l_i``.
        rectified: ``delta_hat^l_i``.
        carried: ``sum_j W~_ij delta_hat^(l-1)_j``.
        feeders: the lower nodes with the largest ``W~_ij delta_hat^(l-1)_j``, largest first.
    """

    level: str
    lower_level: str
    node: int
    delta: float
    reliability: float
    rectified: float
    carried: float
    feeders: tuple[Feeder, ...]


@dataclass(frozen=True)
class PairAttribution:
    """Summary of one pair's attribution.

    Attributes:
        distance: ``d_hat``.
        levels: per level, bottom-up.
        rectification: the rectified top-level node, or None with a single level.
    """

    distance: float
    levels: tuple[LevelAttribution, ...]
    rectification: Rectification | None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (node indices as ints, values as floats)."""
        rect = self.rectification
        return {
            "distance": self.distance,
            "levels": [
                {
                    "level": level.name,
                    "total": level.total,
                    "rest": level.rest,
                    "top": [asdict(n) for n in level.top],
                    "contributions": list(level.contributions),
                }
                for level in self.levels
            ],
            "rectified_node": None
            if rect is None
            else {
                "level": rect.level, "lower_level": rect.lower_level, "node": rect.node, "delta": rect.delta,
                "reliability": rect.reliability, "rectified": rect.rectified, "carried": rect.carried,
                "feeders": [
                    {"node": f.node, "edge_weight": f.edge_weight, "rectified": f.rectified, "fed": f.fed}
                    for f in rect.feeders
                ],
            },
        }


# -- selection -------------------------------------------------------------------------------------


def _vector(values: Any, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a vector (R,), got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} has non-finite values")
    return array


def _largest(values: np.ndarray, count: int) -> np.ndarray:
    """Indices of the ``count`` largest values, largest first, ties by lower index."""
    return np.argsort(-values, kind="stable")[:count]


def top_contributions(weights: Any, nodes: Any, count: int) -> tuple[NodeContribution, ...]:
    """The ``count`` nodes with the largest ``weights * nodes``, largest first.

    Reference: AVSL paper, section 3.4, eq. 11 (contribution ``lambda_i delta_i``).

    Args:
        weights: ``(R,)`` ``lambda``.
        nodes: ``(R,)`` ``delta``.
        count: how many (at most R are returned).

    Returns:
        ``min(count, R)`` contributions.
    """
    weights, nodes = _vector(weights, "weights"), _vector(nodes, "nodes")
    if weights.shape != nodes.shape:
        raise ValueError(f"weights and nodes differ in shape: {weights.shape} and {nodes.shape}")
    if count < 1:
        raise ValueError(f"count must be positive, got {count}")
    contributions = weights * nodes
    return tuple(
        NodeContribution(int(i), float(contributions[i]), float(weights[i]), float(nodes[i]))
        for i in _largest(contributions, count)
    )


def _rectification(
    level: str,
    lower_level: str,
    nodes: np.ndarray,
    reliabilities: np.ndarray,
    rectified: np.ndarray,
    rectified_low: np.ndarray,
    edge_weights: np.ndarray,
    candidates: int,
    feeders: int,
) -> Rectification:
    top = _largest(rectified, candidates)
    node = int(top[np.argmin(reliabilities[top])])  # argmin takes the first of ties (largest value)
    fed = edge_weights[node] * rectified_low
    kept = [int(j) for j in _largest(fed, feeders) if edge_weights[node, j] > 0]
    return Rectification(
        level=level, lower_level=lower_level, node=node, delta=float(nodes[node]),
        reliability=float(reliabilities[node]), rectified=float(rectified[node]), carried=float(fed.sum()),
        feeders=tuple(Feeder(j, float(edge_weights[node, j]), float(rectified_low[j])) for j in kept),
    )


def summarize_attribution(
    distance: float,
    level_names: Sequence[str],
    nodes: Sequence[Any],
    weights: Sequence[Any],
    reliabilities: Sequence[Any],
    rectified: Sequence[Any],
    edge_weights: Sequence[Any],
    top: int = 3,
    feeders: int = 3,
) -> PairAttribution:
    """Summary of one pair: top nodes per level and the rectified top-level node.

    Reference: AVSL paper, section 3.3 (eq. 8) and section 3.4 (eq. 11).

    Args:
        distance: the pair's ``d_hat``.
        level_names: L names, bottom-up.
        nodes: L vectors ``(R,)`` ``delta^l``.
        weights: L vectors ``(R,)`` ``lambda^l``.
        reliabilities: L-1 vectors ``(R,)`` ``p^l`` of levels ``2..L``.
        rectified: L vectors ``(R,)`` ``delta_hat^l`` (``delta_hat^1 = delta^1``).
        edge_weights: L-1 matrices ``(R, R_low)`` ``W~^l`` of levels ``2..L``.
        top: nodes shown per level, and candidates for the rectified node.
        feeders: lower nodes shown for the rectified node.

    Returns:
        The summary.
    """
    num_levels = len(level_names)
    if num_levels < 1 or len(nodes) != num_levels or len(weights) != num_levels or len(rectified) != num_levels:
        raise ValueError(
            f"expected L >= 1 names, nodes, weights and rectified nodes, got {len(level_names)}, {len(nodes)}, "
            f"{len(weights)} and {len(rectified)}"
        )
    if len(reliabilities) != num_levels - 1 or len(edge_weights) != num_levels - 1:
        raise ValueError(
            f"expected {num_levels - 1} reliabilities and edge weights, "
            f"got {len(reliabilities)} and {len(edge_weights)}"
        )
    if top < 1 or feeders < 1:
        raise ValueError(f"top and feeders must be positive, got {top} and {feeders}")
    levels = []
    for name, w, d in zip(level_names, weights, nodes):
        w, d = _vector(w, f"weights of {name}"), _vector(d, f"nodes of {name}")
        contributions = w * d
        levels.append(
            LevelAttribution(str(name), float(contributions.sum()), top_contributions(w, d, top),
                             tuple(float(c) for c in contributions))
        )
    rectification = None
    if num_levels > 1:
        high = _vector(rectified[-1], "rectified top level")
        edges = np.asarray(edge_weights[-1], dtype=np.float64)
        low = _vector(rectified[-2], "rectified level below the top")
        if edges.shape != (high.size, low.size):
            raise ValueError(f"edge weights must be ({high.size}, {low.size}), got {edges.shape}")
        rectification = _rectification(
            str(level_names[-1]), str(level_names[-2]), _vector(nodes[-1], "top nodes"),
            _vector(reliabilities[-1], "top reliabilities"), high, low, edges, top, feeders,
        )
    return PairAttribution(float(distance), tuple(levels), rectification)


# -- drawing ---------------------------------------------------------------------------------------


def attribution_text(
    summary: PairAttribution, rank: int | None = None, correct: bool | None = None
) -> list[list[str]]:
    """The header lines of each panel row (see the module docstring for the rows).

    Numbers are printed with 4 decimals; the level totals printed in row 0 sum to the printed
    ``d_hat`` up to rounding, and each level row prints ``total = top + rest``.
    """
    verdict = "" if correct is None else ("correct" if correct else "wrong")
    rank_text = "" if rank is None else f"rank {rank}   "
    rows = [[
        f"{rank_text}AVSL distance d_hat {summary.distance:.4f}   {verdict}".rstrip(),
        "d_hat = " + " + ".join(f"{level.name} {level.total:.4f}" for level in summary.levels),
    ]]
    for level in summary.levels:
        shown = sum(n.contribution for n in level.top)
        rows.append([
            f"{level.name}: lambda x delta = {level.total:.4f} = top {len(level.top)} {shown:.4f} "
            f"+ rest {level.rest:.4f}",
            "   ".join(f"#{n.node} {n.contribution:.4f}" for n in level.top),
        ])
    rect = summary.rectification
    if rect is not None:
        rows.append([
            f"rectified {rect.level} #{rect.node}: delta {rect.delta:.4f}, p {rect.reliability:.3f}, "
            f"delta_hat {rect.rectified:.4f}",
            f"= {rect.reliability:.3f} x {rect.delta:.4f} + {1 - rect.reliability:.3f} x {rect.carried:.4f} "
            f"from {rect.lower_level}: "
            + ", ".join(f"#{f.node} {f.edge_weight:.2f}x{f.rectified:.4f}" for f in rect.feeders),
        ])
    return rows


def _node_tiles(
    query_image: np.ndarray, gallery_image: np.ndarray, query_cams: np.ndarray, gallery_cams: np.ndarray,
    node: int, alpha: float,
) -> list[Tile]:
    return [
        Tile(overlay_heatmap(query_image, query_cams[node], alpha), f"#{node} query"),
        Tile(overlay_heatmap(gallery_image, gallery_cams[node], alpha), f"#{node} gallery"),
    ]


def _stack_rows(
    rows: Sequence[np.ndarray],
    headers: Sequence[Sequence[str]],
    colors: Sequence[tuple[int, int, int] | None],
    layout: PanelLayout,
) -> np.ndarray:
    """Pads the rows (drawn without header text) to the widest, stacks them and writes each
    row's header across the full width (as :func:`~reid.vis.panels.compose_panel` places it)."""
    width = max(row.shape[1] for row in rows)
    padded = [
        np.pad(row, ((0, 0), (0, width - row.shape[1]), (0, 0)), constant_values=_BACKGROUND) for row in rows
    ]
    canvas = Image.fromarray(np.concatenate(padded, axis=0))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=layout.font_size)
    line_height = max(1, (layout.header_height - layout.margin) // 2)
    top = 0
    for row, lines, color in zip(rows, headers, colors):
        for i, line in enumerate(list(lines)[:2]):
            draw.text((layout.margin, top + layout.margin // 2 + i * line_height), line, fill=color or _TEXT, font=font)
        top += row.shape[0]
    return np.asarray(canvas, dtype=np.uint8).copy()


def attribution_panel(
    query_image: np.ndarray,
    gallery_image: np.ndarray,
    summary: PairAttribution,
    query_cams: Sequence[np.ndarray],
    gallery_cams: Sequence[np.ndarray],
    rank: int | None = None,
    correct: bool | None = None,
    alpha: float = 0.5,
    layout: PanelLayout = ATTRIBUTION_LAYOUT,
) -> np.ndarray:
    """Draws one pair's attribution (rows described in the module docstring).

    Args:
        query_image: ``(H, W, 3)`` RGB uint8 query image.
        gallery_image: ``(H', W', 3)`` RGB uint8 gallery image.
        summary: from :func:`summarize_attribution`.
        query_cams: L arrays ``(R, h_l, w_l)`` of the query's node CAMs in ``[0, 1]``.
        gallery_cams: L arrays ``(R, h_l, w_l)`` of the gallery image's node CAMs in ``[0, 1]``.
        rank: the gallery image's rank for the query, if known.
        correct: whether the identities match, or None when unknown.
        alpha: heatmap weight of the overlays.
        layout: pixel sizes of each row.

    Returns:
        RGB uint8 panel of height ``sum of layout.size(n_row)[0]`` and width
        ``max of layout.size(n_row)[1]`` over the rows (``n_row`` tiles each).
    """
    query_image, gallery_image = check_rgb(query_image, "query image"), check_rgb(gallery_image, "gallery image")
    num_levels = len(summary.levels)
    if len(query_cams) != num_levels or len(gallery_cams) != num_levels:
        raise ValueError(f"expected {num_levels} CAM arrays per image, got {len(query_cams)} and {len(gallery_cams)}")
    for name, cams in (("query", query_cams), ("gallery", gallery_cams)):
        for level, maps in zip(summary.levels, cams):
            if np.ndim(maps) != 3 or any(n.node >= np.shape(maps)[0] for n in level.top):
                raise ValueError(f"{name} CAMs of {level.name} must be (R, h, w) covering the top nodes")
    text = attribution_text(summary, rank, correct)
    color = None if correct is None else (CORRECT_COLOR if correct else WRONG_COLOR)
    rows = [compose_panel([Tile(query_image, "query"), Tile(gallery_image, "gallery", color)], (), None, layout)]
    for index, level in enumerate(summary.levels):
        tiles = [
            tile
            for n in level.top
            for tile in _node_tiles(query_image, gallery_image, query_cams[index], gallery_cams[index], n.node,
                                    alpha)
        ]
        rows.append(compose_panel(tiles, (), None, layout))
    rect = summary.rectification
    if rect is not None:
        tiles = _node_tiles(query_image, gallery_image, query_cams[-1], gallery_cams[-1], rect.node, alpha)
        for f in rect.feeders:
            tiles += _node_tiles(query_image, gallery_image, query_cams[-2], gallery_cams[-2], f.node, alpha)
        rows.append(compose_panel(tiles, (), None, layout))
    return _stack_rows(rows, text, [color] + [None] * (len(rows) - 1), layout)
