import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest

from reid.vis import Match, Panel, QueryResult, save_image, write_html_report


class LinkCollector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.links.extend(v for k, v in attrs if k in ("href", "src"))


def image(path, value):
    save_image(path, np.full((8, 4, 3), value, dtype=np.uint8))
    return path


@pytest.fixture()
def results(tmp_path):
    src = tmp_path / "data"
    out = tmp_path / "report"
    query = image(src / "q<1>.png", 10)
    g1 = image(src / "g 1&x.png", 20)
    g2 = image(src / "g2.png", 30)
    panel = image(out / "panels" / "p1.png", 40)  # already inside the report folder
    extra = image(src / "attr.png", 50)
    triplet = image(src / "sub" / "g2.png", 60)  # same base name as another file
    matches = [
        Match(g2, pid="<b>7</b>", distance=0.9, rank=2, correct=False, panel_path=panel,
              extra_panels=[Panel(extra, 'attribution "<x>"')]),
        Match(g1, pid=3, distance=0.25, rank=1, correct=True, panel_path=panel),
    ]
    q = QueryResult(query, query_pid=3, matches=matches, extra_panels=[Panel(triplet, "why A < B")],
                    name="<script>alert(1)</script>")
    q2 = QueryResult(g1, query_pid=None, matches=[Match(g1, None, 0.0, 1)])
    return out, [q, q2]


def test_report_links_relative_and_files_exist(results, tmp_path):
    out, queries = results
    index = write_html_report(out, queries, title="A & B <i>")
    assert index == out / "index.html"
    text = index.read_text(encoding="utf-8")
    parser = LinkCollector()
    parser.feed(text)
    images = [link for link in parser.links if not link.startswith("#")]
    assert len(images) >= 7
    for link in images:
        parsed = urlparse(link)
        assert not parsed.scheme and not parsed.netloc and not link.startswith("/"), link
        assert (out / unquote(parsed.path)).is_file(), link
    assert "panels/p1.png" in images  # linked in place, not copied
    assert "script" not in parser.tags and "link" not in parser.tags
    # the folder still works after moving it
    moved = tmp_path / "moved"
    shutil.move(out, moved)
    assert all((moved / unquote(link)).is_file() for link in images)


def test_report_escapes_text_and_orders_by_rank(results):
    out, queries = results
    text = write_html_report(out, queries, title="A & B <i>").read_text(encoding="utf-8")
    assert "<title>A &amp; B &lt;i&gt;</title>" in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "<script>" not in text
    assert "id &lt;b&gt;7&lt;/b&gt;" in text and "<b>7</b>" not in text
    assert "attribution &quot;&lt;x&gt;&quot;" in text
    assert text.index("distance 0.2500") < text.index("distance 0.9000")
    assert "Best match correct for 1 of 1 queries" in text


def test_report_copies_each_source_once(results):
    out, queries = results
    write_html_report(out, queries)
    copied = sorted(p.name for p in (out / "images").iterdir())
    # query, g1 (used three times), g2, attr, sub/g2 -> five distinct files
    assert len(copied) == 5
    assert sum(name.endswith("g2.png") for name in copied) == 2


def test_report_missing_file_raises(tmp_path):
    q = QueryResult(tmp_path / "missing.png", 1, [])
    with pytest.raises(FileNotFoundError):
        write_html_report(tmp_path / "out", [q])
