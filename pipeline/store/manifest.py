"""``manifest.json``: what a feature set is (for people and for ``info``), written atomically.

The identity part (spec, fingerprint, field, dim, dtype, encoder identity, library versions,
created) never changes after creation; ``rows``/``failed``/``updated`` are refreshed by writers.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ..errors import DataError

MANIFEST = "manifest.json"
FORMAT = "modalrec-feature-set"
FORMAT_VERSION = 1

# import name -> distribution name of the libraries every feature set is computed with; the
# encoder's own libraries are its backend's to name (``encoders.Backend.libraries``)
_LIBRARIES = {"torch": "torch", "numpy": "numpy"}


def library_versions(spec: str | None = None) -> dict[str, str]:
    """Versions of modalrec, torch, numpy and the libraries of the backend ``spec`` names (read from
    package metadata, without importing them)."""
    from encoders.backend import installed_versions  # lazily: encoders use the store's file helpers

    from .. import __version__

    out = {"modalrec": __version__, **installed_versions(_LIBRARIES)}
    if spec:
        from encoders.registry import spec_versions  # lazily: encoders use the store's file helpers

        out.update(spec_versions(spec))
    return out


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    return (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def new_manifest(name: str, fingerprint: str, field: str, dim: int, dtype: str, spec: str | None,
                 identity: dict | None) -> bytes:
    """Raises TypeError/ValueError when ``identity`` is not JSON."""
    return manifest_bytes({
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name,
        "spec": spec,
        "fingerprint": fingerprint,
        "field": field,
        "dim": dim,
        "dtype": dtype,
        "rows": 0,
        "failed": 0,
        "created": now(),
        "versions": library_versions(spec),
        "identity": identity or {},
    })


def read_manifest(path: Path) -> dict[str, Any]:
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: not a feature set (no {MANIFEST})") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{path / MANIFEST}: unreadable manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{path / MANIFEST}: not a modalrec feature set manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{path}: feature set format {manifest.get('format_version')}, this modalrec reads "
                        f"{FORMAT_VERSION}; remove it (FeatureStore.gc) and extract again")
    return manifest
