"""The user-user co-occurrence graph (DualGNN, DRAGON): two users are linked by the number of
distinct items both interacted with in TRAINING; each user keeps its ``k`` strongest links.

MMRec precomputes this offline (``user_graph_dict.npy``) with a Python double loop over user
pairs and a dense users x users matrix; here it is one sparse product ``B B^T`` of the binary
user-item matrix, cached under the fingerprint of the training pairs and the settings.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .base import compact_csr
from .derived import array_fingerprint, cached_tensors


def user_cooccurrence(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int, k: int) -> torch.Tensor:
    """Sparse CSR ``[n_users, n_users]``: row u holds u's ``k`` users with the most items in
    common (ties: the lower user index first), valued by that count; no self-links."""
    key = np.unique(users.astype(np.int64) * n_items + items)  # each (user, item) once: distinct items count
    u, i = torch.from_numpy(key // n_items), torch.from_numpy(key % n_items)
    b = torch.sparse_coo_tensor(torch.stack([u, i]), torch.ones(len(key), dtype=torch.float64), (n_users, n_items))
    co = torch.sparse.mm(b, b.t()).coalesce()
    rows, cols = co.indices()
    counts = co.values()
    off = rows != cols
    rows, cols, counts = rows[off].numpy(), cols[off].numpy(), counts[off].numpy()
    order = np.lexsort((cols, -counts, rows))  # by user, then strongest link first
    rows, cols, counts = rows[order], cols[order], counts[order]
    starts = np.searchsorted(rows, np.arange(n_users))
    rank = np.arange(len(rows)) - starts[rows]
    keep = rank < k
    graph = torch.sparse_coo_tensor(torch.from_numpy(np.vstack([rows[keep], cols[keep]])),
                                    torch.from_numpy(counts[keep].astype(np.float32)), (n_users, n_users))
    return compact_csr(graph.coalesce())


def cached_user_cooccurrence(cache_dir: Path, users: np.ndarray, items: np.ndarray, n_users: int, n_items: int,
                             k: int) -> torch.Tensor:
    """``user_cooccurrence`` keyed by the training pairs' fingerprint, the sizes and ``k``."""
    ident = {"train": array_fingerprint(users, items), "n_users": n_users, "n_items": n_items, "k": k}
    return cached_tensors(cache_dir, "user-cooccurrence", ident,
                          lambda: {"graph": user_cooccurrence(users, items, n_users, n_items, k)})["graph"]
