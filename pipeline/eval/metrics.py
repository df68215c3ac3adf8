"""Top-K ranking metrics over full rankings, computed on the device in one batched pass.

A metric is a function registered under the name ``eval.metrics`` lists: it takes the users'
``Ranking`` (the hit matrix of their top items and running sums over it) and a cut-off ``k`` and
returns one value per user::

    @register_metric("hits")
    def hits(r: Ranking, k: int) -> torch.Tensor:
        return r.cum_hits[:, k - 1]          # relevant items in the top k

The built-in definitions follow MMRec (so numbers are comparable with published results): for a
user with ground-truth set G and hits(k) relevant items among the top k,

- recall@k    = hits(k) / |G|                       (not min(k, |G|))
- precision@k = hits(k) / k
- ndcg@k      = DCG@k / IDCG@k, binary gain, IDCG over min(|G|, k) ideal positions
- map@k       = sum_{r<=k} rel_r * hits(r) / r  / min(|G|, k)
- hit@k       = 1 if hits(k) > 0
- mrr@k       = 1 / rank of the first hit within k (0 if none)

Each metric is the plain mean over evaluated users.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property

import torch

from ..registry import Registry

MetricFn = Callable[["Ranking", int], torch.Tensor]
METRIC_FUNCTIONS: Registry[MetricFn] = Registry("metric")


# the evaluator reports coverage@k itself (a property of all users' lists, not a per-user value)
RESERVED = ("coverage",)


def register_metric(name: str) -> Callable[[MetricFn], MetricFn]:
    """Function decorator: register ``fn(ranking, k) -> [U]`` as the metric ``<name>@k``."""
    if name in RESERVED:
        raise ValueError(f"metric name {name!r} is taken by the evaluator's own {name}@k")
    return METRIC_FUNCTIONS.register(name)


class Ranking:
    """The top of every user's ranking. ``hits[u, r]`` (float ``[U, K]``): the item ranked r+1
    for u is relevant; ``n_relevant`` (float ``[U]``): the size of u's ground truth (> 0). The
    running sums are computed once, on first use, for every metric and cut-off."""

    def __init__(self, hits: torch.Tensor, n_relevant: torch.Tensor):
        self.hits = hits.float()
        self.n_relevant = n_relevant.float()

    @property
    def depth(self) -> int:
        return self.hits.shape[1]

    @cached_property
    def ranks(self) -> torch.Tensor:
        """1, 2, ..., K."""
        return torch.arange(1, self.depth + 1, device=self.hits.device, dtype=torch.float32)

    @cached_property
    def cum_hits(self) -> torch.Tensor:
        """``[U, K]``: relevant items in the top r+1."""
        return self.hits.cumsum(dim=1)

    @cached_property
    def discount(self) -> torch.Tensor:
        return 1.0 / torch.log2(self.ranks + 1.0)

    @cached_property
    def dcg(self) -> torch.Tensor:
        return (self.hits * self.discount).cumsum(dim=1)

    @cached_property
    def ideal_dcg(self) -> torch.Tensor:
        """``[K]``: the DCG of j+1 relevant items ranked first."""
        return self.discount.cumsum(dim=0)

    @cached_property
    def precision_sums(self) -> torch.Tensor:
        """``[U, K]``: sum over relevant ranks r <= j+1 of precision@r (average precision's sum)."""
        return (self.hits * self.cum_hits / self.ranks).cumsum(dim=1)

    @cached_property
    def first_hit(self) -> torch.Tensor:
        """``[U]``: rank of the first relevant item, inf for none."""
        return torch.where(self.hits.any(dim=1), self.hits.argmax(dim=1).float() + 1.0,
                           torch.full_like(self.n_relevant, float("inf")))

    def capped(self, k: int) -> torch.Tensor:
        """``min(|G|, k)``: the most hits the top k can hold."""
        return torch.clamp(self.n_relevant, max=k)


@register_metric("recall")
def recall(r: Ranking, k: int) -> torch.Tensor:
    return r.cum_hits[:, k - 1] / r.n_relevant


@register_metric("ndcg")
def ndcg(r: Ranking, k: int) -> torch.Tensor:
    return r.dcg[:, k - 1] / r.ideal_dcg[(r.capped(k) - 1).long()]


@register_metric("precision")
def precision(r: Ranking, k: int) -> torch.Tensor:
    return r.cum_hits[:, k - 1] / k


@register_metric("map")
def average_precision(r: Ranking, k: int) -> torch.Tensor:
    return r.precision_sums[:, k - 1] / r.capped(k)


@register_metric("hit")
def hit(r: Ranking, k: int) -> torch.Tensor:
    return (r.cum_hits[:, k - 1] > 0).float()


@register_metric("mrr")
def reciprocal_rank(r: Ranking, k: int) -> torch.Tensor:
    first = r.first_hit
    return torch.where(first <= k, 1.0 / first, torch.zeros_like(first))


METRICS = ("recall", "ndcg", "precision", "map", "hit", "mrr")  # the built-ins: eval.metrics' default


def topk_metrics(hits: torch.Tensor, n_relevant: torch.Tensor, ks: list[int], metrics=METRICS) -> dict[str, torch.Tensor]:
    """Per-user metric values.

    ``hits``: bool/float ``[U, K_max]``, ``hits[u, r]`` = the item ranked r+1 for u is relevant.
    ``n_relevant``: ``[U]`` ground-truth sizes (> 0). ``metrics``: registered names.
    Returns ``{"recall@20": [U] tensor, ...}``.
    """
    fns = {name: METRIC_FUNCTIONS.get(name) for name in metrics}
    ranking = Ranking(hits, n_relevant)
    out: dict[str, torch.Tensor] = {}
    for k in ks:
        if k > ranking.depth:
            raise ValueError(f"k={k} is larger than the {ranking.depth} ranked items given")
        for name, fn in fns.items():
            out[f"{name}@{k}"] = fn(ranking, k)
    return out
