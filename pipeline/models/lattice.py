"""LATTICE (Zhang et al., MM 2021): an item-item graph per modality, learned from projected
features and mixed with the frozen graph of the raw features, smooths the item id embeddings;
a LightGCN over the user-item graph supplies the collaborative part.

Per modality m: a frozen kNN graph ``S_m`` of the raw features (cosine weights of the top-k,
then ``D^-1/2 S D^-1/2``, D the row sums) and a learned one from ``W_m x + b``, built the same
way. The item graph is ``(1 - lambda) norm(sum_m a_m L_m) + lambda sum_m a_m S_m`` with ``a``
a softmax over learned modality weights; item vectors are ``lightgcn_item + normalize(A^n e)``
with ``e`` the item tower's output. As in MMRec (and the paper's code) the learned graph is
rebuilt with gradients on the first batch of every epoch and held fixed (detached) for the
rest of it, and the user-item graph is ``D^-1 (A + I)`` (self loops, row-normalised).

Differences from MMRec, on purpose:
- the kNN graphs are sparse top-k, built block-wise; MMRec keeps dense n x n matrices (for
  6,710 items, several 180 MB tensors per step). The values and gradients are the same.
- the raw feature tables are frozen unless ``trainable_features``; MMRec trains them silently
  (``nn.Embedding.from_pretrained(freeze=False)``).
- the regulariser is divided by the batch's size, not the configured batch size (MMRec's
  last, smaller batch is under-regularised).
- any number of modalities; missing feature rows are filled with the modality's mean.
- ``n_ui_layers=0`` is MMRec's ``cf_model: mf``; its NGCF backbone is not offered.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..errors import ConfigError
from .base import RankingCache, Recommender, compact_csr, sparse_transpose, spmm
from .derived import cached_tensors
from .graphs import knn_indices
from .lightgcn import WHOLE_GRAPH
from .registry import BuildContext, ModelSpec, register_model
from .towers import ItemTower


def weighted_knn(x: torch.Tensor, k: int, idx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-``k`` cosine neighbours of every row (itself included) and their similarities,
    differentiable in ``x``: ``(cols [n*k], sims [n*k])``, row ``i``'s entries at ``i*k ..``."""
    if idx is None:
        idx = knn_indices(x.detach(), k).to(x.device)  # knn_indices answers on the CPU
    z = F.normalize(x, dim=1)
    cols = idx.reshape(-1)
    rows = torch.arange(len(x), device=x.device).repeat_interleave(idx.shape[1])
    return cols, (z.index_select(0, rows) * z.index_select(0, cols)).sum(-1)


def sym_normalize(rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, n: int) -> torch.Tensor:
    """The values of ``D^-1/2 A D^-1/2`` with D the row sums of A (MMRec's
    ``compute_normalized_laplacian``); rows summing to zero get zero."""
    deg = vals.new_zeros(n).index_add(0, rows, vals)
    inv = deg.pow(-0.5)
    inv = torch.where(torch.isinf(inv), inv.new_zeros(()), inv)
    return vals * inv.index_select(0, rows) * inv.index_select(0, cols)


def raw_feature_graph(x: torch.Tensor, k: int) -> torch.Tensor:
    """The frozen graph of one modality: normalised cosine kNN, sparse CSR ``[n, n]``."""
    n = len(x)
    cols, sims = weighted_knn(x.float(), k)
    rows = torch.arange(n).repeat_interleave(k)
    vals = sym_normalize(rows, cols, sims, n)
    return compact_csr(torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, (n, n)).coalesce())


def row_normalized_bipartite(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int):
    """``D^-1 (A + I)`` of the user-item graph as its blocks: ``(R_u, R_u^T, R_i, R_i^T, s_u,
    s_i)`` with ``R_u = D_u^-1 R``, ``R_i = D_i^-1 R^T`` and ``s`` the self-loop weights ``1/(d+1)``."""
    du = np.bincount(users, minlength=n_users).astype(np.float64) + 1.0
    di = np.bincount(items, minlength=n_items).astype(np.float64) + 1.0
    idx = torch.from_numpy(np.vstack([users, items]).astype(np.int64))
    ru = torch.sparse_coo_tensor(idx, torch.from_numpy((1.0 / du[users]).astype(np.float32)), (n_users, n_items))
    ri = torch.sparse_coo_tensor(idx.flip(0), torch.from_numpy((1.0 / di[items]).astype(np.float32)),
                                 (n_items, n_users))
    ru, ri = compact_csr(ru.coalesce()), compact_csr(ri.coalesce())
    su = torch.from_numpy((1.0 / du).astype(np.float32)).unsqueeze(1)
    si = torch.from_numpy((1.0 / di).astype(np.float32)).unsqueeze(1)
    return ru, sparse_transpose(ru), ri, sparse_transpose(ri), su, si


class LATTICE(Recommender):
    def __init__(self, n_users: int, item_tower: ItemTower, train_users: np.ndarray, train_items: np.ndarray,
                 features: dict[str, torch.Tensor], raw_graphs: dict[str, torch.Tensor], feat_embed_dim: int = 64,
                 knn_k: int = 10, lambda_coeff: float = 0.9, n_layers: int = 1, n_ui_layers: int = 2,
                 reg_weight: float = 0.0, trainable_features: bool = False):
        super().__init__()
        self.item_tower = item_tower
        self.n_users, self.n_items = n_users, item_tower.n_items
        self.user = nn.Embedding(n_users, item_tower.dim)
        nn.init.xavier_uniform_(self.user.weight)
        self.names = list(features)
        self.knn_k, self.lambda_coeff, self.n_layers = knn_k, lambda_coeff, n_layers
        self.n_ui_layers, self.reg_weight = n_ui_layers, reg_weight
        pairs = np.unique(train_users.astype(np.int64) * self.n_items + train_items)  # distinct edges
        graph = row_normalized_bipartite(pairs // self.n_items, pairs % self.n_items, n_users, self.n_items)
        for name, t in zip(("ru", "ru_t", "ri", "ri_t", "su", "si"), graph):
            self.register_buffer(name, t, persistent=False)
        self.feature_tables = nn.ParameterDict({n: nn.Parameter(f.float().clone(), requires_grad=trainable_features)
                                                for n, f in features.items()})
        self.projections = nn.ModuleDict({n: nn.Linear(f.shape[1], feat_embed_dim) for n, f in features.items()})
        self.modal_weight = nn.Parameter(torch.full((len(features),), 0.5))  # MMRec's [0.5, 0.5]: equal
        # the raw graphs as coordinate lists: they are mixed with the learned graph by learned weights
        for name, g in raw_graphs.items():
            coo = g.to_sparse_coo().coalesce()
            self.register_buffer(f"raw_idx_{name}", coo.indices(), persistent=False)
            self.register_buffer(f"raw_val_{name}", coo.values(), persistent=False)
        self.rebuild = True
        self.fixed_graph: tuple[torch.Tensor, torch.Tensor] | None = None  # this epoch's, detached
        self.ranking = RankingCache(self)  # the learned graph (a kNN search per modality) once per evaluation

    def pre_epoch(self, epoch: int) -> None:
        self.rebuild = True

    def item_graph(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The mixed item-item graph from the current parameters, as ``(indices [2, E], values
        [E])`` with repeated coordinates summed; differentiable in the values."""
        n, k = self.n_items, self.knn_k
        weight = torch.softmax(self.modal_weight, dim=0)
        rows = torch.arange(n, device=weight.device).repeat_interleave(k)
        learned_cols, learned_vals, raw_idx, raw_vals = [], [], [], []
        for m, name in enumerate(self.names):
            cols, sims = weighted_knn(self.projections[name](self.feature_tables[name]), k)
            learned_cols.append(cols)
            learned_vals.append(weight[m] * sims)
            raw_idx.append(getattr(self, f"raw_idx_{name}"))
            raw_vals.append(self.lambda_coeff * weight[m] * getattr(self, f"raw_val_{name}"))
        l_rows, l_cols = rows.repeat(len(self.names)), torch.cat(learned_cols)
        learned = sym_normalize(l_rows, l_cols, torch.cat(learned_vals), n)
        idx = torch.cat([torch.stack([l_rows, l_cols]), *raw_idx], dim=1)
        return idx, torch.cat([(1 - self.lambda_coeff) * learned, *raw_vals])

    def smooth_items(self, items0: torch.Tensor, idx: torch.Tensor, vals: torch.Tensor | None) -> torch.Tensor:
        """``A^n_layers items0`` by gathers and scatter-adds: differentiable in the graph's values."""
        h = items0
        for _ in range(self.n_layers):
            h = h.new_zeros(h.shape).index_add(0, idx[0], vals.unsqueeze(1) * h.index_select(0, idx[1]))
        return h

    def ui_propagate(self, users0: torch.Tensor, items0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean over layers 0..n of ``x <- D^-1 (A + I) x`` on the user-item graph."""
        u, i = users0, items0
        u_sum, i_sum = u, i
        for _ in range(self.n_ui_layers):
            u, i = self.su * u + spmm(self.ru, self.ru_t, i), self.si * i + spmm(self.ri, self.ri_t, u)
            u_sum, i_sum = u_sum + u, i_sum + i
        return u_sum / (self.n_ui_layers + 1), i_sum / (self.n_ui_layers + 1)

    def embeddings(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        items0 = self.item_tower()
        if train and not self.rebuild and self.fixed_graph is not None:
            a, a_t = self.fixed_graph
            h = items0
            for _ in range(self.n_layers):
                h = spmm(a, a_t, h)
        else:
            idx, vals = self.item_graph()
            h = self.smooth_items(items0, idx, vals)
            if train:  # held, detached, for the rest of the epoch
                a = torch.sparse_coo_tensor(idx, vals.detach(), (self.n_items, self.n_items)).coalesce()
                self.fixed_graph = (compact_csr(a), sparse_transpose(a))
                self.rebuild = False
        users, items = self.ui_propagate(self.user.weight, items0)
        return users, items + F.normalize(h, dim=1)

    def loss(self, batch):
        self.ranking.clear()
        users, items = self.embeddings(train=True)
        n = len(batch["pos"])
        u = users.index_select(0, batch["users"])
        its = items.index_select(0, torch.cat([batch["pos"], batch["neg"]]))
        pos, neg = its[:n], its[n:]
        loss = -F.logsigmoid((u * (pos - neg)).sum(-1)).mean()
        if self.reg_weight > 0:
            loss = loss + self.reg_weight * 0.5 * (u.pow(2).sum() + its.pow(2).sum()) / n
        return loss

    def score(self, users_idx):
        users, items = self.ranking.get(lambda: self.embeddings(train=False))
        return users[users_idx] @ items.T


@register_model("lattice")
class LATTICESpec(ModelSpec):
    no_live_encoders = WHOLE_GRAPH
    family = "learned item-item graph per modality + user-item graph"
    paper = "Zhang et al., MM 2021"
    caches = "item-item kNN graph of the raw features, per modality"
    knn_k: int = Field(10, ge=1)  # neighbours per item in the raw and the learned graphs
    lambda_coeff: float = Field(0.9, ge=0, le=1)  # weight of the raw-feature graph against the learned one
    n_layers: int = Field(1, ge=1)  # products by the item-item graph
    n_ui_layers: int = Field(2, ge=0)  # LightGCN layers on the user-item graph (MMRec: len(weight_size)); 0: MF
    feat_embed_dim: int = Field(64, ge=1)  # width of the projections the learned graphs are built from
    reg_weight: float = Field(0.0, ge=0)  # L2 on the batch's propagated user and item vectors
    modalities: list[str] = []  # feature sets that build item graphs; default: every configured one
    trainable_features: bool = False  # fine-tune the raw feature tables too (MMRec does, silently)

    def extra_features(self, features: list[str]) -> list[str]:
        return list(self.modalities or features)

    def build(self, ctx: BuildContext) -> LATTICE:
        filled = ctx.content("lattice", "builds its item-item graphs from features", "modalities", self.modalities)
        names = list(filled)
        if self.knn_k > ctx.data.n_items:
            raise ConfigError(f"model.lattice.knn_k: {self.knn_k} neighbours but only {ctx.data.n_items} items")
        raw = {n: cached_tensors(ctx.cache_dir, "lattice-knn",
                                 {"k": self.knn_k, "fill": "mean", "feature": ctx.features[n].fingerprint},
                                 lambda x=filled[n]: {"graph": raw_feature_graph(x, self.knn_k)})["graph"]
               for n in names}
        users, items = ctx.data.pairs("train")
        return LATTICE(ctx.data.n_users, ctx.item_tower("xavier_uniform"), users, items, filled, raw,
                       feat_embed_dim=self.feat_embed_dim, knn_k=self.knn_k, lambda_coeff=self.lambda_coeff,
                       n_layers=self.n_layers, n_ui_layers=self.n_ui_layers, reg_weight=self.reg_weight,
                       trainable_features=self.trainable_features)
