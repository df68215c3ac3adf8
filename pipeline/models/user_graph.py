"""User-user co-occurrence graphs (DualGNN, DRAGON): each user linked to the ``k`` users sharing
the most items with them in the TRAINING interactions, weighted by how many they share.

MMRec precomputes these with a script looping over every user pair; here the counts come from
sparse products ``R_b R^T`` over blocks of users (never the n_users x n_users matrix), and the
result is cached keyed by a fingerprint of the training pairs, so a new split cannot reuse it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from .base import compact_csr
from .derived import array_fingerprint, cached_tensors


def co_occurrence_topk(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int, k: int,
                       block_cells: int = 1 << 23) -> torch.Tensor:
    """CSR ``[n_users, n_users]``: row u holds u's (at most) ``k`` other users with the most
    distinct items in common, valued by that count. Users sharing nothing are never linked;
    ties go to the lower user id (MMRec's ``torch.topk`` breaks them arbitrarily)."""
    pairs = np.unique(users.astype(np.int64) * n_items + items)  # repeated interactions count once
    u, i = pairs // n_items, pairs % n_items
    r = sp.csr_matrix((np.ones(len(u), np.float32), (u, i)), shape=(n_users, n_items))
    rt = r.T.tocsr()
    k = min(k, max(n_users - 1, 0))
    rows, cols, vals = [], [], []
    step = max(1, block_cells // max(n_users, 1))
    for start in range(0, n_users if k else 0, step):
        stop = min(start + step, n_users)
        counts = torch.from_numpy((r[start:stop] @ rt).toarray()).long()  # [b, n_users]
        local = torch.arange(stop - start)
        counts[local, local + start] = 0  # not one's own neighbour
        # the count first, then the lower id: one exact integer key per cell
        key = counts * n_users + (n_users - 1 - torch.arange(n_users))
        top = key.topk(k, dim=1).indices
        c = counts.gather(1, top)
        keep = c > 0
        rows.append((local + start).unsqueeze(1).expand_as(top)[keep])
        cols.append(top[keep])
        vals.append(c[keep].float())
    if not rows:
        return compact_csr(torch.sparse_coo_tensor(torch.zeros(2, 0, dtype=torch.long), torch.zeros(0),
                                                   (n_users, n_users)))
    graph = torch.sparse_coo_tensor(torch.stack([torch.cat(rows), torch.cat(cols)]), torch.cat(vals),
                                    (n_users, n_users))
    return compact_csr(graph.coalesce())


def cached_co_occurrence(cache_dir: Path, users: np.ndarray, items: np.ndarray, n_users: int, n_items: int,
                         k: int) -> torch.Tensor:
    """``co_occurrence_topk`` keyed by the training pairs' fingerprint and the settings (MMRec
    keys its file by the data set's name alone)."""
    ident = {"train": array_fingerprint(users, items), "n_users": n_users, "n_items": n_items, "k": k}
    return cached_tensors(cache_dir, "user-cooccurrence", ident,
                          lambda: {"graph": co_occurrence_topk(users, items, n_users, n_items, k)})["graph"]


def row_softmax(graph: torch.Tensor) -> torch.Tensor:
    """The CSR ``graph`` with each row's values replaced by their softmax (empty rows stay empty)."""
    crow, col, val = graph.crow_indices(), graph.col_indices(), graph.values().float()
    rows = torch.repeat_interleave(torch.arange(graph.shape[0]), (crow[1:] - crow[:-1]).long())
    peak = torch.full((graph.shape[0],), -torch.inf).scatter_reduce(0, rows, val, "amax")
    e = torch.exp(val - peak[rows])
    total = torch.zeros(graph.shape[0]).index_add(0, rows, e)
    return torch.sparse_csr_tensor(crow, col, e / total[rows], graph.shape)


def row_mean(graph: torch.Tensor) -> torch.Tensor:
    """The CSR ``graph`` with each row's values replaced by one over the row's length."""
    crow, col = graph.crow_indices(), graph.col_indices()
    length = (crow[1:] - crow[:-1]).long()
    w = torch.repeat_interleave(1.0 / length.clamp(min=1).float(), length)
    return torch.sparse_csr_tensor(crow, col, w, graph.shape)
