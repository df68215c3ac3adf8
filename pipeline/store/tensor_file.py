"""Single files of named arrays in the safetensors layout, written atomically, read memory-mapped.

Layout (https://github.com/huggingface/safetensors): an 8-byte little-endian header length, a
JSON header (tensor dtypes, shapes, byte offsets and a ``__metadata__`` string map), then the
raw little-endian tensor bytes back to back. We read and write it ourselves because the
library's numpy API has no bfloat16 and loads whole files, whereas we need memory maps and
incremental writes; the files stay readable by ``safetensors.torch.load_file``.

Damage detection: the header must parse and its offsets must cover the file exactly (a torn or
truncated file fails this cheaply), and metadata fields named by ``checksums`` hold sha256
digests of tensor bytes, checked on demand with ``digest``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import time
from pathlib import Path

import numpy as np

from ..atomic import fsync_dir, temp_path

DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"), "U8": np.dtype("u1"),
          "BOOL": np.dtype("?")}
_MAX_HEADER = 100 << 20  # the safetensors library's own limit
_CHUNK = 8 << 20
_PLACEHOLDER = "0" * 64


class DamagedFile(Exception):
    """The file is not a complete, self-consistent tensor file."""


def _header(tensors: list[tuple[str, str, tuple[int, ...]]], metadata: dict[str, str]) -> tuple[bytes, dict]:
    entries, offset = {}, 0
    for name, dtype, shape in tensors:
        nbytes = math.prod(shape) * DTYPES[dtype].itemsize
        entries[name] = (dtype, tuple(shape), offset, offset + nbytes)
        offset += nbytes
    tree = {"__metadata__": metadata}
    tree.update({n: {"dtype": d, "shape": list(s), "data_offsets": [b, e]} for n, (d, s, b, e) in entries.items()})
    raw = json.dumps(tree, separators=(",", ":")).encode()
    raw += b" " * (-(len(raw) + 8) % 8)  # tensor data starts 8-byte aligned, so memory maps are aligned
    return struct.pack("<Q", len(raw)) + raw, entries


class TensorFileWriter:
    """Builds a tensor file under a temporary name; ``commit`` renames it to ``final``.

    ``checksums`` maps a metadata field to the tensor whose sha256 it will hold (``None``: all
    tensor bytes); the digests are computed from the written file at commit. As a context
    manager, an exception (or a kill) leaves no file under the final name.
    """

    def __init__(self, final: Path, tensors: list[tuple[str, str, tuple[int, ...]]], metadata: dict[str, str],
                 checksums: dict[str, str | None] | None = None):
        self.final = Path(final)
        self.metadata = dict(metadata)
        self.checksums = dict(checksums or {})
        for field in self.checksums:
            self.metadata[field] = _PLACEHOLDER
        self._tensors = tensors
        header, self.entries = _header(tensors, self.metadata)
        self.data_start = len(header)
        self.size = self.data_start + sum(e[3] - e[2] for e in self.entries.values())
        self.tmp = temp_path(self.final.parent, self.final.name)
        with open(self.tmp, "wb") as f:
            f.write(header)
            f.truncate(self.size)  # unwritten bytes read as zeros
        self._maps: list[np.memmap] = []

    def array(self, name: str) -> np.ndarray:
        """A writable memory map of one tensor, for filling in pieces without holding it in RAM."""
        dtype, shape, begin, end = self.entries[name]
        if end == begin:
            return np.zeros(shape, DTYPES[dtype])
        m = np.memmap(self.tmp, dtype=DTYPES[dtype], mode="r+", offset=self.data_start + begin, shape=shape)
        self._maps.append(m)
        return m

    def put(self, name: str, values: np.ndarray) -> None:
        dtype, shape, begin, end = self.entries[name]
        values = np.ascontiguousarray(values, dtype=DTYPES[dtype])
        if values.shape != shape:
            raise ValueError(f"{name}: shape {values.shape}, header says {shape}")
        with open(self.tmp, "r+b") as f:
            f.seek(self.data_start + begin)
            f.write(values.tobytes())

    def commit(self) -> Path:
        for m in self._maps:
            m.flush()
        self._maps.clear()
        if self.checksums:
            for field, tensor in self.checksums.items():
                self.metadata[field] = _digest(self.tmp, self.data_start, self.entries, tensor)
            header, _ = _header(self._tensors, self.metadata)
            assert len(header) == self.data_start  # digests replace same-length placeholders
            with open(self.tmp, "r+b") as f:
                f.write(header)
        with open(self.tmp, "r+b") as f:
            os.fsync(f.fileno())
        os.replace(self.tmp, self.final)
        fsync_dir(self.final.parent)
        return self.final

    def abort(self) -> None:
        self._maps.clear()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> "TensorFileWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def _digest(path: Path, data_start: int, entries: dict, tensor: str | None) -> str:
    if tensor is None:
        begin, end = 0, max((e[3] for e in entries.values()), default=0)
    else:
        begin, end = entries[tensor][2], entries[tensor][3]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(data_start + begin)
        left = end - begin
        while left > 0:
            chunk = f.read(min(_CHUNK, left))
            if not chunk:
                raise DamagedFile(f"{path}: ends early")
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


class TensorFile:
    """An existing tensor file whose header has been checked against its size."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < 8:
                    raise DamagedFile(f"{size} bytes, too short for a header")
                (n,) = struct.unpack("<Q", f.read(8))
                if not 2 <= n <= min(size - 8, _MAX_HEADER):
                    raise DamagedFile(f"header length {n} does not fit a {size}-byte file")
                raw = f.read(n)
        except OSError as e:
            if isinstance(e, FileNotFoundError):
                raise
            raise DamagedFile(str(e)) from None
        try:
            tree = json.loads(raw)
        except (UnicodeDecodeError, ValueError) as e:
            raise DamagedFile(f"unreadable header ({e})") from None
        self.data_start = 8 + n
        self.metadata = tree.pop("__metadata__", None) or {}
        self.entries: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
        try:
            for name, e in tree.items():
                dtype, shape, (begin, end) = e["dtype"], tuple(int(s) for s in e["shape"]), e["data_offsets"]
                if dtype not in DTYPES or end - begin != math.prod(shape) * DTYPES[dtype].itemsize:
                    raise DamagedFile(f"tensor {name!r}: inconsistent dtype/shape/offsets")
                self.entries[name] = (dtype, shape, int(begin), int(end))
        except (KeyError, TypeError, ValueError) as e:
            raise DamagedFile(f"malformed header ({e})") from None
        spans = sorted((b, e) for _, _, b, e in self.entries.values())
        pos = 0
        for b, e in spans:
            if b != pos:
                raise DamagedFile("tensor data has gaps or overlaps")
            pos = e
        if self.data_start + pos != size:
            raise DamagedFile(f"{size} bytes on disk, header describes {self.data_start + pos} (truncated or torn)")

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entries[name][1]

    def array(self, name: str, mode: str = "r") -> np.ndarray:
        """A memory map of one tensor (``mode="c"``: writable in memory, never written back)."""
        dtype, shape, begin, end = self.entries[name]
        if end == begin:
            return np.zeros(shape, DTYPES[dtype])
        return np.memmap(self.path, dtype=DTYPES[dtype], mode=mode, offset=self.data_start + begin, shape=shape)

    def read(self, name: str) -> np.ndarray:
        """One tensor copied into memory (for small ones: keys, masks)."""
        dtype, shape, begin, end = self.entries[name]
        with open(self.path, "rb") as f:
            f.seek(self.data_start + begin)
            data = f.read(end - begin)
        if len(data) != end - begin:
            raise DamagedFile(f"{self.path}: ends early")
        return np.frombuffer(data, dtype=DTYPES[dtype]).reshape(shape)

    def digest(self, tensor: str | None = None) -> str:
        return _digest(self.path, self.data_start, self.entries, tensor)

    def checksum_ok(self, field: str, tensor: str | None = None) -> bool:
        """Whether metadata ``field`` holds the sha256 of ``tensor`` (None: all tensor bytes).

        A match is remembered for this process by the file's identity and stat, so checking the
        same unchanged file again costs one stat: any rewrite changes its ctime. Not for a file
        changed within the last ``_RACY_NS``, whose next change may keep the same coarse timestamp.
        """
        expected = self.metadata.get(field)
        if not expected:
            return False
        st = os.stat(self.path)
        ident = (str(self.path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, field, expected)
        if ident in _MATCHED:
            return True
        if self.digest(tensor) != expected:
            return False
        if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > _RACY_NS:
            _MATCHED.add(ident)
        return True


_MATCHED: set[tuple] = set()  # checksums that matched in this process (see TensorFile.checksum_ok)
_RACY_NS = 2_000_000_000


def forget_checksums() -> None:
    """Check every file again when next opened (as a new process would; for measuring the check)."""
    _MATCHED.clear()
