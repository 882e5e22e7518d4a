"""reid.losses sits above reid.metrics and reid.explain only; reid.metrics.distance is a bottom layer."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def imported_reid_modules(module):
    """The ``reid`` modules that importing ``module`` loads, in a fresh interpreter."""
    code = (
        f"import sys, {module}; "
        "print('\\n'.join(sorted(m for m in sys.modules if m.split('.')[0] == 'reid')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return set(out.stdout.split())


@pytest.mark.parametrize("module, allowed", [
    ("reid.losses", ("reid.losses", "reid.metrics", "reid.explain")),
    ("reid.metrics.distance", ("reid.metrics",)),
])
def test_imports_stay_in_their_layer(module, allowed):
    loaded = imported_reid_modules(module) - {"reid"}
    outside = sorted(m for m in loaded if not m.startswith(allowed))
    assert not outside, f"{module} imports {outside}"
