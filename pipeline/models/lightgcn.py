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
              n_layers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over layers 0..n of the bipartite propagation ``u <- R i``, ``i <- R^T u``."""
    u_sum, i_sum = users0, items0
    u, i = users0, items0
    for _ in range(n_layers):
        u, i = spmm(r, rt, i), spmm(rt, r, u)
        u_sum, i_sum = u_sum + u, i_sum + i
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
        users, items = self.embeddings()
        u_idx, pos_idx, neg_idx = batch["users"], batch["pos"], batch["neg"]
        u = users[u_idx]
        loss = bpr_loss((u * items[pos_idx]).sum(-1), (u * items[neg_idx]).sum(-1))
        ego_items = self.item_tower(torch.cat([pos_idx, neg_idx]))
        n = len(pos_idx)
        return loss + self.reg_weight * emb_loss(self.user(u_idx), ego_items[:n], ego_items[n:])

    def score(self, users_idx):
        users, items = self.embeddings()
        return users[users_idx] @ items.T
