"""FREEDOM (Zhou & Shen 2023): a frozen item-item kNN graph from multimodal features plus a
LightGCN over a user-item graph whose edges are re-sampled every epoch, degree-sensitively.

Scoring uses the full user-item graph; training uses that epoch's pruned graph. The feature
projections only enter the loss through ``reg_weight`` (0 by default, as in the paper's
default run), so by default features shape the model only through the kNN graph.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field
from torch import nn
import torch.nn.functional as F

from ..errors import ConfigError
from .base import Recommender, normalized_bipartite, sparse_transpose, spmm
from .graphs import cached_knn_graph, prune_edges
from .lightgcn import WHOLE_GRAPH, propagate
from .registry import BuildContext, ModelSpec, register_model
from .towers import ItemTower, fill_missing


class FREEDOM(Recommender):
    def __init__(self, n_users: int, item_tower: ItemTower, train_users: np.ndarray, train_items: np.ndarray,
                 item_graph: torch.Tensor, features: dict[str, torch.Tensor], n_ui_layers: int = 2,
                 n_mm_layers: int = 1, dropout: float = 0.8, reg_weight: float = 0.0, seed: int = 0,
                 trainable_features: bool = False):
        super().__init__()
        self.item_tower = item_tower
        self.n_users, self.n_items = n_users, item_tower.n_items
        self.user = nn.Embedding(n_users, item_tower.dim)
        nn.init.xavier_uniform_(self.user.weight)
        self.n_ui_layers, self.n_mm_layers = n_ui_layers, n_mm_layers
        self.dropout, self.reg_weight = dropout, reg_weight
        pairs = np.unique(train_users.astype(np.int64) * self.n_items + train_items)  # distinct edges
        self.train_users, self.train_items = pairs // self.n_items, pairs % self.n_items
        r, rt = normalized_bipartite(self.train_users, self.train_items, n_users, self.n_items)
        self.register_buffer("r", r, persistent=False)
        self.register_buffer("rt", rt, persistent=False)
        self.register_buffer("item_graph", item_graph, persistent=False)
        self.register_buffer("item_graph_t", sparse_transpose(item_graph), persistent=False)
        self.epoch_r, self.epoch_rt = r, rt
        self.seed = seed
        self.generator = torch.Generator()
        # the modality BPR terms' feature tables: frozen unless asked (the paper's code trains them)
        self.feature_tables = nn.ParameterDict({n: nn.Parameter(f.float().clone(), requires_grad=trainable_features)
                                                for n, f in features.items()})
        self.projections = nn.ModuleDict({n: nn.Linear(f.shape[1], item_tower.dim) for n, f in features.items()})

    def pre_epoch(self, epoch: int) -> None:
        if self.dropout <= 0:
            self.epoch_r, self.epoch_rt = self.r, self.rt
            return
        self.generator.manual_seed(self.seed * 1_000_003 + epoch)  # depends on the epoch alone: resumable
        u, i = prune_edges(self.train_users, self.train_items, self.n_users, self.n_items, 1 - self.dropout,
                           self.generator)
        r, rt = normalized_bipartite(u, i, self.n_users, self.n_items)
        self.epoch_r, self.epoch_rt = r.to(self.r.device), rt.to(self.r.device)

    def embeddings(self, r, rt):
        items0 = self.item_tower()
        h = items0
        for _ in range(self.n_mm_layers):
            h = spmm(self.item_graph, self.item_graph_t, h)
        users, items = propagate(self.user.weight, items0, r, rt, self.n_ui_layers)
        return users, items + h

    def loss(self, batch):
        users, items = self.embeddings(self.epoch_r, self.epoch_rt)
        u = users.index_select(0, batch["users"])  # index_select: a cheap backward (see LightGCN)
        n = len(batch["pos"])
        both = torch.cat([batch["pos"], batch["neg"]])

        def bpr(pos_minus_neg):  # BPR on the difference of the positive and negative item vectors
            return -F.logsigmoid((u * pos_minus_neg).sum(-1)).mean()

        its = items.index_select(0, both)
        loss = bpr(its[:n] - its[n:])
        if self.reg_weight > 0:
            # u.(W x_pos + b) - u.(W x_neg + b) = u.W(x_pos - x_neg): one projection of the batch's
            # differences instead of the whole table (the same values, a fraction of the work)
            for name, table in self.feature_tables.items():
                x = table.index_select(0, both)
                loss = loss + self.reg_weight * bpr(F.linear(x[:n] - x[n:], self.projections[name].weight))
        return loss

    def score(self, users_idx):
        users, items = self.embeddings(self.r, self.rt)
        return users[users_idx] @ items.T


@register_model("freedom")
class FREEDOMSpec(ModelSpec):
    family = "item-item graph (frozen kNN) + pruned user-item graph"
    paper = "Zhou & Shen, MM 2023"
    caches = "item-item kNN graph of the features"
    no_live_encoders = WHOLE_GRAPH
    n_ui_layers: int = Field(2, ge=1)
    n_mm_layers: int = Field(1, ge=1)
    knn_k: int = Field(10, ge=1)
    dropout: float = Field(0.8, ge=0, lt=1)  # fraction of user-item edges dropped each epoch
    reg_weight: float = Field(0.0, ge=0)  # weight of the feature-projection BPR terms
    feature_weights: dict[str, float] = {}  # kNN graph weight per feature set; default: equal
    trainable_features: bool = False  # train the feature tables of those terms too (MMRec does, silently)

    def extra_features(self, features: list[str]) -> list[str]:
        return list(self.feature_weights or features)  # the kNN graph's

    def build(self, ctx: BuildContext) -> FREEDOM:
        features = ctx.features
        if not features:
            raise ConfigError("model freedom builds its item-item graph from features: add a `features` section")
        weights = self.feature_weights or {n: 1.0 / len(features) for n in features}
        unknown = sorted(set(weights) - set(features))
        if unknown:
            raise ConfigError(f"model.freedom.feature_weights: {unknown} not in `features` ({sorted(features)})")
        used = {n: features[n] for n in weights}
        # a missing row has no neighbours to speak of: the mean links it to typical items
        filled = {n: fill_missing(f.values.float(), f.mask, "mean") for n, f in used.items()}
        graph = cached_knn_graph(ctx.cache_dir, {n: f.fingerprint for n, f in used.items()}, filled, weights,
                                 self.knn_k)
        users, items = ctx.data.pairs("train")
        return FREEDOM(ctx.data.n_users, ctx.item_tower("xavier_uniform"), users, items, graph, filled,
                       n_ui_layers=self.n_ui_layers, n_mm_layers=self.n_mm_layers, dropout=self.dropout,
                       reg_weight=self.reg_weight, seed=ctx.seed, trainable_features=self.trainable_features)
