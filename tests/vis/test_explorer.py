"""The explorer page: its contents, its refusals, and its behaviour in a real browser."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from reid.vis.explorer import (
    ExplorerExplainer,
    ExplorerMatch,
    ExplorerQuery,
    FailureTable,
    RunStatistics,
    write_explorer,
)
from tests.vis.browser import canvas_pixels, open_page

EXPLAINERS = (
    ExplorerExplainer("attention", "similarity attention", note="attention note"),
    ExplorerExplainer("decomposition", "decomposition", signed=True, note="signed note"),
)
GRID = (4, 2)


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(32, 16, 3), dtype=np.uint8)


def _match(seed: int, rank: int, correct: bool, corr: bool = True) -> ExplorerMatch:
    rng = np.random.default_rng(100 + seed)
    cells = GRID[0] * GRID[1]
    return ExplorerMatch(
        _image(seed), f"g{seed}.jpg", seed, 0.1 * rank, rank, correct,
        {"attention": (rng.random(GRID), rng.random(GRID)), "decomposition": (rng.random(GRID) - 0.5, rng.random(GRID) - 0.5)},
        contributions=[("stripe 1", 0.3), ("stripe 2", 0.1)], contributions_label="squared distance by stripe",
        highlight=1,
        # a permutation-like correspondence: query cell i matches gallery cell (i + 1) mod n
        correspondence=np.roll(np.eye(cells), 1, axis=1) if corr else None,
        query_grid=GRID if corr else None, gallery_grid=GRID if corr else None,
    )


def _queries() -> list[ExplorerQuery]:
    return [
        ExplorerQuery(_image(0), "good query", 1, 1.0, 1, [_match(1, 1, True), _match(2, 2, False)]),
        ExplorerQuery(_image(3), "bad </script> query", 2, 0.25, 2, [_match(5, 2, True), _match(4, 1, False)]),
        ExplorerQuery(_image(6), "no true match", 3, None, 0, [_match(7, 1, False, corr=False)]),
    ]


STATS = RunStatistics("all 3 queries", [0.5, 0.75, 1.0], 0.6, 0.4, [0.0, 0.5, 1.0], [3, 1], [1, 6])


@pytest.fixture()
def page(tmp_path: Path) -> Path:
    table = FailureTable("Wrong top-1", ("stripe", "count"), [("stripe 1", 2), ("stripe 2", 0)], "a note")
    return write_explorer(tmp_path / "sub" / "index.html", _queries(), EXPLAINERS, "Test & run", STATS, [table], ["hello"])


def _data(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    found = re.search(r'<script type="application/json" id="explorer-data">(.*?)</script>', text, re.DOTALL)
    assert found, "no embedded data"
    return json.loads(found.group(1))


def test_page_is_self_contained_and_sorted_worst_first(page: Path):
    text = page.read_text(encoding="utf-8")
    assert not re.search(r'(src|href)="(https?:|//)', text)  # nothing from the network
    assert not re.search(r'<img[^>]+src="(?!data:)', text)  # no image outside the page
    headings = re.findall(r"<h2>(\d+)\. ([^<]*)</h2>", text)
    assert [name for _, name in headings] == ["bad &lt;/script&gt; query", "good query", "no true match"]
    assert "Test &amp; run" in text and "AP 25.0%" in text and "AP n/a" in text
    data = _data(page)
    assert [e["key"] for e in data["explainers"]] == ["attention", "decomposition"]
    assert len(data["queries"]) == 3 and len(data["images"]) == 8  # 3 queries + 5 gallery images, distinct
    corr = data["queries"][0]["matches"][0]["corr"]
    assert corr["q"] == [4, 2] and corr["g"] == [4, 2] and len(corr["v"]) == 64
    assert "corr" not in data["queries"][2]["matches"][0]
    # the matches of a query are shown by rank: query 2's rank-1 match is its second entry
    section = text[text.index("bad &lt;/script&gt; query"):text.index("good query")]
    assert section.index('data-q="1" data-m="1"') < section.index('data-q="1" data-m="0"')
    assert "rank-1 50.0%" in text and "mAP 60.0%" in text and 'id="cmc"' in text and 'id="histogram"' in text


def test_maps_round_to_four_significant_digits(page: Path):
    data = _data(page)
    rng = np.random.default_rng(101)
    expected = rng.random(GRID)
    assert data["queries"][0]["matches"][0]["maps"]["attention"][0]["v"] == pytest.approx(expected.ravel(), rel=1e-3)


def test_refusals(tmp_path: Path):
    out = tmp_path / "x.html"
    with pytest.raises(ValueError, match="distinct"):
        write_explorer(out, _queries(), EXPLAINERS + (EXPLAINERS[0],))
    with pytest.raises(ValueError, match="unknown explainers"):
        write_explorer(out, _queries(), EXPLAINERS[:1])
    bad = _match(1, 1, True)
    with pytest.raises(ValueError, match="does not fit the grids"):
        write_explorer(out, [ExplorerQuery(_image(0), "q", 1, 1.0, 1, [
            ExplorerMatch(bad.image, "g", 1, 0.1, 1, True, {}, correspondence=np.ones((3, 8)), query_grid=GRID,
                          gallery_grid=GRID)
        ])], EXPLAINERS)
    with pytest.raises(ValueError, match="finite"):
        write_explorer(out, [ExplorerQuery(_image(0), "q", 1, 1.0, 1, [
            ExplorerMatch(bad.image, "g", 1, 0.1, 1, True, {"attention": (np.full(GRID, np.nan), np.ones(GRID))})
        ])], EXPLAINERS)
    with pytest.raises(ValueError, match="2-D"):
        write_explorer(out, [ExplorerQuery(_image(0), "q", 1, 1.0, 1, [
            ExplorerMatch(bad.image, "g", 1, 0.1, 1, True, {"attention": (np.ones(3), np.ones(GRID))})
        ])], EXPLAINERS)
    with pytest.raises(ValueError, match="edges"):
        write_explorer(out, _queries(), EXPLAINERS, stats=RunStatistics("s", [1.0], 1.0, 1.0, [0.0, 1.0], [1, 2], [1]))
    assert not out.exists()


def test_the_page_runs_in_chromium_switches_and_highlights(page: Path):
    with open_page(page) as opened:
        p = opened.page
        assert p.locator("canvas.view").count() == 10  # 5 pairs x (query, gallery)
        gallery = 'canvas.view[data-q="0"][data-m="0"][data-side="gallery"]'
        query = 'canvas.view[data-q="0"][data-m="0"][data-side="query"]'
        assert p.locator(gallery).get_attribute("data-explainer") == "attention"
        assert p.locator("#explainer-note").text_content() == "attention note"
        shown = canvas_pixels(p, gallery)
        # the switch changes what every canvas shows
        p.select_option("#explainer", "decomposition")
        assert p.locator(gallery).get_attribute("data-explainer") == "decomposition"
        assert p.locator("#explainer-note").text_content() == "signed note"
        signed = canvas_pixels(p, gallery)
        assert signed != shown
        p.select_option("#explainer", "none")
        plain = canvas_pixels(p, gallery)
        assert plain not in (shown, signed)
        # hovering a query cell highlights its corresponding gallery cell: cell i -> cell i + 1
        box = p.locator(query).bounding_box()
        assert box is not None
        p.locator(query).hover(position={"x": box["width"] * 0.25, "y": box["height"] * 0.1})  # cell 0
        assert p.locator(gallery).get_attribute("data-highlight") == "0"
        first = canvas_pixels(p, gallery)
        assert first != plain
        p.locator(query).hover(position={"x": box["width"] * 0.75, "y": box["height"] * 0.9})  # cell 7
        assert p.locator(gallery).get_attribute("data-highlight") == "7"
        assert canvas_pixels(p, gallery) != first
        # leaving restores the selected explainer's view
        p.mouse.move(0, 0)
        assert p.locator(gallery).get_attribute("data-highlight") is None
        assert canvas_pixels(p, gallery) == plain
        # a pair without a correspondence does not react
        lone = 'canvas.view[data-q="2"][data-m="0"]'
        p.locator(lone).first.hover()
        assert p.locator(lone).nth(1).get_attribute("data-highlight") is None
        assert opened.errors == []
