"""Matrix factorisation with BPR: BPR-MF (item ids) and VBPR (ids + projected features).

Both are the same model over different item towers: VBPR is MF whose item vector is
``[id embedding, W * features]`` (He & McAuley 2016, as MMRec implements it).
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import nn

from ..errors import ConfigError
from .base import Recommender, bpr_with_reg
from .registry import BuildContext, ModelSpec, register_model
from .towers import ItemTower


class MF(Recommender):
    def __init__(self, n_users: int, item_tower: ItemTower, reg_weight: float = 0.01, user_init: str = "xavier_normal"):
        super().__init__()
        self.item_tower = item_tower
        self.user = nn.Embedding(n_users, item_tower.dim)
        getattr(nn.init, f"{user_init}_")(self.user.weight)
        self.reg_weight = reg_weight

    def loss(self, batch):
        u = self.user.weight.index_select(0, batch["users"])  # backward: an index_add (see LightGCN)
        items = self.item_tower(torch.cat([batch["pos"], batch["neg"]]))  # positives, then negatives
        return bpr_with_reg(u, items, self.reg_weight)

    def score(self, users):
        return self.user(users) @ self.item_tower().T


@register_model("bpr")
class BPRSpec(ModelSpec):
    family = "collaborative filtering (ids only)"
    paper = "Rendle et al., UAI 2009"
    caches = "nothing"
    reg_weight: float = Field(0.01, ge=0)

    def build(self, ctx: BuildContext) -> MF:
        return MF(ctx.data.n_users, ctx.item_tower("xavier_normal"), reg_weight=self.reg_weight,
                  user_init="xavier_normal")


@register_model("vbpr")
class VBPRSpec(ModelSpec):
    family = "matrix factorisation with content"
    paper = "He & McAuley, AAAI 2016"
    caches = "nothing"
    reg_weight: float = Field(2.0, ge=0)  # MMRec's default for VBPR

    def default_tower(self, features: list[str]) -> dict[str, Any]:
        return {"features": features}  # VBPR's item vector: [id embedding, W * every feature set]

    def build(self, ctx: BuildContext) -> MF:
        if not (ctx.tower.features or ctx.tower.live):
            raise ConfigError("model vbpr needs features: add a `features` section (or model.item_tower.features)")
        return MF(ctx.data.n_users, ctx.item_tower("xavier_uniform"), reg_weight=self.reg_weight,
                  user_init="xavier_uniform")

