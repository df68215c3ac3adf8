"""Content keys: what a feature row is stored under.

A row's key is the sha256 of the item's raw content for one field, so the key changes exactly
when the content does; the encoder is already part of the feature set's identity. Together that
gives "recompute only what changed".
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from ..errors import DataError

_CHUNK = 1 << 20


def content_key_text(text: str | None) -> str | None:
    """sha256 of the UTF-8 text; None (no text) stays None, which the store treats as missing."""
    if text is None:
        return None
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def content_key_file(path: str | Path | None) -> str | None:
    """sha256 of a file's bytes, read in chunks; None when the file does not exist."""
    if path is None:
        return None
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    return h.hexdigest()


def mmrec_key(file_sha256: str, item_id: str) -> str:
    """Key of an item's row imported from an MMRec ``*_feat.npy`` file: it names the file's
    content and the item, so re-importing the same file finds everything already stored."""
    return hashlib.sha256(f"mmrec-import\0{file_sha256}\0{item_id}".encode("utf-8")).hexdigest()


def set_name(fingerprint: str, field: str, dtype: str = "float32") -> str:
    """Directory name of a feature set: readable field first, then a digest of the identity
    (fingerprints may hold characters a path cannot). The storage dtype is part of the identity,
    so float16 and float32 sets of one encoder live side by side; float32 names stay as they were
    before the dtype joined the identity."""
    identity = f"{fingerprint}\0{field}" + ("" if dtype == "float32" else f"\0{dtype}")
    digest = hashlib.sha256(identity.encode("utf-8")).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9_.]+", "_", field).strip("._")[:40] or "field"
    return f"{slug}-{digest}"


def key_list_digest(keys: list[str | None]) -> str:
    """Identity of an ordered key list (None kept distinct from every string)."""
    return hashlib.sha256(json.dumps(keys, separators=(",", ":")).encode("utf-8")).hexdigest()
