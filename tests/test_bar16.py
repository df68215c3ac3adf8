"""benchmarks/bar16.py: the verdicts it prints for issue 16's bar, on rows built by hand, and the
paired numbers it reads against a direct computation."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bar16", REPO / "benchmarks" / "bar16.py")
bar16 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bar16)


def _arm(seed_means, users):
    return list(seed_means), np.asarray(users, dtype=np.float64)


def test_run_dirs_expands_a_prefix_and_keeps_a_list():
    assert bar16.run_dirs("runs/x-s", [1, 2]) == ["runs/x-s1", "runs/x-s2"]
    assert bar16.run_dirs("runs/a-s1,runs/b-s7", [1, 2]) == ["runs/a-s1", "runs/b-s7"]


def test_a_clear_gain_is_above_and_a_clear_loss_is_not_within():
    rng = np.random.default_rng(0)
    base = rng.random(400)
    better = _arm([0.60, 0.61, 0.62], base + 0.1 + 0.05 * rng.random(400))
    worse = _arm([0.40, 0.41, 0.42], base - 0.1 - 0.05 * rng.random(400))
    same = _arm([0.50, 0.505, 0.51], base)
    assert bar16.verdict(bar16.compare("x", "m", better, same), "above") == "met"
    assert bar16.verdict(bar16.compare("x", "m", same, better), "above") == "not met"
    assert bar16.verdict(bar16.compare("x", "m", worse, same), "within") == "not met: below"
    assert bar16.verdict(bar16.compare("x", "m", better, same), "within") == "met"


def test_noise_is_within_but_not_above():
    rng = np.random.default_rng(1)
    a, b = rng.random(300), rng.random(300)   # two arms that differ by chance alone
    row = bar16.compare("x", "m", _arm([0.50, 0.52, 0.49], a), _arm([0.51, 0.50, 0.50], b))
    assert row["users"]["p_ttest"] > 0.05
    assert bar16.verdict(row, "within") == "met"
    assert bar16.verdict(row, "above") == "not met"


def test_the_paired_numbers_are_the_users_differences():
    a, b = np.array([0.1, 0.5, np.nan, 0.3]), np.array([0.0, 0.2, 0.4, 0.3])
    row = bar16.compare("x", "m", _arm([0.3], a), _arm([0.2], b))
    d = np.array([0.1, 0.3, 0.0])   # the NaN user dropped pairwise
    assert row["users"]["n"] == 3
    assert row["users"]["diff"] == pytest.approx(d.mean())
    assert row["p_seeds"] is None   # one seed each: no test over seeds
