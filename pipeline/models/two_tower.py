"""Two-tower retrieval: a user tower against the shared item tower (Yi et al. 2019).

The user tower is an id embedding, the mean of the item tower's vectors over the user's known
items (YouTube-DNN style pooling: it needs no trained user id and follows the item tower, so
content towers carry it to items and users the ids never saw), or both summed, followed by an
optional MLP. Losses: in-batch softmax with the logQ correction (the default; other users'
positives are the negatives, so no sampling cost), sampled softmax over uniform negatives, or
BPR.

Scores are plain dot products unless ``normalize`` (cosine over a temperature, as in Yi et al.).
Cosine is off by default because of what it does to a popularity-skewed catalogue with id
embeddings: items never trained (cold ids) keep random vectors at cosine ~0 with every user,
above the trained items a user is pushed away from, so they crowd the top of the ranking; and
a bounded score has little room to carry popularity. On the demo data (cold_start split, ids)
warm recall@20 was 0.20 with cosine (tau 0.1) against 0.42 with dot products; popularity 0.33.
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from .base import Recommender, bpr_loss, gather_batches, in_batch_softmax, sampled_softmax
from .registry import BuildContext, ModelSpec, register_model
from .towers import ItemTower


def log_item_frequency(items: np.ndarray, n_items: int) -> torch.Tensor:
    """log q(i): how often in-batch sampling meets item i (its share of the training pairs)."""
    counts = np.bincount(items, minlength=n_items).astype(np.float64)
    return torch.from_numpy(np.log(np.maximum(counts / max(counts.sum(), 1.0), 1e-12))).float()


class TwoTower(Recommender):
    def __init__(self, n_users: int, item_tower: ItemTower, train_items: np.ndarray,
                 histories: dict[str, tuple[np.ndarray, np.ndarray]] | None = None, user: str = "id",
                 user_mlp: tuple[int, ...] = (), loss: str = "in_batch", temperature: float = 1.0,
                 n_negatives: int = 64, normalize: bool = False, logq: bool = True):
        super().__init__()
        self.item_tower = item_tower
        d = item_tower.dim
        self.user_kind, self.loss_kind = user, loss
        self.temperature, self.n_negatives, self.normalize = temperature, n_negatives, normalize
        self.user_emb = nn.Embedding(n_users, d) if user in ("id", "both") else None
        if self.user_emb is not None:
            nn.init.xavier_normal_(self.user_emb.weight)
        layers, width = [], d
        for w in user_mlp:
            layers += [nn.Linear(width, w), nn.ReLU()]
            width = w
        self.user_mlp = nn.Sequential(*layers, nn.Linear(width, d)) if user_mlp else nn.Identity()
        # derived from the data on every build: not saved with the weights
        self.register_buffer("log_q", log_item_frequency(train_items, item_tower.n_items) if logq else None,
                             persistent=False)
        if user != "id":
            if histories is None:
                raise ValueError("user tower 'history'/'both' needs the users' histories")
            for split, (indptr, items) in histories.items():
                self.register_buffer(f"hist_{split}_indptr", torch.from_numpy(indptr), persistent=False)
                self.register_buffer(f"hist_{split}_items", torch.from_numpy(items), persistent=False)
        self.scoring = "valid"

    def train_batches(self, data, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        from ..train.sampling import PairBatches

        users, items = data.pairs("train")
        n_neg = self.n_negatives if self.loss_kind == "sampled_softmax" else 1
        return PairBatches(users, items, data.n_items, batch_size, seed, n_neg=n_neg, rank=rank, world=world)

    def use_history(self, split: str) -> None:
        self.scoring = "test" if split == "test" else "valid"

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) if self.normalize else x

    def pooled(self, users: torch.Tensor, split: str, leave_out: torch.Tensor | None = None) -> torch.Tensor:
        """Mean item vector of each user's history for ``split`` ("valid": train items; "test":
        train + valid items). ``leave_out`` ([B, D], training only) is the vector of the pair's own
        positive, removed so a user is never described by the item it must predict."""
        indptr, items = getattr(self, f"hist_{split}_indptr"), getattr(self, f"hist_{split}_items")
        starts, lengths = indptr[users], indptr[users + 1] - indptr[users]
        rows = torch.repeat_interleave(torch.arange(len(users), device=users.device), lengths)
        offsets = torch.arange(len(rows), device=users.device) - torch.repeat_interleave(
            torch.cumsum(lengths, 0) - lengths, lengths)
        cols = items[torch.repeat_interleave(starts, lengths) + offsets]
        # only the items these users touched go through the tower: sparse [B, those items] @ vectors
        uniq, inv = torch.unique(cols, return_inverse=True)
        vecs = self.item_tower(uniq)
        adj = torch.sparse_coo_tensor(torch.stack([rows, inv]), torch.ones(len(rows), device=vecs.device),
                                      (len(users), len(uniq)), check_invariants=False)
        sums = torch.sparse.mm(adj, vecs)
        n = lengths.to(vecs.dtype)
        if leave_out is not None:
            sums, n = sums - leave_out, n - 1
        return sums / n.clamp(min=1).unsqueeze(1)  # no history: a zero vector (the MLP bias, or the id part)

    def user_vectors(self, users: torch.Tensor, split: str = "valid",
                     leave_out: torch.Tensor | None = None) -> torch.Tensor:
        u = self.user_emb(users) if self.user_emb is not None else 0.0
        if self.user_kind != "id":
            u = u + self.pooled(users, split, leave_out)
        return self._norm(self.user_mlp(u))

    def loss(self, batch):
        users, pos = batch["users"], batch["pos"]
        b = len(users)
        neg = batch["neg"].reshape(b, -1)
        vecs = self.item_tower(pos if self.loss_kind == "in_batch" else torch.cat([pos, neg.reshape(-1)]))
        u = self.user_vectors(users, "valid", leave_out=vecs[:b])  # "valid" history == the train items
        vecs = self._norm(vecs)
        if self.loss_kind == "in_batch":  # under DDP, every process's positives are negatives
            log_q = torch.zeros(b, device=vecs.device) if self.log_q is None else self.log_q[pos]
            (vecs, log_q, pos), offset = gather_batches(vecs, log_q, pos)
            return in_batch_softmax(u, vecs, None if self.log_q is None else log_q, self.temperature,
                                    item_ids=pos, offset=offset)
        neg_vecs = vecs[b:].reshape(b, -1, vecs.shape[1])
        if self.loss_kind == "sampled_softmax":
            return sampled_softmax(u, vecs[:b], neg_vecs, self.temperature)
        return bpr_loss((u * vecs[:b]).sum(-1) / self.temperature, (u * neg_vecs[:, 0]).sum(-1) / self.temperature)

    def score(self, users):
        return self.user_vectors(users, self.scoring) @ self._norm(self.item_tower()).T


@register_model("two_tower")
class TwoTowerSpec(ModelSpec):
    family = "two-tower retrieval (ids, features or live encoders)"
    paper = "Yi et al., RecSys 2019 (in-batch softmax, logQ)"
    user: Literal["id", "history", "both"] = "id"  # user tower: id embedding, mean of history items, or both
    user_mlp: list[Annotated[int, Field(gt=0)]] = []  # hidden widths of an MLP on the user vector
    loss: Literal["in_batch", "sampled_softmax", "bpr"] = "in_batch"
    logq: bool = True  # in_batch: subtract log item frequency (Yi et al. 2019)
    # logits = score / temperature (every loss); with normalize, try ~0.1. 4.0 chosen on validation
    # (demo, seed 1, valid R@20 at 0.1 / 0.3 / 1 / 2 / 4: id tower 0.084 / 0.103 / 0.128 / 0.130 / 0.139,
    # content tower 0.088 / 0.098 / 0.112 / 0.113 / 0.116): at 1.0 the dot-product logits grew fast
    # enough to overfit from epoch 5 on. TikTok (lr 1e-3, one seed): the same valid R@20 as at 1.0,
    # in twice the epochs. See benchmarks/README.md, "Two-tower defaults"
    temperature: float = Field(4.0, gt=0)
    n_negatives: int = Field(64, ge=1)  # sampled_softmax: uniform negatives per positive
    normalize: bool = False  # cosine scores; off by default: see the module docstring

    def build(self, ctx: BuildContext) -> TwoTower:
        from ..train.sequences import user_sequences

        data = ctx.data
        histories = None
        if self.user != "id":  # what a user is known to have chosen when scoring valid / test
            histories = {"valid": user_sequences(data, ("train",)), "test": user_sequences(data, ("train", "valid"))}
        return TwoTower(data.n_users, ctx.item_tower("xavier_normal"), data.pairs("train")[1], histories,
                        user=self.user, user_mlp=tuple(self.user_mlp), loss=self.loss, temperature=self.temperature,
                        n_negatives=self.n_negatives, normalize=self.normalize, logq=self.logq)
