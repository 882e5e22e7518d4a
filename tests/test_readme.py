"""The documentation (README.md and docs/*.md) documents every config key, tool and benchmark, and
the README's two set-up commands exist."""

import glob
import os
import re

from yacs.config import CfgNode

from reid.config import _all_keys, get_default_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
DOC_FILES = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
DOCS = {path: open(path, encoding="utf-8").read() for path in DOC_FILES}
ALL_DOCS = "\n".join(DOCS.values())


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
