"""Visualisation: heatmap overlays, explanation panels and an HTML report.

numpy, PIL and OpenCV only; no model knowledge. Inputs are plain data: RGB uint8 images
``(H, W, 3)``, maps in ``[0, 1]`` (normalise them first, e.g. with
:func:`reid.explain.normalize_maps`, then ``.cpu().numpy()``), numbers and strings.

Reference: ``shared/METHOD.md`` section 4.
"""

from .image import IMAGENET_MEAN, IMAGENET_STD, denormalize_image, load_image, save_image
from .overlay import colorize_map, overlay_heatmap
from .panels import CORRECT_COLOR, WRONG_COLOR, PanelLayout, Tile, compose_panel, pair_panel, triplet_panel
from .report import Match, Panel, QueryResult, write_html_report

__all__ = [
    "CORRECT_COLOR",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "WRONG_COLOR",
    "Match",
    "Panel",
    "PanelLayout",
    "QueryResult",
    "Tile",
    "colorize_map",
    "compose_panel",
    "denormalize_image",
    "load_image",
    "overlay_heatmap",
    "pair_panel",
    "save_image",
    "triplet_panel",
    "write_html_report",
]
