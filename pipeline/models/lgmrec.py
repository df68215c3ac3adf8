"""LGMRec (Guo et al., AAAI 2024): local and global graph learning for multimodal recommendation.

The final embedding of a user or item is the sum of three parts:

- collaborative (CGE): LightGCN over the user-item graph, on the user table and the item tower;
- local modality (MGE), per feature set: items' features projected to ``dim`` (a user starts as
  the mean of their items' projections) and propagated ``n_mm_layers`` times over the normalised
  user-item graph, each modality's result L2-normalised per row, then summed;
- global hypergraph (GHE), per feature set: ``hyper_num`` hyperedges, each item assigned to them
  by a Gumbel-softmax (temperature 0.2) of a learned map of its features, each user by the same
  of the summed logits of their items; the collaborative item embeddings are pooled into the
  hyperedges and read back (``n_hyper_layer`` rounds); summed over modalities, row-normalised
  and weighted by ``alpha``.

Loss: BPR on the final embeddings, plus ``cl_weight`` times a contrastive (InfoNCE, temperature
0.2, summed over the batch) loss that aligns the hypergraph embeddings of each pair of modalities
(the batch's users against all users, the positives against all items), plus ``reg_weight``
times MMRec's norm regulariser on the batch's final embeddings. The hypergraph assignments are
dropped out (keep ``keep_rate``) in training.

Any number of feature sets: MMRec's model has exactly two (image, text) and contrasts them; here
every pair of modalities is contrasted (two: exactly MMRec's term; one: no contrastive term).
The first feature set takes MMRec's vision slot (the anchor of the contrastive term), the second
its text slot. Checked item by item against MMRec's code (and its authors', georgeguo-cn/LGMRec,
whose later revision is MMRec's): graphs, initialisation, the three parts, the Gumbel-softmax,
dropout, the contrastive and norm terms and the final vectors compute the same functions (the
dense reference in tests/test_zoo_lgmrec.py is written the way MMRec's code reads).
Differences from MMRec, on purpose:
- MMRec draws fresh Gumbel noise at every scoring call (its eval() only switches dropout off),
  so a ranking changes from one call, or one batch of users, to the next. Here scoring uses the
  noise-free softmax; ``score_noise`` keeps MMRec's noisy memberships but draws them from a
  generator seeded by the run's seed alone, so all batches and calls rank alike. Chosen on
  validation (TikTok, MMRec's defaults, 5-epoch cap, seeds 1, 2, 3, 999, best valid R@20):
  noise-free 0.0246 / 0.0236 / 0.0279 / 0.0243 (mean 0.0251, test R@20 0.0236), score_noise
  0.0243 / 0.0233 / 0.0276 / 0.0230 (mean 0.0246, test R@20 0.0251): within seed noise.
- Training draws its noise and dropout masks from a generator seeded by seed and epoch (a
  resumed run repeats an uninterrupted one); MMRec uses torch's global generator.
- Rows of a missing modality are filled with that modality's mean (MMRec assumes none missing).
At MMRec's defaults on TikTok the scores spread widely over seeds on both sides: MMRec's own
runs at seeds 1, 2, 3, 999 (5-epoch cap) gave test R@20 0.0184 / 0.0229 / 0.0271 / 0.0292
(N@20 0.0077 / 0.0092 / 0.0132 / 0.0157), mean 0.0244; ours 0.0253 / 0.0212 / 0.0260 / 0.0220.
MMRec's ``cl_weight`` 1e-4 (kept as the default) weighs a contrastive term summed over the batch
(about 3.6 of a 4.2 loss per batch, on both sides) and swamps BPR within 5 epochs; TikTok's
recipe sets 1e-6, chosen on validation (5 epochs, seeds 1, 2, 3, 999, mean best valid R@20:
0 0.0548, 1e-6 0.0543, 1e-5 0.0433, 1e-4 0.0251; 1e-6 keeps the paper's term at a third of a
seed std below dropping it). Test at 1e-6: R@20 0.0571 +- 0.0013, N@20 0.0253 +- 0.0012; MMRec
at 1e-6, seed 999: 0.0547 and 0.0253 (valid 0.0538; ours at seed 999: 0.0545).
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..errors import ConfigError
from .base import Recommender, compact_csr, emb_loss, normalized_bipartite, spmm
from .lightgcn import WHOLE_GRAPH, propagate
from .registry import BuildContext, ModelSpec, register_model
from .towers import ItemTower

TAU = 0.2  # MMRec's fixed temperature of the Gumbel-softmax and of the contrastive loss


def interaction_blocks(users: np.ndarray, items: np.ndarray, n_users: int,
                       n_items: int) -> tuple[torch.Tensor, ...]:
    """The binary user-item matrix ``R``, ``R`` with each row divided by the user's degree (a
    user's mean over their items) and both transposes, as CSR."""
    deg = np.bincount(users, minlength=n_users).astype(np.float64) + 1e-7
    index = torch.from_numpy(np.vstack([users, items]))
    out = []
    for values in (np.ones(len(users)), 1.0 / deg[users]):
        m = torch.sparse_coo_tensor(index, torch.from_numpy(values.astype(np.float32)), (n_users, n_items)).coalesce()
        out += [compact_csr(m), compact_csr(m.t().coalesce())]
    return tuple(out)


def contrastive(anchor: torch.Tensor, positive: torch.Tensor, candidates: torch.Tensor,
                counts: torch.Tensor) -> torch.Tensor:
    """``-sum_b log(exp(a_b.p_b / t) / sum_c exp(a_b.c / t))`` over cosine similarities, the
    candidates including the positive's own row (MMRec's ``ssl_triple_loss``), in log space;
    row b stands for ``counts[b]`` identical rows of the batch."""
    # 1/t folded into the anchors: the [B, N] similarities are never divided
    a = F.normalize(anchor, dim=1) / TAU
    p, c = F.normalize(positive, dim=1), F.normalize(candidates, dim=1)
    return ((torch.logsumexp(a @ c.T, dim=1) - (a * p).sum(1)) * counts).sum()


class LGMRec(Recommender):
    def __init__(self, n_users: int, item_tower: ItemTower, train_users: np.ndarray, train_items: np.ndarray,
                 features: dict[str, torch.Tensor], n_ui_layers: int = 2, n_mm_layers: int = 2,
                 n_hyper_layer: int = 1, hyper_num: int = 4, keep_rate: float = 0.5, alpha: float = 0.3,
                 cl_weight: float = 1e-4, reg_weight: float = 1e-6, seed: int = 0, score_noise: bool = False):
        super().__init__()
        self.item_tower = item_tower
        self.n_users, self.n_items, dim = n_users, item_tower.n_items, item_tower.dim
        self.user = nn.Embedding(n_users, dim)
        nn.init.xavier_uniform_(self.user.weight)
        self.n_ui_layers, self.n_mm_layers, self.n_hyper_layer = n_ui_layers, n_mm_layers, n_hyper_layer
        self.hyper_num, self.keep_rate, self.alpha = hyper_num, keep_rate, alpha
        self.cl_weight, self.reg_weight = cl_weight, reg_weight
        pairs = np.unique(train_users.astype(np.int64) * self.n_items + train_items)  # distinct edges
        users, items = pairs // self.n_items, pairs % self.n_items
        for name, t in zip(("r", "rt"), normalized_bipartite(users, items, n_users, self.n_items)):
            self.register_buffer(name, t, persistent=False)
        for name, t in zip(("inter", "inter_t", "inter_mean", "inter_mean_t"),
                           interaction_blocks(users, items, n_users, self.n_items)):
            self.register_buffer(name, t, persistent=False)
        self.names = list(features)
        # frozen, as in MMRec, and rebuilt from the feature store at every build: not saved
        for i, f in enumerate(features.values()):
            self.register_buffer(f"feature_{i}", f.float(), persistent=False)
        widths = [f.shape[1] for f in features.values()]
        self.projections = nn.ParameterList(nn.Parameter(nn.init.xavier_uniform_(torch.empty(w, dim))) for w in widths)
        self.hyper = nn.ParameterList(nn.Parameter(nn.init.xavier_uniform_(torch.empty(w, hyper_num))) for w in widths)
        self.seed, self.score_noise = seed, score_noise
        self.generator = torch.Generator()

    def pre_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(self.seed * 1_000_003 + epoch)  # depends on the epoch alone: resumable

    def features(self) -> list[torch.Tensor]:
        return [getattr(self, f"feature_{i}") for i in range(len(self.names))]

    def draws(self, generator: torch.Generator | None = None, dropout: bool = True) -> dict[str, torch.Tensor]:
        """One step's randomness, from ``generator`` (default: the model's training generator):
        Gumbel noise for the item and user hyperedge logits ``[n, M, hyper_num]`` and, with
        ``dropout`` and ``keep_rate < 1``, the masks of the entries kept by dropout."""
        shape = (len(self.names), self.hyper_num)
        generator = self.generator if generator is None else generator
        out = {}
        for side, n in (("items", self.n_items), ("users", self.n_users)):
            out[f"gumbel_{side}"] = -torch.empty(n, *shape).exponential_(generator=generator).log()
            if dropout and self.keep_rate < 1:
                out[f"keep_{side}"] = torch.rand(n, *shape, generator=generator) < self.keep_rate
        return out

    def hyperedges(self, noise: dict[str, torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Item and user hyperedge memberships ``[n, M, hyper_num]``: softmax over each modality's
        hyperedges of the logits (Gumbel-perturbed and dropped out when ``noise`` is given)."""
        m = len(self.names)
        logits_i = torch.cat([x @ w for x, w in zip(self.features(), self.hyper)], dim=1)
        logits_u = spmm(self.inter, self.inter_t, logits_i)
        out = []
        for side, logits in (("items", logits_i), ("users", logits_u)):
            logits = logits.view(len(logits), m, self.hyper_num)
            if noise is not None:
                logits = logits + noise[f"gumbel_{side}"].to(logits.device)
            h = torch.softmax(logits / TAU, dim=2)
            if noise is not None and f"keep_{side}" in noise:
                h = torch.where(noise[f"keep_{side}"].to(h.device), h / self.keep_rate, 0.0)
            out.append(h)
        return out[0], out[1]

    def embeddings(self, noise: dict[str, torch.Tensor] | None = None):
        """Final user and item embeddings, and the per-modality hypergraph embeddings
        ``[n, M, dim]`` of users and items the contrastive loss compares."""
        dim = self.item_tower.dim
        users_c, items_c = propagate(self.user.weight, self.item_tower(), self.r, self.rt, self.n_ui_layers)
        # every modality's local graph in one product: the projections side by side
        i = torch.cat([x @ w for x, w in zip(self.features(), self.projections)], dim=1)
        u = spmm(self.inter_mean, self.inter_mean_t, i)
        for _ in range(self.n_mm_layers):
            u, i = spmm(self.r, self.rt, i), spmm(self.rt, self.r, u)
        users_l = F.normalize(u.view(len(u), -1, dim), dim=2).sum(1)
        items_l = F.normalize(i.view(len(i), -1, dim), dim=2).sum(1)
        h_items, h_users = self.hyperedges(noise)
        hyper_i = items_c.unsqueeze(1)  # [n_items, 1, dim]: the same input for every modality
        for _ in range(self.n_hyper_layer):
            pooled = torch.einsum("nmh,nmd->mhd", h_items, hyper_i.expand(-1, h_items.shape[1], -1))
            hyper_i = torch.einsum("nmh,mhd->nmd", h_items, pooled)
        hyper_u = torch.einsum("nmh,mhd->nmd", h_users, pooled)
        users = users_c + users_l + self.alpha * F.normalize(hyper_u.sum(1), dim=1)
        items = items_c + items_l + self.alpha * F.normalize(hyper_i.sum(1), dim=1)
        return users, items, hyper_u, hyper_i

    def loss(self, batch):
        users, items, hyper_u, hyper_i = self.embeddings(self.draws())
        u_idx, pos_idx = batch["users"], batch["pos"]
        n = len(pos_idx)
        # index_select: its backward is an index_add, cheaper on CPU than indexing's index_put
        u = users.index_select(0, u_idx)
        its = items.index_select(0, torch.cat([pos_idx, batch["neg"]]))
        pos, neg = its[:n], its[n:]
        loss = -F.logsigmoid((u * (pos - neg)).sum(1)).mean()
        if self.cl_weight and len(self.names) > 1:
            # each distinct user (positive item) once, weighted by its count: the same sum, and the
            # [B, N] similarity matrices shrink by the batch's repeats (popular items repeat a lot)
            users_b, users_n = torch.unique(u_idx, return_counts=True)
            items_b, items_n = torch.unique(pos_idx, return_counts=True)
            batch_u, batch_i = hyper_u.index_select(0, users_b), hyper_i.index_select(0, items_b)
            for a, b in itertools.combinations(range(len(self.names)), 2):
                loss = loss + self.cl_weight * (
                    contrastive(batch_u[:, a], batch_u[:, b], hyper_u[:, b], users_n)
                    + contrastive(batch_i[:, a], batch_i[:, b], hyper_i[:, b], items_n))
        return loss + self.reg_weight * emb_loss(u, pos, neg)

    def score(self, users_idx):
        # a fresh generator per call: the same draws for every call and every batch of users
        noise = self.draws(torch.Generator().manual_seed(self.seed), dropout=False) if self.score_noise else None
        users, items, _, _ = self.embeddings(noise)
        return users[users_idx] @ items.T


@register_model("lgmrec")
class LGMRecSpec(ModelSpec):
    family = "user-item graph + per-modality local graphs + learned global hypergraphs"
    paper = "Guo et al., AAAI 2024"
    caches = "nothing"
    no_live_encoders = WHOLE_GRAPH
    n_ui_layers: int = Field(2, ge=1)  # LightGCN layers of the collaborative part
    n_mm_layers: int = Field(2, ge=0)  # propagations of each modality's projected features
    n_hyper_layer: int = Field(1, ge=1)  # rounds of item -> hyperedge -> item/user pooling
    hyper_num: int = Field(4, ge=1)  # hyperedges per modality
    keep_rate: float = Field(0.5, gt=0, le=1)  # share of hyperedge memberships kept in training
    alpha: float = Field(0.3, ge=0)  # weight of the global hypergraph embeddings
    cl_weight: float = Field(1e-4, ge=0)  # weight of the cross-modality contrastive loss
    reg_weight: float = Field(1e-6, ge=0)  # weight of the norm regulariser
    score_noise: bool = False  # score with Gumbel-perturbed memberships (MMRec) from fixed draws
    feat_embed_dim: int | None = Field(None, gt=0)  # modality projection width; must be model.dim
    feature_sets: list[str] = []  # the modalities; default: every configured feature set

    def check(self, dim: int) -> None:
        if self.feat_embed_dim is not None and self.feat_embed_dim != dim:
            raise ValueError(f"model.lgmrec.feat_embed_dim ({self.feat_embed_dim}) must equal model.dim ({dim}): "
                             "the modality embeddings are added to the collaborative ones")

    def extra_features(self, features: list[str]) -> list[str]:
        return list(self.feature_sets or features)

    def build(self, ctx: BuildContext) -> LGMRec:
        filled = ctx.content("lgmrec", "builds its modality graphs and hypergraphs from features", "feature_sets",
                             self.feature_sets)
        tower = ctx.item_tower("xavier_uniform")
        if self.feat_embed_dim is not None and tower.dim != self.feat_embed_dim:
            raise ConfigError(f"model.lgmrec.feat_embed_dim ({self.feat_embed_dim}) must equal the item tower's "
                              f"width ({tower.dim}; model.item_tower.combine=concat widens it)")
        users, items = ctx.data.pairs("train")
        return LGMRec(ctx.data.n_users, tower, users, items, filled, n_ui_layers=self.n_ui_layers,
                      n_mm_layers=self.n_mm_layers, n_hyper_layer=self.n_hyper_layer, hyper_num=self.hyper_num,
                      keep_rate=self.keep_rate, alpha=self.alpha, cl_weight=self.cl_weight,
                      reg_weight=self.reg_weight, seed=ctx.seed, score_noise=self.score_noise)
