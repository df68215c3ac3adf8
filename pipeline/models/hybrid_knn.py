"""``hybrid_knn`` (``ColdFill``): FREEDOM as it is for warm items, and
each item with no training interaction ranked through its nearest warm items by content.
Defaults chosen on validation (benchmarks/README.md, `hybrid.py`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydantic import Field

from .base import Recommender
from .freedom import FREEDOM, FREEDOMSpec
from .registry import BuildContext, register_model
from .towers import ItemTower, fill_missing


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
    paper = "FREEDOM (Zhou & Shen, MM 2023) + a content-neighbour cold fill (modalrec)"
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
