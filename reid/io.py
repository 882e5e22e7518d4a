"""Small file-writing helpers shared by the library, the tools and the benchmarks.

Kept free of project imports so that any layer (engine, explanation, tools) may use it.
"""

from __future__ import annotations

import json
import os
from typing import Any

__all__ = ["write_json"]


def write_json(path: str, content: dict[str, Any]) -> None:
    """Writes ``content`` as indented JSON atomically (a ``.tmp`` file beside ``path``, then a
    rename), so a reader never sees half a file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(content, handle, indent=2)
    os.replace(tmp, path)
