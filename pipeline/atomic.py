"""Atomic writes: a file or a directory is replaced all at once or not at all, so a crash, a kill
or a bad input never leaves a half-written result where a reader looks.

Everything is first written under a temporary sibling name (``.<name>.tmp-<random>``) and then
renamed into place. A kill can leave such a sibling behind; ``remove_leftovers`` clears them in
a folder that one writer owns (a run directory), at the start of its next use.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import ModalrecError

_TMP, _OLD = ".tmp-", ".old-"


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds, what was written there
    (flushed to disk) replaces ``path`` in one rename. On failure ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}{_TMP}")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        tmp.chmod(0o644)  # mkstemp makes it private; the result is an ordinary file
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, body: Any, indent: int | None = 1) -> None:
    write_text_atomic(path, json.dumps(body, indent=indent))


def _ours(folder: Path, marker: str) -> bool:
    """A directory this module may replace: it has the marker, or is empty."""
    return (folder / marker).exists() or (folder.is_dir() and not any(folder.iterdir()))


@contextlib.contextmanager
def atomic_directory(target: Path, marker: str, previous: Path | None = None) -> Iterator[Path]:
    """Yield an empty temporary directory that replaces ``target`` when the block succeeds.

    ``marker`` is a file name every directory this function writes contains; an existing
    ``target`` without it is not ours, and is never deleted.

    ``previous``: keep the replaced ``target`` there (dropping what was there before) instead of
    deleting it. The old ``previous`` goes while ``target`` is still whole, and ``target`` moves
    to ``previous`` before the new one is renamed in, so at every moment one complete directory
    is on disk under one of the two names, whatever instant a kill strikes.
    """
    target = Path(target)
    for folder in (target, previous):
        if folder is not None and folder.exists() and not _ours(folder, marker):
            raise ModalrecError(f"refusing to overwrite {folder}: it exists and was not written by modalrec")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}{_TMP}"))
    tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary directory
    try:
        yield tmp
        if previous is not None:
            if target.exists():
                if previous.exists():
                    shutil.rmtree(previous)
                os.rename(target, previous)
            os.rename(tmp, target)
            return
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}{_OLD}"))
            os.rename(target, old / "x")
        try:
            os.rename(tmp, target)
        except OSError:
            if old is not None:
                os.rename(old / "x", target)  # put the previous result back
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_leftovers(folder: Path) -> list[Path]:
    """Remove what killed writers of this module left in ``folder`` (temporary files and
    directories, replaced directories not yet deleted); returns what was removed. Only for a
    folder with one writer at a time: another writer's work in progress looks the same."""
    removed = []
    for entry in Path(folder).glob(".*"):
        if _TMP in entry.name or _OLD in entry.name:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed
