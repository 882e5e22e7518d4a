"""The documentation (README.md and docs/*.md) documents every config key, tool and benchmark, its
links resolve inside the repository, the README's two set-up commands exist, and no file cites a
path outside the repository."""

import glob
import os
import re
import subprocess
from urllib.parse import unquote

from yacs.config import CfgNode

from reid.config import _all_keys, get_default_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
DOC_FILES = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
DOCS = {path: open(path, encoding="utf-8").read() for path in DOC_FILES}
ALL_DOCS = "\n".join(DOCS.values())

# Built from parts so that this file does not contain them itself.
FORBIDDEN_MENTIONS = ("shared/" + "METHOD" + ".md", ".." + "/shared", "METHOD" + ".md")
TEXT_SUFFIXES = (".py", ".md", ".yaml", ".yml", ".toml", ".cfg")


def config_table_rows():
    """``{group: keys listed}`` from the tables of configuration keys in README.md and docs/*.md."""
    rows = {}
    for line in ALL_DOCS.splitlines():
        match = re.match(r"\| (top level|`[A-Z.]+`) \| (.*) \|$", line)
        if match:
            group = match.group(1).strip("`")
            rows.setdefault(group, set()).update(re.findall(r"`([A-Z_0-9]+)`", match.group(2)))
    return rows


def test_every_config_key_is_in_the_readme_table():
    cfg = get_default_config()
    rows = config_table_rows()
    missing = []
    for key in _all_keys(cfg):
        node = cfg
        for part in key.split("."):
            node = node[part]
        if isinstance(node, CfgNode):
            continue
        group, _, leaf = key.rpartition(".")
        if leaf not in rows.get(group or "top level", set()):
            missing.append(key)
    assert not missing, f"config keys missing from the documentation's table: {missing}"


def test_every_tool_and_benchmark_is_documented():
    for folder in ("tools", "benchmarks"):
        for name in sorted(os.listdir(os.path.join(ROOT, folder))):
            if name.endswith(".py") and not name.startswith("_"):
                assert f"{name}" in ALL_DOCS, f"{folder}/{name} is not documented in README.md or docs/"


def test_setup_commands_name_existing_files():
    block = README.split("```bash", 1)[1].split("```", 1)[0]
    demo, tests = [line for line in block.strip().splitlines()]
    for path in re.findall(r"--config (\S+)", demo):
        assert os.path.isfile(os.path.join(ROOT, path)), path
    assert "tools/train.py" in demo and "tools/explain.py" in demo
    assert "pytest" in tests
    ci = open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8").read()
    assert 'python -m pip install -q -e ".[test]" && python -m pytest -q' in ci


# -- links ---------------------------------------------------------------------------------------


def prose_lines(text):
    """``(line number, line)`` of the lines outside fenced code blocks, inline code removed."""
    fence = None
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.lstrip()
        marker = re.match(r"(`{3,}|~{3,})", stripped)
        if marker:
            if fence is None:
                fence = marker.group(1)
            elif stripped.startswith(fence):
                fence = None
            continue
        if fence is None:
            yield number, re.sub(r"(`+).*?\1", "", line)


def github_slug(heading):
    """The anchor GitHub gives a heading: text as rendered, lower case, punctuation dropped, spaces to -."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links and images: their text
    text = text.replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def heading_anchors(text):
    """The anchors of every ATX heading of a markdown text (GitHub adds -1, -2 to repeats)."""
    anchors, seen = set(), {}
    fence = None
    for line in text.splitlines():
        stripped = line.lstrip()
        marker = re.match(r"(`{3,}|~{3,})", stripped)
        if marker:
            fence = marker.group(1) if fence is None else (None if stripped.startswith(fence) else fence)
            continue
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if fence is None and match:
            slug = github_slug(match.group(1))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def relative_links(path, text):
    """``(line, target)`` of every markdown link or image whose target is not a URL."""
    for number, line in prose_lines(text):
        for target in re.findall(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", line):
            if not re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:", target):
                yield number, target


def test_every_relative_link_resolves():
    broken = []
    for path, text in DOCS.items():
        rel = os.path.relpath(path, ROOT)
        for number, target in relative_links(path, text):
            file_part, _, anchor = target.partition("#")
            where = f"{rel}:{number}: ({target})"
            if file_part.startswith("/"):
                broken.append(f"{where} is an absolute path")
                continue
            resolved = os.path.normpath(os.path.join(os.path.dirname(path), unquote(file_part))) if file_part else path
            if os.path.commonpath([resolved, ROOT]) != ROOT:
                broken.append(f"{where} points outside the repository")
            elif not os.path.exists(resolved):
                broken.append(f"{where}: no such file")
            elif anchor and resolved.endswith(".md"):
                with open(resolved, encoding="utf-8") as handle:
                    if unquote(anchor) not in heading_anchors(handle.read()):
                        broken.append(f"{where}: no heading with anchor #{anchor}")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_github_slug_examples():
    assert github_slug("Similarity mining: PCB+SAM (`reid/losses/`, `reid/engine/sam.py`)") == (
        "similarity-mining-pcbsam-reidlosses-reidenginesampy"
    )
    assert github_slug("Do the maps show the person? (`benchmarks/person_evidence.py`)") == (
        "do-the-maps-show-the-person-benchmarksperson_evidencepy"
    )
    assert heading_anchors("# A\n## A\n```\n# A\n```\n") == {"a", "a-1"}


# -- no paths outside the repository ---------------------------------------------------------------


def tracked_text_files():
    """Repository files with a text suffix: ``git ls-files`` when this is a git checkout, else a walk."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60
        ).stdout.decode("utf-8").split("\0")
        files = [name for name in listed if name]
    except (OSError, subprocess.SubprocessError):
        files = []
        for folder, dirs, names in os.walk(ROOT):
            dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("__pycache__", "output", "reid-data")]
            files += [os.path.relpath(os.path.join(folder, name), ROOT) for name in names]
    return sorted(name for name in files if name.endswith(TEXT_SUFFIXES))


def test_no_file_cites_the_internal_method_file_or_a_path_outside_the_repository():
    files = tracked_text_files()
    assert "README.md" in files
    offenders = []
    for name in files:
        path = os.path.join(ROOT, name)
        if not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle, start=1):
                for mention in FORBIDDEN_MENTIONS:
                    if mention in line:
                        offenders.append(f"{name}:{number}: {mention}")
    assert not offenders, (
        "cite docs/method.md (in the repository), not a file outside it:\n" + "\n".join(offenders)
    )
