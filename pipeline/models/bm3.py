"""BM3 (Zhou et al., WWW 2023): bootstrapped multimodal recommendation without negative samples.

A LightGCN over the user-item graph gives user and item vectors (items add their layer-0 vector
to the layer mean); a shared linear predictor maps every "online" vector, and each is pulled
towards a dropped-out, gradient-free "target" copy of its partner (cosine loss): user towards
its item, item towards its user, and, per feature set, the projected features towards the
item's target and towards a dropped-out copy of themselves. Only (user, positive) pairs are
used; the negatives of the default batches are ignored. Ranking is predictor(user) .
predictor(item), so features shape the model only through training, as in the paper.

Differences from MMRec's implementation, on purpose:
- any number of feature sets (MMRec: one image and one text slot), each with its own
  projection; rows a feature set lacks (the store's mask) are filled with the mean row;
- the feature tables are frozen unless ``trainable_features`` (MMRec trains them silently,
  through ``Embedding.from_pretrained(freeze=False)``);
- the predictor and the dropout run on the batch's rows only, not on every user and item per
  step (MMRec maps the whole tables and then gathers): the same loss, a fraction of the work;
  a row repeated in a batch gets a fresh dropout mask per occurrence (the same expectation).
Dropout draws from torch's global generator, whose state the trainer checkpoints every epoch,
so a resumed run continues the uninterrupted run's stream.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from .base import Recommender, emb_loss, normalized_bipartite
from .lightgcn import WHOLE_GRAPH, propagate
from .registry import BuildContext, ModelSpec, register_model
from .towers import ItemTower


def cosine_gap(online: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``1 - mean cosine`` of paired rows, the target held constant (BM3's alignment loss)."""
    return 1 - F.cosine_similarity(online, target.detach(), dim=-1).mean()


class BM3(Recommender):
    def __init__(self, n_users: int, item_tower: ItemTower, train_users: np.ndarray, train_items: np.ndarray,
                 features: dict[str, torch.Tensor], n_layers: int = 1, dropout: float = 0.3,
                 reg_weight: float = 0.1, cl_weight: float = 2.0, trainable_features: bool = False):
        super().__init__()
        self.item_tower = item_tower
        dim = item_tower.dim
        self.user = nn.Embedding(n_users, dim)
        nn.init.xavier_uniform_(self.user.weight)
        self.n_layers, self.dropout = n_layers, dropout
        self.reg_weight, self.cl_weight = reg_weight, cl_weight
        r, rt = normalized_bipartite(train_users, train_items, n_users, item_tower.n_items)
        self.register_buffer("r", r, persistent=False)
        self.register_buffer("rt", rt, persistent=False)
        self.predictor = nn.Linear(dim, dim)
        nn.init.xavier_normal_(self.predictor.weight)
        self.feature_tables = nn.ParameterDict({n: nn.Parameter(f.float().clone(), requires_grad=trainable_features)
                                                for n, f in features.items()})
        self.projections = nn.ModuleDict({n: nn.Linear(f.shape[1], dim) for n, f in features.items()})
        for proj in self.projections.values():
            nn.init.xavier_normal_(proj.weight)

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Users' and items' online vectors before the predictor: the LightGCN layer mean, with
        each item's layer-0 vector added once more (BM3's residual)."""
        items0 = self.item_tower()
        users, items = propagate(self.user.weight, items0, self.r, self.rt, self.n_layers)
        return users, items + items0

    def loss(self, batch):
        users, items = self.embeddings()
        u = users.index_select(0, batch["users"])
        i = items.index_select(0, batch["pos"])
        n = len(u)
        with torch.no_grad():  # the targets: perturbed copies that pass no gradient
            u_target = F.dropout(u, self.dropout)
            i_target = F.dropout(i, self.dropout)
        online = self.predictor(torch.cat([u, i]))  # one product for both sides
        loss = cosine_gap(online[:n], i_target) + cosine_gap(online[n:], u_target)
        # MMRec's regulariser on the whole tables before the predictor, over the number of items
        loss = loss + self.reg_weight * emb_loss(users, items)
        modal = 0.0
        for name, table in self.feature_tables.items():
            f = self.projections[name](table.index_select(0, batch["pos"]))
            with torch.no_grad():
                f_target = F.dropout(f, self.dropout)
            f_online = self.predictor(f)
            modal = modal + cosine_gap(f_online, i_target) + cosine_gap(f_online, f_target)
        return loss + self.cl_weight * modal

    def score(self, users_idx):
        users, items = self.embeddings()
        return self.predictor(users[users_idx]) @ self.predictor(items).T


@register_model("bm3")
class BM3Spec(ModelSpec):
    """Defaults: MMRec's BM3.yaml, first value of each grid."""

    no_live_encoders = WHOLE_GRAPH
    family = "self-supervised bootstrap on a user-item graph, no negatives"
    paper = "Zhou et al., WWW 2023"
    caches = "nothing"
    n_layers: int = Field(1, ge=1)  # LightGCN layers over the user-item graph
    dropout: float = Field(0.3, ge=0, lt=1)  # dropout that makes the target copies
    reg_weight: float = Field(0.1, ge=0)  # weight of the norm penalty on the propagated tables
    cl_weight: float = Field(2.0, ge=0)  # weight of the feature alignment terms
    features: list[str] = []  # feature sets aligned with the items; default: every configured one
    trainable_features: bool = False  # train the feature tables too (MMRec does, silently)

    def extra_features(self, features: list[str]) -> list[str]:
        return list(self.features or features)

    def build(self, ctx: BuildContext) -> BM3:
        filled = ctx.content("bm3", "aligns items with their features", "features", self.features)
        users, items = ctx.data.pairs("train")
        return BM3(ctx.data.n_users, ctx.item_tower("xavier_uniform"), users, items, filled, n_layers=self.n_layers,
                   dropout=self.dropout, reg_weight=self.reg_weight, cl_weight=self.cl_weight,
                   trainable_features=self.trainable_features)
