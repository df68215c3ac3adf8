"""benchmarks/hybrid_bar.py: the verdicts it prints for issue 16's bar, on rows built by hand, and the
paired numbers it reads against a direct computation."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("hybrid_bar", REPO / "benchmarks" / "hybrid_bar.py")
hybrid_bar = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hybrid_bar)


def _arm(seed_means, users):
    return list(seed_means), np.asarray(users, dtype=np.float64)


def test_run_dirs_expands_a_prefix_and_keeps_a_list():
    assert hybrid_bar.run_dirs("runs/x-s", [1, 2]) == ["runs/x-s1", "runs/x-s2"]
    assert hybrid_bar.run_dirs("runs/a-s1,runs/b-s7", [1, 2]) == ["runs/a-s1", "runs/b-s7"]


def test_a_clear_gain_is_above_and_a_clear_loss_is_not_within():
    rng = np.random.default_rng(0)
    base = rng.random(400)
    better = _arm([0.60, 0.61, 0.62], base + 0.1 + 0.05 * rng.random(400))
    worse = _arm([0.40, 0.41, 0.42], base - 0.1 - 0.05 * rng.random(400))
    same = _arm([0.50, 0.505, 0.51], base)
    assert hybrid_bar.verdict(hybrid_bar.compare("x", "m", better, same), "above") == "met"
    assert hybrid_bar.verdict(hybrid_bar.compare("x", "m", same, better), "above") == "not met"
    assert hybrid_bar.verdict(hybrid_bar.compare("x", "m", worse, same), "within") == "not met: below"
    assert hybrid_bar.verdict(hybrid_bar.compare("x", "m", better, same), "within") == "met"


def test_noise_is_within_but_not_above():
    rng = np.random.default_rng(1)
    a, b = rng.random(300), rng.random(300)   # two arms that differ by chance alone
    row = hybrid_bar.compare("x", "m", _arm([0.50, 0.52, 0.49], a), _arm([0.51, 0.50, 0.50], b))
    assert row["users"]["p_ttest"] > 0.05
    assert hybrid_bar.verdict(row, "within") == "met"
    assert hybrid_bar.verdict(row, "above") == "not met"


def test_the_paired_numbers_are_the_users_differences():
    a, b = np.array([0.1, 0.5, np.nan, 0.3]), np.array([0.0, 0.2, 0.4, 0.3])
    row = hybrid_bar.compare("x", "m", _arm([0.3], a), _arm([0.2], b))
    d = np.array([0.1, 0.3, 0.0])   # the NaN user dropped pairwise
    assert row["users"]["n"] == 3
    assert row["users"]["diff"] == pytest.approx(d.mean())
    assert row["p_seeds"] is None   # one seed each: no test over seeds


def test_a_row_prints_with_and_without_tests():
    rng = np.random.default_rng(2)
    full = hybrid_bar.compare("ids", "warm/recall@20", _arm([0.3, 0.31], rng.random(50)), _arm([0.3, 0.29], rng.random(50)))
    full["verdict"] = hybrid_bar.verdict(full, "within")
    line = hybrid_bar.fmt(full)
    assert line.startswith("| warm/recall@20 vs ids | 0.3050 ± 0.0071 |") and line.endswith("| met |")
    one_user = hybrid_bar.compare("ids", "m", _arm([0.3], [0.3]), _arm([0.2], [0.2]))   # no test possible
    one_user["verdict"] = hybrid_bar.verdict(one_user, "above")
    assert hybrid_bar.fmt(one_user).endswith("| – | 1 | +0.1000 | – | – | not met |")
