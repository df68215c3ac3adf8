"""GRCN (Wei et al., MM 2020): the user-item graph refined by content before the id embeddings
are propagated over it.

Per modality ``m``: items' content ``f = normalize(leaky_relu(MLP(x)))`` and users' learned
preferences ``p`` (normalised). Routing (``n_routing`` rounds, the paper's prototypical network:
``p <- normalize(p + sum_i a_i f_i)`` with ``a`` a softmax over the user's items of ``<p, f>``,
gradients flowing through every round) moves each preference toward its items' content. Then one
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

- Routing: MMRec (and the authors' released code, weiyinwei/GRCN ``Model_routing.py``, whose
  ``CGCN`` it copies) runs it over the user -> item edges only, so the attention output lands on
  item rows while the preference update reads user rows, which are zero: routing never changes
  the preferences, whatever ``n_layers`` says. Here each user aggregates its items, as the paper's
  routing says, with ``n_routing`` rounds; the default is 0, which is MMRec's and the released
  code's behaviour and the validation winner. ``modalrec tune`` on TikTok
  (benchmarks/mmrec_side_by_side.py's settings: 5-epoch cap, lr 0.001, batch 2048,
  ``eval.mask_valid_in_test=false``, reg_weight 0.1, seeds 1, 2, 3, 999; mean +- std) gave:

  ==========  =================  =================  =================  =================
  n_routing   valid R@20         valid N@20         test R@20          test N@20
  ==========  =================  =================  =================  =================
  0           0.0487 +- 0.0042   0.0194 +- 0.0016   0.0502 +- 0.0021   0.0203 +- 0.0007
  1           0.0357 +- 0.0024   0.0144 +- 0.0016   0.0393 +- 0.0028   0.0165 +- 0.0014
  3 (paper)   0.0216 +- 0.0024   0.0085 +- 0.0010   0.0235 +- 0.0035   0.0099 +- 0.0016
  ==========  =================  =================  =================  =================

  A likely reason: routing pulls each preference onto the mean content of the user's items, so
  the user's content vector loses the freedom the learned preference gives it. Each round cost
  accuracy here (and 3 rounds double the epoch: 8.9 s against 4.2 s training on one thread).
  ``model.grcn.n_routing=3`` gives the paper's model.
- MMRec handles exactly an image and a text modality (and breaks on text alone: ``conetent_rep``);
  here any number of feature sets, each its own content graph.
- MMRec's regulariser adds the whole image preference table's mean square on top of the paper's
  batch terms (a leftover from MMGCN, image only); here only the paper's terms, for every modality.
- MMRec's loss takes ``log(sigmoid(.))`` unguarded; ``bpr_loss`` adds the usual 1e-10 guard.

Attention scores are dot products of unit vectors, within [-1, 1], so the per-node softmax needs
no max subtraction. The edge weights depend on the parameters, so there is no fixed sparse matrix
to cache: each weighted sum over edges is a sparse product built from that step's weights, and
the per-edge dot products (the scores, and the weights' gradients) are sampled products, not
gathers of both ends of every edge.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from .base import Recommender, batch_bpr, id_square_reg
from .lightgcn import WHOLE_GRAPH
from .registry import BuildContext, ModelSpec, register_model
from .towers import ItemTower


def segment_softmax(scores: torch.Tensor, group: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Softmax of ``scores`` (bounded, one per edge) within each group of edges."""
    e = scores.exp()
    total = e.new_zeros(n_groups).index_add_(0, group, e)
    return e / total.index_select(0, group)


@dataclass
class Edges:
    """The distinct training edges (sorted by user) with the CSR layouts of both directions, so a
    weighted sum over edges is one sparse product (``edge_sum``)."""

    eu: torch.Tensor
    ei: torch.Tensor
    by_item: torch.Tensor  # the edges' order sorted by item
    rows_u: torch.Tensor
    cols_u: torch.Tensor
    rows_i: torch.Tensor
    cols_i: torch.Tensor
    n_users: int
    n_items: int

    @classmethod
    def of(cls, eu: torch.Tensor, ei: torch.Tensor, n_users: int, n_items: int) -> "Edges":
        by_item = torch.argsort(ei, stable=True)
        return cls(eu, ei, by_item, _crow(eu, n_users), ei.to(torch.int32), _crow(ei, n_items),
                   eu.index_select(0, by_item).to(torch.int32), n_users, n_items)

    def matrix(self, weights: torch.Tensor, to_users: bool) -> torch.Tensor:
        """``[targets, sources]`` with each edge's weight: users x items, or items x users."""
        if to_users:
            return torch.sparse_csr_tensor(self.rows_u, self.cols_u, weights, (self.n_users, self.n_items))
        return torch.sparse_csr_tensor(self.rows_i, self.cols_i, weights.index_select(0, self.by_item),
                                       (self.n_items, self.n_users))


    def dots(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``<users[u], items[i]>`` for every edge (u, i), in edge order, as a sampled product
        (several times faster on CPU than gathering both ends of every edge)."""
        pattern = torch.sparse_csr_tensor(self.rows_u, self.cols_u, users.new_zeros(len(self.eu)),
                                          (self.n_users, self.n_items))
        return torch.sparse.sampled_addmm(pattern, users, items.T, beta=0.0).values()


EDGE_PARTS = ("eu", "ei", "by_item", "rows_u", "cols_u", "rows_i", "cols_i")


def _crow(rows: torch.Tensor, n: int) -> torch.Tensor:
    counts = torch.bincount(rows, minlength=n)
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)]).to(torch.int32)


class _EdgeSum(torch.autograd.Function):
    """``out[t] = sum over edges (s, t) of w[e] * values[s]`` as a sparse product; backward: the
    transposed product for ``values`` and, per edge, ``<grad[t], values[s]>`` for ``w``."""

    @staticmethod
    def forward(ctx, values, weights, edges, to_users):
        w = weights.detach()
        ctx.save_for_backward(values, w)
        ctx.edges, ctx.to_users = edges, to_users
        return torch.sparse.mm(edges.matrix(w, to_users), values)

    @staticmethod
    def backward(ctx, grad):
        values, w = ctx.saved_tensors
        edges, to_users = ctx.edges, ctx.to_users
        d_values = d_weights = None
        if ctx.needs_input_grad[0]:
            d_values = torch.sparse.mm(edges.matrix(w, not to_users), grad)
        if ctx.needs_input_grad[1]:
            d_weights = edges.dots(grad, values) if to_users else edges.dots(values, grad)
        return d_values, d_weights, None, None


class _EdgeDot(torch.autograd.Function):
    """``Edges.dots`` with its backward as two sparse products weighted by the incoming gradient."""

    @staticmethod
    def forward(ctx, users, items, edges):
        ctx.save_for_backward(users, items)
        ctx.edges = edges
        return edges.dots(users, items)

    @staticmethod
    def backward(ctx, grad):
        users, items = ctx.saved_tensors
        edges = ctx.edges
        d_users = torch.sparse.mm(edges.matrix(grad, True), items) if ctx.needs_input_grad[0] else None
        d_items = torch.sparse.mm(edges.matrix(grad, False), users) if ctx.needs_input_grad[1] else None
        return d_users, d_items, None


def edge_dot(users: torch.Tensor, items: torch.Tensor, edges: Edges) -> torch.Tensor:
    """``<users[u], items[i]>`` for every edge (u, i), differentiable in both."""
    return _EdgeDot.apply(users.contiguous(), items.contiguous(), edges)


def edge_sum(values: torch.Tensor, weights: torch.Tensor, edges: Edges, to_users: bool) -> torch.Tensor:
    """Each user's (``to_users``) or item's weighted sum of its neighbours' ``values``."""
    return _EdgeSum.apply(values.contiguous(), weights, edges, to_users)


class ContentGraph(nn.Module):
    """One modality: user preferences, the feature MLP, routing and the attention layer."""

    def __init__(self, n_users: int, feature_dim: int, dim: int):
        super().__init__()
        self.preference = nn.Parameter(nn.init.xavier_normal_(torch.empty(n_users, dim)))
        self.mlp = nn.Linear(feature_dim, dim)
        nn.init.xavier_normal_(self.mlp.weight)

    def forward(self, features: torch.Tensor, edges: Edges, n_routing: int):
        """``(users [U, C], items [I, C], a_to_item [E], a_to_user [E])``: the content vectors and
        each edge's attention toward its item (softmax over the item's users) and toward its user
        (softmax over the user's items)."""
        n_users, n_items, eu, ei = edges.n_users, edges.n_items, edges.eu, edges.ei
        f = F.normalize(F.leaky_relu(self.mlp(features)))
        p = F.normalize(self.preference)
        for _ in range(n_routing):
            a = segment_softmax(edge_dot(p, f, edges), eu, n_users)
            p = F.normalize(p + edge_sum(f, a, edges, True))
        s = edge_dot(p, f, edges)
        a_to_user, a_to_item = segment_softmax(s, eu, n_users), segment_softmax(s, ei, n_items)
        users = p + edge_sum(f, a_to_user, edges, True)
        items = f + edge_sum(p, a_to_item, edges, False)
        return users, items, a_to_item, a_to_user


class GRCN(Recommender):
    def __init__(self, n_users: int, item_tower: ItemTower, train_users: np.ndarray, train_items: np.ndarray,
                 features: dict[str, torch.Tensor], content_dim: int = 64, n_routing: int = 0,
                 reg_weight: float = 0.1):
        super().__init__()
        self.item_tower = item_tower
        self.n_users, self.n_items = n_users, item_tower.n_items
        self.user = nn.Embedding(n_users, item_tower.dim)
        nn.init.xavier_normal_(self.user.weight)
        self.n_routing, self.reg_weight = n_routing, reg_weight
        pairs = np.unique(train_users.astype(np.int64) * self.n_items + train_items)  # each edge once
        edges = Edges.of(torch.from_numpy(pairs // self.n_items), torch.from_numpy(pairs % self.n_items), n_users,
                         self.n_items)
        for part in EDGE_PARTS:  # buffers: they follow the model to its device
            self.register_buffer(part, getattr(edges, part), persistent=False)
        self.names = list(features)
        for name, f in features.items():
            self.register_buffer(f"feat_{name}", f.float().contiguous(), persistent=False)
        self.content = nn.ModuleDict({n: ContentGraph(n_users, f.shape[1], content_dim) for n, f in features.items()})
        # one column per modality, users' rows first (MMRec's single table and its init scale)
        self.confidence = nn.Parameter(nn.init.xavier_normal_(torch.empty(n_users + self.n_items, len(features))))

    def edges(self) -> Edges:
        return Edges(*(getattr(self, part) for part in EDGE_PARTS), self.n_users, self.n_items)

    def embeddings(self, id_items: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        id_items = self.item_tower() if id_items is None else id_items
        edges = self.edges()
        eu, ei = edges.eu, edges.ei
        users, items, to_item, to_user = [], [], [], []
        for name in self.names:
            u, i, a_item, a_user = self.content[name](getattr(self, f"feat_{name}"), edges, self.n_routing)
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
            xu, xi = edge_sum(xi, w_user, edges, True), edge_sum(xu, w_item, edges, False)
            id_u, id_i = id_u + xu, id_i + xi
        return torch.cat([id_u, *users], 1), torch.cat([id_i, *items], 1)

    def loss(self, batch):
        id_items = self.item_tower()
        users, items = self.embeddings(id_items)
        loss = batch_bpr(users, items, batch)
        if self.reg_weight > 0:
            reg = id_square_reg(self.user.weight, id_items, batch)
            for graph in self.content.values():
                reg = reg + graph.preference.index_select(0, batch["users"]).pow(2).mean()
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
    # routing rounds per modality (MMRec n_layers, whose routing adds zeros: it behaves as 0 here);
    # 0 chosen on validation over 0 / 1 / 3 (module docstring); the paper's model: 3
    n_routing: int = Field(0, ge=0)
    reg_weight: float = Field(0.1, ge=0)  # MMRec grid's first value
    modalities: list[str] = []  # feature sets with a content graph each; default: every configured one

    def extra_features(self, features: list[str]) -> list[str]:
        return list(self.modalities or features)

    def build(self, ctx: BuildContext) -> GRCN:
        # a missing row takes the modality's mean item: its edges get typical attention, not the
        # arbitrary direction a zero row would get from the MLP's bias
        filled = ctx.content("grcn", "refines its graph with item content", "modalities", self.modalities)
        users, items = ctx.data.pairs("train")
        return GRCN(ctx.data.n_users, ctx.item_tower("xavier_normal"), users, items, filled,
                    content_dim=self.content_dim, n_routing=self.n_routing, reg_weight=self.reg_weight)
