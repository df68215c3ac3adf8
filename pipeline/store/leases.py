"""Leases: "this feature set is being written", so ``gc`` leaves it alone.

A writer takes a lease on a set before it creates it or writes its first shard, and holds it
until the set is linked (``links.py``): ``<root>/leases/<set name>/<pid>-<rand>-<host>.lease``.
A thread touches the file every ``REFRESH`` seconds while the process lives. A lease is stale,
and ignored (then removed by ``gc``), when its process on this host is gone, or, for a writer on
another host, when it has not been touched for ``LEASE_AGE`` seconds (10 minutes).
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from ..atomic import process_tag, write_file_atomic
from .files import READ_ONLY, is_temp, writer_is_gone

LEASES = "leases"
LEASE_SUFFIX = ".lease"
LEASE_AGE = 600.0
REFRESH = 60.0


class Lease:
    """Held while the ``with`` block runs; re-created if someone removed it meanwhile."""

    def __init__(self, root: Path, set_name: str, purpose: str):
        self.path = Path(root) / LEASES / set_name / f"{process_tag()}{LEASE_SUFFIX}"
        self.body = json.dumps({"pid": os.getpid(), "purpose": purpose, "started": time.time()}).encode()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_file_atomic(self.path, self.body)

    def _refresh(self) -> None:
        while not self._stop.wait(REFRESH):
            try:
                os.utime(self.path)
            except FileNotFoundError:
                self._write()
            except OSError:
                pass  # a store gone read-only: nothing to protect any more

    def __enter__(self) -> "Lease":
        try:
            self._write()
        except OSError as e:
            if e.errno not in READ_ONLY:
                raise
            return self  # a store we may only read: nothing will be written, so nothing to protect
        self._thread = threading.Thread(target=self._refresh, name=f"lease {self.path.parent.name}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.path.unlink(missing_ok=True)
        try:
            self.path.parent.rmdir()  # the last lease on this set
        except OSError:
            pass


def _lease_files(root: Path, set_name: str | None = None) -> list[Path]:
    base = Path(root) / LEASES
    dirs = [base / set_name] if set_name else (sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else [])
    out = []
    for d in dirs:
        try:
            out += sorted(p for p in d.iterdir() if p.name.endswith(LEASE_SUFFIX) and not is_temp(p.name))
        except FileNotFoundError:
            continue
    return out


def _is_stale(path: Path, max_age: float) -> bool:
    parts = path.name[: -len(LEASE_SUFFIX)].split("-")
    pid = int(parts[0]) if len(parts) == 3 and parts[0].isdigit() else None
    return writer_is_gone(path, pid, parts[2] if pid is not None else None, max_age)


def leased(root: Path, set_name: str, max_age: float = LEASE_AGE) -> list[Path]:
    """The live leases on one set."""
    return [p for p in _lease_files(root, set_name) if p.exists() and not _is_stale(p, max_age)]


def stale_leases(root: Path, max_age: float = LEASE_AGE) -> list[Path]:
    """Leases whose writer is gone (for ``gc``)."""
    return [p for p in _lease_files(root) if _is_stale(p, max_age)]
