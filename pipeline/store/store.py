"""The feature store: a directory of feature sets, plus what the CLI needs to inspect and clean it.

``<root>/<field>-<digest of (fingerprint, field[, dtype])>/`` holds one set (see ``feature_set.py``);
beside the sets, the store keeps its own records, each written and read only through this class:

    links/          which set each data set's feature sources were stored in (links.py)
    leases/         sets being written right now, which gc must not touch (leases.py)
    content-keys/   media file hashes remembered by file stat, per data set (content_keys.py)
    timings/        how fast each set was computed, for cost reports (timings.py)

Nothing here locks: creating a set races safely (the manifest is created with a hard link, which
fails if another process won), and removing one renames it away first.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import DataError
from .content_keys import ContentKeys
from .dtypes import STORAGE_DTYPES
from .feature_set import FeatureSet
from ..atomic import write_file_atomic
from .files import is_temp, remove_tree, rename_away, temp_is_abandoned
from .keys import set_name
from .leases import LEASE_AGE, Lease, leased, stale_leases
from .links import all_links, link_path, read_link, write_link
from .manifest import MANIFEST, manifest_bytes, new_manifest, read_manifest
from .root import default_root
from .shards import DAMAGED_SUFFIX, SHARD_SUFFIX
from .timings import read_timing, record_timing

_SET_NAME = re.compile(r"[A-Za-z0-9_.]+-[0-9a-f]{16}")  # see keys.set_name


class FeatureStore:
    def __init__(self, root: str | Path | None = None, view_dir: str | Path | None = None):
        """``view_dir``: a directory of this user's own for the views of a read-only store
        (default ``$MODALREC_VIEW_DIR``; with neither, such reads gather rows into memory)."""
        self.root = Path(root) if root is not None else default_root()
        self.view_dir = view_dir

    @classmethod
    def from_config(cls, cfg) -> "FeatureStore":
        store = getattr(cfg, "store", None)
        return cls(default_root(cfg), view_dir=getattr(store, "view_dir", None))

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.root)!r})"

    # ---------------------------------------------------------------- sets

    def open_set(self, fingerprint: str, field: str, *, dim: int, dtype: str = "float32", spec: str | None = None,
                 identity: dict | None = None) -> FeatureSet:
        """Create the set for (fingerprint, field, dtype) or open the existing one; an existing
        set with another dim is an error (a new encoder must have a new fingerprint)."""
        if not isinstance(fingerprint, str) or not fingerprint:
            raise DataError(f"feature set fingerprint must be a non-empty string, got {fingerprint!r}")
        if not isinstance(field, str) or not field:
            raise DataError(f"feature set field must be a non-empty string, got {field!r}")
        if dtype not in STORAGE_DTYPES:
            raise DataError(f"feature set {spec or fingerprint}/{field}: dtype {dtype!r} is not one of "
                            f"{STORAGE_DTYPES}")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
            raise DataError(f"feature set {spec or fingerprint}/{field}: dim must be a positive integer, got {dim!r}")
        name = set_name(fingerprint, field, dtype)
        path = self.root / name
        if dtype == "float32" or not (path / MANIFEST).is_file():
            self._move_legacy(fingerprint, field)
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
        fs = FeatureSet(path, self.view_dir)
        if (fs.fingerprint, fs.field) != (fingerprint, field):
            raise DataError(f"{path}: holds {fs.fingerprint}/{fs.field}, expected {fingerprint}/{field}")
        if fs.dtype != dtype:  # only a set from before the dtype joined the identity that could not move
            raise DataError(f"feature set {name} holds {fs.dtype} rows of {spec or fingerprint} (field {field}), "
                            f"stored before the storage dtype was part of a set's identity, and "
                            f"{set_name(fingerprint, field, fs.dtype)} exists too; remove one of them")
        if fs.dim != dim:
            raise DataError(f"feature set {name} ({spec or fingerprint}, field {field}) stores dim {fs.dim}, asked "
                            f"for dim {dim}; the encoder changed without a new fingerprint")
        return fs

    def _move_legacy(self, fingerprint: str, field: str) -> None:
        """Sets stored as float16/bfloat16 before the dtype joined the identity sit under the
        float32 name: move such a set to its own name, so a float32 set can live beside it."""
        legacy = self.root / set_name(fingerprint, field)
        try:
            m = read_manifest(legacy)
        except DataError:
            return
        if m.get("dtype") in (None, "float32") or (m.get("fingerprint"), m.get("field")) != (fingerprint, field):
            return
        target = self.root / set_name(fingerprint, field, m["dtype"])
        try:
            os.rename(legacy, target)  # refused when the target holds a set already
        except OSError:
            return
        write_file_atomic(target / MANIFEST, manifest_bytes({**m, "name": target.name}))

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
                out.append(FeatureSet(p, self.view_dir))
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
            names = ", ".join(f"{fs.name} ({fs.spec or fs.fingerprint})" for fs in found[:10])
            raise DataError(f"{what} matches {len(found)} feature sets: {names}; give more of the fingerprint")
        return found[0]

    def info(self, selector: str | None = None, *, fingerprint: str | None = None,
             field: str | None = None) -> dict[str, Any]:
        """Manifest of one set with live counts, file counts and sizes, and some failures. Every
        shard and view is checked against its checksum first (this reads the whole set once):
        ``verified`` says how many were damaged now, ``storage.damaged`` how many are set aside."""
        fs = self.get(selector, fingerprint=fingerprint, field=field)
        verified = fs.verify()
        out = fs.save_manifest()
        out["verified"] = verified
        out["storage"] = fs.storage()
        out["leases"] = len(leased(self.root, fs.path.name))
        failed = fs.failed()
        out["failed_examples"] = dict(list(failed.items())[:20])
        return out

    def compact(self, selector: str | None = None, **kw) -> dict[str, dict[str, int]]:
        """Merge each selected set's shards into one (all sets when no selector)."""
        chosen = self.find(selector, **kw) if (selector or kw) else self.sets()
        return {fs.name: fs.compact() for fs in chosen}

    # ---------------------------------------------------------------- the store's own records

    def lease(self, fingerprint: str, field: str, dtype: str = "float32", purpose: str = "write") -> Lease:
        """``with store.lease(...):`` around creating and filling a set until it is linked: ``gc``
        leaves the set alone meanwhile (see ``leases.py``)."""
        return Lease(self.root, set_name(fingerprint, field, dtype), purpose)

    def link_path(self, data: str, source: str, kind: str = "extract") -> Path:
        return link_path(self.root, data, source, kind)

    def write_link(self, data: str, source: str, *, fingerprint: str, field: str, set_name: str,
                   kind: str = "extract", **details) -> dict:
        """Record that feature source ``source`` of data set ``data`` is stored in set ``set_name``
        (with the set's fingerprint and field, and any JSON ``details`` its reader checks)."""
        return write_link(self.root, data, source, kind=kind, fingerprint=fingerprint, field=field,
                          set_name=set_name, **details)

    def read_link(self, data: str, source: str, kind: str = "extract") -> dict | None:
        """The link's record (None: no link; DataError: unreadable)."""
        return read_link(self.root, data, source, kind)

    def links(self) -> list[dict]:
        return all_links(self.root)

    def linked_set(self, link: dict) -> FeatureSet | None:
        """The set a link names, or None when it is gone."""
        if link.get("set"):
            path = self.root / link["set"]
            if (path / MANIFEST).is_file():
                fs = FeatureSet(path, self.view_dir)
                if (fs.fingerprint, fs.field) == (link["fingerprint"], link["field"]):
                    return fs
            return None
        found = [fs for fs in self.sets() if (fs.fingerprint, fs.field) == (link["fingerprint"], link["field"])]
        return found[0] if found else None  # links written before they named the set

    def content_keys(self, data: str) -> ContentKeys:
        """The content-key cache of one data set (media file hashes remembered by stat)."""
        return ContentKeys.at(self.root, data)

    def record_timing(self, fingerprint: str, field: str, record: dict) -> bool:
        """Keep how fast a set was computed (the largest computation's record wins)."""
        return record_timing(self.root, fingerprint, field, record)

    def timing(self, fingerprint: str, field: str) -> dict | None:
        return read_timing(self.root, fingerprint, field)

    # ---------------------------------------------------------------- cleaning

    def gc(self, keep: Iterable[str | FeatureSet] | None = None, *, dry_run: bool = False,
           temp_age: float = 3600.0, views: bool = False, prune_unlinked: bool = False,
           lease_age: float = LEASE_AGE) -> dict[str, list[str]]:
        """Remove what no one needs; returns (or with ``dry_run`` only lists) what goes.

        - temporary files and directories of writers that are gone (a dead pid on this host,
          or untouched for ``temp_age`` seconds when written from another host), and leases
          whose writer is gone (``leases``);
        - shards, views and failure records set aside as damaged;
        - stale views (an older state of a key list that has a newer view), or all views with
          ``views=True`` (they are rebuilt on the next read);
        - with ``keep`` given (selectors or FeatureSets, possibly empty) or ``prune_unlinked``
          (keep what a link names: extracted, imported and fine-tuned features): every set not
          kept (selectors that match no set are listed under ``keep_unmatched``).

        A set with a live lease (being written) is never removed; it is listed under ``in_use``.
        """
        report: dict[str, list[str]] = {"temp": [], "damaged": [], "views": [], "sets": [], "leases": [],
                                        "in_use": [], "keep_unmatched": []}
        kept: set[str] | None = None
        if keep is not None or prune_unlinked:
            kept = set()
            for k in keep or []:
                found = [k.name] if isinstance(k, FeatureSet) else [fs.name for fs in self.find(k)]
                if not found:  # reported so a typo in a keep list is visible before a real run
                    report["keep_unmatched"].append(str(k))
                kept.update(found)
            if prune_unlinked:
                kept.update(fs.name for fs in map(self.linked_set, self.links()) if fs is not None)
        to_remove: list[tuple[str, Path]] = [("leases", p) for p in stale_leases(self.root, lease_age)]
        for entry in sorted(self.root.iterdir()) if self.root.is_dir() else []:
            if is_temp(entry.name):
                if temp_is_abandoned(entry, temp_age):
                    to_remove.append(("temp", entry))
            elif entry.is_dir() and not (entry / MANIFEST).exists():
                # a set whose creator died before its manifest existed: only temporaries inside
                if _SET_NAME.fullmatch(entry.name) and not leased(self.root, entry.name, lease_age) and all(
                        is_temp(p.name) and temp_is_abandoned(p, temp_age) for p in entry.iterdir()):
                    to_remove.append(("temp", entry))
            elif entry.is_dir():
                try:
                    name = read_manifest(entry)["name"]
                except DataError:
                    continue  # not ours to judge; info reports it
                if kept is not None and name not in kept:
                    in_use = leased(self.root, entry.name, lease_age)
                    to_remove.append(("in_use" if in_use else "sets", entry))
                else:
                    to_remove += _leftovers(entry, temp_age, views)
        for kind, p in to_remove:
            if kind == "in_use" or dry_run:
                report[kind].append(str(p))
            elif kind == "sets":
                report["sets" if self._remove_set(p, lease_age) else "in_use"].append(str(p))
            else:
                report[kind].append(str(p))
                if p.is_dir():
                    remove_tree(p)
                else:
                    p.unlink(missing_ok=True)
                if kind == "leases":
                    _rmdir_if_empty(p.parent)
        return report

    def _remove_set(self, path: Path, lease_age: float) -> bool:
        """Delete a set unless a writer leased it meanwhile: checked again once it is renamed
        away, and then put back (a writer takes its lease before it opens the set)."""
        if leased(self.root, path.name, lease_age):
            return False
        trash = rename_away(path)
        if leased(self.root, path.name, lease_age):
            try:
                os.rename(trash, path)
                return False
            except OSError:
                pass  # the writer already made a new, empty set there: this one is lost to it anyway
        shutil.rmtree(trash, ignore_errors=True)
        return True

    # ---------------------------------------------------------------- MMRec interop

    def import_mmrec(self, source: str | Path, item_ids: list[str] | None = None, **kw) -> dict[str, FeatureSet]:
        """See ``mmrec_io.import_mmrec``; ``link=(data set, source name)`` records the import as
        a link (kind ``mmrec``) before its lease ends, so ``gc --prune-unlinked`` keeps it."""
        from .mmrec_io import import_mmrec

        return import_mmrec(self, source, item_ids, **kw)

    def export_mmrec(self, feature_set: FeatureSet | str, item_ids: list[str], out_dir: str | Path, name: str,
                     keys: list[str] | None = None) -> Path:
        from .mmrec_io import export_mmrec

        fs = feature_set if isinstance(feature_set, FeatureSet) else self.get(feature_set)
        return export_mmrec(fs, item_ids, out_dir, name, keys=keys)


def _rmdir_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


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

