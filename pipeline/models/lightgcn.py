"""LightGCN (He et al. 2020): embeddings smoothed over the normalised user-item graph.

Layer 0 is the user table and the item tower's output; each layer multiplies by the
normalised adjacency; the final embedding is the mean of all layers, layer 0 included.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field
from torch import nn

from .base import Recommender, bpr_loss, emb_loss, normalized_bipartite
from .registry import BuildContext, ModelSpec, register_model
from .towers import ItemTower

# graph models smooth every item's vector over the graph at every step: a live encoder would
# have to encode the whole catalog per step
WHOLE_GRAPH = "propagates over the whole item graph every step, which live encoders cannot afford"


def layer_sum(users0: torch.Tensor, items0: torch.Tensor, r: torch.Tensor, rt: torch.Tensor,
              n_layers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``S x = x + A x + ... + A^n x`` for ``x = [users0; items0]`` and ``A = [[0, R], [R^T, 0]]``,
    by Horner's rule ``x + A(x + A(x + ...))``: n products by A, each two sparse ``addmm``
    (``users0 + R i`` in one call: the sparse BLAS adds into a copy of ``users0``)."""
    u, i = users0, items0
    for _ in range(n_layers):
        u, i = torch.addmm(users0, r, i), torch.addmm(items0, rt, u)
    return u, i


class _LayerSum(torch.autograd.Function):
    """``layer_sum`` with a backward pass of the same shape: ``S`` is a polynomial in the symmetric
    ``A``, so it is symmetric, and the gradient of ``S x`` is ``S`` applied to the incoming
    gradient. One autograd node instead of one per product and per sum, and no intermediate
    layers kept for the backward pass. Runs in float32 under autocast (the graph is float32)."""

    @staticmethod
    def forward(ctx, users0, items0, r, rt, n_layers):
        ctx.graph = (r, rt, n_layers)
        ctx.dtypes = (users0.dtype, items0.dtype)
        with torch.autocast(users0.device.type, enabled=False):
            return layer_sum(users0.float(), items0.float(), r, rt, n_layers)

    @staticmethod
    def backward(ctx, grad_users, grad_items):
        r, rt, n_layers = ctx.graph
        with torch.autocast(grad_users.device.type, enabled=False):
            gu, gi = layer_sum(grad_users.float(), grad_items.float(), r, rt, n_layers)
        return gu.to(ctx.dtypes[0]), gi.to(ctx.dtypes[1]), None, None, None


def propagate(users0: torch.Tensor, items0: torch.Tensor, r: torch.Tensor, rt: torch.Tensor,
              n_layers: int, mean: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (or, with ``mean=False``, sum) over layers 0..n of ``u <- R i``, ``i <- R^T u``.
    ``r`` must be the normalised bipartite block (``normalized_bipartite``) and ``rt`` its
    transpose: the backward pass relies on the full adjacency being symmetric."""
    u_sum, i_sum = _LayerSum.apply(users0, items0, r, rt, n_layers)
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
        ego_users, ego_items = self.user.weight.index_select(0, u_idx), self.item_tower(both)
        return loss + self.reg_weight * emb_loss(ego_users, ego_items[:n], ego_items[n:])

    def score(self, users_idx):
        users, items = self.embeddings()
        return users[users_idx] @ items.T


@register_model("lightgcn")
class LightGCNSpec(ModelSpec):
    family = "user-item graph (ids only)"
    paper = "He et al., SIGIR 2020"
    caches = "nothing"
    no_live_encoders = WHOLE_GRAPH
    n_layers: int = Field(1, ge=1)
    reg_weight: float = Field(0.01, ge=0)

    def build(self, ctx: BuildContext) -> LightGCN:
        users, items = ctx.data.pairs("train")
        return LightGCN(ctx.data.n_users, ctx.item_tower("xavier_uniform"), users, items, n_layers=self.n_layers,
                        reg_weight=self.reg_weight)
