"""Per-user item sequences and the vectorised batches sequential models (SASRec) train on.

A user's sequence is their pairs ordered by ``timestamp``, ties (and data without timestamps)
broken by ``order``: the row at which the pair first appeared in the raw interaction file.

Like ``PairBatches``, an epoch's randomness (user order, negatives) depends only on
``(seed, epoch)`` so a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations


import numpy as np
import torch

from .sampling import EpochBatches, PairIndex, sample_negatives

PAD = -1  # padding item in sequence tensors; models mask it


def user_sequences(data, splits: tuple[str, ...] = ("train",)) -> tuple[np.ndarray, np.ndarray]:
    """CSR ``(indptr [n_users + 1], items)``: user u's items of ``splits`` are
    ``items[indptr[u]:indptr[u + 1]]``, oldest first."""
    from ..data.splits import SPLIT_NAMES

    table = data.interactions.data
    keep = np.isin(table.column("split").to_numpy(), [SPLIT_NAMES.index(s) for s in splits])
    users = table.column("user").to_numpy()[keep].astype(np.int64)
    items = table.column("item").to_numpy()[keep].astype(np.int64)
    file_order = table.column("order").to_numpy()[keep]
    if "timestamp" in table.column_names:
        order = np.lexsort((file_order, table.column("timestamp").to_numpy()[keep], users))
    else:
        order = np.lexsort((file_order, users))
    indptr = np.r_[0, np.cumsum(np.bincount(users, minlength=data.n_users))]
    return indptr, items[order]


def pad_left(indptr: np.ndarray, items: np.ndarray, users: np.ndarray, width: int) -> np.ndarray:
    """``[len(users), width]``: each user's last ``width`` items, left-padded with ``PAD``."""
    if len(items) == 0:
        return np.full((len(users), width), PAD, dtype=np.int64)
    starts, ends = indptr[users], indptr[users + 1]
    idx = ends[:, None] - width + np.arange(width)[None, :]
    return np.where(idx >= starts[:, None], items[np.clip(idx, 0, len(items) - 1)], PAD)


class SequenceBatches(EpochBatches):
    """One epoch of user sequences for next-item training, ``batch_size`` users per batch.

    A batch holds ``seq`` (the inputs, ``[B, max_len]``), ``pos`` (the item that follows each
    input position; ``PAD`` where there is none) and ``neg`` (``n_neg`` items per position, none
    a training item of the user). Users with fewer than two items have no (prefix, next) pair
    and are left out. Under several processes each rank takes every ``world``-th batch.
    """

    def __init__(self, indptr: np.ndarray, items: np.ndarray, n_items: int, max_len: int, batch_size: int,
                 seed: int, n_neg: int = 1, rank: int = 0, world: int = 1):
        lengths = np.diff(indptr)
        self.users = np.flatnonzero(lengths >= 2)
        super().__init__(len(self.users), batch_size, seed, rank, world)
        self.indptr, self.items = indptr, items
        self.index = PairIndex(np.repeat(np.arange(len(lengths)), lengths), items, n_items)
        self.candidates = np.unique(items)
        self.max_len, self.n_neg = max_len, n_neg

    def __iter__(self):
        order = self.rng().permutation(self.users)
        for b, sl in self.batch_slices():
            users = order[sl]
            window = pad_left(self.indptr, self.items, users, self.max_len + 1)
            window = window[:, (window != PAD).any(0).argmax():]  # columns of padding only cost time
            seq, pos = window[:, :-1], window[:, 1:].copy()
            pos[seq == PAD] = PAD  # the first item has no prefix to predict it from
            # each batch its own stream: sharded ranks draw only their batches, yet stay exact
            rng = np.random.default_rng([self.seed, self.epoch, b])
            neg = np.zeros((*pos.shape, self.n_neg), dtype=np.int64)
            if self.n_neg:  # none for in-batch losses
                rows, cols = np.nonzero(pos != PAD)
                neg[rows, cols] = sample_negatives(users[rows], self.candidates, self.index, rng, self.n_neg)
            yield {"users": torch.from_numpy(users), "seq": torch.from_numpy(seq), "pos": torch.from_numpy(pos),
                   "neg": torch.from_numpy(neg)}
