"""The README documents every config key, tool and benchmark, and its two set-up commands exist."""

import os
import re

from yacs.config import CfgNode

from reid.config import _all_keys, get_default_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()


def config_table_rows():
    """``{group: keys listed}`` from the README's table of configuration keys."""
    rows = {}
    for line in README.splitlines():
        match = re.match(r"\| (top level|`[A-Z.]+`) \| (.*) \|$", line)
        if match:
            group = match.group(1).strip("`")
            rows[group] = set(re.findall(r"`([A-Z_0-9]+)`", match.group(2)))
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
    assert not missing, f"config keys missing from the README's table: {missing}"


def test_every_tool_and_benchmark_is_documented():
    for folder in ("tools", "benchmarks"):
        for name in sorted(os.listdir(os.path.join(ROOT, folder))):
            if name.endswith(".py") and not name.startswith("_"):
                assert f"{name}" in README, f"{folder}/{name} is not documented in the README"


def test_setup_commands_name_existing_files():
    block = README.split("```bash", 1)[1].split("```", 1)[0]
    demo, tests = [line for line in block.strip().splitlines()]
    for path in re.findall(r"--config (\S+)", demo):
        assert os.path.isfile(os.path.join(ROOT, path)), path
    assert "tools/train.py" in demo and "tools/explain.py" in demo
    assert "pytest" in tests
    ci = open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8").read()
    assert 'python -m pip install -q -e ".[test]" && python -m pytest -q' in ci
