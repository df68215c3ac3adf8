"""Views: the rows of one key list, in that order, materialised as one file to memory-map.

Reading [n_items, dim] straight from many shards would mean a gather into RAM on every run; a
view is built once (atomically, like everything else) and then mapped for free by every later
read and every process. Its name is ``<digest of the key list>-<digest of where each row comes
from>``, so a view is never stale: new or damaged shards change the second part, and the
builder deletes the older views of the same key list.

A view carries the sha256 of its bytes, checked when it is opened (once per process and file
version), so a damaged view is noticed and rebuilt from the shards instead of served.

Views live in the set's own ``views/`` directory. A store this user cannot write to uses the
directory configured as ``store.view_dir`` (or ``$MODALREC_VIEW_DIR``), which must belong to this
user and be writable by no one else; with none configured, rows are gathered into memory.
Nothing is ever looked for in a shared temporary directory, where anyone could plant a view.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .dtypes import NUMPY_DTYPE, TENSOR_DTYPE
from .files import READ_ONLY
from .shards import SHARD_SUFFIX, Shard, copy_rows
from .tensor_file import DamagedFile, TensorFile, TensorFileWriter

VIEW_DIR_ENV = "MODALREC_VIEW_DIR"


class UncheckedView(Exception):
    """A view written before views carried a checksum: rebuilt, not trusted."""


def fallback_dir(configured: str | Path | None, set_path: Path, set_name: str) -> Path | None:
    """Where views of a read-only set go: ``<configured or $MODALREC_VIEW_DIR>/<set>-<store digest>``,
    or None when neither is set."""
    root = configured or os.environ.get(VIEW_DIR_ENV) or None
    if root is None:
        return None
    store = hashlib.sha256(str(Path(set_path).resolve()).encode()).hexdigest()[:8]
    return Path(root).expanduser() / f"{set_name}-{store}"


def private_dir(path: Path, create: bool) -> bool:
    """Check that ``path`` and its parent (the configured view directory) are directories owned
    by this user that no one else can write to, creating them (mode 0700) when ``create``.
    False when they do not exist (and are not created); ConfigError when they are not private."""
    for d in (path.parent, path):
        if create:
            try:
                d.mkdir(mode=0o700, parents=True)
            except FileExistsError:
                pass
        try:
            st = os.lstat(d)  # lstat: a symlink planted in its place is refused, not followed
        except FileNotFoundError:
            return False
        why = None
        if not stat.S_ISDIR(st.st_mode):
            why = "is not a directory"
        elif st.st_uid != os.geteuid():
            why = f"belongs to uid {st.st_uid}, not to this user (uid {os.geteuid()})"
        elif st.st_mode & 0o022:
            why = f"is writable by other users (mode {stat.S_IMODE(st.st_mode):o})"
        if why:
            raise ConfigError(f"view directory {d} {why}; views there could be replaced by someone else. "
                              f"Point store.view_dir (or ${VIEW_DIR_ENV}) at a directory of your own (mode 0700)")
    return True


def view_name(keys_digest: str, sources: list[str], shard_of: np.ndarray, row: np.ndarray) -> str:
    h = hashlib.sha256("\0".join(sources).encode())
    h.update(np.stack([shard_of, row]).astype("<i8").tobytes())
    return f"{keys_digest[:16]}-{h.hexdigest()[:16]}{SHARD_SUFFIX}"


def open_view(path: Path, n: int, dim: int, verify: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(copy-on-write memory map [n, dim], present mask). FileNotFoundError: no such view;
    UncheckedView: one without a checksum; DamagedFile: torn, misshapen or failing its checksum.
    ``verify=False`` only for a view this process has just built (its checksum was just computed)."""
    f = TensorFile(path)
    if f.metadata.get("format") != "modalrec-view" or f.shape("vectors") != (n, dim) or f.shape("present") != (n,):
        raise DamagedFile("not a view of this shape")
    if "sha256" not in f.metadata:
        raise UncheckedView(str(path))
    if verify and not f.checksum_ok("sha256"):
        raise DamagedFile("checksum mismatch")
    return f.array("vectors", mode="c"), np.array(f.read("present"), dtype=bool)


def view_checksum_ok(path: Path) -> bool | None:
    """Whether a view file is intact (None: written before views had checksums)."""
    f = TensorFile(path)
    if f.metadata.get("format") != "modalrec-view":
        raise DamagedFile("not a view")
    return f.checksum_ok("sha256") if "sha256" in f.metadata else None


def build_view(dirs: list[Path], name: str, shards: list[Shard], shard_of: np.ndarray, row: np.ndarray,
               dim: int, dtype: str, keys_digest: str) -> Path | None:
    """Write the view: row i = ``shards[shard_of[i]]`` row ``row[i]``, zeros where shard_of < 0.

    ``dirs``: the set's views directory, then the private fallback (if configured); the first
    one this process may write to is used. None when there is none (a read-only store and no
    fallback). FileNotFoundError when the set itself is gone.
    """
    n = len(row)
    tensors = [("vectors", TENSOR_DTYPE[dtype], (n, dim)), ("present", "BOOL", (n,))]
    w = None
    for i, d in enumerate(dirs):
        try:
            if i == 0:
                d.mkdir(exist_ok=True)  # not parents: a set that vanished is not brought back
            else:
                private_dir(d, create=True)
            w = TensorFileWriter(d / name, tensors, {"format": "modalrec-view", "keys_sha256": keys_digest},
                                 checksums={"sha256": None})
            break
        except OSError as e:
            if e.errno not in READ_ONLY:
                raise
    if w is None:
        return None
    with w:
        out = w.array("vectors")
        _fill(out, shards, shard_of, row)
        del out
        w.put("present", shard_of >= 0)
        path = w.commit()
    prefix = name.split("-")[0] + "-"
    for other in path.parent.iterdir():  # older states of this key list: stale from now on
        if other.name.startswith(prefix) and other.name.endswith(SHARD_SUFFIX) and other.name != name:
            other.unlink(missing_ok=True)
    return path


def gather(shards: list[Shard], shard_of: np.ndarray, row: np.ndarray, dim: int,
           dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """The rows a view would hold, in memory (where no view can be written)."""
    out = np.zeros((len(row), dim), NUMPY_DTYPE[dtype])
    _fill(out, shards, shard_of, row)
    return out, shard_of >= 0


def _fill(out: np.ndarray, shards: list[Shard], shard_of: np.ndarray, row: np.ndarray) -> None:
    for u, shard in enumerate(shards):
        at = np.nonzero(shard_of == u)[0]
        copy_rows(out, at, shard.vectors(), row[at])
