"""The explanation explorer: one self-contained, interactive HTML page per run.

:func:`write_explorer` writes a single HTML file holding everything it shows: the images as PNG
data URIs, the maps and correspondence matrices as JSON, the CMC curve and the distance
histograms as inline SVG, and a small script that draws the overlays on ``<canvas>`` elements.
It opens from ``file://`` with no server and no network access, and can be mailed or archived
on its own.

What the page offers (``docs/explanations.md``, "The explorer"):

* the run's numbers (rank-1, mAP, mINP), its CMC curve and the histograms of the distances of
  true and of wrong query-gallery pairs;
* the explained queries sorted by average precision, worst first (fast-reid's convention), each
  with its ranked matches marked correct or wrong;
* a switch (``<select id="explainer">``) between the explainers the run recorded (e.g. similarity
  attention, the signed cell maps of the exact decomposition) and the plain images;
* hovering a cell of the query image highlights the gallery cells it corresponds to, from the
  pair's correspondence matrix (rows: query cells, columns: gallery cells, both row-major);
* bars of each pair's score split into parts (e.g. per stripe), and optional tables (e.g. which
  stripe made the wrong top-1 matches close).

Inputs are plain data (RGB ``uint8`` images, 2-D float maps, numbers, strings); the module knows
nothing about models.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .image import check_rgb
from .report import html_page
from reid.io import names_file

__all__ = [
    "ExplorerExplainer",
    "ExplorerMatch",
    "ExplorerQuery",
    "FailureTable",
    "RunStatistics",
    "write_explorer",
]

logger = logging.getLogger(__name__)

# Significant digits kept for the maps and correspondences written into the page.
_DIGITS = 4
# Height, in CSS pixels, at which images are drawn (integer upscaling of small crops).
_DRAW_HEIGHT = 160
_CMC_RANKS = 20


@dataclass(frozen=True)
class ExplorerExplainer:
    """One explainer the switch offers.

    Attributes:
        key: identifier used in :attr:`ExplorerMatch.maps`.
        label: text of the switch's option.
        signed: the maps are signed (drawn blue for negative, red for positive, scaled by the
            largest magnitude); otherwise they are non-negative and drawn with a heat colour map
            scaled to their maximum.
        note: one sentence shown under the switch when this explainer is selected.
    """

    key: str
    label: str
    signed: bool = False
    note: str = ""


@dataclass(frozen=True)
class ExplorerMatch:
    """One ranked gallery match of a query.

    Attributes:
        image: the gallery image, RGB ``uint8`` ``(H, W, 3)``.
        name: caption (e.g. the file name).
        pid: gallery identity.
        distance: query-gallery distance.
        rank: 1-based rank.
        correct: whether the identities match.
        maps: ``{explainer key: (query map, gallery map)}``, each a 2-D float array.
        contributions: the pair's score split into named parts (e.g. ``("stripe 1", term)``,
            top stripe first), drawn as bars; empty for none.
        contributions_label: what the parts add up to (e.g. "squared distance by stripe").
        highlight: index of the part to mark (e.g. the closest stripe), or None.
        correspondence: ``(hq * wq, hg * wg)`` matrix, row ``i`` the query cell ``i``'s
            correspondence with every gallery cell (positive entries are highlighted), or None.
        query_grid: ``(hq, wq)`` cell grid of the correspondence's rows.
        gallery_grid: ``(hg, wg)`` cell grid of its columns.
        panel: relative link to a PNG panel of the pair, or None.
    """

    image: np.ndarray
    name: str
    pid: int | str | None
    distance: float
    rank: int
    correct: bool | None
    maps: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    contributions: Sequence[tuple[str, float]] = ()
    contributions_label: str = ""
    highlight: int | None = None
    correspondence: np.ndarray | None = None
    query_grid: tuple[int, int] | None = None
    gallery_grid: tuple[int, int] | None = None
    panel: str | None = None


@dataclass(frozen=True)
class ExplorerQuery:
    """A query with its ranked matches.

    Attributes:
        image: the query image, RGB ``uint8``.
        name: heading.
        pid: identity.
        ap: its average precision in ``[0, 1]``, or None when it has no true match (sorted last).
        first_match_rank: rank of its first true match (0 when none).
        matches: its ranked matches.
        panels: relative links to further PNG panels (e.g. a triplet panel) with captions.
    """

    image: np.ndarray
    name: str
    pid: int | str | None
    ap: float | None
    first_match_rank: int
    matches: Sequence[ExplorerMatch]
    panels: Sequence[tuple[str, str]] = ()


@dataclass(frozen=True)
class RunStatistics:
    """The run's numbers, drawn in the page's header.

    Attributes:
        source: which queries the numbers cover, in words (e.g. "all 589 queries").
        cmc: the CMC curve, ``cmc[k - 1]`` the rank-k rate in ``[0, 1]``.
        mAP: mean average precision.
        mINP: mean inverse negative penalty.
        edges: ``(B + 1,)`` histogram bin edges of the distances.
        positive_counts: ``(B,)`` counts of true pairs (same identity, kept by the protocol).
        negative_counts: ``(B,)`` counts of wrong pairs.
    """

    source: str
    cmc: Sequence[float]
    mAP: float
    mINP: float
    edges: Sequence[float]
    positive_counts: Sequence[int]
    negative_counts: Sequence[int]


@dataclass(frozen=True)
class FailureTable:
    """A small table shown under the header (e.g. which stripe made wrong top-1 matches close).

    Attributes:
        title: heading.
        header: column names.
        rows: cells, one sequence per row.
        note: a sentence under the table.
    """

    title: str
    header: Sequence[str]
    rows: Sequence[Sequence[object]]
    note: str = ""


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _data_uri(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(check_rgb(image)).save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _rounded(values: np.ndarray) -> list[float]:
    flat = np.asarray(values, dtype=np.float64).ravel()
    if not np.all(np.isfinite(flat)):
        raise ValueError("maps and correspondences must be finite")
    return [float(f"{v:.{_DIGITS}g}") for v in flat]


def _map_json(values: np.ndarray, what: str) -> dict[str, object]:
    values = np.asarray(values)
    if values.ndim != 2 or values.size == 0:
        raise ValueError(f"{what} must be a non-empty 2-D map, got shape {values.shape}")
    return {"h": int(values.shape[0]), "w": int(values.shape[1]), "v": _rounded(values)}


class _Images:
    """Data URIs of the images, each distinct image stored once (and an array shown several
    times, e.g. a gallery image in several ranked lists, encoded once)."""

    def __init__(self) -> None:
        self.uris: list[str] = []
        self.sizes: list[tuple[int, int]] = []
        self._index: dict[str, int] = {}
        self._encoded: dict[int, tuple[np.ndarray, int]] = {}  # id(array) -> (array, index)

    def add(self, image: np.ndarray) -> int:
        known = self._encoded.get(id(image))
        if known is not None and known[0] is image:
            return known[1]
        uri = _data_uri(image)
        if uri not in self._index:
            self._index[uri] = len(self.uris)
            self.uris.append(uri)
            self.sizes.append((int(image.shape[0]), int(image.shape[1])))
        self._encoded[id(image)] = (image, self._index[uri])
        return self._index[uri]


def _match_json(images: _Images, match: ExplorerMatch, keys: set[str], where: str) -> dict[str, object]:
    unknown = set(match.maps) - keys
    if unknown:
        raise ValueError(f"{where}: maps of unknown explainers {sorted(unknown)} (known: {sorted(keys)})")
    record: dict[str, object] = {
        "image": images.add(match.image),
        "maps": {
            key: [_map_json(q, f"{where} {key} query map"), _map_json(g, f"{where} {key} gallery map")]
            for key, (q, g) in match.maps.items()
        },
    }
    if match.correspondence is not None:
        if match.query_grid is None or match.gallery_grid is None:
            raise ValueError(f"{where}: a correspondence needs query_grid and gallery_grid")
        (hq, wq), (hg, wg) = match.query_grid, match.gallery_grid
        corr = np.asarray(match.correspondence)
        if corr.shape != (hq * wq, hg * wg):
            raise ValueError(
                f"{where}: correspondence of shape {corr.shape} does not fit the grids "
                f"{hq}x{wq} (rows) and {hg}x{wg} (columns)"
            )
        record["corr"] = {"q": [hq, wq], "g": [hg, wg], "v": _rounded(corr)}
    return record


def _contribution_bars(match: ExplorerMatch) -> str:
    if not match.contributions:
        return ""
    values = np.asarray([value for _, value in match.contributions], dtype=np.float64)
    scale = float(np.abs(values).max()) or 1.0
    rows = []
    for k, ((name, value), width) in enumerate(zip(match.contributions, 100.0 * np.abs(values) / scale)):
        mark = " marked" if k == match.highlight else ""
        sign = " negative" if value < 0 else ""
        rows.append(
            f'<div class="bar-row{mark}"><span class="bar-label">{_esc(name)}</span>'
            f'<span class="bar{sign}" style="width:{width:.1f}px"></span>'
            f'<span class="bar-value">{value:.4g}</span></div>'
        )
    label = _esc(match.contributions_label or "score by part")
    return f'<div class="contributions"><div class="bar-title">{label}</div>{"".join(rows)}</div>'


def _verdict(correct: bool | None) -> str:
    if correct is None:
        return ""
    word = "correct" if correct else "wrong"
    return f'<span class="verdict {word}">{word}</span>'


def _canvas(query: int, match: int, side: str) -> str:
    return f'<canvas class="view {side}" data-q="{query}" data-m="{match}" data-side="{side}"></canvas>'


def _query_html(position: int, index: int, query: ExplorerQuery) -> str:
    ap = "n/a (no true match)" if query.ap is None else f"{100.0 * query.ap:.1f}%"
    first = f"first true match at rank {query.first_match_rank}" if query.first_match_rank else "no true match"
    top = query.matches[0].correct if query.matches else None
    css = "" if top is None else (" top-correct" if top else " top-wrong")
    parts = [
        f'<section class="query{css}" id="q{index}" data-ap="{"" if query.ap is None else f"{query.ap:.6f}"}">',
        f'<h2>{position}. {_esc(query.name)}</h2>',
        f'<p class="query-info">identity {_esc(query.pid)} &middot; AP {ap} &middot; {first}</p>',
        '<div class="matches">',
    ]
    for k, match in sorted(enumerate(query.matches), key=lambda item: item[1].rank):
        panel = (
            f' &middot; <a href="{_esc(match.panel)}">PNG panel</a>' if match.panel else ""
        )
        hover = ' <span class="hint">hover the query to see what it matched</span>' if match.correspondence is not None else ""
        parts += [
            f'<div class="match {"correct" if match.correct else "wrong" if match.correct is not None else ""}">',
            f'<div class="pair">{_canvas(index, k, "query")}{_canvas(index, k, "gallery")}</div>',
            f'<p class="match-info"><b>rank {match.rank}</b> {_verdict(match.correct)}<br>'
            f"distance {match.distance:.4f}<br>identity {_esc(match.pid)}<br>"
            f"<small>{_esc(match.name)}</small>{panel}{hover}</p>",
            _contribution_bars(match),
            "</div>",
        ]
    parts.append("</div>")
    for link, caption in query.panels:
        parts.append(f'<p class="extra"><a href="{_esc(link)}">{_esc(caption)}</a></p>')
    parts.append("</section>")
    return "\n".join(parts)


def _polyline(points: Sequence[tuple[float, float]]) -> str:
    return " ".join(f"{x:.1f},{y:.1f}" for x, y in points)


def _cmc_svg(cmc: Sequence[float]) -> str:
    values = np.asarray(cmc, dtype=np.float64)[:_CMC_RANKS]
    if values.size == 0:
        return ""
    width, height, left, bottom = 300, 170, 36, 24
    plot_w, plot_h = width - left - 10, height - bottom - 10
    step = plot_w / max(values.size - 1, 1)
    points = [(left + k * step, 10 + plot_h * (1.0 - v)) for k, v in enumerate(values)]
    ticks = "".join(
        f'<text x="{left - 4}" y="{10 + plot_h * (1 - t) + 4:.1f}" text-anchor="end">{int(100 * t)}</text>'
        for t in (0.0, 0.5, 1.0)
    )
    ranks = "".join(
        f'<text x="{left + (r - 1) * step:.1f}" y="{height - 8}" text-anchor="middle">{r}</text>'
        for r in sorted({1, 5, 10, values.size} & set(range(1, values.size + 1)))
    )
    return (
        f'<svg class="plot" id="cmc" width="{width}" height="{height}" role="img" aria-label="CMC curve">'
        f"<title>CMC: matching rate (%) by rank</title>"
        f'<rect x="{left}" y="10" width="{plot_w}" height="{plot_h}" class="frame"/>'
        f'<polyline points="{_polyline(points)}" class="cmc-line"/>{ticks}{ranks}'
        f'<text x="{left + plot_w / 2:.1f}" y="{height}" text-anchor="middle">rank</text></svg>'
    )


def _histogram_svg(edges: Sequence[float], positive: Sequence[int], negative: Sequence[int]) -> str:
    edges_a = np.asarray(edges, dtype=np.float64)
    pos, neg = np.asarray(positive, dtype=np.float64), np.asarray(negative, dtype=np.float64)
    if edges_a.size < 2 or pos.size != edges_a.size - 1 or neg.size != pos.size:
        raise ValueError(
            f"histogram needs B + 1 edges and B counts per kind, got {edges_a.size} edges, {pos.size} and {neg.size} counts"
        )
    width, height, left, bottom = 300, 170, 10, 24
    plot_w, plot_h = width - 2 * left, height - bottom - 10
    densities = [c / c.sum() if c.sum() > 0 else c for c in (pos, neg)]
    top = max(float(max(d.max() for d in densities)), 1e-12)
    bin_w = plot_w / pos.size

    def steps(density: np.ndarray) -> str:
        points = [(left, 10 + plot_h)]
        for b, value in enumerate(density):
            y = 10 + plot_h * (1.0 - value / top)
            points += [(left + b * bin_w, y), (left + (b + 1) * bin_w, y)]
        points.append((left + plot_w, 10 + plot_h))
        return _polyline(points)

    return (
        f'<svg class="plot" id="histogram" width="{width}" height="{height}" role="img" '
        f'aria-label="distance histograms">'
        f"<title>distances of true pairs (green, {int(pos.sum())}) and wrong pairs (red, {int(neg.sum())})</title>"
        f'<rect x="{left}" y="10" width="{plot_w}" height="{plot_h}" class="frame"/>'
        f'<polyline points="{steps(densities[1])}" class="hist-negative"/>'
        f'<polyline points="{steps(densities[0])}" class="hist-positive"/>'
        f'<text x="{left}" y="{height - 8}">{edges_a[0]:.3g}</text>'
        f'<text x="{left + plot_w}" y="{height - 8}" text-anchor="end">{edges_a[-1]:.3g}</text>'
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 8}" text-anchor="middle">distance</text></svg>'
    )


def _stats_html(stats: RunStatistics | None) -> str:
    if stats is None:
        return ""
    cmc = np.asarray(stats.cmc, dtype=np.float64)
    rank = lambda k: f"{100.0 * cmc[min(k, cmc.size) - 1]:.1f}%" if cmc.size else "n/a"  # noqa: E731
    return (
        '<section class="stats"><h2>The run</h2>'
        f"<p>{_esc(stats.source)}: rank-1 {rank(1)}, rank-5 {rank(5)}, mAP {100.0 * stats.mAP:.1f}%, "
        f"mINP {100.0 * stats.mINP:.1f}%.</p>"
        '<div class="plots"><figure>' + _cmc_svg(stats.cmc) + "<figcaption>CMC (matching rate, %)</figcaption></figure>"
        "<figure>" + _histogram_svg(stats.edges, stats.positive_counts, stats.negative_counts)
        + '<figcaption><span class="pos">true pairs</span> and <span class="neg">wrong pairs</span>: '
        "share of each kind per distance bin</figcaption></figure></div></section>"
    )


def _table_html(table: FailureTable) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in table.header)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>" for row in table.rows)
    note = f"<p class=\"note\">{_esc(table.note)}</p>" if table.note else ""
    return f'<section class="failures"><h2>{_esc(table.title)}</h2><table><tr>{head}</tr>{body}</table>{note}</section>'


def _query_order(queries: Sequence[ExplorerQuery]) -> list[int]:
    """Indices of the queries by AP, worst first; queries without a true match last."""
    return sorted(range(len(queries)), key=lambda i: (queries[i].ap is None, queries[i].ap or 0.0, i))


def write_explorer(
    path: str | os.PathLike,
    queries: Sequence[ExplorerQuery],
    explainers: Sequence[ExplorerExplainer],
    title: str = "Explanations",
    stats: RunStatistics | None = None,
    tables: Sequence[FailureTable] = (),
    notes: Sequence[str] = (),
) -> Path:
    """Writes the explorer page (module docstring) to ``path``.

    Args:
        path: the HTML file (its folder is created).
        queries: the explained queries, in any order (the page sorts them by AP, worst first).
        explainers: the explainers of the switch; every key of every match's ``maps`` must be one
            of them. The switch also offers the plain images.
        title: page title.
        stats: the run's numbers, or None.
        tables: tables shown under the header.
        notes: sentences shown under the title (e.g. what the distance is).

    Returns:
        ``Path(path)``.

    Raises:
        ValueError: duplicate explainer keys, maps of unknown explainers, a map that is not a
            finite 2-D array, a correspondence that does not fit its grids, or bad histograms.
    """
    keys = [e.key for e in explainers]
    if len(set(keys)) != len(keys) or "none" in keys:
        raise ValueError(f"explainer keys must be distinct and not 'none', got {keys}")
    images = _Images()
    order = _query_order(queries)
    records = []
    for index, query in enumerate(queries):
        records.append({
            "image": images.add(query.image),
            "matches": [
                _match_json(images, m, set(keys), f"query {index} match {k}") for k, m in enumerate(query.matches)
            ],
        })
    data = {
        "explainers": [{"key": e.key, "label": e.label, "signed": e.signed, "note": e.note} for e in explainers],
        "images": images.uris,
        "sizes": images.sizes,
        "queries": records,
        "drawHeight": _DRAW_HEIGHT,
    }
    # "</" would end the script element early; JSON allows "\/" for "/".
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    options = "".join(f'<option value="{_esc(e.key)}">{_esc(e.label)}</option>' for e in explainers)
    options += '<option value="none">images only</option>'
    nav = " ".join(
        f'<a href="#q{i}" class="{"" if not queries[i].matches else "ok" if queries[i].matches[0].correct else "bad"}">'
        f"{position + 1}</a>"
        for position, i in enumerate(order)
    )
    page = html_page(title, _CSS, [
        *(f'<p class="note">{_esc(n)}</p>' for n in notes),
        _stats_html(stats),
        *(_table_html(t) for t in tables),
        '<div class="controls"><label>explainer <select id="explainer">' + options + "</select></label>"
        ' <span id="explainer-note"></span></div>',
        f'<nav>queries by AP, worst first: {nav}</nav>',
        *(_query_html(position + 1, i, queries[i]) for position, i in enumerate(order)),
        f'<script type="application/json" id="explorer-data">{payload}</script>',
        f"<script>{_SCRIPT}</script>",
    ])
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with names_file(str(out)):
        out.write_text(page, encoding="utf-8")
    logger.info(
        "wrote the explorer %s (%d queries, %d images, %.1f MB)",
        out, len(queries), len(images.uris), out.stat().st_size / 2**20,
    )
    return out


_CSS = """
body { font-family: sans-serif; margin: 1em 2em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin: 0.3em 0; }
.note { color: #555; font-size: 0.9em; }
.plots { display: flex; gap: 2em; flex-wrap: wrap; }
.plot text { font-size: 10px; fill: #444; }
.plot .frame { fill: none; stroke: #bbb; }
.cmc-line { fill: none; stroke: #1f5fbf; stroke-width: 2; }
.hist-positive { fill: rgba(0, 160, 0, 0.25); stroke: #00a000; }
.hist-negative { fill: rgba(210, 0, 0, 0.2); stroke: #d20000; }
.pos { color: #00a000; } .neg { color: #d20000; }
figure { margin: 0; } figcaption { font-size: 0.85em; color: #555; }
table { border-collapse: collapse; } td, th { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }
.controls { position: sticky; top: 0; background: #fff; padding: 0.5em 0; border-bottom: 1px solid #ddd; z-index: 2; }
nav { margin: 0.5em 0; } nav a { margin-right: 0.4em; } nav a.bad { color: #d20000; } nav a.ok { color: #00a000; }
section.query { border-top: 2px solid #888; padding: 0.5em 0 1em 0; }
section.query.top-wrong h2 { color: #a00000; }
.matches { display: flex; flex-wrap: wrap; gap: 0.8em; }
.match { display: flex; gap: 0.5em; padding: 0.4em; border-left: 6px solid #bbb; background: #fafafa; }
.match.correct { border-left-color: #00aa00; } .match.wrong { border-left-color: #d20000; }
.pair { display: flex; gap: 2px; }
canvas.view { image-rendering: auto; cursor: crosshair; }
.match-info { font-size: 0.85em; margin: 0; min-width: 8em; }
.verdict.correct { color: #00aa00; font-weight: bold; } .verdict.wrong { color: #d20000; font-weight: bold; }
.hint { color: #777; font-size: 0.85em; }
.contributions { font-size: 0.75em; }
.bar-row { display: flex; align-items: center; gap: 0.3em; height: 1.2em; }
.bar-row.marked .bar-label { font-weight: bold; }
.bar { display: inline-block; height: 0.8em; background: #7a7ad0; }
.bar-row.marked .bar { background: #d08a2a; } .bar.negative { background: #5aa0d0; }
.bar-label { width: 4.5em; } .bar-value { color: #555; }
"""

# Draws each canvas: the image, then the selected explainer's map (bilinear upsampling); hovering
# the query canvas of a pair with a correspondence shows that query cell's row on the gallery.
_SCRIPT = r"""
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("explorer-data").textContent);
  var select = document.getElementById("explainer");
  var note = document.getElementById("explainer-note");
  var explainers = {};
  data.explainers.forEach(function (e) { explainers[e.key] = e; });
  var images = data.images.map(function (uri) { var im = new Image(); im.src = uri; return im; });
  var canvases = Array.prototype.slice.call(document.querySelectorAll("canvas.view"));

  function heat(t) {  // t in [0, 1] -> [r, g, b] (dark blue, cyan, yellow, red)
    var stops = [[0, 0, 130], [0, 200, 255], [255, 230, 0], [220, 0, 0]];
    var x = Math.max(0, Math.min(1, t)) * (stops.length - 1), i = Math.min(Math.floor(x), stops.length - 2), f = x - i;
    return [0, 1, 2].map(function (c) { return Math.round(stops[i][c] + f * (stops[i + 1][c] - stops[i][c])); });
  }
  function mapCanvas(map, signed, alphaFloor) {
    var c = document.createElement("canvas"); c.width = map.w; c.height = map.h;
    var ctx = c.getContext("2d"), img = ctx.createImageData(map.w, map.h), v = map.v, scale = 0;
    for (var k = 0; k < v.length; k++) { scale = Math.max(scale, signed ? Math.abs(v[k]) : v[k]); }
    scale = scale > 0 ? scale : 1;
    for (k = 0; k < v.length; k++) {
      var rgb, a;
      if (signed) { var s = v[k] / scale; rgb = s >= 0 ? [220, 30, 30] : [30, 80, 230]; a = Math.abs(s); }
      else { var t = Math.max(0, v[k]) / scale; rgb = heat(t); a = alphaFloor + (1 - alphaFloor) * t; }
      img.data[4 * k] = rgb[0]; img.data[4 * k + 1] = rgb[1]; img.data[4 * k + 2] = rgb[2];
      img.data[4 * k + 3] = Math.round(255 * 0.65 * a);
    }
    ctx.putImageData(img, 0, 0);
    return c;
  }
  function matchOf(canvas) { return data.queries[+canvas.dataset.q].matches[+canvas.dataset.m]; }
  function imageOf(canvas) {
    var m = matchOf(canvas);
    return canvas.dataset.side === "query" ? data.queries[+canvas.dataset.q].image : m.image;
  }
  function base(canvas) {
    var id = imageOf(canvas), size = data.sizes[id], s = Math.max(1, Math.round(data.drawHeight / size[0]));
    if (canvas.width !== size[1] * s) { canvas.width = size[1] * s; canvas.height = size[0] * s; }
    var ctx = canvas.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(images[id], 0, 0, canvas.width, canvas.height);
    ctx.imageSmoothingEnabled = true;
    return ctx;
  }
  function draw(canvas) {
    var ctx = base(canvas), key = select.value, maps = matchOf(canvas).maps[key];
    delete canvas.dataset.highlight;
    canvas.dataset.explainer = maps ? key : "none";
    if (!maps) { return; }
    var map = maps[canvas.dataset.side === "query" ? 0 : 1];
    ctx.drawImage(mapCanvas(map, explainers[key].signed, 0.15), 0, 0, canvas.width, canvas.height);
  }
  function drawAll() {
    canvases.forEach(draw);
    var e = explainers[select.value];
    note.textContent = e ? e.note : "the images alone";
    document.body.dataset.explainer = select.value;
  }
  function partner(canvas) {
    return canvas.parentNode.querySelector('canvas[data-side="gallery"]');
  }
  function hover(event) {
    var canvas = event.currentTarget, corr = matchOf(canvas).corr;
    if (!corr) { return; }
    var rect = canvas.getBoundingClientRect();
    var x = (event.clientX - rect.left) / rect.width, y = (event.clientY - rect.top) / rect.height;
    var row = Math.min(corr.q[0] - 1, Math.max(0, Math.floor(y * corr.q[0])));
    var col = Math.min(corr.q[1] - 1, Math.max(0, Math.floor(x * corr.q[1])));
    var cell = row * corr.q[1] + col, n = corr.g[0] * corr.g[1];
    var gallery = partner(canvas);
    if (gallery.dataset.highlight === String(cell)) { return; }
    var values = corr.v.slice(cell * n, (cell + 1) * n).map(function (v) { return Math.max(0, v); });
    var ctx = base(canvas);
    ctx.strokeStyle = "#ff00ff"; ctx.lineWidth = 3;
    ctx.strokeRect(col * canvas.width / corr.q[1], row * canvas.height / corr.q[0],
                   canvas.width / corr.q[1], canvas.height / corr.q[0]);
    var gctx = base(gallery);
    gctx.drawImage(mapCanvas({h: corr.g[0], w: corr.g[1], v: values}, false, 0), 0, 0, gallery.width, gallery.height);
    gallery.dataset.highlight = String(cell);
    canvas.dataset.highlight = String(cell);
  }
  function leave(event) {
    var canvas = event.currentTarget;
    draw(canvas); draw(partner(canvas));
  }
  canvases.forEach(function (canvas) {
    if (canvas.dataset.side === "query") {
      canvas.addEventListener("mousemove", hover);
      canvas.addEventListener("mouseleave", leave);
    }
  });
  select.addEventListener("change", drawAll);
  var pending = images.length;
  function loaded() { pending -= 1; if (pending <= 0) { drawAll(); document.body.dataset.ready = "1"; } }
  if (!pending) { drawAll(); document.body.dataset.ready = "1"; }
  images.forEach(function (im) {
    if (im.complete) { loaded(); } else { im.onload = loaded; im.onerror = function () { console.error("image failed"); loaded(); }; }
  });
})();
"""

