"""Item-item kNN graphs from features, built block-wise (never the full n x n similarity) and
cached on disk under a key made of the fingerprints of the features that built them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .base import compact_csr
from .derived import cached_tensors


def knn_indices(features: torch.Tensor, k: int, block: int = 2048) -> torch.Tensor:
    """Top-``k`` cosine neighbours of every row (itself included, as in FREEDOM): ``[n, k]``."""
    x = torch.nn.functional.normalize(features.float(), dim=1)
    out = torch.empty(len(x), k, dtype=torch.long)
    for start in range(0, len(x), block):
        sims = x[start : start + block] @ x.T
        out[start : start + block] = sims.topk(k, dim=1).indices
    return out


def knn_graph(features: dict[str, torch.Tensor], weights: dict[str, float], k: int) -> torch.Tensor:
    """``sum_m w_m * S_m`` where ``S_m`` is the binary kNN graph of modality m with each entry
    normalised by ``(deg_r * deg_c)^-1/2`` (FREEDOM's construction); sparse CSR ``[n, n]``."""
    n = next(iter(features.values())).shape[0]
    rows, cols, vals = [], [], []
    for name, x in features.items():
        idx = knn_indices(x, k)
        r = torch.arange(n).repeat_interleave(k)
        c = idx.reshape(-1)
        deg = torch.bincount(r, minlength=n).float() + 1e-7
        rows.append(r)
        cols.append(c)
        vals.append(weights[name] * deg[r].rsqrt() * deg[c].rsqrt())
    graph = torch.sparse_coo_tensor(torch.stack([torch.cat(rows), torch.cat(cols)]), torch.cat(vals), (n, n))
    return compact_csr(graph.coalesce())


def cached_knn_graph(cache_dir: Path, fingerprints: dict[str, str], features: dict[str, torch.Tensor],
                     weights: dict[str, float], k: int) -> torch.Tensor:
    """``knn_graph`` keyed by what built it: the features' fingerprints, weights and k.

    MMRec keys this cache by k and weight only, so changed features silently reuse a stale graph.
    """
    ident = {"k": k, "weights": weights, "features": fingerprints}
    return cached_tensors(cache_dir, "knn", ident, lambda: {"graph": knn_graph(features, weights, k)})["graph"]


def prune_edges(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int, keep_ratio: float,
                generator: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Degree-sensitive edge sampling (FREEDOM): keep ``keep_ratio`` of the edges, drawn without
    replacement with probability proportional to ``(d_u * d_i)^-1/2``, so edges between
    low-degree nodes survive more often."""
    du = np.bincount(users, minlength=n_users) + 1e-7
    di = np.bincount(items, minlength=n_items) + 1e-7
    w = torch.from_numpy(du[users] ** -0.5 * di[items] ** -0.5)
    n_keep = int(len(users) * keep_ratio)
    kept = torch.multinomial(w, n_keep, replacement=False, generator=generator).numpy()
    return users[kept], items[kept]
