"""benchmarks/demo_oracle.py: the generator's truth in the prepared data's order, and its rankers."""

import importlib.util
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
_spec = importlib.util.spec_from_file_location("demo_oracle", REPO / "benchmarks" / "demo_oracle.py")
oracle = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(oracle)

from pipeline.data.demo import Taste, demo_truth  # noqa: E402


class _Data:
    """The two columns ``aligned`` reads, in a prepared data set's (shuffled) order."""

    def __init__(self, items, users):
        self.items, self.users = {"item_id": items}, {"user_id": users}


def test_aligned_follows_the_prepared_ids():
    item_ids, user_ids, taste = demo_truth(n_items=15, n_users=6, seed=2)
    rng = np.random.default_rng(0)
    items, users = rng.permutation(15), rng.permutation(6)
    got = oracle.aligned(item_ids, user_ids, taste, _Data([item_ids[j] for j in items], [user_ids[u] for u in users]))
    for r, u in enumerate(users):
        for c, j in enumerate(items):
            assert got.affinity[r, c] == taste.affinity[u, j]
            assert got.log_exposure[r, c] == taste.log_exposure[u, j]
            assert got.offered[r, c] == taste.offered[u, j] and got.span[r, c] == taste.span[u, j]
    assert np.array_equal(got.log_popularity, taste.log_popularity[items])
    np.testing.assert_array_equal(got.log_weight, taste.log_weight[np.ix_(users, items)])


def test_rankers_withhold_what_their_names_say():
    aff = np.array([[0.5, 1.0, -1.0, 2.0]])
    taste = Taste(aff, np.log(np.array([1.0, 4.0, 2.0, 8.0])), np.array([[0.0, -1.0, -0.5, -np.inf]]),
                  np.zeros((1, 4)), np.ones((1, 4)))
    cold = np.array([False, False, True, True])
    got = oracle.rankers(taste, cold)
    np.testing.assert_array_equal(got["everything"], taste.log_weight)
    warm_mean = np.log([1.0, 4.0]).mean()
    pop = np.array([0.0, np.log(4.0), warm_mean, warm_mean])
    np.testing.assert_allclose(got["cold popularity unknown"], aff + pop + taste.log_exposure)
    np.testing.assert_allclose(got["no exposure"], aff + pop)
    np.testing.assert_array_equal(got["taste only"], aff)
