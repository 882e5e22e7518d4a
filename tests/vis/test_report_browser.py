"""The HTML report opens in a real (headless) browser and every image on it loads.

A copy of ``index.html`` with a small script appended is written beside it (so relative links
resolve exactly as in the report), opened with headless Chromium ``--dump-dom``; on the page's
``load`` event the script lists every ``<img>`` that is not ``complete && naturalWidth > 0`` and
writes the result into the DOM, which Chromium prints. Skipped only when no Chromium/Chrome is
installed (CI installs Debian's ``chromium``).
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from reid.vis import Match, Panel, QueryResult, pair_panel, save_image, triplet_panel, write_html_report

BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
BROWSER_ENV = "REID_TEST_BROWSER"
_RESULT_ID = "reid-image-check"
_CHECK_SCRIPT = f"""
<script>
window.addEventListener("load", function () {{
  var images = Array.prototype.slice.call(document.images);
  var broken = images
    .filter(function (img) {{ return !(img.complete && img.naturalWidth > 0); }})
    .map(function (img) {{ return img.getAttribute("src"); }});
  var out = document.createElement("pre");
  out.id = "{_RESULT_ID}";
  out.textContent = JSON.stringify({{total: images.length, broken: broken}});
  document.body.appendChild(out);
}});
</script>
"""


def find_browser() -> str | None:
    """A headless-capable Chromium/Chrome: ``$REID_TEST_BROWSER`` or the first on ``PATH``."""
    explicit = os.environ.get(BROWSER_ENV)
    if explicit:
        return explicit
    for name in BROWSER_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def require_browser() -> str:
    """The browser, or a skip that says how to get one."""
    browser = find_browser()
    if browser is None:
        pytest.skip(
            f"no Chromium/Chrome found (looked for {', '.join(BROWSER_NAMES)} on PATH and ${BROWSER_ENV}); "
            "install one with: apt-get install -y chromium"
        )
    return browser


def images_in_browser(index_html: Path, browser: str, timeout: float = 120.0) -> dict:
    """Opens the report in headless Chromium and reports which images failed to load.

    Args:
        index_html: the report page.
        browser: the Chromium/Chrome executable.
        timeout: seconds before the browser is given up on.

    Returns:
        ``{"total": number of <img> elements, "broken": [src of each one that did not load]}``.
    """
    probe = index_html.with_name(f"_{index_html.stem}_image_check.html")
    page = index_html.read_text(encoding="utf-8")
    assert "</body>" in page, "the report has no </body>"
    probe.write_text(page.replace("</body>", _CHECK_SCRIPT + "</body>", 1), encoding="utf-8")
    try:
        with tempfile.TemporaryDirectory(prefix="reid-chromium-") as profile:
            command = [
                browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--no-default-browser-check", f"--user-data-dir={profile}",
                "--virtual-time-budget=10000", "--dump-dom", probe.resolve().as_uri(),
            ]
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    finally:
        probe.unlink()
    found = re.search(rf'<pre id="{_RESULT_ID}">(.*?)</pre>', done.stdout, re.DOTALL)
    assert found, f"the browser printed no result (exit {done.returncode}); stderr tail:\n{done.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


def _person(seed: int, height: int = 64, width: int = 32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def _map(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((8, 4))


@pytest.fixture()
def report(tmp_path: Path) -> Path:
    """A two-query report with pair and triplet panels; file names that need URL quoting."""
    data, out = tmp_path / "data dir", tmp_path / "report"
    query = data / "query #1 ü.png"
    galleries = [data / "g&1.png", data / "g 2%.jpg", data / "sub" / "g&1.png"]
    save_image(query, _person(0))
    for k, path in enumerate(galleries):
        save_image(path, _person(k + 1))
    matches = []
    for rank, path in enumerate(galleries[:2], start=1):
        panel = out / "panels" / f"pair #{rank} ü.png"  # inside the report: linked in place
        pid = 3 + rank - 1
        save_image(panel, pair_panel(_person(0), _person(rank), _map(0), _map(rank), 0.1 * rank, rank, rank == 1, 3, pid))
        matches.append(Match(path, pid, 0.1 * rank, rank, rank == 1, panel))
    triplet = data / "triplet.png"  # outside the report: copied
    people, maps = [_person(k) for k in range(3)], [_map(k) for k in range(3)]
    save_image(triplet, triplet_panel(*people, *maps, 0.1, 0.2, True, False))
    results = [
        QueryResult(query, 3, matches, [Panel(triplet, "why is A closer than B?")]),
        QueryResult(galleries[2], None, [Match(galleries[0], None, 0.5, 1)]),
    ]
    return write_html_report(out, results)


def _count_img_tags(index: Path) -> int:
    return len(re.findall(r"<img\b", index.read_text(encoding="utf-8")))


def test_every_image_of_the_report_loads_in_chromium(report: Path) -> None:
    browser = require_browser()
    result = images_in_browser(report, browser)
    assert result["broken"] == []
    # query 1: thumb, 2 x (thumb + panel), triplet; query 2: thumb, match thumb
    assert result["total"] == _count_img_tags(report) == 8


def test_a_missing_image_is_reported(report: Path) -> None:
    browser = require_browser()
    copied = sorted((report.parent / "images").iterdir())
    assert copied
    copied[0].unlink()
    (report.parent / "panels" / "pair #2 ü.png").write_bytes(b"not a png")
    result = images_in_browser(report, browser)
    assert result["total"] == 8
    assert len(result["broken"]) >= 2
    assert any("pair%20%232" in src for src in result["broken"])
