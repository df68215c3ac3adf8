"""``joint``: one model whose warm and cold scores come out calibrated against each other (issue 16).

    score(u, i) = g(u, i) + theta_u . (W z_i) + b_i

- ``g``: LightGCN over user and item ids (the propagated vectors' dot product). An item with no
  training interaction has no id and no graph part: its ``g`` is the user's learned ``cold_u``.
- ``theta_u . (W z_i)``: the user's taste over the item's content ``z_i`` (fixed, from the
  cached features; below).
- ``b_i``: a learned bias per item (its popularity). An unseen item reads the mean of the
  trained items' biases plus an offset: unseen items are new to every user, and on a
  cold-start split all their interactions are held out, so they deserve a lift no trained
  number says. How much depends on the split (how likely a held-out pair is to be on a new
  item), so by default (``cold_offset: auto``) it is chosen on validation at every evaluation:
  the largest offset at which unseen items take at most ``warm_cost`` of the validation warm
  items' recall (against unseen items ranked last). Warm recall only falls as the offset grows
  and cold recall only rises, so this is also the offset with the most cold recall at that cost;
  a bisection finds it. A number fixes the offset instead.

Trained with a full softmax over the trained items (each training pair against every trained
item, as the demo and TikTok catalogs afford) and id dropout: each step, a share
``id_dropout`` of the items lose their graph part (scored ``cold_u`` like an unseen item), so
the content and bias parts learn to rank an item alone, and ``cold_u`` learns how much a user's
scores lean on the graph, in the same softmax as the items that keep it.

Content ``z``: for each ``cca`` pair, the canonical directions the two feature sets share
(regularised CCA over the catalog's items, both views' projections side by side); every other
feature set the model is given, standardised. Content generators describe one item's attributes in several modalities, so what two
modalities agree on is the attribute, and what one says alone is mostly noise: on the demo, a
linear taste over the raw features ranks unseen items at valid R@20 0.25, over the shared
directions at 0.34 (the generator's true attributes: 0.35). Defaults chosen on validation
(benchmarks/README.md, `joint`).
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..errors import ConfigError
from .base import Recommender, RankingCache, normalized_bipartite
from .lightgcn import WHOLE_GRAPH, propagate
from .registry import BuildContext, ModelSpec, register_model
from .towers import ItemTower

OFFSETS = (-2.0, 6.0)  # the range ``cold_offset: auto`` searches, in logits over the trained items' mean bias
OFFSET_STEP = 1 / 32  # how finely


def _inverse_sqrt(c: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(c)
    return vectors @ torch.diag(values.clamp_min(1e-8) ** -0.5) @ vectors.T


def shared_directions(x: torch.Tensor, y: torch.Tensor, k: int, ridge: float = 0.1) -> torch.Tensor:
    """The ``k`` leading canonical directions of ``x`` and ``y`` (rows: the same items), both
    views' projections side by side, each column at unit standard deviation: ``[n, 2k]``.
    ``ridge`` adds that share of each covariance's mean eigenvalue to its diagonal: with more
    dimensions than items, plain CCA finds perfectly correlated noise."""
    x, y = x.double() - x.double().mean(0), y.double() - y.double().mean(0)
    n = len(x)
    cx, cy = x.T @ x / n, y.T @ y / n
    cx = cx + ridge * cx.trace() / len(cx) * torch.eye(len(cx), dtype=cx.dtype)
    cy = cy + ridge * cy.trace() / len(cy) * torch.eye(len(cy), dtype=cy.dtype)
    wx, wy = _inverse_sqrt(cx), _inverse_sqrt(cy)
    u, _, vh = torch.linalg.svd(wx @ (x.T @ y / n) @ wy)
    z = torch.cat([x @ (wx @ u[:, :k]), y @ (wy @ vh.T[:, :k])], dim=1)
    return (z / z.std(0).clamp_min(1e-12)).float()


def content_vectors(features: dict[str, torch.Tensor], pairs: list[tuple[str, str, int]], n_items: int) -> torch.Tensor:
    """The content ``z`` the taste term reads, ``[n_items, width]``: the shared directions of each
    pair in ``pairs`` (``shared_directions``; a row's squared norm about 2, one per view, whatever
    the ``k``), then every feature set no pair names, standardised (a row's squared norm about 1
    per set). No feature sets: width 0 (the model is LightGCN plus item biases)."""
    parts = []
    if pairs:
        z = torch.cat([shared_directions(features[a], features[b], k) for a, b, k in pairs], dim=1)
        parts.append(z / np.sqrt(sum(k for _, _, k in pairs)))
    paired = {n for a, b, _ in pairs for n in (a, b)}
    for name, x in features.items():
        if name not in paired:
            x = x.float()
            x = (x - x.mean(0)) / (x.std(0) + 1e-6)
            parts.append(x / np.sqrt(x.shape[1]))
    return torch.cat(parts, dim=1) if parts else torch.zeros(n_items, 0)


def keep_configured_offset(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """Weights saved before the offset was a buffer were ranked at their config's fixed offset,
    which the model was just built with: keep it rather than refuse the weights."""
    state_dict.setdefault(prefix + "cold_offset", module.cold_offset.detach().clone())


class JointRec(Recommender):
    def __init__(self, n_users: int, item_tower: ItemTower, train_users: np.ndarray, train_items: np.ndarray,
                 content: torch.Tensor, taste_dim: int = 32, n_layers: int = 3, id_dropout: float = 0.9,
                 taste_reg: float = 0.03, id_reg: float = 0.003, cold_offset: float | None = None,
                 warm_cost: float = 0.15):
        super().__init__()
        self.item_tower = item_tower  # the item ids
        self.n_items = item_tower.n_items
        self.user = nn.Embedding(n_users, item_tower.dim)
        nn.init.xavier_uniform_(self.user.weight)
        self.taste = nn.Parameter(0.01 * torch.randn(n_users, taste_dim))
        self.proj = nn.Parameter(0.1 * torch.randn(content.shape[1], taste_dim))
        self.bias = nn.Parameter(torch.zeros(self.n_items))
        self.cold_user = nn.Parameter(torch.zeros(n_users))  # g of an item without its graph part
        self.n_layers, self.id_dropout = n_layers, id_dropout
        self.taste_reg, self.id_reg = taste_reg, id_reg
        self.auto_offset, self.warm_cost = cold_offset is None, warm_cost  # None: chosen on validation
        # saved with the weights: the offset the best epoch was ranked at is the one it is served at
        self.register_buffer("cold_offset", torch.tensor(0.0 if cold_offset is None else float(cold_offset)))
        self.register_load_state_dict_pre_hook(keep_configured_offset)
        r, rt = normalized_bipartite(train_users, train_items, n_users, self.n_items)
        self.register_buffer("r", r, persistent=False)
        self.register_buffer("rt", rt, persistent=False)
        warm = torch.from_numpy(np.bincount(train_items, minlength=self.n_items) > 0)
        self.register_buffer("warm", warm, persistent=False)
        self.register_buffer("content", content.float(), persistent=False)
        self.ranking = RankingCache(self)  # the graph pass once per evaluation, not per user chunk

    def graph(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.where(self.warm.unsqueeze(1), ids, 0.0)  # unseen ids: never trained
        return propagate(self.user.weight, ids, self.r, self.rt, self.n_layers)

    def ranking_vectors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What every chunk of users is ranked against: the graph's user and item vectors and the
        items' projected content."""
        return (*self.graph(self.item_tower()), self.content @ self.proj)

    def logits(self, users_idx: torch.Tensor, users: torch.Tensor, items: torch.Tensor, looks: torch.Tensor,
               has_graph: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """Scores ``[len(users_idx), n_items]`` (``looks``: the items' projected content): ``g``
        where ``has_graph``, else ``cold_u``."""
        g = users.index_select(0, users_idx) @ items.T
        g = torch.where(has_graph.unsqueeze(0), g, self.cold_user.index_select(0, users_idx).unsqueeze(1))
        taste = self.taste.index_select(0, users_idx) @ looks.T
        return g + taste + bias.unsqueeze(0)

    def loss(self, batch):
        self.ranking.clear()  # a step changes the weights (fused optimizers do not say so)
        ids = self.item_tower()
        users, items = self.graph(ids)
        u = batch["users"]
        has_graph = self.warm
        if self.training and self.id_dropout > 0:
            has_graph = has_graph & (torch.rand(self.n_items, device=self.warm.device) >= self.id_dropout)
        logits = self.logits(u, users, items, self.content @ self.proj, has_graph, self.bias)
        # unseen items are no one's positive in training: out of the softmax, not pushed down
        logits = logits.masked_fill(~self.warm.unsqueeze(0), -torch.inf)
        loss = F.cross_entropy(logits, batch["pos"])
        taste = self.taste.index_select(0, u)
        loss = loss + self.taste_reg * (taste.pow(2).sum(1).mean() + self.proj.pow(2).sum())
        return loss + self.id_reg * (self.user.weight.index_select(0, u).pow(2).sum(1).mean()
                                     + ids[self.warm].pow(2).sum(1).mean())

    def set_offset(self, value: float) -> None:
        self.cold_offset.fill_(value)  # read at ranking, outside the cached vectors

    def fit_ranking(self, evaluate, metric: str) -> None:
        """``cold_offset: auto``: the largest offset in ``OFFSETS`` whose validation warm ``metric``
        is at least ``1 - warm_cost`` of its value with unseen items ranked last (bisection, the
        warm metric falls as the offset grows). Nothing to choose without content, unseen items or
        warm validation pairs (then unseen items keep the last offset)."""
        if not self.auto_offset or not self.content.shape[1] or bool(self.warm.all()):
            return
        last = float(self.cold_offset)
        self.set_offset(-1e4)  # unseen items last
        floor = evaluate().get(f"warm/{metric}")
        if floor is None or floor != floor:  # no warm validation pairs to hold
            self.set_offset(last)
            return
        floor *= 1 - self.warm_cost
        lo, hi = OFFSETS
        self.set_offset(hi)
        if evaluate()[f"warm/{metric}"] >= floor:
            return
        while hi - lo > OFFSET_STEP:
            mid = (lo + hi) / 2
            self.set_offset(mid)
            if evaluate()[f"warm/{metric}"] >= floor:
                lo = mid
            else:
                hi = mid
        self.set_offset(lo)

    def ranking_bias(self) -> torch.Tensor:
        """``b_i`` for trained items; the trained items' mean plus ``cold_offset`` for the rest."""
        fill = self.bias[self.warm].mean() + self.cold_offset if bool(self.warm.any()) else self.bias.new_zeros(())
        return torch.where(self.warm, self.bias, fill)

    def score(self, users_idx):
        users, items, looks = self.ranking.get(self.ranking_vectors)
        with torch.no_grad():
            out = self.logits(users_idx, users, items, looks, self.warm, self.ranking_bias())
        if not self.content.shape[1]:  # no content: nothing to rank an unseen item by, so last
            out = out.masked_fill(~self.warm.unsqueeze(0), torch.finfo(out.dtype).min)
        return out


@register_model("joint")
class JointSpec(ModelSpec):
    family = "user-item graph over ids + content taste + item bias, one softmax (unseen items: content + bias)"
    paper = "LightGCN (He et al., SIGIR 2020) + DropoutNet (Volkovs et al., NeurIPS 2017) + CCA content (modalrec)"
    caches = "nothing (the content's shared directions are recomputed per run)"
    no_live_encoders = WHOLE_GRAPH
    n_layers: int = Field(3, ge=1)
    taste_dim: int = Field(32, ge=1)
    id_dropout: float = Field(0.9, ge=0, le=1)  # share of items scored without their graph part per step
    taste_reg: float = Field(0.03, ge=0)  # L2 on the batch users' tastes and the content projection
    id_reg: float = Field(0.003, ge=0)  # L2 on the batch users' and the trained items' id vectors
    # added to an unseen item's (mean) bias at ranking; "auto": chosen on validation at each evaluation
    cold_offset: float | Literal["auto"] = "auto"
    warm_cost: float = Field(0.15, ge=0, le=1)  # auto: share of validation warm recall unseen items may take
    # feature-set pairs whose shared (CCA) directions form the content, with how many to keep;
    # the model's other feature sets enter standardised (none: LightGCN plus item biases)
    cca: list[tuple[str, str, int]] = []

    def extra_features(self, features: list[str]) -> list[str]:
        return list(features)

    def build(self, ctx: BuildContext) -> JointRec:
        for a, b, k in self.cca:
            if a == b or k < 1:
                raise ConfigError(f"model.joint.cca: ({a}, {b}, {k}) needs two different feature sets and k >= 1")
        names = list(ctx.features)  # the model's feature sets (a compare arm's subset, say)
        pairs = [(a, b, k) for a, b, k in self.cca if a in names and b in names]
        if len(pairs) < len(self.cca):
            warnings.warn(f"model.joint.cca: {[p for p in self.cca if p not in pairs]} skipped, their feature sets "
                          f"are not all among the model's ({names}); those it has enter standardised")
        features = ctx.content("joint", "scores unseen items by their content", "cca", names) if names else {}
        for a, b, k in pairs:
            if k > min(features[a].shape[1], features[b].shape[1]):
                raise ConfigError(f"model.joint.cca: ({a}, {b}, {k}) keeps more directions than the narrower "
                                  "feature set's width")
        users, items = ctx.data.pairs("train")
        return JointRec(ctx.data.n_users, ctx.item_tower("xavier_uniform"), users, items,
                        content_vectors(features, pairs, ctx.data.n_items), taste_dim=self.taste_dim,
                        n_layers=self.n_layers, id_dropout=self.id_dropout, taste_reg=self.taste_reg,
                        id_reg=self.id_reg, cold_offset=None if self.cold_offset == "auto" else self.cold_offset,
                        warm_cost=self.warm_cost)
