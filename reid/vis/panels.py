"""Explanation panels: rows of image tiles with captions, coloured borders and a text header.

Layout of a panel of ``n`` tiles (all sizes in pixels, see :class:`PanelLayout`)::

    width  = n * tile_width + (n + 1) * margin
    height = header_height + tile_height + caption_height + margin

The header holds up to two lines of text; tile ``j`` starts at
``(x, y) = (margin + j * (tile_width + margin), header_height)`` and its caption sits below it.
A tile's border (green for a correct match, red for a wrong one) is drawn in the margin
around it. Every image is resized (bilinear, aspect ratio not kept) to the tile size.

References: SAM paper, Fig. 1 (similarity attention of a triplet); ``docs/method.md``
section 4 (one panel per query-gallery pair, triplet panels).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .image import check_rgb
from .overlay import overlay_heatmap

__all__ = [
    "CORRECT_COLOR",
    "WRONG_COLOR",
    "PanelLayout",
    "Tile",
    "compose_panel",
    "pair_panel",
    "triplet_panel",
]

CORRECT_COLOR: tuple[int, int, int] = (0, 170, 0)
"""Border and text colour of a correct match."""

WRONG_COLOR: tuple[int, int, int] = (210, 0, 0)
"""Border and text colour of a wrong match."""

_BACKGROUND = (255, 255, 255)
_TEXT = (0, 0, 0)


@dataclass(frozen=True)
class PanelLayout:
    """Pixel sizes of a panel (see the module docstring for the formulas).

    Attributes:
        tile_height: height of every image tile.
        tile_width: width of every image tile.
        margin: space between and around tiles.
        header_height: band above the tiles for two lines of text.
        caption_height: band below the tiles for their captions.
        border: width of a coloured tile border (drawn in the margin, at most ``margin``).
        font_size: text size.
    """

    tile_height: int = 256
    tile_width: int = 128
    margin: int = 8
    header_height: int = 40
    caption_height: int = 20
    border: int = 3
    font_size: int = 12

    def size(self, num_tiles: int) -> tuple[int, int]:
        """``(height, width)`` of a panel of ``num_tiles`` tiles."""
        width = num_tiles * self.tile_width + (num_tiles + 1) * self.margin
        height = self.header_height + self.tile_height + self.caption_height + self.margin
        return height, width


@dataclass(frozen=True)
class Tile:
    """One image of a panel.

    Attributes:
        image: ``(H, W, 3)`` RGB uint8 image.
        caption: text below the tile.
        border: RGB border colour, or None for no border.
    """

    image: np.ndarray
    caption: str = ""
    border: tuple[int, int, int] | None = None


def _correct_color(correct: bool | None) -> tuple[int, int, int] | None:
    if correct is None:
        return None
    return CORRECT_COLOR if correct else WRONG_COLOR


def _verdict(correct: bool | None) -> str:
    return "" if correct is None else ("correct" if correct else "wrong")


def _pid_text(pid: int | str | None) -> str:
    return "" if pid is None else f" (id {pid})"


def compose_panel(
    tiles: Sequence[Tile],
    header: Sequence[str] = (),
    header_color: tuple[int, int, int] | None = None,
    layout: PanelLayout = PanelLayout(),
) -> np.ndarray:
    """Draws tiles in a row under a text header.

    Args:
        tiles: the images, left to right.
        header: up to two lines of text above the tiles.
        header_color: RGB colour of the header text (black when None).
        layout: pixel sizes.

    Returns:
        ``(height, width, 3)`` RGB uint8 panel with ``(height, width) = layout.size(len(tiles))``.
    """
    if not tiles:
        raise ValueError("a panel needs at least one tile")
    if layout.border > layout.margin:
        raise ValueError("the border must fit in the margin")
    height, width = layout.size(len(tiles))
    canvas = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=layout.font_size)
    line_height = max(1, (layout.header_height - layout.margin) // 2)
    for i, line in enumerate(list(header)[:2]):
        draw.text((layout.margin, layout.margin // 2 + i * line_height), line, fill=header_color or _TEXT, font=font)
    top = layout.header_height
    for j, tile in enumerate(tiles):
        left = layout.margin + j * (layout.tile_width + layout.margin)
        image = Image.fromarray(check_rgb(tile.image, f"tile {j}"))
        canvas.paste(image.resize((layout.tile_width, layout.tile_height), Image.Resampling.BILINEAR), (left, top))
        if tile.border is not None and layout.border > 0:
            b = layout.border
            box = (left - b, top - b, left + layout.tile_width + b - 1, top + layout.tile_height + b - 1)
            draw.rectangle(box, outline=tile.border, width=b)
        if tile.caption:
            draw.text((left, top + layout.tile_height + layout.border), tile.caption, fill=_TEXT, font=font)
    return np.asarray(canvas, dtype=np.uint8).copy()


def pair_panel(
    query_image: np.ndarray,
    gallery_image: np.ndarray,
    query_map: np.ndarray,
    gallery_map: np.ndarray,
    distance: float,
    rank: int,
    correct: bool | None = None,
    query_pid: int | str | None = None,
    gallery_pid: int | str | None = None,
    alpha: float = 0.5,
    layout: PanelLayout = PanelLayout(),
) -> np.ndarray:
    """Panel of one query-gallery pair: query, query overlay, gallery overlay, gallery.

    The header gives the rank, the distance and, when ``correct`` is known, "correct" or
    "wrong" (green or red text, and a border of that colour around the gallery tiles).

    Args:
        query_image: ``(H, W, 3)`` RGB uint8 query image.
        gallery_image: ``(H', W', 3)`` RGB uint8 gallery image.
        query_map: ``(h, w)`` attention map of the query in ``[0, 1]``.
        gallery_map: ``(h', w')`` attention map of the gallery image in ``[0, 1]``.
        distance: query-gallery distance.
        rank: rank of the gallery image for the query (1 = best).
        correct: whether the identities match, or None when unknown.
        query_pid: identity of the query, if known.
        gallery_pid: identity of the gallery image, if known.
        alpha: heatmap weight of the overlays.
        layout: pixel sizes.

    Returns:
        ``layout.size(4) + (3,)`` RGB uint8 panel.
    """
    color = _correct_color(correct)
    tiles = [
        Tile(query_image, "query" + _pid_text(query_pid)),
        Tile(overlay_heatmap(query_image, query_map, alpha), "query attention"),
        Tile(overlay_heatmap(gallery_image, gallery_map, alpha), "gallery attention", color),
        Tile(gallery_image, "gallery" + _pid_text(gallery_pid), color),
    ]
    header = [f"rank {rank}   distance {distance:.4f}   {_verdict(correct)}".rstrip()]
    return compose_panel(tiles, header, color, layout)


def triplet_panel(
    anchor_image: np.ndarray,
    image_a: np.ndarray,
    image_b: np.ndarray,
    anchor_map: np.ndarray,
    map_a: np.ndarray,
    map_b: np.ndarray,
    distance_a: float,
    distance_b: float,
    correct_a: bool | None = None,
    correct_b: bool | None = None,
    alpha: float = 0.5,
    layout: PanelLayout = PanelLayout(),
) -> np.ndarray:
    """Panel "why is A closer than B": anchor, A and B with their overlays.

    The maps come from one triplet explanation (anchor, A as positive, B as negative). The
    header gives both distances; borders mark A and B as correct or wrong when known.

    Reference: SAM paper, section 3.1 and Fig. 1.

    Args:
        anchor_image: ``(H, W, 3)`` RGB uint8 anchor (query) image.
        image_a: RGB uint8 image of the closer gallery image A.
        image_b: RGB uint8 image of the farther gallery image B.
        anchor_map: ``(h, w)`` map of the anchor in ``[0, 1]``.
        map_a: map of A in ``[0, 1]``.
        map_b: map of B in ``[0, 1]``.
        distance_a: anchor-A distance.
        distance_b: anchor-B distance.
        correct_a: whether A has the anchor's identity, or None.
        correct_b: whether B has the anchor's identity, or None.
        alpha: heatmap weight of the overlays.
        layout: pixel sizes.

    Returns:
        ``layout.size(6) + (3,)`` RGB uint8 panel.
    """
    color_a, color_b = _correct_color(correct_a), _correct_color(correct_b)
    tiles = [
        Tile(anchor_image, "anchor"),
        Tile(overlay_heatmap(anchor_image, anchor_map, alpha), "anchor attention"),
        Tile(image_a, f"A {_verdict(correct_a)}".rstrip(), color_a),
        Tile(overlay_heatmap(image_a, map_a, alpha), "A attention", color_a),
        Tile(image_b, f"B {_verdict(correct_b)}".rstrip(), color_b),
        Tile(overlay_heatmap(image_b, map_b, alpha), "B attention", color_b),
    ]
    relation = "<" if distance_a < distance_b else (">" if distance_a > distance_b else "=")
    header = [
        "why is A closer to the anchor than B?",
        f"d(anchor, A) = {distance_a:.4f} {relation} d(anchor, B) = {distance_b:.4f}",
    ]
    return compose_panel(tiles, header, None, layout)
