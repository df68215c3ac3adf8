"""Views: the rows of one key list, in that order, materialised as one file to memory-map.

Reading [n_items, dim] straight from many shards would mean a gather into RAM on every run; a
view is built once (atomically, like everything else) and then mapped for free by every later
read and every process. Its name is ``<digest of the key list>-<digest of where each row comes
from>``, so a view is never stale: new or damaged shards change the second part, and the
builder deletes the older views of the same key list.
"""

from __future__ import annotations

import errno
import hashlib
import tempfile
from pathlib import Path

import numpy as np

from .dtypes import TENSOR_DTYPE
from .shards import SHARD_SUFFIX, Shard, copy_rows
from .tensor_file import DamagedFile, TensorFile, TensorFileWriter

_READ_ONLY = (errno.EACCES, errno.EPERM, errno.EROFS)


def view_dirs(set_path: Path, set_name: str) -> list[Path]:
    """In the set; or, for a store we may not write to, under the temp directory."""
    private = hashlib.sha256(str(Path(set_path).resolve()).encode()).hexdigest()[:8]
    return [Path(set_path) / "views", Path(tempfile.gettempdir()) / "modalrec-views" / f"{set_name}-{private}"]


def view_name(keys_digest: str, sources: list[str], shard_of: np.ndarray, row: np.ndarray) -> str:
    h = hashlib.sha256("\0".join(sources).encode())
    h.update(np.stack([shard_of, row]).astype("<i8").tobytes())
    return f"{keys_digest[:16]}-{h.hexdigest()[:16]}{SHARD_SUFFIX}"


def open_view(path: Path, n: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(copy-on-write memory map [n, dim], present mask); FileNotFoundError/DamagedFile if unusable."""
    f = TensorFile(path)
    if f.metadata.get("format") != "modalrec-view" or f.shape("vectors") != (n, dim) or f.shape("present") != (n,):
        raise DamagedFile("not a view of this shape")
    return f.array("vectors", mode="c"), np.array(f.read("present"), dtype=bool)


def build_view(dirs: list[Path], name: str, shards: list[Shard], shard_of: np.ndarray, row: np.ndarray,
               dim: int, dtype: str, keys_digest: str) -> Path:
    """Write the view: row i = ``shards[shard_of[i]]`` row ``row[i]``, zeros where shard_of < 0."""
    n = len(row)
    tensors = [("vectors", TENSOR_DTYPE[dtype], (n, dim)), ("present", "BOOL", (n,))]
    for d in dirs:
        try:
            d.mkdir(parents=True, exist_ok=True)
            w = TensorFileWriter(d / name, tensors, {"format": "modalrec-view", "keys_sha256": keys_digest})
            break
        except OSError as e:
            if e.errno not in _READ_ONLY or d == dirs[-1]:
                raise
    with w:
        out = w.array("vectors")
        for u, shard in enumerate(shards):
            at = np.nonzero(shard_of == u)[0]
            copy_rows(out, at, shard.vectors(), row[at])
        del out
        w.put("present", shard_of >= 0)
        path = w.commit()
    prefix = name.split("-")[0] + "-"
    for other in path.parent.iterdir():  # older states of this key list: stale from now on
        if other.name.startswith(prefix) and other.name != name:
            other.unlink(missing_ok=True)
    return path
