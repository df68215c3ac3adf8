"""Links: which feature set a data set's feature source was stored in.

``<root>/links/<data set>/<source>.json`` for extracted features (``<encoder>.<field>``), and
``<root>/links/<data set>/<kind>/<source>.json`` for the other kinds: ``mmrec`` (a file imported
by a config's ``features.<name>.mmrec``) and ``finetuned`` (the catalog as an end-to-end run's
best encoders see it). Every way features get into the store leaves one, so training resolves
every source the same way, and ``gc --prune-unlinked`` keeps exactly the sets some link names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..atomic import write_file_atomic
from .files import is_temp

LINKS = "links"
KINDS = ("extract", "mmrec", "finetuned")
_SUFFIX = ".json"


def _part(what: str, value: str) -> str:
    if not isinstance(value, str) or not value or "/" in value or "\\" in value or "\0" in value \
            or value.startswith("."):
        raise DataError(f"link {what} {value!r} cannot name a file (no '/', no leading '.')")
    return value


def link_path(root: Path, data: str, source: str, kind: str = "extract") -> Path:
    if kind not in KINDS:
        raise DataError(f"link kind {kind!r} is not one of {KINDS}")
    base = Path(root) / LINKS / _part("data set", data)
    return (base if kind == "extract" else base / kind) / f"{_part('source', source)}{_SUFFIX}"


def read_link(root: Path, data: str, source: str, kind: str = "extract") -> dict[str, Any] | None:
    """The link's record; None when there is none; DataError when it cannot be read."""
    return _read(link_path(root, data, source, kind))


def write_link(root: Path, data: str, source: str, *, kind: str = "extract", fingerprint: str, field: str,
               set_name: str, **details: Any) -> dict[str, Any]:
    """Record (atomically) that ``source`` of data set ``data`` lives in set ``set_name``;
    nothing is written when the link already says so."""
    path = link_path(root, data, source, kind)
    body = {"kind": kind, "data": data, "source": source, "fingerprint": fingerprint, "field": field,
            "set": set_name, **details}
    try:
        if _read(path) == body:
            return body
    except DataError:
        pass  # a damaged link is replaced
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file_atomic(path, json.dumps(body, indent=1).encode("utf-8"))
    return body


def all_links(root: Path) -> list[dict[str, Any]]:
    """Every link in the store, each with its ``path``; DataError naming one that cannot be read
    (a link that cannot be read protects nothing, so pruning must not guess)."""
    base = Path(root) / LINKS
    files: list[Path] = []
    for data in sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []:
        files += [p for p in sorted(data.glob(f"*{_SUFFIX}"))]
        for kind in KINDS[1:]:
            files += sorted((data / kind).glob(f"*{_SUFFIX}"))
    out = []
    for p in files:
        if is_temp(p.name):
            continue
        body = _read(p)
        if body is not None:
            out.append({**body, "path": str(p)})
    return out


def _read(path: Path) -> dict[str, Any] | None:
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable link ({e}); remove it and run the command that wrote it again") from None
    if not isinstance(body, dict) or not isinstance(body.get("fingerprint"), str) \
            or not isinstance(body.get("field"), str):
        raise DataError(f"{path}: not a feature-store link (no fingerprint/field); remove it and run the command "
                        "that wrote it again")
    return body
