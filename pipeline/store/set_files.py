"""The files of one feature set on disk, as one process sees them: its intact shards and the
index of their keys, its failure records, and what was found damaged (see ``feature_set.py``
for the layout; ``FeatureSet`` adds writing, reading and maintenance on top)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from ..errors import DataError
from .dtypes import STORAGE_DTYPES
from .files import is_temp
from .manifest import MANIFEST, read_manifest
from .shards import DAMAGED_SUFFIX, FAILED_SUFFIX, SHARD_SUFFIX, Shard, open_shard, read_failed_file
from .tensor_file import DamagedFile


class StoreWarning(UserWarning):
    """Something in the store was damaged and is being ignored (it will be recomputed)."""


class SetFiles:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._static = read_manifest(self.path)
        self.name: str = self._static["name"]
        self.fingerprint: str = self._static["fingerprint"]
        self.field: str = self._static["field"]
        self.dim: int = int(self._static["dim"])
        self.dtype: str = self._static["dtype"]
        self.spec: str | None = self._static.get("spec")
        self.identity: dict = self._static.get("identity") or {}
        if self.dtype not in STORAGE_DTYPES or self.dim <= 0:
            raise DataError(f"{self.path / MANIFEST}: bad dim {self.dim} or dtype {self.dtype!r}")
        self._shards: dict[str, Shard] = {}  # the intact shards on disk, by name
        self._ignored: set[str] = set()  # damaged files this process already warned about (views: by path)
        self._damaged_keys: dict[str, list[str] | None] = {}  # damaged shard -> its keys, when readable
        self._verified: set[str] = set()  # shards whose data checksum passed in this process
        # key -> global row, latest shard winning; global row = _starts[i] + row in shard _order[i]
        self._index: dict[str, int] | None = None
        self._order: list[str] = []
        self._starts: list[int] = []
        self._failed_files: dict[str, dict[str, str]] = {}

    def _listing(self, sub: str, suffix: str) -> list[str]:
        try:
            names = os.listdir(self.path / sub)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if n.endswith(suffix) and not is_temp(n))

    def _quarantine(self, path: Path, reason: str, what: str, then: str = "count as missing and will be recomputed",
                    ignore_as: str | None = None) -> None:
        warnings.warn(f"feature set {self.name}: ignoring damaged file {path.name} ({reason}); {what} {then}",
                      StoreWarning, stacklevel=4)
        self._ignored.add(ignore_as or path.name)
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
            self._damaged_keys[shard.name + DAMAGED_SUFFIX] = shard.keys
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

    def damaged_keys(self) -> tuple[set[str], int]:
        """Keys whose rows were set aside as damaged (by any process, until ``gc`` removes the
        files), and how many damaged shards are too broken to tell their keys."""
        keys: set[str] = set()
        unknown = 0
        for n in self._listing("shards", SHARD_SUFFIX + DAMAGED_SUFFIX):
            if n not in self._damaged_keys:
                try:
                    self._damaged_keys[n] = open_shard(self.path / "shards" / n, self.dim, self.dtype).keys
                except (FileNotFoundError, DamagedFile):
                    self._damaged_keys[n] = None
            found = self._damaged_keys[n]
            if found is None:
                unknown += 1
            else:
                keys.update(found)
        return keys, unknown
