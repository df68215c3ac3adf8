"""One feature set: the vectors of one encoder (fingerprint) for one item field, keyed by content.

Layout of a set directory::

    manifest.json                            what the set is, and its counts (manifest.py)
    shards/<time>-<pid>-<rand>.safetensors   immutable rows: vectors + keys + checksums (shards.py)
    failed/<time>-<pid>-<rand>.json          immutable: keys whose input was bad, with reasons
    views/<keys>-<sources>.safetensors       derived: rows aligned to one key list, checksummed (views.py)

Why this shape: every write is a new file that appears by an atomic rename, so there is nothing
to lock and nothing to tear; concurrent writers (Accelerate ranks) only ever add files, and a
writer killed at any moment leaves at most a temporary file. A shard that fails its size or
checksum test was damaged after it was written: it is renamed ``*.damaged`` (so every process
stops trusting it and its keys are computed again) and ``FeatureStore.gc`` deletes it. A damaged
view is set aside the same way and rebuilt from verified shards.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, ModalrecError
from .dtypes import NUMPY_DTYPE, as_numpy, as_torch, checked_storage
from ..atomic import write_file_atomic
from .files import READ_ONLY, is_temp
from .keys import key_list_digest
from .manifest import MANIFEST, manifest_bytes, now
from .set_files import SetFiles, StoreWarning
from .shards import (DAMAGED_SUFFIX, FAILED_SUFFIX, SHARD_SUFFIX, after, copy_rows, new_file_name, shard_writer,
                     write_failed_file, write_shard)
from .tensor_file import DamagedFile
from .views import (VIEW_DIR_ENV, UncheckedView, build_view, fallback_dir, gather, open_view, private_dir,
                    view_checksum_ok, view_name)


class FeatureSet(SetFiles):
    """Open an existing set with ``FeatureSet(path)``; create one with ``FeatureStore.open_set``.

    One object per process (not shared between threads); any number of processes may hold the
    same set, writing and reading at once.
    """

    def __init__(self, path: str | Path, view_dir: str | Path | None = None):
        """``view_dir``: where views go when this store is read-only (see ``views.py``)."""
        super().__init__(path)
        self.view_dir = view_dir
        self._in_memory_warned = False
        self._saved_counts = (self._static.get("rows"), self._static.get("failed"))

    def __repr__(self) -> str:
        return f"FeatureSet({self.name!r}, field={self.field!r}, dim={self.dim}, dtype={self.dtype})"

    # ---------------------------------------------------------------- writing

    def missing(self, keys: list[str | None], retry_failed: bool = False) -> list[int]:
        """Indices of ``keys`` with no stored row: the work still to do. Keys recorded as failed
        count as done unless ``retry_failed``; None keys (no content) are never work."""
        keys = list(keys)
        self._refresh()
        pos = self._positions(keys)
        failed = {} if retry_failed else self._failed_records()
        return [i for i, k in enumerate(keys) if k is not None and pos[i] < 0 and k not in failed]

    def present(self, keys: list[str | None]) -> np.ndarray:
        """Bool mask of the keys that have a stored row (builds no view)."""
        self._refresh()
        return self._positions(list(keys)) >= 0

    def _checked_keys(self, keys, what: str) -> list[str]:
        keys = list(keys)
        for i, k in enumerate(keys):
            if not isinstance(k, str) or not k or "\0" in k:
                raise DataError(f"feature set {self.name}: {what} key #{i} is {k!r}; keys are non-empty strings")
        return keys

    def write(self, keys: list[str], vectors) -> None:
        """Store rows as one new shard, atomically. ``vectors``: [len(keys), dim] floats (numpy,
        torch or lists), cast to the storage dtype. Rows with NaN/inf are refused, naming the key."""
        keys = self._checked_keys(keys, "write")
        vectors = as_numpy(vectors)
        if vectors.ndim != 2 or vectors.shape[0] != len(keys):
            raise DataError(f"feature set {self.name}: write got vectors of shape {tuple(vectors.shape)} "
                            f"for {len(keys)} keys; expected [{len(keys)}, {self.dim}]")
        if vectors.shape[1] != self.dim:
            raise DataError(f"feature set {self.name} ({self.field}) has dim {self.dim}, got vectors of dim "
                            f"{vectors.shape[1]} (first key {keys[0] if keys else None!r})")
        if vectors.dtype.kind != "f":
            raise DataError(f"feature set {self.name}: vectors must be numbers, got dtype {vectors.dtype}")
        if not keys:
            return
        stored = checked_storage(vectors, keys, self.dtype, f"feature set {self.name}")
        first: dict[str, int] = {}
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        if len(first) < len(keys):  # items with identical content share a key: store it once
            keys, stored = list(first), stored[list(first.values())]
        try:
            name = write_shard(self.path / "shards", keys, stored, self.dtype)
        except FileNotFoundError:
            raise self._vanished(f"{len(keys)} rows could not be stored") from None
        self._verified.add(name)
        self.save_manifest()

    def write_failed(self, keys: list[str], reasons: list[str]) -> None:
        """Record keys whose input was bad, with why, so reports can list them."""
        keys = self._checked_keys(keys, "write_failed")
        reasons = [str(r) for r in reasons]
        if len(reasons) != len(keys):
            raise DataError(f"feature set {self.name}: write_failed got {len(keys)} keys and {len(reasons)} reasons")
        if keys:
            try:
                write_failed_file(self.path / "failed" / new_file_name(FAILED_SUFFIX), keys, reasons)
            except FileNotFoundError:
                raise self._vanished(f"{len(keys)} failure records could not be stored") from None
            self.save_manifest()

    def failed(self) -> dict[str, str]:
        """key -> reason for the keys recorded as failed and not stored since."""
        self._refresh()
        index = self._ensure_index()
        return {k: r for k, r in self._failed_records().items() if k not in index}

    # ---------------------------------------------------------------- reading

    def read(self, keys: list[str | None]) -> tuple[np.ndarray, np.ndarray]:
        """Rows for ``keys`` in that order: ([len(keys), dim] memory map, present mask).

        Absent keys (None, never written, failed) have present False and a zero row. Rows come
        from a view file built once per key list and store state, so the result maps one file
        instead of copying rows into RAM; the view's checksum is checked first, and a damaged
        view is rebuilt from verified shards. (A read-only store without a view directory:
        rows gathered into memory.) bfloat16 rows are uint16 bit patterns: use ``as_torch``.
        The array is copy-on-write: writing to it never changes the store.
        """
        keys = list(keys)
        if not keys:
            return np.zeros((0, self.dim), NUMPY_DTYPE[self.dtype]), np.zeros(0, bool)
        for i, k in enumerate(keys):
            if k is not None and not isinstance(k, str):
                raise DataError(f"feature set {self.name}: read key #{i} is {k!r}; keys are strings or None")
        digest = key_list_digest(keys)
        dirs = self._view_dirs()
        for _ in range(8):  # repeated only while another process compacts, or damage turns up
            shards, shard_of, row = self._locate(keys)
            name = view_name(digest, [s.name for s in shards], shard_of, row)
            found = self._open_view(dirs, name, len(keys))
            if found is not None:
                return found
            if not self._verify(shards):
                continue
            try:
                path = build_view(dirs, name, shards, shard_of, row, self.dim, self.dtype, digest)
            except FileNotFoundError:  # a shard was compacted away under us (or the set is gone): rescan
                if not (self.path / MANIFEST).is_file():
                    raise self._vanished("its rows cannot be read") from None
                self._shards.clear()
                self._index = None
                continue
            if path is not None:
                return open_view(path, len(keys), self.dim, verify=False)
            if not self._in_memory_warned:
                self._in_memory_warned = True
                warnings.warn(f"feature set {self.name}: the store is read-only and no view directory is "
                              f"configured (store.view_dir or ${VIEW_DIR_ENV}); its rows are read into memory",
                              StoreWarning, stacklevel=2)
            return gather(shards, shard_of, row, self.dim, self.dtype)
        raise ModalrecError(f"feature set {self.name}: the store kept changing while reading; try again")

    def check(self, keys: list[str | None]) -> int:
        """Verify what ``read(keys)`` would serve, before relying on it: the view of the current
        state when there is one, else the data checksums of the shards holding the rows. A
        damaged view is rebuilt at once from verified shards; the rows of a damaged shard become
        missing (work for the next extract). Returns how many damaged files were set aside."""
        keys = list(keys)
        shards, shard_of, row = self._locate(keys)
        if not shards:
            return 0
        dirs = self._view_dirs()
        ignored = len(self._ignored)
        if self._open_view(dirs, view_name(key_list_digest(keys), [s.name for s in shards], shard_of, row),
                           len(keys)) is not None:
            return 0
        views_damaged = len(self._ignored) - ignored
        shards_ok = self._verify(shards)
        if views_damaged and shards_ok:
            self.read(keys)
        return len(self._ignored) - ignored

    def _view_dirs(self) -> list[Path]:
        fallback = fallback_dir(self.view_dir, self.path, self.name)
        return [self.path / "views"] + ([fallback] if fallback is not None else [])

    def _open_view(self, dirs: list[Path], name: str, n: int) -> tuple[np.ndarray, np.ndarray] | None:
        for i, d in enumerate(dirs):
            path = d / name
            if str(path) in self._ignored:
                continue
            try:
                if i > 0 and not private_dir(d, create=False):
                    continue
                return open_view(path, n, self.dim)
            except (FileNotFoundError, UncheckedView):
                continue
            except DamagedFile as e:
                self._quarantine(path, str(e), "this view", "is rebuilt from the shards", ignore_as=str(path))
        return None

    def _vanished(self, lost: str) -> DataError:
        return DataError(f"feature set {self.name} ({self._static.get('spec') or self.fingerprint}, field "
                         f"{self.field}) was removed from {self.path.parent} while in use (by `modalrec store gc`, "
                         f"or by hand); {lost}. Run the command again")

    def as_torch(self, vectors: np.ndarray):
        """Rows from ``read`` as a torch tensor of the storage dtype (bf16 converted properly)."""
        return as_torch(vectors, self.dtype)

    # ---------------------------------------------------------------- manifest and maintenance

    @property
    def manifest(self) -> dict[str, Any]:
        """The manifest with live counts."""
        self._refresh()
        index = self._ensure_index()
        failed = sum(1 for k in self._failed_records() if k not in index)
        return {**self._static, "rows": len(index), "failed": failed, "path": str(self.path)}

    def save_manifest(self) -> dict[str, Any]:
        """Bring manifest.json's counts up to date; returns the live manifest. Two writers
        finishing at once may leave a count one write behind until the next write, list or info."""
        live = self.manifest
        counts = (live["rows"], live["failed"])
        if counts != self._saved_counts:
            self._static.update(rows=counts[0], failed=counts[1], updated=now())
            try:
                write_file_atomic(self.path / MANIFEST, manifest_bytes(self._static))
                self._saved_counts = counts
            except FileNotFoundError:
                raise self._vanished("its counts could not be saved") from None
            except OSError as e:
                if e.errno not in READ_ONLY:
                    raise  # a read-only store is fine: counts are still reported live
        return live

    def storage(self) -> dict[str, int]:
        """Counts and sizes of this set's files (for ``info``)."""
        out: dict[str, int] = {}
        for sub, suffix in (("shards", SHARD_SUFFIX), ("failed", FAILED_SUFFIX), ("views", SHARD_SUFFIX)):
            names = self._listing(sub, suffix)
            out[sub] = len(names)
            out[f"{sub}_bytes"] = sum(_size(self.path / sub / n) for n in names)
        out["damaged"] = sum(len(self._listing(s, DAMAGED_SUFFIX)) for s in ("shards", "failed", "views"))
        out["damaged_views"] = len(self._listing("views", DAMAGED_SUFFIX))
        return out

    def verify(self) -> dict[str, int]:
        """Check every shard's and view's checksum now (reads everything); damaged ones are set aside."""
        self._refresh()
        shards = list(self._shards.values())
        self._verify(shards)
        views = damaged_views = 0
        for i, d in enumerate(self._view_dirs()):
            if i > 0 and not private_dir(d, create=False):
                continue
            for n in sorted(n for n in os.listdir(d) if n.endswith(SHARD_SUFFIX) and not is_temp(n)) \
                    if d.is_dir() else []:
                views += 1
                try:
                    if view_checksum_ok(d / n) is False:
                        raise DamagedFile("checksum mismatch")
                except FileNotFoundError:
                    continue
                except DamagedFile as e:
                    damaged_views += 1
                    self._quarantine(d / n, str(e), "this view", "is rebuilt from the shards when next read",
                                     ignore_as=str(d / n))
        return {"shards": len(shards), "damaged": len(shards) - len(self._shards), "views": views,
                "damaged_views": damaged_views}

    def compact(self) -> dict[str, int]:
        """Merge all shards into one and all failure records into one, dropping duplicates.

        Safe beside writers and readers: only the merged inputs are removed, after the merged
        shard is in place, and it sorts right after its newest input, so later writes still win.
        """
        self.verify()
        names = sorted(self._shards)
        keys = list(self._ensure_index())
        result = {"shards_before": len(names), "shards_after": len(names), "rows": len(keys)}
        if len(names) > 1 or sum(len(self._shards[n].keys) for n in names) != len(keys):
            shards, shard_of, row = self._locate(keys)
            if not self._verify(shards):  # a shard that arrived meanwhile was damaged: start over
                return self.compact()
            order = np.lexsort((row, shard_of))  # grouped by source shard: sequential reads
            keys, shard_of, row = [keys[i] for i in order], shard_of[order], row[order]
            with shard_writer(self.path / "shards" / after(names[-1], SHARD_SUFFIX), keys, self.dim, self.dtype) as w:
                out = w.array("vectors")
                for u, shard in enumerate(shards):
                    at = np.nonzero(shard_of == u)[0]
                    copy_rows(out, at, shard.vectors(), row[at])
                del out
                w.commit()
            for n in names:
                (self.path / "shards" / n).unlink(missing_ok=True)
            result["shards_after"] = 1
        failed_names = self._listing("failed", FAILED_SUFFIX)
        if len(failed_names) > 1:
            index = self._ensure_index()
            keep = {k: r for k, r in self._failed_records().items() if k not in index}
            if keep:
                write_failed_file(self.path / "failed" / after(failed_names[-1], FAILED_SUFFIX), list(keep),
                                  list(keep.values()))
            for n in failed_names:
                (self.path / "failed" / n).unlink(missing_ok=True)
        self.save_manifest()
        return result

    def close(self) -> None:
        self.save_manifest()

    def __enter__(self) -> "FeatureSet":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
