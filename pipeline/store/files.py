"""The store's filesystem helpers for writing without locks (the writing itself is
``pipeline.atomic``'s): telling abandoned temporary files from live ones, renaming away, removing.

Every file the store writes first lands under a temporary name in its final directory and is
then renamed into place. A rename within one directory is atomic, so a reader sees either no
file or the whole file, and a writer killed at any moment leaves only a temporary file behind.
The temporary name records the writer's pid and host so ``gc`` can tell an abandoned one (its
writer is gone) from one still being written.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

from ..atomic import HOST, TMP_PREFIX, temp_path

READ_ONLY = (errno.EACCES, errno.EPERM, errno.EROFS)  # what writing into a store we may only read raises


def is_temp(name: str) -> bool:
    return name.startswith(TMP_PREFIX)


def temp_is_abandoned(path: Path, max_age: float) -> bool:
    """True when a temporary file's writer is certainly gone: a dead pid on this host, or (for
    another host, whose pids we cannot check) no change for ``max_age`` seconds."""
    parts = path.name[len(TMP_PREFIX):].split("-", 3)
    if len(parts) == 4 and parts[0].isdigit():
        return writer_is_gone(path, int(parts[0]), parts[2], max_age)
    return writer_is_gone(path, None, None, max_age)


def writer_is_gone(path: Path, pid: int | None, host: str | None, max_age: float) -> bool:
    """Whether the process a file was named after is gone: on this host, its pid is dead; for
    another host (whose pids we cannot check), the file has not changed for ``max_age`` seconds.
    A file that no longer exists was not abandoned: someone else cleaned it up."""
    try:
        age = time.time() - path.lstat().st_mtime
    except FileNotFoundError:
        return False
    if pid is not None and host == HOST:
        return not _pid_alive(pid)
    return age > max_age


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def rename_away(path: Path) -> Path:
    """Rename a directory to a temporary name (which ``gc`` finishes deleting if we are killed)."""
    path = Path(path)
    trash = temp_path(path.parent, path.name + ".trash")
    os.rename(path, trash)
    return trash


def remove_tree(path: Path) -> None:
    """Delete a directory so it vanishes at once: rename it to a temporary name first, so a
    deletion killed half way leaves a temporary that ``gc`` finishes, never a half set."""
    import shutil

    shutil.rmtree(rename_away(path), ignore_errors=True)
