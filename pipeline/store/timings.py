"""Timings: how fast a feature set was computed, for cost reports that run after the features
are stored (``modalrec compare``). ``<root>/timings/<set name>.json``; the record of the
largest computation is kept, since a re-run that computed a handful of changed items says
little about the speed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..atomic import write_file_atomic
from .keys import set_name

TIMINGS = "timings"


def timing_path(root: Path, fingerprint: str, field: str) -> Path:
    return Path(root) / TIMINGS / f"{set_name(fingerprint, field)}.json"


def read_timing(root: Path, fingerprint: str, field: str) -> dict[str, Any] | None:
    """The record, or None when there is none or it cannot be read (then it is timed again)."""
    try:
        body = json.loads(timing_path(root, fingerprint, field).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(body, dict) or not isinstance(body.get("items_per_second"), (int, float)):
        return None
    return body


def record_timing(root: Path, fingerprint: str, field: str, record: dict[str, Any]) -> bool:
    """Keep ``record`` (with ``computed`` and ``items_per_second``) unless a larger one exists."""
    old = read_timing(root, fingerprint, field)
    if old is not None and old.get("computed", 0) > record["computed"]:
        return False
    path = timing_path(root, fingerprint, field)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file_atomic(path, json.dumps(record, indent=1).encode("utf-8"))
    return True
