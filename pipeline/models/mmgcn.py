"""MMGCN (Wei et al., MM 2019): one graph convolution network per modality over the user-item
graph; a user's and an item's final vectors are the mean over modalities of that network's output.

Per modality ``m``, users start from a preference vector and items from their feature row (the
first feature set through an MLP to ``latent_dim`` first, as MMRec's vision slot), both
L2-normalised. Each layer ``l`` computes

    h   = leaky_relu(mean over neighbours of x W_l)                  # aggregation (eq. 1)
    x^  = leaky_relu(L_l x) + id                                     # with the shared id vector (eq. 5)
    x   = leaky_relu(G_l [h ; x^])    (concat)  or  leaky_relu(G_l h + x^)

where ``id`` is the user's id embedding or the item tower's vector, shared by every modality.
Training is BPR plus ``reg_weight`` times the mean squared id vectors of the batch's rows and the
mean squared preference tables, of those that train.

As in MMRec's ``mmgcn.py`` and in the authors' code (weiyinwei/MMGCN, ``Model_MMGCN.py``): the id
table and the users' preferences are plain tensors there, not parameters, so the optimizer never
updates them (both are made with ``requires_grad=True``, so training them was meant); they are
random inputs the network learns around. Here the id table stays at its draw by default
(``train_ids`` trains it) and the preferences train (``train_preferences``, default true, as the
paper's text reads; false gives MMRec's frozen ones), chosen on validation (below). Both are drawn
at MMRec's scale (one xavier-normal table over users and items). Whatever is constant is computed
once, not per batch (the first layer's user-side aggregations with frozen preferences, the items'
of a set without MLP), and regulariser terms on constants, constants in MMRec, are left out. Also as MMRec:
``concate = 'False'`` is a non-empty string, hence true, so the combination concatenates
(``concat``); its yaml's ``n_layers: 2`` is never read and it always has 3 layers (the default).

Where this differs from MMRec, on purpose:

- The users' preferences train (above); ``train_preferences=false`` keeps MMRec's.
- MMRec ranks with the vectors of the last training batch's forward pass, one optimizer step old;
  here ranking runs a forward pass with the current weights.
- ``mlp_modalities`` names the sets that get the MLP, when the first is not the one that should.
- MMRec's loss takes ``log(sigmoid(.))`` unguarded (-inf once a margin saturates); ``bpr_loss``
  adds the 1e-10 guard used everywhere else.

TikTok, 5-epoch cap (``benchmarks/mmrec_side_by_side.py``, 2026-11-29), with MMRec's frozen tables
(``train_preferences=false``): test R@20 0.0649 +- 0.0065,
N@20 0.0304 +- 0.0084 over seeds 1, 2, 3, 999 (best valid R@20 0.0752 / 0.0627 / 0.0653 / 0.0726);
MMRec 0.0846 / 0.0282 at its seed 999, and 0.0741, 0.0684, 0.0573 at seeds 1, 2, 3 (its mean
0.0711 +- 0.0114). Given the same weights this forward pass equals MMRec's ``GCN`` to 1.5e-8 on
TikTok, and seed 999's summed epoch losses track MMRec's (17.72 / 11.17 vs 17.84 / 11.26): the
gap to seed 999 is seed spread. Same runs with the tables trained, mean best valid R@20 (test R@20):
default 0.0690 (0.0649 +- 0.0065); ``train_ids`` 0.0657 (0.0610 +- 0.0029); ``train_ids`` and
``train_preferences`` 0.0738 (0.0677 +- 0.0053); ``train_preferences`` alone 0.0840 (0.0794 +-
0.0140, N@20 0.0294): the best on validation by 0.015, hence the default (trained preferences,
frozen ids); ``model.mmgcn.train_preferences=false`` is MMRec's and the authors' model.

Speed, same numbers: the MLP of a narrow feature set is reassociated (``_projected``), the last
layer's self and combination parts run on the batch's rows only, and ranking scores every chunk
of users from one forward pass.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..errors import ConfigError
from .base import RankingCache, Recommender, batch_bpr, compact_csr, id_square_reg, spmm
from .lightgcn import WHOLE_GRAPH
from .registry import BuildContext, ModelSpec, register_model
from .towers import IdTower, ItemTower


def mean_aggregators(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> dict[str, torch.Tensor]:
    """The mean over neighbours on the bipartite graph of the distinct (user, item) edges, as
    CSR blocks: ``to_users`` (``[n_users, n_items]``, rows ``1 / deg(u)``), ``to_items``
    (``[n_items, n_users]``, rows ``1 / deg(i)``), and each one's transpose for the backward pass.
    A node with no edge gets a zero row (PyG's mean of nothing)."""
    key = np.unique(users.astype(np.int64) * n_items + items)
    u, i = key // n_items, key % n_items
    du = np.bincount(u, minlength=n_users).astype(np.float32)
    di = np.bincount(i, minlength=n_items).astype(np.float32)
    ui = torch.from_numpy(np.vstack([u, i]))
    iu = torch.from_numpy(np.vstack([i, u]))

    def block(index, values, shape):
        return compact_csr(torch.sparse_coo_tensor(index, torch.from_numpy(values), shape).coalesce())

    to_users_vals, to_items_vals = 1.0 / du[u], 1.0 / di[i]
    return {"to_users": block(ui, to_users_vals, (n_users, n_items)),
            "to_users_t": block(iu, to_users_vals, (n_items, n_users)),
            "to_items": block(iu, to_items_vals, (n_items, n_users)),
            "to_items_t": block(ui, to_items_vals, (n_users, n_items))}


def _aggregate(a: torch.Tensor, a_t: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``a @ (x @ w)``, multiplied by ``w`` on the side with fewer rows (the same by linearity):
    on TikTok, what items gather from users costs 6,710 rows of the product instead of 9,308."""
    if a.shape[0] < x.shape[0]:
        return spmm(a, a_t, x) @ w
    return spmm(a, a_t, x @ w)


def _rows(t: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
    return t if idx is None else t.index_select(0, idx)


class ModalityGCN(nn.Module):
    """One modality's network: user preferences, the optional feature MLP and ``n_layers`` layers.

    With frozen preferences (MMRec's; ``model.mmgcn.train_preferences=false``) the first layer's inputs on the user side
    are constants, and so are the items' without an MLP: their aggregations are computed once
    per state of the tensors they come from, not once per batch."""

    def __init__(self, n_users: int, feature_dim: int, dim: int, n_layers: int, latent_dim: int, concat: bool,
                 train_preference: bool = False):
        super().__init__()
        width = latent_dim or feature_dim
        self.mlp = nn.Linear(feature_dim, latent_dim) if latent_dim else None
        self.preference = nn.Parameter(nn.init.xavier_normal_(torch.empty(n_users, width)),
                                       requires_grad=train_preference)
        self.concat = concat
        self.conv = nn.ParameterList()
        self.linear, self.combine = nn.ModuleList(), nn.ModuleList()
        for layer in range(n_layers):
            d_in = width if layer == 0 else dim
            # MMRec's inits: xavier-normal conv weights, linear weights and first combination layer
            self.conv.append(nn.Parameter(nn.init.xavier_normal_(torch.empty(d_in, d_in))))
            self.linear.append(nn.Linear(d_in, dim))
            nn.init.xavier_normal_(self.linear[-1].weight)
            self.combine.append(nn.Linear(d_in + dim if concat else d_in, dim))
            if layer == 0:
                nn.init.xavier_normal_(self.combine[-1].weight)
        self._constants: dict[str, tuple] = {}

    def _constant(self, key: str, make, *sources: torch.Tensor) -> torch.Tensor:
        """``make()`` once per state of ``sources``: a load (an in-place copy bumps a tensor's
        version) or a move to another device (a new address) makes it again."""
        stamp = tuple((t._version, t.data_ptr()) for t in sources)
        hit = self._constants.get(key)
        if hit is None or hit[0] != stamp:
            with torch.no_grad():
                hit = (stamp, make())
            self._constants[key] = hit
        return hit[1]

    def _projected(self, features: torch.Tensor, both: torch.Tensor) -> torch.Tensor:
        """``normalize(mlp(features)) @ both``. When the features are narrower than the MLP
        (TikTok: 128 -> 256) it is cheaper as ``features @ (M^T both)`` with the row norms from
        the Gram form ``|f M^T + m|^2 = f (M^T M) f^T + 2 f M^T m + |m|^2``: the wide MLP
        output is never formed, forwards or backwards."""
        m, mb = self.mlp.weight, self.mlp.bias
        f_dim, width, out = features.shape[1], m.shape[0], both.shape[1]
        if f_dim * (out + f_dim) >= f_dim * width + width * out:
            return F.normalize(self.mlp(features)) @ both
        sq = ((features @ (m.T @ m)) * features).sum(1) + 2 * (features @ (m.T @ mb)) + mb @ mb
        # F.normalize's max(|x|, 1e-12), with no infinite slope of the root at zero
        scale = sq.clamp(min=1e-24).rsqrt()
        return (features @ (m.T @ both) + mb @ both) * scale.unsqueeze(1)

    def _first_layer(self, features: torch.Tensor, graph: dict[str, torch.Tensor]):
        """The first layer's aggregated messages ``A x W_1`` and self parts ``L_1 x`` of users
        and items, before their activations."""
        w, lin = self.conv[0], self.linear[0]
        pref = self.preference
        if pref.requires_grad:
            xu = F.normalize(pref)
            ci = spmm(graph["to_items"], graph["to_items_t"], xu)
        else:
            xu = self._constant("xu", lambda: F.normalize(pref), pref)
            ci = self._constant("ci", lambda: torch.sparse.mm(graph["to_items"], xu), pref)
        self_u = lin(xu)
        if self.mlp is None:
            xi = self._constant("xi", lambda: F.normalize(features), features)
            cu = self._constant("cu", lambda: torch.sparse.mm(graph["to_users"], xi), features)
            if pref.requires_grad:
                return cu @ w, ci @ w, self_u, lin(xi)
            # every input of the first layer is a constant: users and items in one product by W_1
            msg = self._constant("cat", lambda: torch.cat([cu, ci]), features, pref) @ w
            return msg[:len(cu)], msg[len(cu):], self_u, lin(xi)
        width = w.shape[1]
        both = self._projected(features, torch.cat([w, lin.weight.T], 1))
        msg_u = spmm(graph["to_users"], graph["to_users_t"], both[:, :width])
        return msg_u, ci @ w, self_u, both[:, width:] + lin.bias

    def forward(self, features: torch.Tensor, id_users: torch.Tensor, id_items: torch.Tensor,
                graph: dict[str, torch.Tensor], rows: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Final user and item vectors; with ``rows`` (user ids, item ids) only those rows, the
        last layer's self and combination parts computed for them alone."""
        ru, ri = rows if rows is not None else (None, None)
        last = len(self.conv) - 1
        xu = xi = None
        for layer, (w, lin, comb) in enumerate(zip(self.conv, self.linear, self.combine)):
            if layer == 0:
                msg_u, msg_i, self_u, self_i = self._first_layer(features, graph)
            else:
                msg_u = _aggregate(graph["to_users"], graph["to_users_t"], xi, w)
                msg_i = _aggregate(graph["to_items"], graph["to_items_t"], xu, w)
            ids_u, ids_i = id_users, id_items
            if layer == last:
                msg_u, msg_i, ids_u, ids_i = _rows(msg_u, ru), _rows(msg_i, ri), _rows(ids_u, ru), _rows(ids_i, ri)
                if layer == 0:
                    self_u, self_i = _rows(self_u, ru), _rows(self_i, ri)
                else:
                    xu, xi = _rows(xu, ru), _rows(xi, ri)
            if layer > 0:
                self_u, self_i = lin(xu), lin(xi)
            hu, hi = F.leaky_relu(msg_u), F.leaky_relu(msg_i)
            hat_u = F.leaky_relu(self_u) + ids_u
            hat_i = F.leaky_relu(self_i) + ids_i
            if self.concat:
                xu = F.leaky_relu(comb(torch.cat([hu, hat_u], dim=1)))
                xi = F.leaky_relu(comb(torch.cat([hi, hat_i], dim=1)))
            else:
                xu = F.leaky_relu(comb(hu) + hat_u)
                xi = F.leaky_relu(comb(hi) + hat_i)
        return xu, xi


class MMGCN(Recommender):
    def __init__(self, n_users: int, item_tower: ItemTower, train_users: np.ndarray, train_items: np.ndarray,
                 features: dict[str, torch.Tensor], n_layers: int = 3, latent_dim: int = 256, concat: bool = True,
                 reg_weight: float = 0.0, mlp_modalities: list[str] | None = None, train_ids: bool = False,
                 train_preferences: bool = True):
        super().__init__()
        self.item_tower = item_tower
        self.n_users, self.n_items = n_users, item_tower.n_items
        dim = item_tower.dim
        self.user = nn.Embedding(n_users, dim)
        # MMRec's single xavier-normal table over users and items: one scale for both halves
        std = (2.0 / (n_users + self.n_items + dim)) ** 0.5
        nn.init.normal_(self.user.weight, 0.0, std)
        if isinstance(item_tower, IdTower):
            nn.init.normal_(item_tower.embedding.weight, 0.0, std)
        self.train_ids = train_ids
        if not train_ids:
            self.user.weight.requires_grad_(False)
            item_tower.requires_grad_(False)
        self.reg_weight = reg_weight
        for name, t in mean_aggregators(train_users, train_items, n_users, self.n_items).items():
            self.register_buffer(name, t, persistent=False)
        # the features are constant (filled where missing): buffers, not parameters
        self.names = list(features)
        for name, f in features.items():
            self.register_buffer(f"feat_{name}", f.float().contiguous(), persistent=False)
        with_mlp = self.names[:1] if mlp_modalities is None else mlp_modalities
        self.gcns = nn.ModuleDict({n: ModalityGCN(n_users, f.shape[1], dim, n_layers,
                                                  latent_dim if n in with_mlp else 0, concat, train_preferences)
                                   for n, f in features.items()})
        self.ranking = RankingCache(self)  # one forward per evaluation

    def _graph(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k) for k in ("to_users", "to_users_t", "to_items", "to_items_t")}

    def embeddings(self, users: torch.Tensor | None = None,
                   items: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean over modalities of the final vectors: of every user and item, or with
        ``users`` and ``items`` (distinct ids) of those rows."""
        id_items = self.item_tower()
        graph = self._graph()
        rows = None if users is None else (users, items)
        out_u = out_i = None
        for name in self.names:
            u, i = self.gcns[name](getattr(self, f"feat_{name}"), self.user.weight, id_items, graph, rows)
            out_u, out_i = (u, i) if out_u is None else (out_u + u, out_i + i)
        return out_u / len(self.names), out_i / len(self.names)

    def loss(self, batch):
        self.ranking.clear()
        n = len(batch["pos"])
        users, at_u = torch.unique(batch["users"], return_inverse=True)
        items, at_i = torch.unique(torch.cat([batch["pos"], batch["neg"]]), return_inverse=True)
        u, i = self.embeddings(users, items)
        loss = batch_bpr(u, i, {"users": at_u, "pos": at_i[:n], "neg": at_i[n:]})
        if self.reg_weight > 0:
            # only what trains: a frozen table's term is a constant, as in MMRec
            reg = id_square_reg(self.user.weight, self.item_tower(), batch) if self.train_ids else 0.0
            for gcn in self.gcns.values():
                if gcn.preference.requires_grad:
                    reg = reg + gcn.preference.pow(2).mean()
            loss = loss + self.reg_weight * reg
        return loss

    def score(self, users_idx):
        users, items = self.ranking.get(self.embeddings)
        return users[users_idx] @ items.T


@register_model("mmgcn")
class MMGCNSpec(ModelSpec):
    no_live_encoders = WHOLE_GRAPH
    family = "user-item graph per modality"
    paper = "Wei et al., MM 2019"
    caches = "nothing"
    n_layers: int = Field(3, ge=1)  # graph layers per modality (MMRec: always 3, whatever its yaml says)
    latent_dim: int = Field(256, ge=0)  # width of the feature MLP (mlp_modalities); 0: raw features for all
    # feature sets that pass through the MLP; null: the first one (MMRec's vision slot), the rest enter raw
    mlp_modalities: list[str] | None = None
    concat: bool = True  # combine aggregation and self parts by concatenation (MMRec) or sum
    reg_weight: float = Field(0.0, ge=0)  # MMRec grid's first value
    train_ids: bool = False  # train the user and item id vectors (MMRec and the authors' code: never updated)
    # train the users' per-modality inputs (never updated in MMRec / the authors' code); on: chosen on
    # validation (module docstring)
    train_preferences: bool = True
    modalities: list[str] = []  # feature sets with a network each; default: every configured one

    def extra_features(self, features: list[str]) -> list[str]:
        return list(self.modalities or features)

    def build(self, ctx: BuildContext) -> MMGCN:
        # a missing row starts from the mean item of its modality: typical, not zero (which
        # F.normalize would leave at zero, cutting the item off from that modality)
        filled = ctx.content("mmgcn", "runs one graph network per modality", "modalities", self.modalities)
        if self.mlp_modalities is not None and set(self.mlp_modalities) - set(filled):
            raise ConfigError(f"model.mmgcn.mlp_modalities: {sorted(set(self.mlp_modalities) - set(filled))} "
                              f"not among the model's feature sets {sorted(filled)}")
        users, items = ctx.data.pairs("train")
        return MMGCN(ctx.data.n_users, ctx.item_tower("xavier_normal"), users, items, filled,
                     n_layers=self.n_layers, latent_dim=self.latent_dim, concat=self.concat,
                     reg_weight=self.reg_weight, mlp_modalities=self.mlp_modalities, train_ids=self.train_ids,
                     train_preferences=self.train_preferences)
