"""benchmarks/step_breakdown.py runs end to end at tiny sizes, so the breakdown cannot rot."""

import importlib
import os

import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "benchmarks")


@pytest.fixture
def step_breakdown(monkeypatch):
    # the benchmark scripts import their shared helpers as `_timing`, as when run as scripts
    monkeypatch.syspath_prepend(BENCHMARKS)
    return importlib.import_module("step_breakdown")


def test_every_variant_is_timed_against_the_reference(step_breakdown, capsys):
    # 64x48: the smallest size whose last-stride-2 layer4 map (2x2) can still be reflect-padded
    result = step_breakdown.main(["--height", "64", "--width", "48", "--batch-size", "4", "--num-instances", "2",
                                  "--num-classes", "4", "--warmup", "0", "--repeats", "1"])
    printed = capsys.readouterr().out
    expected = [step_breakdown.REFERENCE, *step_breakdown.VARIANTS]
    assert list(result) == expected
    assert len(expected) == 7
    for name in expected:
        assert result[name]["ms"] > 0 and result[name]["vs_reference"] > 0 and result[name]["vs_demo"] > 0
        assert name in printed
    assert result[step_breakdown.REFERENCE]["vs_reference"] == 1.0
    assert result[step_breakdown.DEMO]["vs_demo"] == 1.0


def test_a_map_too_small_for_reflect_padding_is_one_clear_line(step_breakdown):
    with pytest.raises(SystemExit, match="too small for reflect padding"):
        step_breakdown.main(["--height", "32", "--width", "16", "--batch-size", "4", "--num-instances", "2"])
