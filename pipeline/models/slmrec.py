"""SLMRec (Tao et al., TMM 2022): self-supervised multimedia recommendation.

Item ids and every feature set (L2-normalised, then projected to ``dim``) are each smoothed
over the user-item graph by a LightGCN that shares the user table; the layer means are
concatenated and mapped by one linear layer for users and one for items. The main loss is an
in-batch softmax (InfoNCE) of cosine similarities over the batch's (user, positive) pairs; the
self-supervised task is MMRec's default, FAC ("fine and coarse"): the batch's items are
aligned modality by modality in a chain of spaces, ids with the first feature set in a
``dim``-wide space, that space mapped on to meet the next feature set, and so on, the last
space ``dim // 2`` wide (coarse), each step an in-batch softmax of raw dot products.

Differences from MMRec's implementation, on purpose:
- any number of feature sets, chained in the order of the config (MMRec: image then text,
  with the layer of its commented-out audio step left in the chain: two linear maps in a row,
  which this chain, one map per step, folds into one); rows a feature set lacks (the store's
  mask) are filled with the mean row before normalising;
- ranking uses the embeddings of the current weights (MMRec ranks with the ones it kept from
  the last training batch, computed before the last optimizer step) and no sigmoid (it does
  not change a ranking);
- the id, feature and LightGCN passes run as one propagation of the concatenated tables (the
  graph is linear and acts on each column alone: the same numbers, one sparse pass);
- items never seen in training get zero id vectors (the default item tower zeroes unseen
  ids; ``model.item_tower.unseen_ids=keep`` is MMRec's way): under the in-batch loss those
  rows never train, and random ones would only add noise to the content that scores them.
MMRec's FD and FM tasks are not offered: they read settings and audio layers that its SLMRec
never defines, so they do not run there. Its ``reg`` grid is unused by its loss; the
regularisation is the optimizer's weight decay (``weight_decay``, 1e-4), applied here to this
model's parameter group.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from .base import Recommender, counted_in_batch_softmax, in_batch_softmax, normalized_bipartite
from .lightgcn import WHOLE_GRAPH, propagate
from .registry import BuildContext, ModelSpec, register_model
from .towers import ItemTower


def xavier_linear(n_in: int, n_out: int) -> nn.Linear:
    layer = nn.Linear(n_in, n_out)
    nn.init.xavier_uniform_(layer.weight)
    return layer


def batch_softmax(queries: torch.Tensor, keys: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cross-entropy of row r of ``queries @ keys.T / temperature`` against column r. The
    queries are scaled, not the ``[B, B]`` logits: the same values, a ``B``-th of the division
    (with its backward, a tenth of the step at B = 2048)."""
    return in_batch_softmax(queries / temperature, keys, None)


class SLMRec(Recommender):
    def __init__(self, n_users: int, item_tower: ItemTower, train_users: np.ndarray, train_items: np.ndarray,
                 features: dict[str, torch.Tensor], n_layers: int = 3, temp: float = 0.2, ssl_temp: float = 0.1,
                 ssl_alpha: float = 0.01, weight_decay: float = 1e-4):
        super().__init__()
        if not features:
            raise ValueError("SLMRec needs at least one feature set")
        self.item_tower = item_tower
        dim = self.dim = item_tower.dim
        self.user = nn.Embedding(n_users, dim)
        nn.init.xavier_uniform_(self.user.weight)
        self.n_layers, self.temp, self.ssl_temp = n_layers, temp, ssl_temp
        self.ssl_alpha, self.weight_decay = ssl_alpha, weight_decay
        r, rt = normalized_bipartite(train_users, train_items, n_users, item_tower.n_items)
        self.register_buffer("r", r, persistent=False)
        self.register_buffer("rt", rt, persistent=False)
        self.names = list(features)
        for name, f in features.items():  # constant inputs: buffers, moved with the model
            self.register_buffer(f"feat_{name}", F.normalize(f.float(), dim=1), persistent=False)
        self.dense = nn.ModuleDict({n: xavier_linear(f.shape[1], dim) for n, f in features.items()})
        width = dim * (len(features) + 1)
        self.user_out = xavier_linear(width, dim)
        self.item_out = xavier_linear(width, dim)
        # the FAC chain: step k maps the running space on (ids for the first) and the k-th
        # feature set's item vectors into a shared space; the last one, of several, is coarse
        m = len(self.names)
        widths = [dim] * (m - 1) + [dim // 2 if m > 1 else dim]
        self.chain = nn.ModuleList([xavier_linear(dim if k == 0 else widths[k - 1], w) for k, w in enumerate(widths)])
        self.keys = nn.ModuleDict({n: xavier_linear(dim, w) for n, w in zip(self.names, widths)})

    def param_groups(self, train) -> list[dict]:
        return [{"params": [p for p in self.parameters() if p.requires_grad], "weight_decay": self.weight_decay}]

    def propagated(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``[n_users, (M+1) dim]`` and ``[n_items, (M+1) dim]``: the LightGCN layer means of the
        ids and of each feature set's projection, side by side (ids first, then config order)."""
        items0 = torch.cat([self.item_tower()] + [self.dense[n](getattr(self, f"feat_{n}")) for n in self.names], 1)
        users0 = self.user.weight.repeat(1, len(self.names) + 1)
        return propagate(users0, items0, self.r, self.rt, self.n_layers)

    def fac(self, items_cat: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """FAC over the batch's items: ``items_cat`` holds the propagated rows of its distinct
        items, ``counts`` how often each occurs. Both sides of every FAC softmax are functions of
        the item alone, so a repeated item is one row weighted by its count (the same loss as on
        the repeated rows; a TikTok batch of 2,048 holds about 1,300 distinct items)."""
        parts = items_cat.split(self.dim, dim=1)
        z, loss = parts[0], 0.0
        for k, name in enumerate(self.names):
            z = self.chain[k](z)
            loss = loss + counted_in_batch_softmax(z / self.ssl_temp, self.keys[name](parts[k + 1]), counts)
        return loss

    def loss(self, batch):
        users_cat, items_cat = self.propagated()
        u_cat = users_cat.index_select(0, batch["users"])
        i_cat = items_cat.index_select(0, batch["pos"])
        u = F.normalize(self.user_out(u_cat), dim=1)
        i = F.normalize(self.item_out(i_cat), dim=1)
        distinct, counts = torch.unique(batch["pos"], return_counts=True)
        fac = self.fac(items_cat.index_select(0, distinct), counts)
        return batch_softmax(u, i, self.temp) + self.ssl_alpha * fac

    def score(self, users_idx):
        users_cat, items_cat = self.propagated()
        return self.user_out(users_cat[users_idx]) @ self.item_out(items_cat).T


@register_model("slmrec")
class SLMRecSpec(ModelSpec):
    """Defaults: MMRec's SLMRec.yaml, first value of each grid (its learning rate grid starts at
    1e-4: that is ``train.lr``)."""

    no_live_encoders = WHOLE_GRAPH
    family = "self-supervised multimodal LightGCN (FAC contrastive alignment)"
    paper = "Tao et al., TMM 2022"
    caches = "nothing"
    n_layers: int = Field(3, ge=1)  # LightGCN layers, shared by ids and every feature set
    temp: float = Field(0.2, gt=0)  # temperature of the main in-batch softmax
    ssl_temp: float = Field(0.1, gt=0)  # temperature of the FAC softmaxes
    ssl_alpha: float = Field(0.01, ge=0)  # weight of the FAC loss
    # L2 on every parameter through the optimizer (MMRec's SLMRec.yaml); replaces train.weight_decay
    weight_decay: float = Field(1e-4, ge=0)
    features: list[str] = []  # feature sets, in FAC's chain order; default: every configured one

    def default_tower(self, features: list[str]) -> dict:
        return {"ids": True, "unseen_ids": "zero"}

    def check(self, dim: int) -> None:
        if dim < 2:
            raise ValueError(f"model.slmrec: model.dim {dim} is too small for FAC's coarse space (dim // 2)")

    def extra_features(self, features: list[str]) -> list[str]:
        return list(self.features or features)

    def build(self, ctx: BuildContext) -> SLMRec:
        filled = ctx.content("slmrec", "smooths item features over the graph", "features", self.features)
        users, items = ctx.data.pairs("train")
        return SLMRec(ctx.data.n_users, ctx.item_tower("xavier_uniform"), users, items, filled,
                      n_layers=self.n_layers, temp=self.temp, ssl_temp=self.ssl_temp, ssl_alpha=self.ssl_alpha,
                      weight_decay=self.weight_decay)
