"""``hybrid``: LightGCN over an item tower of ids + content, for catalogs with items no one has
interacted with yet (``hybrid_knn.py`` is the other hybrid: FREEDOM with unseen items ranked
through their warm content neighbours).

Warm items get what the id-only graph model gets (ids smoothed over the user-item graph, plus
their content); items with no training interaction get no id noise (``unseen_ids: zero``, the
tower's default when ids meet content) and training drops ids at a rate
(``model.item_tower.id_dropout``) so the content part learns to carry an item alone.

One change to LightGCN's readout: an item with no training interaction is an isolated node, so
its layers 1..L are zero and the mean over layers shrinks its vector by 1/(L+1) against every
trained item's, which ranks such items below everything (cold R@20 0 on the demo). It reads its
own layer-0 vector at weight ``isolated_weight`` instead (1: whole, as the mean over the layers
that reach it; too high and cold items crowd warm ones out of the top K). Defaults chosen on
validation (benchmarks/README.md, `hybrid.py`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydantic import Field

from .base import bpr_loss, emb_loss
from .lightgcn import WHOLE_GRAPH, LightGCN, propagate
from .registry import BuildContext, ModelSpec, register_model

# the share of items a training step sees without their id vector (DropoutNet); the benchmarks ran
# at this rate, not a swept one
HYBRID_ID_DROPOUT = 0.2


class HybridGCN(LightGCN):
    def __init__(self, n_users: int, item_tower, train_users: np.ndarray, train_items: np.ndarray,
                 n_layers: int = 1, reg_weight: float = 0.01, isolated_weight: float = 1.0):
        super().__init__(n_users, item_tower, train_users, train_items, n_layers=n_layers, reg_weight=reg_weight)
        seen = np.bincount(train_items, minlength=item_tower.n_items) > 0
        scale = np.where(seen, 1.0, isolated_weight * (self.n_layers + 1)).astype(np.float32)
        self.register_buffer("isolated_scale", torch.from_numpy(scale).unsqueeze(1), persistent=False)

    def embeddings(self):
        users, items = propagate(self.user.weight, self.item_tower(), self.r, self.rt, self.n_layers)
        return users, items * self.isolated_scale

    def loss(self, batch):
        users, items = propagate(self.user.weight, self.item_tower(), self.r, self.rt, self.n_layers, mean=False)
        u_idx, pos_idx, neg_idx = batch["users"], batch["pos"], batch["neg"]
        n = len(pos_idx)
        both = torch.cat([pos_idx, neg_idx])
        u = users.index_select(0, u_idx)
        its = items.index_select(0, both) * self.isolated_scale.index_select(0, both)
        scale = 1.0 / (self.n_layers + 1) ** 2  # the layer means, applied to the scores (see LightGCN.loss)
        loss = bpr_loss(scale * (u * its[:n]).sum(-1), scale * (u * its[n:]).sum(-1))
        ego_users, ego_items = self.user.weight.index_select(0, u_idx), self.item_tower(both)
        return loss + self.reg_weight * emb_loss(ego_users, ego_items[:n], ego_items[n:])


@register_model("hybrid")
class HybridSpec(ModelSpec):
    no_live_encoders = WHOLE_GRAPH
    family = "user-item graph over ids + content (unseen ids zeroed, id dropout)"
    paper = "LightGCN (He et al., SIGIR 2020) + DropoutNet (Volkovs et al., NeurIPS 2017)"
    n_layers: int = Field(1, ge=1)
    reg_weight: float = Field(0.01, ge=0)
    # the weight of an item's own (layer-0) vector in its readout when it has no training
    # interaction: 1 reads it whole, 1/(n_layers+1) is LightGCN's mean (which ranks those items last)
    isolated_weight: float = Field(0.75, gt=0)

    def default_tower(self, features: list[str]) -> dict[str, Any]:
        return {"features": features, "id_dropout": HYBRID_ID_DROPOUT}  # ids + every feature set

    def build(self, ctx: BuildContext) -> HybridGCN:
        users, items = ctx.data.pairs("train")
        return HybridGCN(ctx.data.n_users, ctx.item_tower("xavier_uniform"), users, items, n_layers=self.n_layers,
                         reg_weight=self.reg_weight, isolated_weight=self.isolated_weight)
