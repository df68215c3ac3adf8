"""Full-ranking evaluation: every user with ground truth ranks every item, batched on the device.

Items the user trained on are masked (and, when testing, their validation items too, unless
``mask_valid_in_test`` is off, which reproduces MMRec's protocol). A cold-start slice reports the
same metrics with ground truth restricted to items never seen in training (and a warm slice
with the rest); a long-tail slice restricts it to the least popular trained items (see
:func:`long_tail_items`). Item coverage@K is the share of the catalog that appears in at least
one evaluated user's top K.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .metrics import METRIC_FUNCTIONS, METRICS, topk_metrics


@dataclass
class UserItems:
    """CSR of items per user: ``items[indptr[u]:indptr[u+1]]``."""

    indptr: np.ndarray
    items: np.ndarray

    @classmethod
    def build(cls, users: np.ndarray, items: np.ndarray, n_users: int) -> "UserItems":
        order = np.argsort(users, kind="stable")
        counts = np.bincount(users, minlength=n_users)
        return cls(np.r_[0, np.cumsum(counts)], items[order].astype(np.int64))

    def counts(self) -> np.ndarray:
        return np.diff(self.indptr)

    def batch(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row within the batch, item) for every item of the given users."""
        starts, ends = self.indptr[users], self.indptr[users + 1]
        lengths = ends - starts
        rows = np.repeat(np.arange(len(users)), lengths)
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return rows, self.items[np.repeat(starts, lengths) + offsets]


def long_tail_items(train_items: np.ndarray, n_items: int, share: float) -> np.ndarray:
    """The long tail of the training catalog: ``bool [n_items]``.

    Items with at least one training interaction, sorted by their number of training
    interactions, least popular first (ties: lower item index first); the tail is the longest
    such prefix whose interactions add up to at most ``share`` of all training interactions.
    Items never seen in training are not in it: they are the cold slice. (With ``share=0.2``,
    the tail is what is left after the popular head that holds 80% of the interactions.)
    """
    if not 0.0 < share < 1.0:
        raise ValueError(f"long-tail share must be between 0 and 1, got {share}")
    counts = np.bincount(train_items, minlength=n_items)
    seen = np.flatnonzero(counts)
    order = seen[np.argsort(counts[seen], kind="stable")]
    # a little slack: share * total is a float, and the cumulative counts it bounds are exact integers
    within = np.cumsum(counts[order]) <= share * counts.sum() + 1e-9
    tail = np.zeros(n_items, dtype=bool)
    tail[order[within]] = True
    return tail


class Evaluator:
    """Ranks all items for the users of one split and averages top-K metrics over them."""

    def __init__(self, n_users: int, n_items: int, train: tuple[np.ndarray, np.ndarray],
                 truth: tuple[np.ndarray, np.ndarray], also_mask: tuple[np.ndarray, np.ndarray] | None = None,
                 ks: tuple[int, ...] = (10, 20), metrics: tuple[str, ...] = METRICS, batch_users: int = 4096,
                 skip_cold_users: bool = True, long_tail_share: float | None = None):
        self.n_items = n_items
        self.ks = sorted(ks)
        self.metrics = metrics
        for name in metrics:  # an unknown name fails here, not after the first training epoch
            METRIC_FUNCTIONS.get(name)
        self.batch_users = batch_users
        mask_u, mask_i = train
        if also_mask is not None:
            mask_u, mask_i = np.r_[mask_u, also_mask[0]], np.r_[mask_i, also_mask[1]]
        self.mask = UserItems.build(mask_u, mask_i, n_users)
        self.truth = UserItems.build(truth[0], truth[1], n_users)
        has_truth = self.truth.counts() > 0
        if skip_cold_users:  # users with no training data cannot be personalised by id (MMRec drops them)
            has_truth &= np.bincount(train[0], minlength=n_users) > 0
        self.users = np.flatnonzero(has_truth)
        self.cold_items = np.bincount(train[1], minlength=n_items) == 0
        # None: no long-tail slice
        self.tail_items = None if long_tail_share is None else long_tail_items(train[1], n_items, long_tail_share)

    def evaluate(self, score: Callable[[torch.Tensor], torch.Tensor], device: torch.device | str = "cpu",
                 cold_slice: bool = True) -> dict[str, float]:
        """``score(users) -> [len(users), n_items]``. Returns ``{"recall@20": ..., "cold/recall@20": ...,
        "coverage@20": ...}``: each metric's mean over the evaluated users (a slice's over those with
        ground truth in it, counted in ``"cold/users"`` etc.). ``cold_slice`` adds the cold and warm
        slices; the long-tail slice comes with an evaluator built with ``long_tail_share``."""
        sums: dict[str, float] = {}
        prefixes = list(self._slice_items(cold_slice))
        counted = {"all": 0, **{prefix: 0 for prefix in prefixes}}
        covered = torch.zeros((len(self.ks), self.n_items), dtype=torch.bool, device=device)
        for users, values, top in self._batches(score, torch.device(device), cold_slice):
            for name, v in values.items():
                prefix = name.split("/")[0] if "/" in name else "all"
                if prefix == "all":
                    sums[name] = sums.get(name, 0.0) + float(v.sum())
                else:
                    keep = ~torch.isnan(v)
                    if keep.any():
                        sums[name] = sums.get(name, 0.0) + float(v[keep].sum())
            counted["all"] += len(users)
            first = next(iter(self._names()))
            for prefix in prefixes:
                counted[prefix] += int((~torch.isnan(values[f"{prefix}/{first}"])).sum())
            for row, k in enumerate(self.ks):
                ranked = top[:, :k]
                covered[row, ranked[ranked >= 0]] = True
        result = {name: total / counted[name.split("/")[0] if "/" in name else "all"] for name, total in sums.items()}
        for row, k in enumerate(self.ks):
            result[f"coverage@{k}"] = float(covered[row].sum()) / self.n_items
        result["users"] = counted["all"]
        for prefix in prefixes:
            result[f"{prefix}/users"] = counted[prefix]
        return result

    def per_user(self, score: Callable[[torch.Tensor], torch.Tensor], device: torch.device | str = "cpu",
                 cold_slice: bool = True) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Every evaluated user's own metric values (for paired significance tests between models):
        ``(users, {"recall@20": [U], "cold/recall@20": [U], ...})``, aligned to ``users`` (the ids
        in ``self.users``). A slice's value is NaN for users with no ground truth in that slice.
        The mean of each ``[U]`` array is what :meth:`evaluate` reports."""
        parts: dict[str, list[np.ndarray]] = {}
        for _, values, _ in self._batches(score, torch.device(device), cold_slice):
            for name, v in values.items():
                parts.setdefault(name, []).append(v.double().cpu().numpy())
        return self.users.copy(), {name: np.concatenate(chunks) for name, chunks in parts.items()}

    def _names(self):
        return (f"{m}@{k}" for k in self.ks for m in self.metrics)

    def _slice_items(self, cold_slice: bool) -> dict[str, np.ndarray]:
        """Each item slice evaluated, by the prefix of its metric names: its items as ``bool [n_items]``."""
        out = {"cold": self.cold_items, "warm": ~self.cold_items} if cold_slice else {}
        if self.tail_items is not None:
            out["tail"] = self.tail_items
        return out

    def _batches(self, score, device: torch.device, cold_slice: bool):
        """Per batch of users: (users, {metric: [B] tensor}, top), ``top`` the ``[B, max K]`` ranked
        item ids, -1 where a masked item filled a short list; slice metrics are NaN where the user
        has no ground truth in the slice."""
        k_max = max(self.ks)
        slices = [(prefix, in_slice, torch.as_tensor(in_slice, device=device))
                  for prefix, in_slice in self._slice_items(cold_slice).items()]
        for start in range(0, len(self.users), self.batch_users):
            users = self.users[start : start + self.batch_users]
            with torch.no_grad():
                # a copy: masking writes into it, and a model may hand out a view of its own state
                scores = score(torch.as_tensor(users, device=device)).to(torch.float32, copy=True)
            rows, items = self.mask.batch(users)
            scores[torch.as_tensor(rows, device=device), torch.as_tensor(items, device=device)] = -torch.inf
            top_scores, top = scores.topk(min(k_max, self.n_items), dim=1)
            # hits by sorted-key lookup: no dense [users x items] relevance matrix to build and sum
            t_rows, t_items = self.truth.batch(users)
            truth_keys = torch.as_tensor(np.sort(t_rows * self.n_items + t_items), device=device)
            query = torch.arange(len(users), device=device).unsqueeze(1) * self.n_items + top
            pos = torch.searchsorted(truth_keys, query).clamp_(max=len(truth_keys) - 1)
            hits = truth_keys[pos] == query
            n_rel = torch.as_tensor(self.truth.counts()[users], device=device)
            values = dict(topk_metrics(hits, n_rel, self.ks, self.metrics))
            if slices:  # the same ranking, ground truth restricted to each slice's items
                for prefix, in_slice, on_device in slices:
                    part_hits = hits & on_device[top]
                    n_part = torch.as_tensor(np.bincount(t_rows[in_slice[t_items]], minlength=len(users)),
                                             device=device)
                    keep = n_part > 0
                    sliced = topk_metrics(part_hits[keep], n_part[keep], self.ks, self.metrics) if keep.any() else {}
                    for name in self._names():
                        full = torch.full((len(users),), float("nan"), device=device)
                        if name in sliced:
                            full[keep] = sliced[name].float()
                        values[f"{prefix}/{name}"] = full
            yield users, values, torch.where(torch.isfinite(top_scores), top, -1)
