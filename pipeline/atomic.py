"""Atomic writes: a file or a directory is replaced all at once or not at all, so a crash, a kill
or a bad input never leaves a half-written result where a reader looks.

Everything is first written under a temporary sibling name and then renamed into place. A file's
temporary name (``.tmp-<pid>-<random>-<host>-<name>``) records its writer, so the feature store's
``gc`` can tell an abandoned one (its writer is gone) from one still being written; a directory's
is ``.<name>.tmp-<random>``. A kill can leave such a sibling behind; ``remove_leftovers`` clears
them in a folder that one writer owns (a run directory), at the start of its next use.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import ModalrecError

_TMP, _OLD = ".tmp-", ".old-"
TMP_PREFIX = _TMP  # every temporary file name of ``temp_path`` starts with it
HOST = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname()) or "host"


def process_tag() -> str:
    """``<pid>-<random>-<host>``: names a file after the process that writes or keeps it."""
    return f"{os.getpid()}-{secrets.token_hex(4)}-{HOST}"


def temp_path(directory: Path, label: str) -> Path:
    """``<directory>/.tmp-<pid>-<random>-<host>-<label>``: unique across processes and machines."""
    return Path(directory) / f"{TMP_PREFIX}{process_tag()}-{label}"


def fsync_dir(directory: Path) -> None:
    """Make a rename durable; best effort (some filesystems cannot open directories)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds, what was written there
    (flushed to disk) replaces ``path`` in one rename. On failure ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path.parent, path.name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_file_atomic(path: Path, data: bytes, *, exclusive: bool = False) -> bool:
    """Write ``data`` to ``path`` all at once or not at all.

    ``exclusive``: only create, never replace (a hard link fails if the name exists), so two
    processes creating the same file race safely. Returns False when it already existed.
    """
    path = Path(path)
    tmp = temp_path(path.parent, path.name)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            except OSError:  # no hard links on this filesystem: fall back to a plain check
                if path.exists():
                    return False
                os.replace(tmp, path)
        else:
            os.replace(tmp, path)
        fsync_dir(path.parent)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_file_atomic(path, data)


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
