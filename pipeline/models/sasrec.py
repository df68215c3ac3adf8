"""SASRec: self-attentive sequential recommendation (Kang & McAuley 2018).

A user is their item sequence, oldest first: item vectors from the item tower (ids, cached
features or both, the MoRec way: the tower is the only thing that changes between tracks) plus
learned position embeddings, then causal pre-norm transformer blocks. The hidden state at
position t predicts the item at t + 1, at every position of the training sequence at once.
To score, the last hidden state of the user's history is dotted with every item vector; the
output layer is the item tower itself, so cold items with content are rankable.

Sequences are left-padded, so the most recent item always sits at the last position and its
position embedding means "most recent", whatever the sequence length.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from .base import Recommender, sampled_softmax
from .registry import BuildContext, ModelSpec, register_model
from .towers import ItemTower
from .two_tower import log_item_frequency

PAD = -1  # pipeline.train.sequences.PAD; not imported at load time: pipeline.train imports the models


class SASRec(Recommender):
    def __init__(self, item_tower: ItemTower, histories: dict[str, tuple[np.ndarray, np.ndarray]],
                 max_len: int = 50, n_layers: int = 2, n_heads: int = 1, dropout: float = 0.2, loss: str = "bce",
                 n_negatives: int = 64):
        super().__init__()
        self.item_tower = item_tower
        d = item_tower.dim
        self.max_len, self.n_heads, self.loss_kind, self.n_negatives = max_len, n_heads, loss, n_negatives
        self.positions = nn.Embedding(max_len, d)
        nn.init.xavier_normal_(self.positions.weight)
        self.dropout = nn.Dropout(dropout)
        # the paper's block: attention and a point-wise feed-forward of the same width, each with a
        # residual and a layer norm before it
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(d, n_heads, dim_feedforward=d, dropout=dropout, batch_first=True, norm_first=True)
            for _ in range(n_layers))
        self.norm = nn.LayerNorm(d)
        self.histories = histories  # split -> CSR of item sequences in time order (numpy, not state)
        self.scoring = "valid"
        self.register_buffer("log_q", log_item_frequency(histories["valid"][1], item_tower.n_items), persistent=False)

    def train_batches(self, data, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        """``batch_size`` counts users (sequences), each giving up to ``max_len`` targets."""
        from ..train.sequences import SequenceBatches

        n_neg = {"bce": 1, "sampled_softmax": self.n_negatives, "in_batch": 0}[self.loss_kind]
        indptr, items = self.histories["valid"]
        return SequenceBatches(indptr, items, data.n_items, self.max_len, batch_size, seed, n_neg=n_neg,
                               rank=rank, world=world)

    def use_history(self, split: str) -> None:
        self.scoring = "test" if split == "test" else "valid"

    def _items(self, items: torch.Tensor) -> torch.Tensor:
        # each distinct item through the tower once (a feature or live-encoder tower is not free)
        uniq, inv = torch.unique(items, return_inverse=True)
        return self.item_tower(uniq)[inv]

    def encode(self, seq: torch.Tensor) -> torch.Tensor:
        """Hidden states ``[B, L, D]`` of left-padded sequences ``[B, L]`` (``PAD`` = -1)."""
        length = seq.shape[1]
        real = seq != PAD
        x = self._items(seq.clamp(min=0)) * self.item_tower.dim ** 0.5
        x = x + self.positions.weight[self.max_len - length:]
        x = self.dropout(x) * real.unsqueeze(-1)
        # causal, and blind to padding; a padding position sees itself only, so no row is all
        # masked (which would give NaN) and padding never leaks into real positions
        idx = torch.arange(length, device=seq.device)
        allowed = (idx[None, :] <= idx[:, None]) & (real.unsqueeze(1) | torch.eye(length, dtype=torch.bool,
                                                                                  device=seq.device))
        blocked = (~allowed).repeat_interleave(self.n_heads, dim=0)
        for block in self.blocks:
            x = block(x, src_mask=blocked) * real.unsqueeze(-1)
        return self.norm(x)

    def loss(self, batch):
        pos = batch["pos"]
        target = pos != PAD
        h, pos = self.encode(batch["seq"])[target], pos[target]  # [P, D], [P]: every real position
        if self.loss_kind == "in_batch":
            # the batch's distinct next items are the candidates; logQ corrects their popularity bias
            uniq, label = torch.unique(pos, return_inverse=True)
            logits = h @ self.item_tower(uniq).T - self.log_q[uniq]
            return F.cross_entropy(logits, label)
        neg = batch["neg"][target]  # [P, n_neg]
        vecs = self._items(torch.cat([pos.unsqueeze(1), neg], dim=1))  # [P, 1 + n_neg, D]
        if self.loss_kind == "sampled_softmax":
            return sampled_softmax(h, vecs[:, 0], vecs[:, 1:])
        logits = torch.einsum("pd,pnd->pn", h, vecs)
        # the paper's binary cross-entropy: the next item against one sampled negative
        return -(F.logsigmoid(logits[:, 0]) + F.logsigmoid(-logits[:, 1:]).sum(1)).mean()

    def score_sequences(self, seq: torch.Tensor) -> torch.Tensor:
        """Scores ``[B, n_items]`` of the item following each left-padded sequence."""
        seq = seq[:, -self.max_len:]
        seq = seq[:, int((seq != PAD).any(0).int().argmax()):]  # drop columns of padding only
        return self.encode(seq)[:, -1] @ self.item_tower().T

    def score(self, users):
        from ..train.sequences import pad_left

        indptr, items = self.histories[self.scoring]
        seq = pad_left(indptr, items, users.cpu().numpy(), self.max_len)
        return self.score_sequences(torch.from_numpy(seq).to(users.device))


@register_model("sasrec")
class SASRecSpec(ModelSpec):
    family = "sequential (self-attention)"
    paper = "Kang & McAuley, ICDM 2018"
    caches = "nothing"
    n_layers: int = Field(2, ge=1)
    n_heads: int = Field(1, ge=1)  # must divide model.dim
    dropout: float = Field(0.2, ge=0, lt=1)
    max_len: int = Field(50, ge=1)  # the most recent items of a user that the model reads
    loss: Literal["bce", "sampled_softmax", "in_batch"] = "bce"  # bce: one sampled negative per position
    n_negatives: int = Field(64, ge=1)  # sampled_softmax

    def check(self, dim: int) -> None:
        # the item tower's width is model.dim or a multiple of it, so this is the check that matters
        if dim % self.n_heads:
            raise ValueError(f"model.sasrec.n_heads={self.n_heads} must divide model.dim={dim}")

    def build(self, ctx: BuildContext) -> SASRec:
        from ..train.sequences import user_sequences

        # "valid" scoring sees the train sequence, "test" scoring train + valid, both in time order
        histories = {"valid": user_sequences(ctx.data, ("train",)),
                     "test": user_sequences(ctx.data, ("train", "valid"))}
        return SASRec(ctx.item_tower("xavier_normal"), histories, max_len=self.max_len, n_layers=self.n_layers,
                      n_heads=self.n_heads, dropout=self.dropout, loss=self.loss, n_negatives=self.n_negatives)
