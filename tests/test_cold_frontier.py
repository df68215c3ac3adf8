"""benchmarks/cold_frontier.py's merges against naive per-user loops."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
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


def test_gate_merge_gives_slots_to_the_chosen_users_only():
    warm, cold = _lists(seed=3, users=6)
    chosen = torch.tensor([True, False, True, False, False, True])
    merged = cf.gate_merge(warm, cold, 2, chosen)
    for u in range(len(warm)):
        cold_order, warm_order = _order(cold[u]), _order(warm[u])
        m = 2 if chosen[u] else 0
        assert _order(merged[u]) == cold_order[:m] + warm_order + cold_order[m:]


class _Pairs:
    """What ``rare_taste`` reads of a prepared data set."""

    def __init__(self, users, items, n_users, n_items):
        self.train, self.n_users, self.n_items = (np.asarray(users), np.asarray(items)), n_users, n_items

    def pairs(self, split):
        assert split == "train"
        return self.train


def test_rare_taste_is_the_mean_negative_log_popularity_of_a_users_training_items():
    users, items = [0, 0, 1, 1, 1, 2, 3], [0, 1, 0, 0, 2, 0, 1]   # item 0 four times, 1 twice, 2 once
    got = cf.rare_taste(_Pairs(users, items, n_users=5, n_items=3))
    pop = {0: 4, 1: 2, 2: 1}
    for u in range(5):
        mine = [i for uu, i in zip(users, items) if uu == u]
        want = np.mean([-np.log(pop[i] / len(items)) for i in mine]) if mine else 0.0
        assert got[u] == pytest.approx(want)
    assert got[3] > got[0] > got[2]   # a user of rarer items scores higher
