"""Files the toolkit writes: JSON written atomically."""

from __future__ import annotations

import json
import os
from typing import Any


def write_json(path: str, content: dict[str, Any]) -> None:
    """Writes ``content`` as indented JSON to ``path`` atomically (a temporary file, then a rename)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(content, handle, indent=2)
    os.replace(tmp, path)
