"""sha256 of weights files, computed once per file version.

A file version is (path, size, mtime_ns, ctime_ns, inode). Size and mtime alone can be
preserved by a copy (``cp -p``, ``rsync -a``, ``tar x``) that brings other bytes; the ctime is
set by every write and cannot be set back, and a replacement by rename brings a new inode. So a
hash is trusted only for the version it was computed on, and only once that version has
settled (nothing wrote to it within ``RACY_NS``, the coarsest filesystem clock we allow for).
`HashRecord` keeps those hashes in one JSON file (in the feature store), so a later process
proves that a model folder is unchanged from ``stat`` calls alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

_CHUNK = 1 << 20
# A file written within this long may be rewritten without a new mtime or ctime on a coarse
# clock, so its hash is used but not remembered ("racy git" rule).
RACY_NS = 2_000_000_000
_RECORD_FORMAT = 1

Version = tuple[str, int, int, int, int]

_memory: dict[Version, str] = {}
_lock = threading.Lock()


def file_version(path: str | os.PathLike) -> Version:
    """(real path, size, mtime_ns, ctime_ns, inode): what changes whenever the bytes may have."""
    real = os.path.realpath(path)
    st = os.stat(real)
    return real, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


def _settled(version: Version) -> bool:
    return time.time_ns() - max(version[2], version[3]) >= RACY_NS


def _remember(version: Version, digest: str) -> None:
    if _settled(version):
        with _lock:
            _memory[version] = digest


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 hex of a file, read in chunks; remembered in-process per file version."""
    version = file_version(path)
    with _lock:
        if version in _memory:
            return _memory[version]
    digest = hashlib.sha256()
    with open(version[0], "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    if file_version(path) == version:  # not written to while it was read
        _remember(version, digest.hexdigest())
    return digest.hexdigest()


def model_files(root: str | os.PathLike) -> list[tuple[str, Path]]:
    """(relative posix path, path) of every file a model folder holds, sorted; READMEs and
    dot-files (.git, .cache) are left out as they never change outputs."""
    root = Path(root)
    out = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or path.suffix.lower() == ".md":
            continue
        out.append((rel.as_posix(), path))
    return out


def sha256_tree(root: str | os.PathLike) -> str:
    """One digest over every file a model folder holds (weights, config, tokenizer...).

    Paths are relative, so the same files at another location give the same digest.
    """
    digest = hashlib.sha256()
    for rel, path in model_files(root):
        digest.update(f"{rel}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()


class HashRecord:
    """File hashes by version, kept in ``path`` (a JSON file) across processes.

    ``HashRecord(None)`` keeps them in this process only. A damaged or foreign record file costs
    hashing again, never a wrong answer: an entry is used only when the file's whole version
    still matches it.
    """

    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path is not None else None
        self._entries: dict[str, list] = {}
        self._changed = False
        if self.path is not None:
            try:
                body = json.loads(self.path.read_text(encoding="utf-8"))
                if body.get("format") == _RECORD_FORMAT and isinstance(body.get("files"), dict):
                    self._entries = body["files"]
            except (OSError, ValueError, AttributeError):
                pass

    def sha256(self, path: str | os.PathLike) -> str:
        version = file_version(path)
        entry = self._entries.get(version[0])
        if isinstance(entry, list) and len(entry) == 5 and tuple(entry[:4]) == version[1:]:
            _remember(version, entry[4])
            return entry[4]
        digest = sha256_file(path)
        if _settled(version) and file_version(path) == version:
            self._entries[version[0]] = [*version[1:], digest]
            self._changed = True
        return digest

    def describe(self, location: str | os.PathLike) -> list[list]:
        """``[relative path, size, mtime_ns, sha256]`` of a weights file or of every file of a model
        folder: what the bytes are, and (size, mtime) so a touched file is noticed as well."""
        location = Path(location)
        files = [(location.name, location)] if location.is_file() else model_files(location)
        out = []
        for rel, path in files:
            st = path.stat()
            out.append([rel, st.st_size, st.st_mtime_ns, self.sha256(path)])
        return out

    def save(self) -> None:
        """Write the record if it learned anything, dropping entries of files that are gone."""
        if self.path is None or not self._changed:
            return
        from pipeline.atomic import write_file_atomic

        kept = {p: e for p, e in self._entries.items() if os.path.exists(p)}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = {"format": _RECORD_FORMAT, "files": kept}
        write_file_atomic(self.path, json.dumps(body, indent=0, sort_keys=True).encode("utf-8"))
        self._changed = False
