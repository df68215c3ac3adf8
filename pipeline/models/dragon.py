"""DRAGON (Zhou et al., ECAI 2023): dual representations from a heterogeneous user-item graph
per modality and two homogeneous graphs, an item-item kNN graph and a user-user co-occurrence
graph.

Per modality m: the user's preference vector (a parameter) and the item's features through a
two-layer MLP, each row L2-normalised, are smoothed over the user-item graph (``x + A x + A^2 x``,
symmetric normalisation, no id embeddings). Items concatenate their modality vectors and add
their neighbours' over the item-item graph (FREEDOM's weighted kNN construction); users
concatenate theirs, each scaled by a learned per-user modality weight, and add a weighted sum
of their co-occurrence neighbours (a softmax over items-in-common counts). Loss: BPR in log base 2
plus ``reg_weight`` times the mean squared preference rows of the batch's users and the mean
squared modality weights.

Any number of modalities (MMRec's code has exactly image and text; with one modality it uses
no modality weights, as here). The user-user graph is built from training interactions only
(``user_graph.py``) and cached under their fingerprint. Where MMRec pads a user with
fewer than ``user_k`` neighbours by repeating random ones (freshly drawn every epoch), training
does the same, seeded by the epoch so that resumed runs match; scoring uses the plain softmax
over the user's neighbours instead of whichever draw came last, so a saved model scores the
same when it is loaded again. MMRec scores from the embeddings of its last training batch;
here scoring recomputes them. MMRec builds (but never uses) per-modality edge-dropped graphs
and several unused layers; they are left out. Features are frozen, as MMRec's forward reads
them (its trainable copies are never used).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..errors import ConfigError
from .base import Recommender, normalized_bipartite, sparse_transpose, spmm
from .graphs import cached_knn_graph
from .lightgcn import WHOLE_GRAPH, propagate
from .registry import BuildContext, ModelSpec, register_model
from .towers import fill_missing
from .user_graph import cached_co_occurrence


def neighbour_weights(graph: torch.Tensor, k: int, generator: torch.Generator | None) -> torch.Tensor:
    """Row-wise softmax of the co-occurrence counts in CSR ``graph``, as CSR of the same
    pattern. With a ``generator``, a row with fewer than ``k`` entries is first padded to ``k``
    by repeating entries drawn uniformly from it (MMRec's sampling): an entry drawn c times
    counts c + 1 times in the softmax."""
    crow, values = graph.crow_indices().long(), graph.values().double()
    n = crow.diff()
    rows = torch.repeat_interleave(torch.arange(len(n)), n)
    logits = values
    if generator is not None:
        short = torch.nonzero((n > 0) & (n < k)).squeeze(1)
        draws = torch.repeat_interleave(short, k - n[short])
        picked = crow[draws] + (torch.rand(len(draws), generator=generator, dtype=torch.float64)
                                * n[draws]).long()
        copies = 1 + torch.bincount(picked, minlength=len(values)).double()
        logits = values + copies.log()
    top = torch.full((len(n),), -math.inf, dtype=torch.float64).scatter_reduce(0, rows, logits, "amax")
    e = (logits - top[rows]).exp()
    total = torch.zeros(len(n), dtype=torch.float64).index_add_(0, rows, e)
    return torch.sparse_csr_tensor(graph.crow_indices(), graph.col_indices(), (e / total[rows]).float(),
                                   graph.shape)


class DRAGON(Recommender):
    def __init__(self, n_users: int, n_items: int, dim: int, train_users: np.ndarray, train_items: np.ndarray,
                 item_graph: torch.Tensor, user_graph: torch.Tensor, features: dict[str, torch.Tensor],
                 n_layers: int = 2, n_mm_layers: int = 1, user_k: int = 40, reg_weight: float = 0.1, seed: int = 0):
        super().__init__()
        self.n_users, self.n_items, self.dim = n_users, n_items, dim
        self.names = list(features)
        self.n_layers, self.n_mm_layers, self.user_k = n_layers, n_mm_layers, user_k
        self.reg_weight, self.seed = reg_weight, seed
        r, rt = normalized_bipartite(train_users, train_items, n_users, n_items)
        self.register_buffer("r", r, persistent=False)
        self.register_buffer("rt", rt, persistent=False)
        self.register_buffer("item_graph", item_graph, persistent=False)
        self.register_buffer("item_graph_t", sparse_transpose(item_graph), persistent=False)
        self.user_counts = user_graph  # co-occurrence counts: the epoch's weights are drawn from them
        self.register_buffer("user_graph", neighbour_weights(user_graph, user_k, None), persistent=False)
        self.register_buffer("user_graph_t", sparse_transpose(self.user_graph), persistent=False)
        self.epoch_graph, self.epoch_graph_t = self.user_graph, self.user_graph_t
        self.generator = torch.Generator()
        for name, f in features.items():
            self.register_buffer(f"features_{name}", f.float(), persistent=False)
        self.preferences = nn.ParameterDict({n: nn.Parameter(nn.init.xavier_normal_(torch.empty(n_users, dim)))
                                             for n in self.names})
        self.mlps = nn.ModuleDict({n: nn.Sequential(nn.Linear(f.shape[1], 4 * dim), nn.LeakyReLU(),
                                                    nn.Linear(4 * dim, dim)) for n, f in features.items()})
        self.modality_weights = None
        if len(self.names) > 1:
            w = nn.init.xavier_normal_(torch.empty(n_users, len(self.names), 1))
            self.modality_weights = nn.Parameter(torch.softmax(w, dim=1).squeeze(2))  # softmaxed once, as MMRec

    def pre_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(self.seed * 1_000_003 + epoch)  # depends on the epoch alone: resumable
        g = neighbour_weights(self.user_counts, self.user_k, self.generator).to(self.r.device)
        self.epoch_graph, self.epoch_graph_t = g, sparse_transpose(g)

    def embeddings(self, user_graph: torch.Tensor, user_graph_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Users ``[U, M * dim]`` and items ``[I, M * dim]``, modality blocks side by side."""
        users0, items0 = [], []
        for name in self.names:
            x = F.normalize(torch.cat([self.preferences[name],
                                       self.mlps[name](getattr(self, f"features_{name}"))]), dim=1)
            users0.append(x[:self.n_users])
            items0.append(x[self.n_users:])
        # every modality in one propagation: the graph is shared and the products are linear
        users, items = propagate(torch.cat(users0, dim=1), torch.cat(items0, dim=1), self.r, self.rt,
                                 self.n_layers, mean=False)
        if self.modality_weights is not None:
            m = len(self.names)
            users = (users.view(-1, m, self.dim) * self.modality_weights.unsqueeze(2)).reshape(-1, m * self.dim)
        h = items
        for _ in range(self.n_mm_layers):
            h = spmm(self.item_graph, self.item_graph_t, h)
        return users + spmm(user_graph, user_graph_t, users), items + h

    def loss(self, batch):
        users, items = self.embeddings(self.epoch_graph, self.epoch_graph_t)
        u_idx, n = batch["users"], len(batch["pos"])
        u = users.index_select(0, u_idx)
        its = items.index_select(0, torch.cat([batch["pos"], batch["neg"]]))
        diff = (u * its[:n]).sum(-1) - (u * its[n:]).sum(-1)
        loss = -(F.logsigmoid(diff) / math.log(2)).mean()  # MMRec's log2, without its -inf at large margins
        reg = sum(self.preferences[name].index_select(0, u_idx).square().mean() for name in self.names)
        if self.modality_weights is not None:
            reg = reg + self.modality_weights.square().mean()
        return loss + self.reg_weight * reg

    def score(self, users_idx):
        users, items = self.embeddings(self.user_graph, self.user_graph_t)
        return users[users_idx] @ items.T


@register_model("dragon")
class DRAGONSpec(ModelSpec):
    no_live_encoders = WHOLE_GRAPH
    family = "user-item graph per modality + item-item kNN and user-user co-occurrence graphs"
    paper = "Zhou et al., ECAI 2023"
    caches = "item-item kNN graph over the modalities; user-user co-occurrence graph of the training interactions"

    n_layers: int = Field(2, ge=1)  # convolutions over the user-item graph (fixed at 2 in MMRec's code)
    n_mm_layers: int = Field(1, ge=1)  # propagation steps over the item-item graph
    knn_k: int = Field(10, ge=1)  # neighbours per item in the item-item graph
    user_k: int = Field(40, ge=1)  # co-occurrence neighbours per user (fixed at 40 in MMRec)
    reg_weight: float = Field(0.1, ge=0)  # weight of the preference and modality-weight regulariser
    feature_weights: dict[str, float] = {}  # item-item graph weight per feature set; default: equal

    def extra_features(self, features: list[str]) -> list[str]:
        return list(self.feature_weights or features)

    def build(self, ctx: BuildContext) -> DRAGON:
        features = ctx.features
        if not features:
            raise ConfigError("model dragon builds item vectors and its item-item graph from features: add a "
                              "`features` section")
        if ctx.tower.features:
            raise ConfigError("model.item_tower.features: model dragon makes its item vectors from the modalities "
                              "itself and takes no item tower; list them in model.dragon.feature_weights")
        weights = self.feature_weights or {n: 1.0 / len(features) for n in features}
        unknown = sorted(set(weights) - set(features))
        if unknown:
            raise ConfigError(f"model.dragon.feature_weights: {unknown} not in `features` ({sorted(features)})")
        if self.knn_k > ctx.data.n_items:
            raise ConfigError(f"model.dragon.knn_k: {self.knn_k} neighbours asked for, the catalog has "
                              f"{ctx.data.n_items} items")
        used = {n: features[n] for n in weights}
        # a missing row has no neighbours to speak of: the mean links it to typical items
        filled = {n: fill_missing(f.values.float(), f.mask, "mean") for n, f in used.items()}
        item_graph = cached_knn_graph(ctx.cache_dir, {n: f.fingerprint for n, f in used.items()}, filled, weights,
                                      self.knn_k)
        users, items = ctx.data.pairs("train")
        user_graph = cached_co_occurrence(ctx.cache_dir, users, items, ctx.data.n_users, ctx.data.n_items,
                                              self.user_k)
        dim = ctx.item_tower().dim  # model.dim reaches a model through its tower; DRAGON uses no other part of it
        return DRAGON(ctx.data.n_users, ctx.data.n_items, dim, users, items, item_graph, user_graph, filled,
                      n_layers=self.n_layers, n_mm_layers=self.n_mm_layers, user_k=self.user_k,
                      reg_weight=self.reg_weight, seed=ctx.seed)
