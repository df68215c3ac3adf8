"""Paired significance over users: two arms ranked for the same test users, one value per user each.

The unit is the user (not the seed): with a handful of seeds a test over seeds has almost no
power, while every test user is a paired observation of the two models. Values of several seeds
are averaged per user first, so seed noise shrinks instead of being mistaken for users.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


def _finite(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def paired_test(values: np.ndarray, baseline: np.ndarray) -> dict:
    """Paired t-test and Wilcoxon signed-rank test of ``values`` against ``baseline`` (per user,
    aligned). NaN entries (a user outside a slice) are dropped pairwise. Identical arrays give
    p = 1 (scipy reports NaN there: no difference has no direction)."""
    a, b = np.asarray(values, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired test needs aligned values, got shapes {a.shape} and {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    n = int(len(a))
    out = {"n": n, "mean": _finite(a.mean()) if n else None, "baseline_mean": _finite(b.mean()) if n else None,
           "diff": _finite((a - b).mean()) if n else None, "ci95": None,
           "t": None, "p_ttest": None, "w": None, "p_wilcoxon": None}
    if n < 2:
        return out
    d = a - b
    if not np.any(d != 0):
        out.update(ci95=[0.0, 0.0], t=0.0, p_ttest=1.0, w=0.0, p_wilcoxon=1.0)
        return out
    t = stats.ttest_rel(a, b)
    w = stats.wilcoxon(a, b)
    half = stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / math.sqrt(n)
    out.update(ci95=[_finite(d.mean() - half), _finite(d.mean() + half)], t=_finite(t.statistic),
               p_ttest=_finite(t.pvalue), w=_finite(w.statistic), p_wilcoxon=_finite(w.pvalue))
    return out


def holm(pvalues: dict[str, float | None]) -> dict[str, float | None]:
    """Holm-Bonferroni adjusted p-values for a family of tests (None stays None)."""
    named = sorted(((p, k) for k, p in pvalues.items() if p is not None), key=lambda t: t[0])
    m = len(named)
    out: dict[str, float | None] = {k: None for k in pvalues}
    running = 0.0
    for i, (p, k) in enumerate(named):
        running = max(running, min(1.0, (m - i) * p))
        out[k] = running
    return out


def mean_std(values: list[float]) -> dict[str, float]:
    """Mean and sample standard deviation (0 for a single value), as ``modalrec train`` reports."""
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0}
