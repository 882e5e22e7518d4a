"""A self-contained HTML report of ranked matches and their explanation panels.

:func:`write_html_report` writes ``out_dir/index.html`` (or another page name) and puts every image it shows under
``out_dir`` (files already inside ``out_dir`` are linked where they are, others are copied to
``out_dir/<image_dir>/``). All links are relative, the CSS is inline and there is no script, so
the folder can be moved, archived or opened from disk. All text is HTML-escaped.

Reference: ``docs/method.md`` section 4 (one HTML index page over all panels).
"""

from __future__ import annotations

import html
import logging
import os
import re
import shutil

from reid.io import names_file
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

__all__ = ["Match", "Panel", "QueryResult", "write_html_report"]

logger = logging.getLogger(__name__)

_CSS = """
body { font-family: sans-serif; margin: 1em 2em; color: #222; }
h1 { font-size: 1.5em; }
nav a { margin-right: 0.6em; }
section.query { border-top: 2px solid #888; padding: 0.5em 0 1em 0; }
.query-head { display: flex; align-items: flex-start; gap: 1em; }
.query-head img { height: 160px; }
.match { display: flex; align-items: flex-start; gap: 1em; margin: 0.6em 0; padding: 0.4em;
         border-left: 6px solid #bbb; }
.match.correct { border-left-color: #00aa00; }
.match.wrong { border-left-color: #d20000; }
.match .thumb { height: 128px; }
.panel { max-width: 100%; }
figure { margin: 0; }
figcaption { font-size: 0.85em; color: #555; }
.verdict-correct { color: #00aa00; font-weight: bold; }
.verdict-wrong { color: #d20000; font-weight: bold; }
"""


@dataclass(frozen=True)
class Panel:
    """An extra image shown with a match or a query, e.g. a triplet or an attribution panel.

    Attributes:
        path: image file.
        caption: text shown under the image.
    """

    path: str | os.PathLike
    caption: str = ""


@dataclass(frozen=True)
class Match:
    """One ranked gallery match of a query.

    Attributes:
        gallery_path: gallery image file.
        pid: gallery identity, or None when unknown.
        distance: query-gallery distance.
        rank: rank for the query (1 = best).
        correct: whether the identities match, or None when unknown.
        panel_path: the explanation panel (see :func:`~reid.vis.panels.pair_panel`), or None.
        extra_panels: further panels with captions (e.g. attributions).
    """

    gallery_path: str | os.PathLike
    pid: int | str | None
    distance: float
    rank: int
    correct: bool | None = None
    panel_path: str | os.PathLike | None = None
    extra_panels: Sequence[Panel] = field(default_factory=tuple)


@dataclass(frozen=True)
class QueryResult:
    """A query with its ranked matches.

    Attributes:
        query_image_path: query image file.
        query_pid: query identity, or None when unknown.
        matches: the ranked matches (shown sorted by rank).
        extra_panels: panels about the query as a whole, e.g. triplet panels
            ("why is A closer than B", see :func:`~reid.vis.panels.triplet_panel`).
        name: heading of the query's section (the image's file name when empty).
    """

    query_image_path: str | os.PathLike
    query_pid: int | str | None
    matches: Sequence[Match]
    extra_panels: Sequence[Panel] = field(default_factory=tuple)
    name: str = ""


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


class _Assets:
    """Maps source image files to relative links inside the report folder, copying as needed."""

    def __init__(self, out_dir: Path, image_dir: str) -> None:
        self.out_dir = out_dir.resolve()
        self.image_dir = image_dir
        self.links: dict[Path, str] = {}

    def link(self, path: str | os.PathLike) -> str:
        """The escaped, URL-quoted relative link of ``path`` (copied into the report if outside)."""
        source = Path(path).resolve()
        if source not in self.links:
            if not source.is_file():
                raise FileNotFoundError(f"image for the report not found: {path}")
            if source.is_relative_to(self.out_dir):
                relative = source.relative_to(self.out_dir)
            else:
                safe_name = re.sub(r"[^A-Za-z0-9._-]", "_", source.name)
                relative = Path(self.image_dir) / f"{len(self.links):05d}_{safe_name}"
                (self.out_dir / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, self.out_dir / relative)
            self.links[source] = _esc(quote(relative.as_posix()))
        return self.links[source]


def _figure(assets: _Assets, panel: Panel, css_class: str = "panel") -> str:
    link = assets.link(panel.path)
    caption = f"<figcaption>{_esc(panel.caption)}</figcaption>" if panel.caption else ""
    return (
        f'<figure><a href="{link}"><img class="{css_class}" src="{link}" '
        f'alt="{_esc(panel.caption or "panel")}"></a>{caption}</figure>'
    )


def _verdict_html(correct: bool | None) -> str:
    if correct is None:
        return ""
    word = "correct" if correct else "wrong"
    return f' <span class="verdict-{word}">{word}</span>'


def _match_html(assets: _Assets, match: Match) -> str:
    state = "" if match.correct is None else (" correct" if match.correct else " wrong")
    pid = "" if match.pid is None else f" &middot; id {_esc(match.pid)}"
    parts = [
        f'<div class="match{state}">',
        _figure(assets, Panel(match.gallery_path, f"rank {match.rank}"), "thumb"),
        "<div>",
        f"<p><b>rank {_esc(match.rank)}</b> &middot; distance {_esc(f'{match.distance:.4f}')}"
        f"{pid}{_verdict_html(match.correct)}<br><small>{_esc(os.fspath(match.gallery_path))}</small></p>",
    ]
    if match.panel_path is not None:
        parts.append(_figure(assets, Panel(match.panel_path, "similarity attention")))
    parts.extend(_figure(assets, panel) for panel in match.extra_panels)
    parts.append("</div></div>")
    return "\n".join(parts)


def _query_html(assets: _Assets, index: int, query: QueryResult) -> str:
    name = query.name or Path(query.query_image_path).name
    pid = "" if query.query_pid is None else f"id {_esc(query.query_pid)}"
    parts = [
        f'<section class="query" id="q{index}">',
        f"<h2>Query {index + 1}: {_esc(name)}</h2>",
        '<div class="query-head">',
        _figure(assets, Panel(query.query_image_path, "query"), "thumb"),
        f"<p>{pid}<br>{len(query.matches)} matches shown</p>",
        "</div>",
    ]
    parts.extend(_match_html(assets, m) for m in sorted(query.matches, key=lambda m: m.rank))
    if query.extra_panels:
        parts.append("<h3>Further explanations</h3>")
        parts.extend(_figure(assets, panel) for panel in query.extra_panels)
    parts.append("</section>")
    return "\n".join(parts)


def _summary_html(query_results: Sequence[QueryResult]) -> str:
    text = f"{len(query_results)} queries."
    known = [
        min(q.matches, key=lambda m: m.rank).correct
        for q in query_results
        if q.matches and min(q.matches, key=lambda m: m.rank).correct is not None
    ]
    if known:
        text += f" Best match correct for {sum(known)} of {len(known)} queries with known identities."
    return f"<p>{_esc(text)}</p>"


def html_page(title: str, css: str, body: Sequence[str]) -> str:
    """A whole HTML page: the escaped ``title`` as title and first heading, inline ``css``, then
    the ``body`` parts (HTML), one per line."""
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">', f"<title>{_esc(title)}</title>",
        f"<style>{css}</style>", "</head>", "<body>", f"<h1>{_esc(title)}</h1>", *body, "</body>", "</html>", "",
    ])


def write_html_report(
    out_dir: str | os.PathLike,
    query_results: Sequence[QueryResult],
    title: str = "Similarity attention explanations",
    image_dir: str = "images",
    file_name: str = "index.html",
) -> Path:
    """Writes ``out_dir/file_name`` listing each query with its ranked matches and panels.

    Every image shown (queries, gallery images, panels, extra panels) must exist. Images outside
    ``out_dir`` are copied into ``out_dir/image_dir`` (each source file once); images inside
    ``out_dir`` are linked in place. Links are relative; no external CSS or JavaScript.

    Args:
        out_dir: report folder (created if needed).
        query_results: one entry per query.
        title: page title (escaped).
        image_dir: subfolder of ``out_dir`` for copied images.
        file_name: file name of the page.

    Returns:
        Path of the written page.

    Raises:
        FileNotFoundError: an image referenced by ``query_results`` does not exist.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if Path(image_dir).is_absolute() or ".." in Path(image_dir).parts:
        raise ValueError(f"image_dir must be a subfolder of out_dir, got {image_dir!r}")
    assets = _Assets(out, image_dir)
    sections = [_query_html(assets, i, q) for i, q in enumerate(query_results)]
    nav = " ".join(f'<a href="#q{i}">{i + 1}</a>' for i in range(len(query_results)))
    page = html_page(title, _CSS, [_summary_html(query_results), f"<nav>{nav}</nav>", *sections])
    if Path(file_name).name != file_name:
        raise ValueError(f"file_name must be a file name inside out_dir, got {file_name!r}")
    index = out / file_name
    with names_file(str(index)):
        index.write_text(page, encoding="utf-8")
    logger.info("wrote %s (%d queries, %d images)", index, len(query_results), len(assets.links))
    return index
