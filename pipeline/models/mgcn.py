"""MGCN (Yu et al., MM 2023): multi-view graph convolution for multimedia recommendation.

Three views of every user and item, added together at the end:

- user-item view: a LightGCN over the training interactions (the mean of layers 0..n);
- item-item view, one per modality: the item's id vector gated by its projected features (the
  "behaviour-guided purifier", ``id * sigmoid(W f + b)``), smoothed over that modality's kNN
  graph; a user's vector is its normalised row of the interaction matrix times those;
- the "behaviour-aware fuser": attention over the modality views gives a common part; each
  view's remainder is gated by the user-item view (its preference for that modality) and the
  gated remainders and the common part are averaged.

Loss: BPR on the summed views plus ``reg_weight`` times half the squared norms of the batch's
(propagated) rows over the batch size, plus ``cl_weight`` times InfoNCE between the fused
modality view and the user-item view of the batch's users and positive items.

Any number of modalities (MMRec's code has exactly image and text; its fuser averages the two
gated remainders and the common part, so ``/ 3`` becomes ``/ (modalities + 1)``). The kNN
graphs weight each edge by its cosine similarity and normalise symmetrically by the rows'
similarity sums, as MMRec does; a row whose similarities sum to zero or less (possible with
features that have negative entries, where MMRec's ``deg ** -0.5`` gives NaN) gets no edges.
Feature tables are frozen unless ``trainable_features`` (MMRec trains them, silently, after
building the kNN graphs from their initial values). The regulariser divides by the actual
batch size (MMRec divides by the configured one, which overweights the last, smaller batch).
MMRec's learning-rate schedule for MGCN (x0.96 every 50 epochs) is the trainer's business.

A training step fuses and contrasts the batch's distinct users and items once each, a repeated
one weighted by its count (the same loss as over the repeated rows; TikTok's 2048-triple batches
hold about 700 distinct users and 1300 distinct positives), and the InfoNCE terms, most of a
step's time in MMRec's form, run as one autograd node.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..errors import ConfigError
from .base import Recommender, compact_csr, counted_in_batch_softmax, normalized_bipartite, sparse_transpose, spmm
from .derived import cached_tensors
from .graphs import knn_indices
from .lightgcn import WHOLE_GRAPH, propagate
from .registry import BuildContext, ModelSpec, register_model
from .towers import ItemTower


def similarity_knn_graph(features: torch.Tensor, k: int) -> torch.Tensor:
    """Top-``k`` cosine neighbours of every row (itself included), each edge weighted by its
    similarity and by ``(s_r * s_c)^-1/2`` where ``s`` is a row's sum of kept similarities;
    sparse CSR ``[n, n]``. Rows with ``s <= 0`` are left without edges."""
    x = F.normalize(features.float(), dim=1)
    n = len(x)
    idx = knn_indices(x, k)
    rows = torch.arange(n).repeat_interleave(k)
    cols = idx.reshape(-1)
    sims = (x[rows] * x[cols]).sum(-1)
    deg = torch.zeros(n).index_add_(0, rows, sims)
    inv = torch.where(deg > 0, deg.clamp_min(1e-12).rsqrt(), torch.zeros(()))
    vals = inv[rows] * sims * inv[cols]
    graph = torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, (n, n))
    return compact_csr(graph.coalesce())


def cached_similarity_graph(cache_dir: Path, fingerprint: str, features: torch.Tensor, k: int) -> torch.Tensor:
    """``similarity_knn_graph`` keyed by the feature set's fingerprint and ``k``."""
    ident = {"k": k, "features": fingerprint, "weights": "cosine, symmetric row-sum normalisation"}
    return cached_tensors(cache_dir, "knn-sim", ident, lambda: {"graph": similarity_knn_graph(features, k)})["graph"]


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float, counts: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over rows of ``-log softmax_j(cos(a_i, b_j) / t)[i]``: row i of ``b`` is row i's
    positive, every other row of the batch a negative. With ``counts``, row k stands for
    ``counts[k]`` identical rows of the batch (its weight in the mean, and ``log counts[k]``
    added to its logit as a negative): the same value as on the rows repeated, on a smaller
    ``[rows, rows]`` logit matrix, which is where most of a step's time goes."""
    a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    c = torch.ones(len(a), dtype=a.dtype, device=a.device) if counts is None else counts.to(a.dtype)
    # scaling the [B, D] rows, not the [B, B] logits
    return counted_in_batch_softmax(a / temperature, b, c)


def gate(dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, dim), nn.Sigmoid())


class MGCN(Recommender):
    def __init__(self, n_users: int, item_tower: ItemTower, train_users: np.ndarray, train_items: np.ndarray,
                 item_graphs: dict[str, torch.Tensor], features: dict[str, torch.Tensor], n_ui_layers: int = 2,
                 n_layers: int = 1, reg_weight: float = 1e-4, cl_weight: float = 0.001, temperature: float = 0.2,
                 trainable_features: bool = False):
        super().__init__()
        self.item_tower = item_tower
        self.n_users, self.n_items = n_users, item_tower.n_items
        dim = item_tower.dim
        self.user = nn.Embedding(n_users, dim)
        nn.init.xavier_uniform_(self.user.weight)
        self.n_ui_layers, self.n_layers = n_ui_layers, n_layers
        self.reg_weight, self.cl_weight, self.temperature = reg_weight, cl_weight, temperature
        r, rt = normalized_bipartite(train_users, train_items, n_users, self.n_items)
        self.register_buffer("r", r, persistent=False)
        self.register_buffer("rt", rt, persistent=False)
        self.names = list(features)
        for name in self.names:
            self.register_buffer(f"graph_{name}", item_graphs[name], persistent=False)
            self.register_buffer(f"graph_t_{name}", sparse_transpose(item_graphs[name]), persistent=False)
        self.feature_tables = nn.ParameterDict({n: nn.Parameter(f.float().clone(), requires_grad=trainable_features)
                                                for n, f in features.items()})
        self.projections = nn.ModuleDict({n: nn.Linear(f.shape[1], dim) for n, f in features.items()})
        self.purifiers = nn.ModuleDict({n: gate(dim) for n in self.names})  # id * gate(projected features)
        self.preferences = nn.ModuleDict({n: gate(dim) for n in self.names})  # gate of the user-item view
        self.query = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, 1, bias=False))

    def views(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The user-item view and the fused modality view of ``rows`` (every user before every
        item, items offset by ``n_users``): ``[len(rows), D]`` each. The fuser works row by row, so only
        the rows asked for go through it (MMRec fuses every user and item on every step)."""
        items0 = self.item_tower()
        users, items = propagate(self.user.weight, items0, self.r, self.rt, self.n_ui_layers)
        n_user_rows = int((rows < self.n_users).sum())
        user_rows, item_rows = rows[:n_user_rows], rows[n_user_rows:] - self.n_users
        content = torch.cat([users.index_select(0, user_rows), items.index_select(0, item_rows)])
        modal = []
        for name in self.names:
            proj, pur = self.projections[name], self.purifiers[name][0]
            # purifier(projection(f)) is one affine map of f: composing the two [D, *] weights first
            # skips a [items, D] x [D, D] product forward and two backward
            gate_in = F.linear(self.feature_tables[name], pur.weight @ proj.weight, pur.weight @ proj.bias + pur.bias)
            h = items0 * torch.sigmoid(gate_in)
            graph, graph_t = getattr(self, f"graph_{name}"), getattr(self, f"graph_t_{name}")
            for _ in range(self.n_layers):
                h = spmm(graph, graph_t, h)
            # a batch's users hold most of the interactions (users are drawn by interaction), so
            # multiplying by their rows of R alone would save little: the whole product, then a gather
            modal.append(torch.cat([spmm(self.r, self.rt, h).index_select(0, user_rows), h.index_select(0, item_rows)]))
        modal = torch.stack(modal, dim=1)  # [B, M, D]
        weights = torch.softmax(self.query(modal), dim=1)  # attention over the modalities
        common = (weights * modal).sum(dim=1)
        side = common
        for m, name in enumerate(self.names):
            side = side + self.preferences[name](content) * (modal[:, m] - common)
        return content, side / (len(self.names) + 1)

    def loss(self, batch):
        n = len(batch["pos"])
        users, pos = batch["users"], batch["pos"] + self.n_users
        # a batch repeats users and items (TikTok: ~700 distinct users and ~1300 distinct positives
        # in 2048 triples): the fuser and the InfoNCE logits work on the distinct rows only
        rows, where = torch.unique(torch.cat([users, pos, batch["neg"] + self.n_users]), return_inverse=True)
        content, side = self.views(rows)
        both = (content + side).index_select(0, where)
        u, pos_v, neg_v = both[:n], both[n:2 * n], both[2 * n:]
        loss = -F.logsigmoid((u * pos_v).sum(-1) - (u * neg_v).sum(-1)).mean()
        loss = loss + self.reg_weight * 0.5 * (u.square().sum() + pos_v.square().sum() + neg_v.square().sum()) / n
        if self.cl_weight > 0:
            cl = self.contrast(pos, rows, content, side) + self.contrast(users, rows, content, side)
            loss = loss + self.cl_weight * cl
        return loss

    def contrast(self, ids: torch.Tensor, rows: torch.Tensor, content: torch.Tensor,
                 side: torch.Tensor) -> torch.Tensor:
        """InfoNCE between the fused modality view and the user-item view of the batch's ``ids``
        (every occurrence counted), from the views of the sorted distinct ``rows``."""
        distinct, counts = torch.unique(ids, return_counts=True)
        at = torch.searchsorted(rows, distinct)
        return info_nce(side.index_select(0, at), content.index_select(0, at), self.temperature, counts)

    def score(self, users_idx):
        rows = torch.cat([users_idx, torch.arange(self.n_users, self.n_users + self.n_items, device=users_idx.device)])
        content, side = self.views(rows)
        both = content + side
        return both[:len(users_idx)] @ both[len(users_idx):].T


@register_model("mgcn")
class MGCNSpec(ModelSpec):
    no_live_encoders = WHOLE_GRAPH
    family = "user-item graph + item-item kNN graph per modality, gated and fused"
    paper = "Yu et al., MM 2023"
    caches = "similarity-weighted item-item kNN graph per modality"

    n_ui_layers: int = Field(2, ge=1)  # LightGCN layers of the user-item view
    n_layers: int = Field(1, ge=1)  # propagation steps over each modality's item-item graph
    knn_k: int = Field(10, ge=1)  # neighbours per item in the item-item graphs
    reg_weight: float = Field(1e-4, ge=0)  # weight of the squared-norm regulariser
    cl_weight: float = Field(0.001, ge=0)  # weight of the InfoNCE terms (MMRec's `cl_loss`)
    temperature: float = Field(0.2, gt=0)  # of the InfoNCE terms (fixed in MMRec)
    modalities: list[str] = []  # the feature sets used as modalities; default: every configured one
    trainable_features: bool = False  # train the feature tables too (MMRec does, silently)

    def extra_features(self, features: list[str]) -> list[str]:
        return list(self.modalities or features)

    def build(self, ctx: BuildContext) -> MGCN:
        filled = ctx.content("mgcn", "builds an item-item graph per modality from features", "modalities",
                             self.modalities)
        names = list(filled)
        if self.knn_k > ctx.data.n_items:
            raise ConfigError(f"model.mgcn.knn_k: {self.knn_k} neighbours asked for, the catalog has "
                              f"{ctx.data.n_items} items")
        graphs = {n: cached_similarity_graph(ctx.cache_dir, ctx.features[n].fingerprint, filled[n], self.knn_k)
                  for n in names}
        users, items = ctx.data.pairs("train")
        return MGCN(ctx.data.n_users, ctx.item_tower("xavier_uniform"), users, items, graphs, filled,
                    n_ui_layers=self.n_ui_layers, n_layers=self.n_layers, reg_weight=self.reg_weight,
                    cl_weight=self.cl_weight, temperature=self.temperature,
                    trainable_features=self.trainable_features)
