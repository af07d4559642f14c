"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Kept free of heavy imports so the config, cache and report code can all use it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to a temporary file beside `path`, then rename it over `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    """`atomic_write_text` of `data` as indented JSON (values JSON does not know are written as text)."""
    return atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")
