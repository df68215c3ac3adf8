"""Derived data worth keeping between runs (kNN graphs, user-user graphs, hypergraphs): tensors
cached under ``<cache_dir>/derived/<kind>-<key>/``, where the key hashes everything that built
them (feature fingerprints, the training interactions, the settings). MMRec keys such caches by
settings alone, so new features or a new split silently reuse a stale graph; here they cannot.

    graph = cached_tensors(ctx.cache_dir, "user-graph",
                           {"train": array_fingerprint(users, items), "k": 10},
                           lambda: {"graph": build(users, items)})["graph"]

Sparse tensors (COO or CSR) are stored as their parts and come back as int32 CSR
(``compact_csr``); dense tensors come back as they went in. Files are written atomically with
their sha256 beside them, checked on every read; a damaged cache is rebuilt, never trusted.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load, save_file

from ..atomic import atomic_directory
from .base import compact_csr

FILE = "tensors.safetensors"


def array_fingerprint(*arrays: np.ndarray | torch.Tensor) -> str:
    """sha256 over the arrays' dtypes, shapes and bytes (e.g. the training pairs)."""
    h = hashlib.sha256()
    for a in arrays:
        a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def derived_key(kind: str, ident: dict) -> str:
    text = json.dumps({"kind": kind, **ident}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _flatten(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    flat = {}
    for name, t in tensors.items():
        if t.layout == torch.sparse_coo:
            t = t.coalesce().to_sparse_csr()
        if t.layout == torch.sparse_csr:
            flat[f"{name}.crow"] = t.crow_indices().contiguous()
            flat[f"{name}.col"] = t.col_indices().contiguous()
            flat[f"{name}.val"] = t.values().contiguous()
            flat[f"{name}.shape"] = torch.tensor(list(t.shape))
        elif t.layout == torch.strided:
            flat[f"{name}.dense"] = t.contiguous()
        else:
            raise TypeError(f"cached_tensors: {name!r} has layout {t.layout}, not dense, COO or CSR")
    return flat


def _unflatten(flat: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key in flat:
        name, part = key.rsplit(".", 1)
        if part == "dense":
            out[name] = flat[key]
        elif part == "shape":
            shape = tuple(int(s) for s in flat[key])
            out[name] = compact_csr(torch.sparse_csr_tensor(flat[f"{name}.crow"], flat[f"{name}.col"],
                                                            flat[f"{name}.val"], shape))
    return out


def cached_tensors(cache_dir: Path | str, kind: str, ident: dict,
                   build: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """``build()``'s tensors, read from the cache when ``kind`` + ``ident`` built them before.

    ``ident`` must name everything the result depends on (fingerprints of features and
    interactions, every setting): it is the whole cache key, and it is saved beside the data.
    """
    folder = Path(cache_dir) / "derived" / f"{kind}-{derived_key(kind, ident)}"
    if (folder / FILE).is_file():
        try:
            data = (folder / FILE).read_bytes()
            saved = json.loads((folder / "identity.json").read_text())["sha256"]
            if hashlib.sha256(data).hexdigest() == saved:
                return _unflatten(load(data))
        except (OSError, ValueError, KeyError):
            pass  # damaged or incomplete: rebuilt below (the atomic write replaces it whole)
    tensors = build()
    with atomic_directory(folder, FILE) as tmp:
        save_file(_flatten(tensors), str(tmp / FILE))
        digest = hashlib.sha256((tmp / FILE).read_bytes()).hexdigest()
        (tmp / "identity.json").write_text(json.dumps({"kind": kind, **ident, "sha256": digest}, sort_keys=True,
                                                      default=str))
    return {n: (compact_csr(t) if t.layout != torch.strided else t) for n, t in tensors.items()}
