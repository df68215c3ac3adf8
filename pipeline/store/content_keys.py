"""The content-key cache: media file hashes remembered by file stat, one file per data set
(``<root>/content-keys/<data set>.json``), so an unchanged file is stat'ed, not read again."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from ..atomic import write_file_atomic
from .files import is_temp, temp_is_abandoned
from .keys import content_key_text
from .root import default_root

CONTENT_KEYS = "content-keys"
# A file changed within this long before its stat may change again without a new mtime (a
# coarse filesystem clock): its key is used but not remembered ("racy git" rule).
RACY_NS = 2_000_000_000
_FORMAT = 1


class ContentKeys:
    """Content keys of catalog values; media file hashes are remembered by (size, mtime, ctime,
    inode) in a small JSON sidecar, so an unchanged file is stat'ed, not read."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.files: dict[str, list] = {}
        self.seen: set[str] = set()
        self.unreadable: dict[str, str] = {}  # path -> why, for files that exist but cannot be read
        self.dirty = False
        try:
            body = json.loads(self.path.read_text(encoding="utf-8"))
            if isinstance(body, dict) and body.get("format") == _FORMAT and isinstance(body.get("files"), dict):
                self.files = body["files"]
        except (OSError, ValueError):
            pass  # no sidecar yet, or a damaged one: everything is hashed again

    @classmethod
    def at(cls, root: Path, data: str) -> ContentKeys:
        """The cache of data set ``data`` in the store at ``root``."""
        return cls(Path(root) / CONTENT_KEYS / f"{data}.json")

    @classmethod
    def for_config(cls, cfg) -> ContentKeys:
        return cls.at(default_root(cfg), cfg.data.name)

    def keys(self, values: list[str | None], modality: str) -> list[str | None]:
        """Per value, its key: the text's hash, or the media file's; None for no value, or a
        file that does not exist or cannot be read (then in ``unreadable``, with why)."""
        if modality == "text":
            return [None if v is None else content_key_text(v) for v in values]
        now = time.time_ns()
        out: list[str | None] = []
        for value in values:
            if value is None:
                out.append(None)
                continue
            self.seen.add(value)
            try:
                st = os.stat(value)
            except FileNotFoundError:
                out.append(None)  # a vanished file: bad input, reported by the caller
                continue
            except OSError as e:
                self.unreadable[value] = f"cannot read {value}: {e.strerror or e}"
                out.append(None)
                continue
            stat = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
            known = self.files.get(value)
            if isinstance(known, list) and len(known) == 5 and known[:4] == stat:
                out.append(known[4])
                continue
            try:
                with open(value, "rb") as fh:  # the same key as store.content_key_file, with less copying
                    key = hashlib.file_digest(fh, "sha256").hexdigest()
            except FileNotFoundError:
                key = None
            except OSError as e:  # a directory, no permission, an I/O error: bad input too
                self.unreadable[value] = f"cannot read {value}: {e.strerror or e}"
                out.append(None)
                continue
            out.append(key)
            if key is not None and now - max(st.st_mtime_ns, st.st_ctime_ns) > RACY_NS:
                self.files[value] = stat + [key]
                self.dirty = True
            elif self.files.pop(value, None) is not None:
                self.dirty = True
        return out

    def save(self, prune: bool = False) -> None:
        """Write the sidecar; ``prune``: forget files not looked at since this object was made."""
        if prune and len(self.seen) < len(self.files):
            self.files = {k: v for k, v in self.files.items() if k in self.seen}
            self.dirty = True
        if not self.dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = json.dumps({"format": _FORMAT, "files": self.files}, separators=(",", ":"))
        write_file_atomic(self.path, body.encode("utf-8"))
        self.dirty = False
        for p in self.path.parent.iterdir():  # leftovers of a writer killed mid-save
            if is_temp(p.name) and temp_is_abandoned(p, 3600.0):
                p.unlink(missing_ok=True)
