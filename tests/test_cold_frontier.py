"""benchmarks/cold_frontier.py's merges against naive per-user loops."""

import importlib.util
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("cold_frontier", REPO / "benchmarks" / "cold_frontier.py")
cf = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cf)

N_ITEMS, COLD = 12, torch.tensor([i % 3 == 0 for i in range(12)])  # items 0, 3, 6, 9 unseen


def _lists(seed=0, users=5):
    """Masked warm-only and cold-only scores, one masked warm item per user."""
    g = torch.Generator().manual_seed(seed)
    warm = torch.where(COLD, -torch.inf, torch.randn(users, N_ITEMS, generator=g))
    cold = torch.where(COLD, torch.randn(users, N_ITEMS, generator=g), -torch.inf)
    for u in range(users):
        warm[u, 1 + (u % 4) * 3] = -torch.inf  # items 1, 4, 7, 10: warm ones
    return warm, cold


def _order(row: torch.Tensor) -> list[int]:
    finite = [i for i in range(len(row)) if torch.isfinite(row[i])]
    return sorted(finite, key=lambda i: -float(row[i]))


def test_slot_merge_puts_m_cold_items_first_then_the_warm_list():
    warm, cold = _lists()
    for m in (0, 1, 2, 4):
        merged = cf.slot_merge(warm, cold, m)
        for u in range(len(warm)):
            cold_order, warm_order = _order(cold[u]), _order(warm[u])
            expected = cold_order[:m] + warm_order + cold_order[m:]
            assert _order(merged[u]) == expected
            masked = [i for i in range(N_ITEMS) if not torch.isfinite(warm[u, i]) and not COLD[i]]
            assert all(merged[u, i] == -torch.inf for i in masked)


def test_z_merge_is_per_user_standardisation_then_a_line_for_cold_items():
    warm, cold = _lists(seed=1)
    a, b = 1.5, -0.5
    merged = cf.z_merge(warm, cold, a, b)
    for u in range(len(warm)):
        w = np.array([float(x) for x in warm[u] if torch.isfinite(x)])
        c = np.array([float(x) for x in cold[u] if torch.isfinite(x)])
        for i in range(N_ITEMS):
            if COLD[i]:
                want = a * (float(cold[u, i]) - c.mean()) / c.std() + b
            elif torch.isfinite(warm[u, i]):
                want = (float(warm[u, i]) - w.mean()) / w.std()
            else:
                assert merged[u, i] == -torch.inf
                continue
            assert abs(float(merged[u, i]) - want) < 1e-5


def test_oracle_picks_each_users_best_split_of_the_top_k():
    warm, cold = _lists(seed=2, users=4)
    truth = torch.zeros_like(warm, dtype=torch.bool)
    truth[0, _order(cold[0])[0]] = True                  # user 0: only a cold hit, the cold list's first
    truth[1, _order(warm[1])[0]] = True                  # user 1: only a warm hit
    truth[2, [_order(warm[2])[0], _order(cold[2])[1]]] = True  # user 2: both
    truth[3, _order(warm[3])[-1]] = True                 # user 3: a warm hit within the K of a short list
    m, w, c = cf.oracle_slots(warm, cold, truth, COLD, weight=1.0)
    # a brute force over m for each user, same objective
    for u in range(4):
        best = None
        for mm in range(cf.K + 1):
            listed = _order(cold[u])[:mm] + _order(warm[u])[: cf.K - mm]
            wt, ct = truth[u] & ~COLD, truth[u] & COLD
            rw = sum(bool(wt[i]) for i in listed) / max(int(wt.sum()), 1)
            rc = sum(bool(ct[i]) for i in listed) / max(int(ct.sum()), 1)
            if best is None or rw + rc > best[1] + best[2] + 1e-12:
                best = (mm, rw, rc)
        assert int(m[u]) == best[0]
        assert np.isnan(float(w[u])) if not (truth[u] & ~COLD).any() else abs(float(w[u]) - best[1]) < 1e-6
        assert np.isnan(float(c[u])) if not (truth[u] & COLD).any() else abs(float(c[u]) - best[2]) < 1e-6
    assert int(m[0]) >= 1 and int(m[1]) == 0
