"""Top-K ranking metrics over full rankings, computed on the device in one batched pass.

Definitions follow MMRec (so numbers are comparable with published results): for a user with
ground-truth set G and hits(k) relevant items among the top k,

- recall@k    = hits(k) / |G|                       (not min(k, |G|))
- precision@k = hits(k) / k
- ndcg@k      = DCG@k / IDCG@k, binary gain, IDCG over min(|G|, k) ideal positions
- map@k       = sum_{r<=k} rel_r * hits(r) / r  / min(|G|, k)
- hit@k       = 1 if hits(k) > 0
- mrr@k       = 1 / rank of the first hit within k (0 if none)

Each metric is the plain mean over evaluated users.
"""

from __future__ import annotations

import torch

METRICS = ("recall", "ndcg", "precision", "map", "hit", "mrr")


def topk_metrics(hits: torch.Tensor, n_relevant: torch.Tensor, ks: list[int], metrics=METRICS) -> dict[str, torch.Tensor]:
    """Per-user metric values.

    ``hits``: bool/float ``[U, K_max]``, ``hits[u, r]`` = the item ranked r+1 for u is relevant.
    ``n_relevant``: ``[U]`` ground-truth sizes (> 0). Returns ``{"recall@20": [U] tensor, ...}``.
    """
    hits = hits.float()
    n_rel = n_relevant.float().unsqueeze(1)
    k_max = hits.shape[1]
    ranks = torch.arange(1, k_max + 1, device=hits.device, dtype=torch.float32)
    cum_hits = hits.cumsum(dim=1)
    discount = 1.0 / torch.log2(ranks + 1.0)
    dcg = (hits * discount).cumsum(dim=1)
    ideal = discount.cumsum(dim=0)  # ideal[j] = IDCG with j+1 relevant items in the top
    ap_terms = (hits * cum_hits / ranks).cumsum(dim=1)
    first_hit = torch.where(hits.any(dim=1), hits.argmax(dim=1).float() + 1.0, torch.full_like(n_rel[:, 0], float("inf")))
    out: dict[str, torch.Tensor] = {}
    for k in ks:
        if k > k_max:
            raise ValueError(f"k={k} is larger than the {k_max} ranked items given")
        h = cum_hits[:, k - 1]
        capped = torch.clamp(n_rel[:, 0], max=k)
        values = {
            "recall": h / n_rel[:, 0],
            "precision": h / k,
            "ndcg": dcg[:, k - 1] / ideal[(capped - 1).long()],
            "map": ap_terms[:, k - 1] / capped,
            "hit": (h > 0).float(),
            "mrr": torch.where(first_hit <= k, 1.0 / first_hit, torch.zeros_like(first_hit)),
        }
        for name in metrics:
            out[f"{name}@{k}"] = values[name]
    return out
