"""Training batches as a ``torch.utils.data`` pipeline, vectorised per epoch.

Each epoch shuffles all training pairs and draws negatives for all of them at once with NumPy
(rejection sampling against the user's training items, re-drawing only the collisions), then
yields ready-made batch tensors. The random stream of epoch ``e`` depends only on
``(seed, e)``, so a resumed run sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import IterableDataset


class PairIndex:
    """Sorted ``user * n_items + item`` keys for O(log n) "is this a training pair?" checks."""

    def __init__(self, users: np.ndarray, items: np.ndarray, n_items: int):
        self.n_items = n_items
        self.keys = np.unique(users.astype(np.int64) * n_items + items.astype(np.int64))

    def contains(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        q = users.astype(np.int64) * self.n_items + items.astype(np.int64)
        pos = np.searchsorted(self.keys, q)
        pos[pos == len(self.keys)] = 0
        return self.keys[pos] == q


def sample_negatives(users: np.ndarray, candidates: np.ndarray, index: PairIndex, rng: np.random.Generator,
                     n_neg: int = 1, max_rounds: int = 100) -> np.ndarray:
    """``[len(users), n_neg]`` items drawn uniformly from ``candidates``, none a training item of its user."""
    users_rep = np.repeat(users, n_neg)
    neg = candidates[rng.integers(0, len(candidates), size=len(users_rep))]
    bad = np.flatnonzero(index.contains(users_rep, neg))
    for _ in range(max_rounds):
        if len(bad) == 0:
            break
        neg[bad] = candidates[rng.integers(0, len(candidates), size=len(bad))]
        bad = bad[index.contains(users_rep[bad], neg[bad])]
    else:
        if len(bad):
            raise RuntimeError(f"{len(bad)} users have interacted with (almost) every candidate item: "
                               "no negative could be drawn for them")
    return neg.reshape(len(users), n_neg)


class EpochBatches(IterableDataset):
    """What every training-batch dataset shares: the epoch seeds all randomness (so a resumed
    run repeats an uninterrupted one), and under several processes each rank takes every
    ``world``-th batch (the remainder that would leave ranks uneven is dropped)."""

    def __init__(self, n_rows: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        self.n_rows, self.batch_size, self.seed = n_rows, batch_size, seed
        self.rank, self.world = rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return (self.n_rows + self.batch_size - 1) // self.batch_size // self.world

    def rng(self) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch])

    def batch_slices(self):
        """(batch number, rows of the epoch's order) for this rank's batches."""
        for b in range(self.rank, len(self) * self.world, self.world):
            yield b, slice(b * self.batch_size, (b + 1) * self.batch_size)


class PairBatches(EpochBatches):
    """One epoch of shuffled (user, positive, negatives) batches; ``set_epoch`` picks the epoch.

    Under several processes each rank takes every ``world``-th batch, so every rank runs the same
    number of steps when the batch count divides evenly (the trainer drops the remainder).
    """

    def __init__(self, users: np.ndarray, items: np.ndarray, n_items: int, batch_size: int, seed: int,
                 n_neg: int = 1, rank: int = 0, world: int = 1):
        super().__init__(len(users), batch_size, seed, rank, world)
        self.users = users.astype(np.int64)
        self.items = items.astype(np.int64)
        self.index = PairIndex(self.users, self.items, n_items)
        self.candidates = np.unique(self.items)  # MMRec draws negatives among items seen in training
        self.n_neg = n_neg

    def __iter__(self):
        rng = self.rng()
        order = rng.permutation(len(self.users))
        users, pos = self.users[order], self.items[order]
        neg = sample_negatives(users, self.candidates, self.index, rng, self.n_neg)
        for _, sl in self.batch_slices():
            yield {
                "users": torch.from_numpy(users[sl]),
                "pos": torch.from_numpy(pos[sl]),
                "neg": torch.from_numpy(neg[sl]).squeeze(1) if self.n_neg == 1 else torch.from_numpy(neg[sl]),
            }
