"""GRCN (Wei et al., MM 2020): the user-item graph refined by content before the id embeddings
are propagated over it.

Per modality ``m``: items' content ``f = normalize(leaky_relu(MLP(x)))`` and users' learned
preferences ``p`` (normalised). Routing (``n_routing`` rounds) moves each preference toward the
content of the user's items, weighted by a softmax over those items of ``<p, f>``. Then one
attention layer gives every edge two weights, a softmax of the same score over the target's
neighbours (one per direction), and each node's content vector is ``x + sum_neighbours a x``.

The refined graph: the message from node ``s`` to ``t`` has weight
``relu(max_m a_m(s -> t) * conf_m(s))`` (``conf``: a learned confidence per node and modality);
negative weights prune the edge. The id embeddings (users' table, the item tower's vectors),
normalised, go through two weighted-sum layers over that graph: ``id = x + A x + A^2 x``.
A node's vector is its id vector followed by every modality's content vector; scores are dot
products; training is BPR plus ``reg_weight`` times the batch's mean squared id vectors and
mean squared preferences.

Where this differs from MMRec's ``grcn.py``, on purpose:

- Routing: MMRec runs it over the user -> item edges only, so the attention output lands on item
  rows while the preference update reads user rows, which are zero: routing never changes the
  preferences. Here each user aggregates its items, as the paper's routing says.
- MMRec handles exactly an image and a text modality (and breaks on text alone: ``conetent_rep``);
  here any number of feature sets, each its own content graph.
- MMRec's regulariser adds the whole image preference table's mean square on top of the paper's
  batch terms (a leftover from MMGCN, image only); here only the paper's terms, for every modality.
- MMRec's loss takes ``log(sigmoid(.))`` unguarded; ``bpr_loss`` adds the usual 1e-10 guard.

Attention scores are dot products of unit vectors, within [-1, 1], so the per-node softmax needs
no max subtraction. Messages are gathered and summed per edge (``index_add``): the edge weights
depend on the parameters, so there is no fixed sparse matrix to cache.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..errors import ConfigError
from .base import Recommender, bpr_loss
from .lightgcn import WHOLE_GRAPH
from .registry import BuildContext, ModelSpec, register_model
from .towers import ItemTower, fill_missing


def segment_softmax(scores: torch.Tensor, group: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Softmax of ``scores`` (bounded, one per edge) within each group of edges."""
    e = scores.exp()
    total = e.new_zeros(n_groups).index_add_(0, group, e)
    return e / total.index_select(0, group)


def edge_sum(values: torch.Tensor, weights: torch.Tensor, source: torch.Tensor, target: torch.Tensor,
             n_targets: int) -> torch.Tensor:
    """``out[t] = sum over edges (s, t) of weights[e] * values[s]``."""
    msg = values.index_select(0, source) * weights.unsqueeze(1)
    return values.new_zeros(n_targets, values.shape[1]).index_add_(0, target, msg)


class ContentGraph(nn.Module):
    """One modality: user preferences, the feature MLP, routing and the attention layer."""

    def __init__(self, n_users: int, feature_dim: int, dim: int):
        super().__init__()
        self.preference = nn.Parameter(nn.init.xavier_normal_(torch.empty(n_users, dim)))
        self.mlp = nn.Linear(feature_dim, dim)
        nn.init.xavier_normal_(self.mlp.weight)

    def forward(self, features: torch.Tensor, eu: torch.Tensor, ei: torch.Tensor, n_routing: int):
        """``(users [U, C], items [I, C], a_to_item [E], a_to_user [E])``: the content vectors and
        each edge's attention toward its item (softmax over the item's users) and toward its user
        (softmax over the user's items)."""
        n_users, n_items = self.preference.shape[0], features.shape[0]
        f = F.normalize(F.leaky_relu(self.mlp(features)))
        p = F.normalize(self.preference)
        for _ in range(n_routing):
            a = segment_softmax((p.index_select(0, eu) * f.index_select(0, ei)).sum(1), eu, n_users)
            p = F.normalize(p + edge_sum(f, a, ei, eu, n_users))
        s = (p.index_select(0, eu) * f.index_select(0, ei)).sum(1)
        a_to_user, a_to_item = segment_softmax(s, eu, n_users), segment_softmax(s, ei, n_items)
        users = p + edge_sum(f, a_to_user, ei, eu, n_users)
        items = f + edge_sum(p, a_to_item, eu, ei, n_items)
        return users, items, a_to_item, a_to_user


class GRCN(Recommender):
    def __init__(self, n_users: int, item_tower: ItemTower, train_users: np.ndarray, train_items: np.ndarray,
                 features: dict[str, torch.Tensor], content_dim: int = 64, n_routing: int = 3,
                 reg_weight: float = 0.1):
        super().__init__()
        self.item_tower = item_tower
        self.n_users, self.n_items = n_users, item_tower.n_items
        self.user = nn.Embedding(n_users, item_tower.dim)
        nn.init.xavier_normal_(self.user.weight)
        self.n_routing, self.reg_weight = n_routing, reg_weight
        pairs = np.unique(train_users.astype(np.int64) * self.n_items + train_items)  # each edge once
        self.register_buffer("eu", torch.from_numpy(pairs // self.n_items), persistent=False)
        self.register_buffer("ei", torch.from_numpy(pairs % self.n_items), persistent=False)
        self.names = list(features)
        for name, f in features.items():
            self.register_buffer(f"feat_{name}", f.float().contiguous(), persistent=False)
        self.content = nn.ModuleDict({n: ContentGraph(n_users, f.shape[1], content_dim) for n, f in features.items()})
        # one column per modality, users' rows first (MMRec's single table and its init scale)
        self.confidence = nn.Parameter(nn.init.xavier_normal_(torch.empty(n_users + self.n_items, len(features))))

    def embeddings(self, id_items: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        id_items = self.item_tower() if id_items is None else id_items
        eu, ei = self.eu, self.ei
        users, items, to_item, to_user = [], [], [], []
        for name in self.names:
            u, i, a_item, a_user = self.content[name](getattr(self, f"feat_{name}"), eu, ei, self.n_routing)
            users.append(u)
            items.append(i)
            to_item.append(a_item)
            to_user.append(a_user)
        # each message weighted by the sender's confidence, the largest over modalities, pruned below 0
        conf_u, conf_i = self.confidence[: self.n_users], self.confidence[self.n_users:]
        w_item = torch.relu((torch.stack(to_item, 1) * conf_u.index_select(0, eu)).amax(1))
        w_user = torch.relu((torch.stack(to_user, 1) * conf_i.index_select(0, ei)).amax(1))
        xu, xi = F.normalize(self.user.weight), F.normalize(id_items)
        id_u, id_i = xu, xi
        for _ in range(2):
            xu, xi = edge_sum(xi, w_user, ei, eu, self.n_users), edge_sum(xu, w_item, eu, ei, self.n_items)
            id_u, id_i = id_u + xu, id_i + xi
        return torch.cat([id_u, *users], 1), torch.cat([id_i, *items], 1)

    def loss(self, batch):
        id_items = self.item_tower()
        users, items = self.embeddings(id_items)
        u_idx, n = batch["users"], len(batch["pos"])
        both = torch.cat([batch["pos"], batch["neg"]])
        u, its = users.index_select(0, u_idx), items.index_select(0, both)
        loss = bpr_loss((u * its[:n]).sum(-1), (u * its[n:]).sum(-1))
        if self.reg_weight > 0:
            # MMRec's mean over the [2B, D] rows of (user id)^2 + (item id)^2, each user twice
            ego_u, ego_i = self.user.weight.index_select(0, u_idx), id_items.index_select(0, both)
            reg = (2 * ego_u.pow(2).sum() + ego_i.pow(2).sum()) / (2 * n * ego_u.shape[1])
            for graph in self.content.values():
                reg = reg + graph.preference.index_select(0, u_idx).pow(2).mean()
            loss = loss + self.reg_weight * reg
        return loss

    def score(self, users_idx):
        users, items = self.embeddings()
        return users[users_idx] @ items.T


@register_model("grcn")
class GRCNSpec(ModelSpec):
    no_live_encoders = WHOLE_GRAPH
    family = "content-refined user-item graph"
    paper = "Wei et al., MM 2020"
    caches = "nothing"
    content_dim: int = Field(64, ge=1)  # each modality's content vector (MMRec latent_embedding)
    n_routing: int = Field(3, ge=0)  # routing rounds per modality (MMRec n_layers)
    reg_weight: float = Field(0.1, ge=0)  # MMRec grid's first value
    modalities: list[str] = []  # feature sets with a content graph each; default: every configured one

    def extra_features(self, features: list[str]) -> list[str]:
        return list(self.modalities or features)

    def build(self, ctx: BuildContext) -> GRCN:
        features = ctx.features
        if not features:
            raise ConfigError("model grcn refines its graph with item content: add a `features` section")
        names = self.modalities or list(features)
        unknown = sorted(set(names) - set(features))
        if unknown:
            raise ConfigError(f"model.grcn.modalities: {unknown} not in `features` ({sorted(features)})")
        # a missing row takes the modality's mean item: its edges get typical attention, not the
        # arbitrary direction a zero row would get from the MLP's bias
        filled = {n: fill_missing(features[n].values.float(), features[n].mask, "mean") for n in names}
        users, items = ctx.data.pairs("train")
        return GRCN(ctx.data.n_users, ctx.item_tower("xavier_normal"), users, items, filled,
                    content_dim=self.content_dim, n_routing=self.n_routing, reg_weight=self.reg_weight)
