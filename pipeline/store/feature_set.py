"""One feature set: the vectors of one encoder (fingerprint) for one item field, keyed by content.

Layout of a set directory::

    manifest.json                            what the set is, and its counts (manifest.py)
    shards/<time>-<pid>-<rand>.safetensors   immutable rows: vectors + keys + checksums (shards.py)
    failed/<time>-<pid>-<rand>.json          immutable: keys whose input was bad, with reasons
    views/<keys>-<sources>.safetensors       derived: rows aligned to one key list (views.py)

Why this shape: every write is a new file that appears by an atomic rename, so there is nothing
to lock and nothing to tear; concurrent writers (Accelerate ranks) only ever add files, and a
writer killed at any moment leaves at most a temporary file. A shard that fails its size or
checksum test was damaged after it was written: it is renamed ``*.damaged`` (so every process
stops trusting it and its keys are computed again) and ``FeatureStore.gc`` deletes it.
"""

from __future__ import annotations

import errno
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, ModalrecError
from .dtypes import NUMPY_DTYPE, STORAGE_DTYPES, as_numpy, as_torch, checked_storage
from .files import is_temp, write_file_atomic
from .keys import key_list_digest
from .manifest import MANIFEST, manifest_bytes, now, read_manifest
from .shards import (DAMAGED_SUFFIX, FAILED_SUFFIX, SHARD_SUFFIX, Shard, after, copy_rows, new_file_name,
                     open_shard, read_failed_file, shard_writer, write_failed_file, write_shard)
from .tensor_file import DamagedFile
from .views import build_view, open_view, view_dirs, view_name


class StoreWarning(UserWarning):
    """Something in the store was damaged and is being ignored (it will be recomputed)."""


class FeatureSet:
    """Open an existing set with ``FeatureSet(path)``; create one with ``FeatureStore.open_set``.

    One object per process (not shared between threads); any number of processes may hold the
    same set, writing and reading at once.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._static = read_manifest(self.path)
        self.name: str = self._static["name"]
        self.fingerprint: str = self._static["fingerprint"]
        self.field: str = self._static["field"]
        self.dim: int = int(self._static["dim"])
        self.dtype: str = self._static["dtype"]
        if self.dtype not in STORAGE_DTYPES or self.dim <= 0:
            raise DataError(f"{self.path / MANIFEST}: bad dim {self.dim} or dtype {self.dtype!r}")
        self._shards: dict[str, Shard] = {}  # the intact shards on disk, by name
        self._ignored: set[str] = set()  # damaged files this process already warned about
        self._verified: set[str] = set()  # shards whose data checksum passed in this process
        # key -> global row, latest shard winning; global row = _starts[i] + row in shard _order[i]
        self._index: dict[str, int] | None = None
        self._order: list[str] = []
        self._starts: list[int] = []
        self._failed_files: dict[str, dict[str, str]] = {}
        self._saved_counts = (self._static.get("rows"), self._static.get("failed"))

    def __repr__(self) -> str:
        return f"FeatureSet({self.name!r}, field={self.field!r}, dim={self.dim}, dtype={self.dtype})"

    # ---------------------------------------------------------------- what is on disk

    def _listing(self, sub: str, suffix: str) -> list[str]:
        try:
            names = os.listdir(self.path / sub)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if n.endswith(suffix) and not is_temp(n))

    def _quarantine(self, path: Path, reason: str, what: str) -> None:
        warnings.warn(f"feature set {self.name}: ignoring damaged file {path.name} ({reason}); "
                      f"{what} count as missing and will be recomputed", StoreWarning, stacklevel=4)
        self._ignored.add(path.name)
        try:  # renamed, not deleted: every other process stops trusting it too, and gc removes it
            os.replace(path, path.with_name(path.name + DAMAGED_SUFFIX))
        except OSError:
            pass

    def _refresh(self) -> None:
        """Catch up with shards other processes added, compacted away or found damaged."""
        names = self._listing("shards", SHARD_SUFFIX)
        current = set(names)
        gone = [n for n in self._shards if n not in current]
        for n in gone:
            del self._shards[n]
        added = []
        for n in names:
            if n in self._shards or n in self._ignored:
                continue
            try:
                self._shards[n] = open_shard(self.path / "shards" / n, self.dim, self.dtype)
                added.append(n)
            except FileNotFoundError:
                continue  # compacted away between listing and opening
            except DamagedFile as e:
                self._quarantine(self.path / "shards" / n, str(e), "its rows")
        if self._index is None:
            return
        if gone or (added and self._order and added[0] < self._order[-1]):
            self._index = None  # removed or out-of-order shards: rebuild when next needed
        else:
            for n in added:
                self._index_add(n)

    def _index_add(self, name: str) -> None:
        start = self._starts[-1] + len(self._shards[self._order[-1]].keys) if self._order else 0
        keys = self._shards[name].keys
        self._order.append(name)
        self._starts.append(start)
        self._index.update(zip(keys, range(start, start + len(keys))))

    def _ensure_index(self) -> dict[str, int]:
        if self._index is None:
            self._index, self._order, self._starts = {}, [], []
            for n in sorted(self._shards):
                self._index_add(n)
        return self._index

    def _positions(self, keys: list[str | None]) -> np.ndarray:
        index = self._ensure_index()
        return np.fromiter((-1 if k is None else index.get(k, -1) for k in keys), dtype=np.int64, count=len(keys))

    def _locate(self, keys: list[str | None]) -> tuple[list[Shard], np.ndarray, np.ndarray]:
        """(shards used, shard of each key as an index into them or -1, row in that shard or -1)."""
        self._refresh()
        pos = self._positions(keys)
        present = pos >= 0
        starts = np.asarray(self._starts, dtype=np.int64)
        which = np.searchsorted(starts, pos[present], side="right") - 1
        used = np.unique(which)
        shard_of = np.full(len(keys), -1, dtype=np.int64)
        row = np.full(len(keys), -1, dtype=np.int64)
        shard_of[present] = np.searchsorted(used, which)
        row[present] = pos[present] - starts[which]
        return [self._shards[self._order[u]] for u in used], shard_of, row

    def _verify(self, shards: list[Shard]) -> bool:
        """Check the data checksums of these shards (once per process); False if one was damaged."""
        ok = True
        for shard in shards:
            if shard.name in self._verified or shard.name not in self._shards:
                continue
            if shard.data_ok():
                self._verified.add(shard.name)
                continue
            self._quarantine(shard.file.path, "data checksum mismatch", f"its {len(shard.keys)} rows")
            del self._shards[shard.name]
            self._index = None
            ok = False
        return ok

    def _failed_records(self) -> dict[str, str]:
        """key -> reason over all failure records (later records win), stored keys included."""
        names = self._listing("failed", FAILED_SUFFIX)
        for n in set(self._failed_files) - set(names):
            del self._failed_files[n]
        merged: dict[str, str] = {}
        for n in names:
            if n in self._ignored:
                continue
            if n not in self._failed_files:
                try:
                    self._failed_files[n] = read_failed_file(self.path / "failed" / n)
                except FileNotFoundError:
                    continue
                except DamagedFile as e:
                    self._quarantine(self.path / "failed" / n, str(e), "its failures")
                    continue
            merged.update(self._failed_files[n])
        return merged

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
        name = write_shard(self.path / "shards", keys, stored, self.dtype)
        self._verified.add(name)
        self.save_manifest()

    def write_failed(self, keys: list[str], reasons: list[str]) -> None:
        """Record keys whose input was bad, with why, so reports can list them."""
        keys = self._checked_keys(keys, "write_failed")
        reasons = [str(r) for r in reasons]
        if len(reasons) != len(keys):
            raise DataError(f"feature set {self.name}: write_failed got {len(keys)} keys and {len(reasons)} reasons")
        if keys:
            write_failed_file(self.path / "failed" / new_file_name(FAILED_SUFFIX), keys, reasons)
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
        instead of copying rows into RAM. bfloat16 rows are uint16 bit patterns: use
        ``as_torch``. The array is copy-on-write: writing to it never changes the store.
        """
        keys = list(keys)
        if not keys:
            return np.zeros((0, self.dim), NUMPY_DTYPE[self.dtype]), np.zeros(0, bool)
        for i, k in enumerate(keys):
            if k is not None and not isinstance(k, str):
                raise DataError(f"feature set {self.name}: read key #{i} is {k!r}; keys are strings or None")
        digest = key_list_digest(keys)
        dirs = view_dirs(self.path, self.name)
        for _ in range(8):  # repeated only while another process compacts, or damage turns up
            shards, shard_of, row = self._locate(keys)
            name = view_name(digest, [s.name for s in shards], shard_of, row)
            for d in dirs:
                try:
                    return open_view(d / name, len(keys), self.dim)
                except (FileNotFoundError, DamagedFile):
                    pass
            if not self._verify(shards):
                continue
            try:
                path = build_view(dirs, name, shards, shard_of, row, self.dim, self.dtype, digest)
                return open_view(path, len(keys), self.dim)
            except FileNotFoundError:  # a shard was compacted away under us: rescan
                self._shards.clear()
                self._index = None
        raise ModalrecError(f"feature set {self.name}: the store kept changing while reading; try again")

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
            except OSError as e:
                if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                    raise  # a read-only store is fine: counts are still reported live
        return live

    def storage(self) -> dict[str, int]:
        """Counts and sizes of this set's files (for ``info``)."""
        out: dict[str, int] = {}
        for sub, suffix in (("shards", SHARD_SUFFIX), ("failed", FAILED_SUFFIX), ("views", SHARD_SUFFIX)):
            names = self._listing(sub, suffix)
            out[sub] = len(names)
            out[f"{sub}_bytes"] = sum(_size(self.path / sub / n) for n in names)
        out["damaged"] = sum(len(self._listing(s, DAMAGED_SUFFIX)) for s in ("shards", "failed"))
        return out

    def verify(self) -> dict[str, int]:
        """Check every shard's data checksum now (reads everything); damaged ones are set aside."""
        self._refresh()
        shards = list(self._shards.values())
        self._verify(shards)
        return {"shards": len(shards), "damaged": len(shards) - len(self._shards)}

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
