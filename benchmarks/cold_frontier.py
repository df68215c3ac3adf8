"""Warm and cold items in one top K: what each cold item costs the warm ones, for two trained runs.

A warm ranker (any run; its scores on items seen in training) and a cold ranker (any run; its
scores on items never seen in training) are merged into one list per user, two ways, and the
overall / warm / cold R@20 of each merge is printed on validation and test:

- ``slots m``: the cold ranker's top m items first, then the warm ranker's list (m of the K
  places kept for unseen items, the same m for every user);
- ``z a b``: each list's scores standardised per user (over the items the evaluator ranks), cold
  items at ``a * z + b``: a user whose best unseen items stand out gets more of them.

- ``gate m q``: ``slots m`` for the users whose training items are the least popular (the top
  ``q`` share by the mean of -log popularity over their training items; no held-out data read),
  none for the others: does a user's taste for rare items say their next item is a new one?

A last block, ``oracle``, picks each user's m from the test truth itself. It is not a method: it
is an upper bound on any per-user split of the K places between the two lists, and shows how much
of the gap a better per-user choice could close before the rankers themselves must improve:

    r=cache/runs/hybrid-bench-demo
    python benchmarks/cold_frontier.py $r-hybrid_knn-s1,$r-hybrid_knn-s2,$r-hybrid_knn-s3 \\
        $r-content-s1,$r-content-s2,$r-content-s3

The runs come from `benchmarks/hybrid.py` (same config, same split); the warm run's own ranking
of unseen items is ignored, as the cold run's of seen ones.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hybrid import evaluators  # noqa: E402

from pipeline.train import load_run  # noqa: E402

K = 20


def masked(scores: torch.Tensor, rows: np.ndarray, items: np.ndarray, keep: torch.Tensor) -> torch.Tensor:
    """``scores`` with the evaluator's masked (row, item) pairs and every item outside ``keep`` at -inf."""
    out = scores.float().clone()
    out[torch.as_tensor(rows), torch.as_tensor(items)] = -torch.inf
    out[:, ~keep] = -torch.inf
    return out


def ranks(scores: torch.Tensor) -> torch.Tensor:
    """Each item's 0-based place in its row, best first; items at -inf get ``n_items + K`` (never
    within any top K, however short the catalog)."""
    order = scores.argsort(dim=1, descending=True, stable=True)
    out = torch.empty_like(order)
    out.scatter_(1, order, torch.arange(scores.shape[1]).expand_as(order).contiguous())
    return torch.where(torch.isfinite(scores), out, scores.shape[1] + K)


def slot_merge(warm: torch.Tensor, cold: torch.Tensor, m: int) -> torch.Tensor:
    """Merged scores (higher first) from masked warm-only and cold-only scores: each row's top ``m``
    cold items, then its warm items in their own order, then the other cold items."""
    n = warm.shape[1]
    rw, rc = ranks(warm).float(), ranks(cold).float()
    out = torch.full_like(warm, -torch.inf)
    out = torch.where(rw < n, 2.0 * n - rw, out)         # warm: between n and 2n
    out = torch.where((rc < n) & (rc >= m), -rc, out)      # the other cold items: below every warm one
    return torch.where(rc < m, 3.0 * n - rc, out)          # the reserved cold items: above every warm one


def standardise(scores: torch.Tensor) -> torch.Tensor:
    """Per row: (score - mean) / std over the row's finite entries; -inf stays -inf."""
    finite = torch.isfinite(scores)
    x = torch.where(finite, scores, 0.0)
    n = finite.sum(1, keepdim=True).clamp(min=1)
    mean = x.sum(1, keepdim=True) / n
    std = (((x - mean) * finite) ** 2).sum(1, keepdim=True).div(n).sqrt().clamp(min=1e-12)
    return torch.where(finite, (scores - mean) / std, -torch.inf)


def z_merge(warm: torch.Tensor, cold: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """Merged scores: warm items at their per-row z-score, cold items at ``a * z + b``."""
    zc = standardise(cold)
    return torch.where(torch.isfinite(zc), a * zc + b, standardise(warm))


def oracle_slots(warm: torch.Tensor, cold: torch.Tensor, truth: torch.Tensor, in_cold: torch.Tensor,
                 weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row, the m in 0..K maximising ``weight * warm recall + cold recall`` as measured on
    ``truth`` (bool [B, n_items]): (m, warm R@K, cold R@K) per row, recall NaN where the row has no
    truth in that slice."""
    rw, rc = ranks(warm), ranks(cold)
    n_w, n_c = (truth & ~in_cold).sum(1).float(), (truth & in_cold).sum(1).float()
    hits_w = torch.stack([(truth & (rw < K - m)).sum(1) for m in range(K + 1)], 1).float()
    hits_c = torch.stack([(truth & (rc < m)).sum(1) for m in range(K + 1)], 1).float()
    rec_w, rec_c = hits_w / n_w.clamp(min=1)[:, None], hits_c / n_c.clamp(min=1)[:, None]
    objective = weight * rec_w + rec_c
    # the smallest m among ties (argmax does not promise which tied index it returns)
    best = objective.max(1, keepdim=True).values
    m = torch.where(objective >= best - 1e-9, torch.arange(K + 1), K + 1).min(1).values
    rows = torch.arange(len(m))
    nan = torch.tensor(float("nan"))
    return m, torch.where(n_w > 0, rec_w[rows, m], nan), torch.where(n_c > 0, rec_c[rows, m], nan)


def gate_merge(warm: torch.Tensor, cold: torch.Tensor, m: int, chosen: torch.Tensor) -> torch.Tensor:
    """``slots m`` for the rows where ``chosen`` (bool [B]) is set, the warm list alone elsewhere."""
    return torch.where(chosen[:, None], slot_merge(warm, cold, m), slot_merge(warm, cold, 0))


def rare_taste(data) -> np.ndarray:
    """Per user, the mean of -log(training popularity) over their training items (0 for none)."""
    train = data.pairs("train")
    users, items = np.asarray(train[0]), np.asarray(train[1])
    pop = np.bincount(items, minlength=data.n_items)
    total = np.bincount(users, weights=-np.log(pop[items] / len(items)), minlength=data.n_users)
    return total / np.maximum(np.bincount(users, minlength=data.n_users), 1)


class Pair:
    """A warm run and a cold run on one split: masked score batches as the evaluator ranks them."""

    def __init__(self, warm_run: str, cold_run: str):
        cfg, self.data, self.warm = load_run(warm_run)
        _, _, self.cold = load_run(cold_run)
        self.evs = evaluators(cfg, self.data)
        self.in_cold = torch.as_tensor(self.evs["valid"].cold_items)
        self.rare = rare_taste(self.data)
        self._rare_users: dict[tuple[str, float], torch.Tensor] = {}

    def batch(self, split: str, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows, items = self.evs[split].mask.batch(users.numpy())
        with torch.no_grad():
            self.warm.use_history(split)
            warm = masked(self.warm.score(users), rows, items, ~self.in_cold)
            self.cold.use_history(split)
            cold = masked(self.cold.score(users), rows, items, self.in_cold)
        return warm, cold

    def evaluate(self, split: str, merge) -> tuple[float, float, float]:
        got = self.evs[split].evaluate(lambda users: merge(*self.batch(split, users.cpu()), self, split, users.cpu()))
        return tuple(got.get(f"{s}recall@{K}", float("nan")) for s in ("", "warm/", "cold/"))

    def rare_users(self, split: str, q: float) -> torch.Tensor:
        """bool [n_users]: the evaluated users of ``split`` in the top ``q`` share by :func:`rare_taste`
        (computed once per split and share, not per batch)."""
        if (split, q) not in self._rare_users:
            cut = np.quantile(self.rare[self.evs[split].users], 1.0 - q) if q > 0 else np.inf
            self._rare_users[split, q] = torch.as_tensor(self.rare >= cut)
        return self._rare_users[split, q]

    def oracle(self, split: str, weight: float) -> tuple[float, float, float]:
        ev = self.evs[split]
        ms, ws, cs = [], [], []
        for start in range(0, len(ev.users), ev.batch_users):
            users = ev.users[start : start + ev.batch_users]
            warm, cold = self.batch(split, torch.as_tensor(users))
            t_rows, t_items = ev.truth.batch(users)
            truth = torch.zeros_like(warm, dtype=torch.bool)
            truth[torch.as_tensor(t_rows), torch.as_tensor(t_items)] = True
            m, w, c = oracle_slots(warm, cold, truth, self.in_cold, weight)
            ms.append(m.float()), ws.append(w), cs.append(c)
        return float(torch.cat(ms).mean()), float(torch.cat(ws).nanmean()), float(torch.cat(cs).nanmean())


def cell(values: list[float]) -> str:
    std = np.std(values, ddof=1) if len(values) > 1 else 0.0
    return f"{np.mean(values):.4f} ± {std:.4f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("warm_runs", help="run folders, comma-separated (one per seed)")
    ap.add_argument("cold_runs", help="run folders, comma-separated, paired with warm_runs")
    ap.add_argument("--slots", default="0,1,2,3,4,6,8,10,20")
    ap.add_argument("--a", default="1,1.5,2")
    ap.add_argument("--b", default="-2,-1.5,-1,-0.5,0,0.5,1")
    ap.add_argument("--gate-slots", default="2,4,10", help="gate: slots for the chosen users ('' for none)")
    ap.add_argument("--gate-shares", default="0.1,0.25,0.5", help="gate: the share of users chosen")
    ap.add_argument("--oracle-weights", default="1,2,4")
    args = ap.parse_args()
    warm_runs, cold_runs = args.warm_runs.split(","), args.cold_runs.split(",")
    if len(warm_runs) != len(cold_runs):
        ap.error(f"{len(warm_runs)} warm runs but {len(cold_runs)} cold runs: pair them one to one")
    pairs = [Pair(w, c) for w, c in zip(warm_runs, cold_runs)]
    print(f"warm: {args.warm_runs}\ncold: {args.cold_runs}\nmean ± std over {len(pairs)} pair(s)\n")
    print(f"| merge | valid all R@{K} | valid warm | valid cold | test all R@{K} | test warm | test cold |")
    print("|---|---|---|---|---|---|---|")

    def row(name, merge):
        got = [[p.evaluate(split, merge) for p in pairs] for split in ("valid", "test")]
        cells = [cell([r[i] for r in per_pair]) for per_pair in got for i in range(3)]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)

    for m in (int(s) for s in args.slots.split(",")):
        row(f"slots {m}", lambda w, c, pair, split, users, m=m: slot_merge(w, c, m))
    for a in (float(s) for s in args.a.split(",")):
        for b in (float(s) for s in args.b.split(",")):
            row(f"z a={a:g} b={b:g}", lambda w, c, pair, split, users, a=a, b=b: z_merge(w, c, a, b))
    for m in (int(s) for s in args.gate_slots.split(",") if s):
        for q in (float(s) for s in args.gate_shares.split(",")):
            row(f"gate m={m} q={q:g}", lambda w, c, pair, split, users, m=m, q=q:
                gate_merge(w, c, m, pair.rare_users(split, q)[users]))
    print(f"\n| oracle (test truth) weight | mean m | test warm R@{K} | test cold R@{K} |\n|---|---|---|---|")
    for weight in (float(s) for s in args.oracle_weights.split(",")):
        got = [p.oracle("test", weight) for p in pairs]
        print(f"| {weight:g} | " + " | ".join(cell([g[i] for g in got]) for i in range(3)) + " |", flush=True)


if __name__ == "__main__":
    main()
