"""Visualisation: heatmap overlays, explanation panels, AVSL attribution panels and an HTML report.

numpy, PIL and OpenCV only; no model knowledge. Inputs are plain data: RGB uint8 images
``(H, W, 3)``, maps in ``[0, 1]`` (normalise them first, e.g. with
:func:`reid.explain.normalize_maps`, then ``.cpu().numpy()``), numbers and strings.

Reference: ``docs/method.md`` section 4 (panels, report) and section 5 (AVSL attribution panels).
"""

from .attribution import (
    ATTRIBUTION_LAYOUT,
    Feeder,
    LevelAttribution,
    NodeContribution,
    PairAttribution,
    Rectification,
    attribution_panel,
    attribution_text,
    summarize_attribution,
    top_contributions,
)
from .image import IMAGENET_MEAN, IMAGENET_STD, denormalize_image, load_image, save_image
from .overlay import colorize_map, overlay_heatmap
from .panels import CORRECT_COLOR, WRONG_COLOR, PanelLayout, Tile, compose_panel, pair_panel, triplet_panel
from .report import Match, Panel, QueryResult, write_html_report

__all__ = [
    "ATTRIBUTION_LAYOUT",
    "CORRECT_COLOR",
    "Feeder",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LevelAttribution",
    "WRONG_COLOR",
    "Match",
    "NodeContribution",
    "PairAttribution",
    "Panel",
    "PanelLayout",
    "QueryResult",
    "Rectification",
    "Tile",
    "attribution_panel",
    "attribution_text",
    "colorize_map",
    "compose_panel",
    "denormalize_image",
    "load_image",
    "overlay_heatmap",
    "pair_panel",
    "save_image",
    "summarize_attribution",
    "top_contributions",
    "triplet_panel",
    "write_html_report",
]
