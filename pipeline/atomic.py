"""Atomic replacement of output directories: write everything into a temporary sibling, then
rename it into place, so a crash or a bad input never leaves a half-written result behind."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import ModalrecError


@contextlib.contextmanager
def atomic_directory(target: Path, marker: str) -> Iterator[Path]:
    """Yield an empty temporary directory that replaces ``target`` when the block succeeds.

    ``marker`` is a file name every directory this function writes contains; an existing
    ``target`` without it is not ours, and is never deleted.
    """
    target = Path(target)
    if target.exists() and not (target / marker).exists():
        if not target.is_dir() or any(target.iterdir()):
            raise ModalrecError(f"refusing to overwrite {target}: it exists and was not written by modalrec")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary directory
    try:
        yield tmp
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
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
