"""The immutable files of a feature set: row shards and failure records.

A shard is a tensor file (``tensor_file.py``) holding ``vectors`` [n, dim] in the storage dtype
and ``keys`` [n, L] (UTF-8, zero-padded), with metadata ``rows``, ``dim``, ``dtype`` and sha256
digests of all its bytes (``sha256``) and of the keys (``keys_sha256``). Keys are checked each
time a shard is opened (cheap); the vectors when rows are first served from it.

File names start with the write time, so sorting names sorts writes: when a key is in several
shards the last one wins (a retry or re-extraction replaces an older row).
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path

import numpy as np

from .dtypes import TENSOR_DTYPE
from ..atomic import write_file_atomic
from .tensor_file import DamagedFile, TensorFile, TensorFileWriter

SHARD_SUFFIX = ".safetensors"
FAILED_SUFFIX = ".json"
DAMAGED_SUFFIX = ".damaged"
COPY_ROWS = 1 << 16  # rows copied per step between memory maps: bounds memory, not speed


def new_file_name(suffix: str) -> str:
    return f"{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(4)}{suffix}"


def after(name: str, suffix: str) -> str:
    """A new name sorting right after ``name`` and before anything written later (for merges)."""
    return f"{name[: -len(suffix)]}~c{secrets.token_hex(3)}{suffix}"


class Shard:
    __slots__ = ("name", "file", "keys")

    def __init__(self, name: str, file: TensorFile, keys: list[str]):
        self.name, self.file, self.keys = name, file, keys

    def vectors(self) -> np.ndarray:
        return self.file.array("vectors")

    def data_ok(self) -> bool:
        return self.file.checksum_ok("sha256")


def open_shard(path: Path, dim: int, dtype: str) -> Shard:
    """Raises DamagedFile unless the shard is complete, of this set's shape, with intact keys."""
    f = TensorFile(path)
    meta = f.metadata
    if meta.get("format") != "modalrec-shard" or set(f.entries) != {"vectors", "keys"}:
        raise DamagedFile("not a modalrec shard")
    try:
        n = int(meta.get("rows", -1))
    except ValueError:
        raise DamagedFile("bad row count") from None
    if f.shape("vectors") != (n, dim) or f.entries["vectors"][0] != TENSOR_DTYPE[dtype]:
        raise DamagedFile(f"holds {f.shape('vectors')} {f.entries['vectors'][0]}, set is [{n}, {dim}] {dtype}")
    if f.shape("keys")[0] != n:
        raise DamagedFile("row counts of keys and vectors differ")
    if f.digest("keys") != meta.get("keys_sha256"):
        raise DamagedFile("keys checksum mismatch")
    raw = f.read("keys")
    try:
        keys = np.char.decode(raw.view(f"S{raw.shape[1]}").ravel(), "utf-8").tolist() if n else []
    except UnicodeDecodeError as e:
        raise DamagedFile(f"keys are not UTF-8 ({e})") from None
    return Shard(Path(path).name, f, keys)


def _key_bytes(keys: list[str]) -> np.ndarray:
    encoded = [k.encode("utf-8") for k in keys]
    width = max(len(b) for b in encoded)
    return np.array(encoded, dtype=f"S{width}").view(np.uint8).reshape(len(keys), width)


def shard_writer(path: Path, keys: list[str], dim: int, dtype: str) -> TensorFileWriter:
    """A writer for a shard of these keys; fill ``array("vectors")`` or ``put("vectors", ...)``."""
    key_bytes = _key_bytes(keys)
    meta = {"format": "modalrec-shard", "rows": str(len(keys)), "dim": str(dim), "dtype": dtype}
    w = TensorFileWriter(path, [("vectors", TENSOR_DTYPE[dtype], (len(keys), dim)), ("keys", "U8", key_bytes.shape)],
                         meta, checksums={"sha256": None, "keys_sha256": "keys"})
    w.put("keys", key_bytes)
    return w


def write_shard(directory: Path, keys: list[str], stored: np.ndarray, dtype: str) -> str:
    """Write one shard atomically; returns its name."""
    directory.mkdir(exist_ok=True)
    name = new_file_name(SHARD_SUFFIX)
    with shard_writer(directory / name, keys, stored.shape[1], dtype) as w:
        w.put("vectors", stored)
        w.commit()
    return name


def copy_rows(out: np.ndarray, at: np.ndarray, src: np.ndarray, rows: np.ndarray) -> None:
    """``out[at] = src[rows]`` in bounded steps (both may be memory maps larger than RAM)."""
    for s in range(0, len(at), COPY_ROWS):
        out[at[s:s + COPY_ROWS]] = src[rows[s:s + COPY_ROWS]]


def write_failed_file(path: Path, keys: list[str], reasons: list[str]) -> None:
    record = {"format": "modalrec-failed", "rows": len(keys), "keys": keys, "reasons": reasons}
    path.parent.mkdir(exist_ok=True)
    write_file_atomic(path, json.dumps(record, ensure_ascii=False).encode("utf-8"))


def read_failed_file(path: Path) -> dict[str, str]:
    """key -> reason; DamagedFile unless the record is complete (its row count matches)."""
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
        keys, reasons = rec["keys"], rec["reasons"]
        ok = isinstance(keys, list) and isinstance(reasons, list) and len(keys) == len(reasons) == rec["rows"]
    except FileNotFoundError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DamagedFile(f"unreadable ({e})") from None
    if not ok:
        raise DamagedFile("row counts differ")
    return dict(zip(keys, reasons))
