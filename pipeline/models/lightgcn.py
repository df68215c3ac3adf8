"""LightGCN (He et al. 2020): embeddings smoothed over the normalised user-item graph.

Layer 0 is the user table and the item tower's output; each layer multiplies by the
normalised adjacency; the final embedding is the mean of all layers, layer 0 included.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .base import Recommender, bpr_loss, emb_loss, normalized_bipartite, spmm
from .towers import ItemTower


def propagate(users0: torch.Tensor, items0: torch.Tensor, r: torch.Tensor, rt: torch.Tensor,
              n_layers: int, mean: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (or, with ``mean=False``, sum) over layers 0..n of ``u <- R i``, ``i <- R^T u``."""
    u_sum, i_sum = users0, items0
    u, i = users0, items0
    for _ in range(n_layers):
        u, i = spmm(r, rt, i), spmm(rt, r, u)
        u_sum, i_sum = u_sum + u, i_sum + i
    if not mean:
        return u_sum, i_sum
    return u_sum / (n_layers + 1), i_sum / (n_layers + 1)


class LightGCN(Recommender):
    def __init__(self, n_users: int, item_tower: ItemTower, train_users: np.ndarray, train_items: np.ndarray,
                 n_layers: int = 1, reg_weight: float = 0.01):
        super().__init__()
        self.item_tower = item_tower
        self.user = nn.Embedding(n_users, item_tower.dim)
        nn.init.xavier_uniform_(self.user.weight)
        self.n_layers, self.reg_weight = n_layers, reg_weight
        r, rt = normalized_bipartite(train_users, train_items, n_users, item_tower.n_items)
        self.register_buffer("r", r, persistent=False)
        self.register_buffer("rt", rt, persistent=False)

    def embeddings(self):
        return propagate(self.user.weight, self.item_tower(), self.r, self.rt, self.n_layers)

    def loss(self, batch):
        # layer sums, with the mean's 1/(L+1)^2 applied to the scores: the same loss without
        # dividing two full embedding tables (and their gradients) on every step
        users, items = propagate(self.user.weight, self.item_tower(), self.r, self.rt, self.n_layers, mean=False)
        u_idx, pos_idx, neg_idx = batch["users"], batch["pos"], batch["neg"]
        n = len(pos_idx)
        both = torch.cat([pos_idx, neg_idx])
        # index_select, not users[u_idx]: its backward is an index_add, several times faster on CPU
        # than the accumulating index_put that tensor indexing runs backward
        u, its = users.index_select(0, u_idx), items.index_select(0, both)  # pos and neg in one gather
        scale = 1.0 / (self.n_layers + 1) ** 2
        loss = bpr_loss(scale * (u * its[:n]).sum(-1), scale * (u * its[n:]).sum(-1))
        ego_items = self.item_tower(both)
        return loss + self.reg_weight * emb_loss(self.user(u_idx), ego_items[:n], ego_items[n:])

    def score(self, users_idx):
        users, items = self.embeddings()
        return users[users_idx] @ items.T
