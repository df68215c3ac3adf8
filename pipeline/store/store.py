"""The feature store: a directory of feature sets, plus what the CLI needs to inspect and clean it.

``<root>/<field>-<digest of (fingerprint, field)>/`` holds one set (see ``feature_set.py``).
Nothing here locks: creating a set races safely (the manifest is created with a hard link, which
fails if another process won), and removing one renames it away first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import DataError
from .dtypes import STORAGE_DTYPES
from .feature_set import FeatureSet
from .files import is_temp, remove_tree, temp_is_abandoned, write_file_atomic
from .keys import set_name
from .manifest import MANIFEST, new_manifest, read_manifest
from .shards import DAMAGED_SUFFIX, SHARD_SUFFIX

_SET_NAME = re.compile(r"[A-Za-z0-9_.]+-[0-9a-f]{16}")  # see keys.set_name


def default_root(cfg=None) -> Path:
    """The config's features directory (``<cache_dir>/features``), or ``./cache/features``."""
    if cfg is None:
        return Path.cwd() / "cache" / "features"
    return Path(getattr(cfg, "features_dir", None) or Path(cfg.cache_dir) / "features")


class FeatureStore:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_root()

    @classmethod
    def from_config(cls, cfg) -> "FeatureStore":
        return cls(default_root(cfg))

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.root)!r})"

    # ---------------------------------------------------------------- sets

    def open_set(self, fingerprint: str, field: str, *, dim: int, dtype: str = "float32", spec: str | None = None,
                 identity: dict | None = None) -> FeatureSet:
        """Create the set for (fingerprint, field) or open the existing one; an existing set with
        another dim or dtype is an error (a new encoder must have a new fingerprint)."""
        if not isinstance(fingerprint, str) or not fingerprint:
            raise DataError(f"feature set fingerprint must be a non-empty string, got {fingerprint!r}")
        if not isinstance(field, str) or not field:
            raise DataError(f"feature set field must be a non-empty string, got {field!r}")
        if dtype not in STORAGE_DTYPES:
            raise DataError(f"feature set {spec or fingerprint}/{field}: dtype {dtype!r} is not one of "
                            f"{STORAGE_DTYPES}")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
            raise DataError(f"feature set {spec or fingerprint}/{field}: dim must be a positive integer, got {dim!r}")
        name = set_name(fingerprint, field)
        path = self.root / name
        if not (path / MANIFEST).is_file():
            try:
                body = new_manifest(name, fingerprint, field, dim, dtype, spec, identity)
            except (TypeError, ValueError) as e:
                raise DataError(f"feature set {spec or fingerprint}/{field}: identity is not "
                                f"JSON-serialisable ({e})") from None
            for attempt in range(3):  # retried if a concurrent gc took the manifest-less directory away
                path.mkdir(parents=True, exist_ok=True)
                try:
                    write_file_atomic(path / MANIFEST, body, exclusive=True)  # loses quietly to a concurrent creator
                    break
                except FileNotFoundError:
                    if attempt == 2:
                        raise
        fs = FeatureSet(path)
        if (fs.fingerprint, fs.field) != (fingerprint, field):
            raise DataError(f"{path}: holds {fs.fingerprint}/{fs.field}, expected {fingerprint}/{field}")
        if fs.dim != dim or fs.dtype != dtype:
            raise DataError(f"feature set {name} ({fs._static.get('spec') or fingerprint}, field {field}) stores "
                            f"dim {fs.dim} {fs.dtype}, asked for dim {dim} {dtype}; the encoder changed without a "
                            f"new fingerprint, or use another dtype name")
        return fs

    def _set_paths(self) -> list[Path]:
        try:
            entries = sorted(self.root.iterdir())
        except FileNotFoundError:
            return []
        return [p for p in entries if p.is_dir() and not is_temp(p.name) and (p / MANIFEST).is_file()]

    def sets(self) -> list[FeatureSet]:
        out = []
        for p in self._set_paths():
            try:
                out.append(FeatureSet(p))
            except DataError:
                continue  # unreadable manifests are reported by info/gc, not fatal for listing
        return out

    def list(self) -> list[dict[str, Any]]:
        """Manifests of all sets, with live counts (and manifest.json brought up to date)."""
        return [fs.save_manifest() for fs in self.sets()]

    def find(self, selector: str | None = None, *, fingerprint: str | None = None,
             field: str | None = None) -> list[FeatureSet]:
        """Sets matching a selector: a set name (or its prefix), a fingerprint prefix, a field,
        or ``FINGERPRINT_PREFIX/FIELD``; and/or the ``fingerprint`` prefix and ``field`` given apart."""
        return [fs for fs in self.sets() if _matches(fs, selector, fingerprint, field)]

    def get(self, selector: str | None = None, *, fingerprint: str | None = None,
            field: str | None = None) -> FeatureSet:
        """The one set a selector names; an error listing the candidates when it is ambiguous."""
        found = self.find(selector, fingerprint=fingerprint, field=field)
        what = " ".join(x for x in (selector, fingerprint and f"fingerprint={fingerprint}",
                                    field and f"field={field}") if x)
        if not found:
            raise DataError(f"no feature set in {self.root} matches {what or '(nothing given)'}")
        if len(found) > 1:
            exact = [fs for fs in found if fs.name == selector]
            if len(exact) == 1:
                return exact[0]
            names = ", ".join(f"{fs.name} ({fs._static.get('spec') or fs.fingerprint})" for fs in found[:10])
            raise DataError(f"{what} matches {len(found)} feature sets: {names}; give more of the fingerprint")
        return found[0]

    def info(self, selector: str | None = None, *, fingerprint: str | None = None,
             field: str | None = None) -> dict[str, Any]:
        """Manifest of one set with live counts, file counts and sizes, and some failures."""
        fs = self.get(selector, fingerprint=fingerprint, field=field)
        out = fs.save_manifest()
        out["storage"] = fs.storage()
        failed = fs.failed()
        out["failed_examples"] = dict(list(failed.items())[:20])
        return out

    def compact(self, selector: str | None = None, **kw) -> dict[str, dict[str, int]]:
        """Merge each selected set's shards into one (all sets when no selector)."""
        chosen = self.find(selector, **kw) if (selector or kw) else self.sets()
        return {fs.name: fs.compact() for fs in chosen}

    # ---------------------------------------------------------------- cleaning

    def gc(self, keep: Iterable[str | FeatureSet] | None = None, *, dry_run: bool = False,
           temp_age: float = 3600.0, views: bool = False) -> dict[str, list[str]]:
        """Remove what no one needs; returns (or with ``dry_run`` only lists) what goes.

        - temporary files and directories of writers that are gone (a dead pid on this host,
          or untouched for ``temp_age`` seconds when written from another host);
        - shards and failure records set aside as damaged;
        - stale views (an older state of a key list that has a newer view), or all views with
          ``views=True`` (they are rebuilt on the next read);
        - with ``keep`` given (selectors or FeatureSets, possibly empty): every set not kept
          (selectors that match no set are listed under ``keep_unmatched``).
        """
        report: dict[str, list[str]] = {"temp": [], "damaged": [], "views": [], "sets": [], "keep_unmatched": []}
        kept: set[str] | None = None
        if keep is not None:
            kept = set()
            for k in keep:
                found = [k.name] if isinstance(k, FeatureSet) else [fs.name for fs in self.find(k)]
                if not found:  # reported so a typo in a keep list is visible before a real run
                    report["keep_unmatched"].append(str(k))
                kept.update(found)
        to_remove: list[tuple[str, Path]] = []
        for entry in sorted(self.root.iterdir()) if self.root.is_dir() else []:
            if is_temp(entry.name):
                if temp_is_abandoned(entry, temp_age):
                    to_remove.append(("temp", entry))
            elif entry.is_dir() and not (entry / MANIFEST).exists():
                # a set whose creator died before its manifest existed: only temporaries inside
                if _SET_NAME.fullmatch(entry.name) and all(
                        is_temp(p.name) and temp_is_abandoned(p, temp_age) for p in entry.iterdir()):
                    to_remove.append(("temp", entry))
            elif entry.is_dir():
                try:
                    name = read_manifest(entry)["name"]
                except DataError:
                    continue  # not ours to judge; info reports it
                if kept is not None and name not in kept:
                    to_remove.append(("sets", entry))
                else:
                    to_remove += _leftovers(entry, temp_age, views)
        for kind, p in to_remove:
            report[kind].append(str(p))
            if dry_run:
                continue
            if p.is_dir():
                remove_tree(p)
            else:
                p.unlink(missing_ok=True)
        return report

    # ---------------------------------------------------------------- MMRec interop

    def import_mmrec(self, source: str | Path, item_ids: list[str] | None = None, **kw) -> dict[str, FeatureSet]:
        from .mmrec_io import import_mmrec

        return import_mmrec(self, source, item_ids, **kw)

    def export_mmrec(self, feature_set: FeatureSet | str, item_ids: list[str], out_dir: str | Path, name: str,
                     keys: list[str] | None = None) -> Path:
        from .mmrec_io import export_mmrec

        fs = feature_set if isinstance(feature_set, FeatureSet) else self.get(feature_set)
        return export_mmrec(fs, item_ids, out_dir, name, keys=keys)


def _matches(fs: FeatureSet, selector: str | None, fingerprint: str | None, field: str | None) -> bool:
    if fingerprint is not None and not fs.fingerprint.startswith(fingerprint):
        return False
    if field is not None and fs.field != field:
        return False
    if not selector:
        return True
    if fs.name.startswith(selector) or fs.fingerprint.startswith(selector) or fs.field == selector:
        return True
    if "/" in selector:
        fp, fld = selector.rsplit("/", 1)
        return fs.fingerprint.startswith(fp) and fs.field == fld
    return False


def _leftovers(set_dir: Path, temp_age: float, all_views: bool) -> list[tuple[str, Path]]:
    out = []
    for sub in (set_dir, set_dir / "shards", set_dir / "failed", set_dir / "views"):
        for p in sorted(sub.iterdir()) if sub.is_dir() else []:
            if is_temp(p.name) and temp_is_abandoned(p, temp_age):
                out.append(("temp", p))
            elif p.name.endswith(DAMAGED_SUFFIX):
                out.append(("damaged", p))
    return out + [("views", p) for p in _stale_views(set_dir / "views", all_views)]


def _stale_views(views: Path, all_views: bool) -> list[Path]:
    if not views.is_dir():
        return []
    names = [p for p in views.iterdir() if p.name.endswith(SHARD_SUFFIX) and not is_temp(p.name)]
    if all_views:
        return sorted(names)
    newest: dict[str, Path] = {}
    stale = []
    for p in sorted(names, key=lambda p: p.stat().st_mtime if p.exists() else 0):
        prefix = p.name.split("-")[0]
        if prefix in newest:
            stale.append(newest[prefix])
        newest[prefix] = p
    return sorted(stale)

