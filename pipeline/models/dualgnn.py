"""DualGNN (Wang et al., TMM 2021): one graph convolution over the user-item graph per
modality, fused per user by learned weights, then smoothed over a user-user co-occurrence graph.

Per modality m: users start from a learned preference vector, items from ``MLP_m(x_m)`` (two
layers, leaky ReLU); both rows are L2-normalised and propagated over the symmetric-normalised
user-item graph, ``r_m = x + A x + A^2 x``. Items are ``sum_m r_m``; users are
``sum_m w_{u,m} r_m`` (learned per-user weights, two or more modalities) plus the softmax-weighted
mean of their ``k`` co-occurrence neighbours. Items have no id embeddings, so an item without
interactions is still scored from its content. The loss is MMRec's: BPR with ``log2`` plus L2 on
the batch users' preference vectors and on the fusion weights.

Differences from MMRec, on purpose:
- the user-user graph is built here from the TRAINING interactions (``user_graph.py``) and
  cached under their fingerprint; MMRec loads a file precomputed outside the model, keyed by the
  data set's name only, so a changed split silently reuses an old graph.
- a user with fewer than ``k`` neighbours uses those it has; MMRec pads the list with random
  repeats every epoch, which re-weights that user's softmax by chance.
- ranking uses embeddings from the current parameters; MMRec ranks with those kept from the
  last training batch, one optimizer step stale.
- MMRec's ``weight_i`` (never used in the forward pass, only shrunk by the regulariser) and its
  dead modality-dropout edge lists are left out; they do not change any score.
- any number of modalities; missing feature rows are filled with the modality's mean.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..errors import ConfigError
from .base import Recommender, normalized_bipartite, sparse_transpose, spmm
from .lightgcn import WHOLE_GRAPH, propagate
from .registry import BuildContext, ModelSpec, register_model
from .towers import ItemTower
from .user_graph import cached_co_occurrence, row_mean, row_softmax


class ModalityMLPs(ItemTower):
    """Per-modality item vectors ``MLP_m(x_m)`` (feature width -> 4 dim -> dim, leaky ReLU);
    as a tower, an item's vector is the sum of their L2-normalised rows."""

    def __init__(self, features: dict[str, torch.Tensor], dim: int, trainable_features: bool = False):
        super().__init__()
        self.n_items, self.dim = next(iter(features.values())).shape[0], dim
        self.raw = nn.ParameterDict({n: nn.Parameter(f.float().clone(), requires_grad=trainable_features)
                                     for n, f in features.items()})
        self.mlps = nn.ModuleDict({n: nn.Sequential(nn.Linear(f.shape[1], 4 * dim), nn.LeakyReLU(),
                                                    nn.Linear(4 * dim, dim)) for n, f in features.items()})

    def per_modality(self, items: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return {n: mlp(self.raw[n] if items is None else self.raw[n].index_select(0, items))
                for n, mlp in self.mlps.items()}

    def forward(self, items=None):
        return sum(F.normalize(x, dim=1) for x in self.per_modality(items).values())


class DualGNN(Recommender):
    def __init__(self, n_users: int, item_tower: ModalityMLPs, train_users: np.ndarray, train_items: np.ndarray,
                 user_graph: torch.Tensor, n_layers: int = 2, reg_weight: float = 0.1):
        super().__init__()
        self.item_tower = item_tower
        self.n_users, self.n_items = n_users, item_tower.n_items
        self.names = list(item_tower.mlps)
        self.n_layers, self.reg_weight = n_layers, reg_weight
        self.preference = nn.ParameterDict({n: nn.Parameter(nn.init.xavier_normal_(torch.empty(n_users, item_tower.dim)))
                                            for n in self.names})
        if len(self.names) > 1:  # MMRec: one modality is used as it is
            w = nn.init.xavier_normal_(torch.empty(n_users, len(self.names), 1))  # MMRec's init, then softmax
            self.weight_u = nn.Parameter(torch.softmax(w, dim=1).squeeze(-1))
        else:
            self.weight_u = None
        pairs = np.unique(train_users.astype(np.int64) * self.n_items + train_items)  # distinct edges
        r, rt = normalized_bipartite(pairs // self.n_items, pairs % self.n_items, n_users, self.n_items)
        self.register_buffer("r", r, persistent=False)
        self.register_buffer("rt", rt, persistent=False)
        self.register_buffer("user_graph", user_graph, persistent=False)
        self.register_buffer("user_graph_t", sparse_transpose(user_graph), persistent=False)

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        per = self.item_tower.per_modality()
        # every modality side by side in one propagation: one pass over the graph per layer
        users0 = torch.cat([F.normalize(self.preference[n], dim=1) for n in self.names], dim=1)
        items0 = torch.cat([F.normalize(per[n], dim=1) for n in self.names], dim=1)
        users, items = propagate(users0, items0, self.r, self.rt, self.n_layers, mean=False)
        m, d = len(self.names), self.item_tower.dim
        items = items.view(-1, m, d).sum(1)
        if self.weight_u is None:
            user = users
        else:
            user = torch.bmm(self.weight_u.unsqueeze(1), users.view(-1, m, d)).squeeze(1)
        return user + spmm(self.user_graph, self.user_graph_t, user), items

    def loss(self, batch):
        users, items = self.embeddings()
        n = len(batch["pos"])
        u = users.index_select(0, batch["users"])
        its = items.index_select(0, torch.cat([batch["pos"], batch["neg"]]))
        loss = -F.logsigmoid((u * (its[:n] - its[n:])).sum(-1)).mean() / math.log(2)  # MMRec's log2
        reg = sum(p.index_select(0, batch["users"]).pow(2).mean() for p in self.preference.values())
        if self.weight_u is not None:
            reg = reg + self.weight_u.pow(2).mean()
        return loss + self.reg_weight * reg

    def score(self, users_idx):
        users, items = self.embeddings()
        return users[users_idx] @ items.T


@register_model("dualgnn")
class DualGNNSpec(ModelSpec):
    no_live_encoders = WHOLE_GRAPH
    family = "user-item graph per modality + user co-occurrence graph"
    paper = "Wang et al., TMM 2021"
    caches = "user-user co-occurrence graph (top-k, from training interactions)"
    n_layers: int = Field(2, ge=1)  # graph convolutions per modality (MMRec runs two)
    reg_weight: float = Field(0.1, ge=0)  # L2 on the batch users' preference vectors and the fusion weights
    user_knn_k: int = Field(40, ge=1)  # co-occurrence neighbours per user (MMRec's hard-coded k)
    user_aggr: Literal["softmax", "mean"] = "softmax"  # neighbour weights: softmax of shared-item counts, or equal
    modalities: list[str] = []  # feature sets with a graph of their own; default: every configured one
    trainable_features: bool = False  # fine-tune the feature tables too (MMRec's are frozen here)

    def extra_features(self, features: list[str]) -> list[str]:
        return list(self.modalities or features)

    def build(self, ctx: BuildContext) -> DualGNN:
        if ctx.tower.features or ctx.tower.live:
            raise ConfigError("model.item_tower: dualgnn's items are its own per-modality MLPs over "
                              "model.dualgnn.modalities; it takes no item tower")
        filled = ctx.content("dualgnn", "represents items by their features", "modalities", self.modalities)
        users, items = ctx.data.pairs("train")
        counts = cached_co_occurrence(ctx.cache_dir, users, items, ctx.data.n_users, ctx.data.n_items,
                                      self.user_knn_k)
        graph = row_softmax(counts) if self.user_aggr == "softmax" else row_mean(counts)
        dim = ctx.item_tower().dim  # model.dim, read off the configured (id) tower, which is not used
        tower = ModalityMLPs(filled, dim, self.trainable_features)
        return DualGNN(ctx.data.n_users, tower, users, items, graph, n_layers=self.n_layers,
                       reg_weight=self.reg_weight)
