"""Hybrids of ids and content for catalogs with items no one has interacted with yet.

``hybrid_knn`` (``ColdFill``, the demo's default model): FREEDOM as it is for warm items, and each
unseen item ranked through its nearest warm items by content (below).

``hybrid``: LightGCN over an item tower of ids + content.

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

from .base import Recommender, bpr_loss, emb_loss
from .freedom import FREEDOM, FREEDOMSpec
from .lightgcn import WHOLE_GRAPH, LightGCN, propagate
from .registry import BuildContext, ModelSpec, register_model
from .towers import ItemTower, fill_missing

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


def content_neighbours(features: dict[str, torch.Tensor], weights: dict[str, float], cold: torch.Tensor,
                       k: int) -> torch.Tensor:
    """Sparse ``[n_items, n_items]``: row i of a ``cold`` item holds its ``k`` most cosine-similar
    warm items in each feature set, each at ``weight / k`` (weights summing to 1, so a row is a
    weighted mean); rows of warm items are empty."""
    cold_idx, warm_idx = torch.nonzero(cold).squeeze(1), torch.nonzero(~cold).squeeze(1)
    n = len(cold)
    total = sum(weights.values())
    k = min(k, len(warm_idx))
    rows, cols, vals = [], [], []
    for name, x in features.items():
        x = torch.nn.functional.normalize(x.float(), dim=1)
        near = (x[cold_idx] @ x[warm_idx].T).topk(k, dim=1).indices if len(cold_idx) else cold_idx.new_zeros(0, k)
        rows.append(cold_idx.repeat_interleave(k))
        cols.append(warm_idx[near.reshape(-1)])
        vals.append(torch.full((len(cold_idx) * k,), weights[name] / total / k))
    graph = torch.sparse_coo_tensor(torch.stack([torch.cat(rows), torch.cat(cols)]), torch.cat(vals), (n, n))
    return graph.coalesce().to_sparse_csr()


class ColdFill(Recommender):
    """FREEDOM whose items without training interactions rank by their content neighbours.

    Training is FREEDOM's, untouched, so warm items score as FREEDOM scores them. An unseen item's
    own vector carries nothing trained (its id is zeroed; its kNN-graph part only averages
    neighbours' layer-0 ids, a fraction of what a trained item's vector holds), so it ranks last.
    At ranking, its vector is instead ``cold_weight`` x the weighted mean of the final vectors of
    its ``k`` nearest warm items by content: a user scores it as they score the warm items that
    look like it. The mean of k vectors is shorter than a typical one (the top neighbours of one
    user rarely all agree), so it takes a weight above 1 to bring cold items level with warm ones;
    the weight is then the one knob between the two slices (both share the top K).
    """

    def __init__(self, freedom: FREEDOM, neighbours: torch.Tensor, cold: torch.Tensor, cold_weight: float):
        super().__init__()
        self.freedom, self.cold_weight = freedom, cold_weight
        self.register_buffer("neighbours", neighbours, persistent=False)
        self.register_buffer("cold", cold, persistent=False)

    @property
    def item_tower(self) -> ItemTower:
        return self.freedom.item_tower

    def pre_epoch(self, epoch: int) -> None:
        self.freedom.pre_epoch(epoch)

    def loss(self, batch):
        return self.freedom.loss(batch)

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        users, items = self.freedom.embeddings(self.freedom.r, self.freedom.rt)
        filled = self.cold_weight * (self.neighbours @ items)
        return users, torch.where(self.cold.unsqueeze(1), filled, items)

    def score(self, users_idx):
        users, items = self.embeddings()
        return users[users_idx] @ items.T


@register_model("hybrid_knn")
class HybridKNNSpec(FREEDOMSpec):
    """FREEDOM (ids over the user-item graph plus a content kNN item graph) with unseen items
    ranked by their nearest warm items in content (``ColdFill``); FREEDOM's settings apply."""

    family = "FREEDOM + unseen items ranked through their warm content neighbours"
    caches = "item-item kNN graph of the features (FREEDOM's); the cold items' neighbours are rebuilt per run"

    # the best overall validation R@20 on the demo and H&M (benchmarks/README.md, `hybrid.py`):
    # higher trades warm items for cold ones, lower ranks cold items last again
    cold_weight: float = Field(2.0, gt=0)
    cold_k: int = Field(10, ge=1)  # warm neighbours per feature set an unseen item reads

    def default_tower(self, features: list[str]) -> dict[str, Any]:
        # unseen ids zeroed: their untrained rows would otherwise leak into warm items' kNN part
        return {"unseen_ids": "zero"}

    def build(self, ctx: BuildContext) -> ColdFill:
        freedom = super().build(ctx)
        weights = self.feature_weights or {n: 1.0 for n in ctx.features}
        filled = {n: fill_missing(ctx.features[n].values.float(), ctx.features[n].mask, "mean") for n in weights}
        cold = torch.from_numpy(np.bincount(ctx.data.pairs("train")[1], minlength=ctx.data.n_items) == 0)
        return ColdFill(freedom, content_neighbours(filled, weights, cold, self.cold_k), cold, self.cold_weight)
