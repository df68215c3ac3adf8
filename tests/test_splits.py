"""Invariants of every split protocol, checked on random data against plain per-user loops."""

import datetime as dt

import numpy as np
import pytest

from pipeline.config import SplitConfig
from pipeline.data.interactions import Pairs
from pipeline.data.splits import split_pairs
from pipeline.errors import DataError

DAY = 86400


def random_pairs(seed=0, n_users=60, n_items=80, with_time=True) -> Pairs:
    rng = np.random.default_rng(seed)
    users, items = [], []
    for u in range(n_users):
        n = int(rng.integers(1, 30))  # short and long histories, incl. 1 and 2
        users += [u] * n
        items += rng.choice(n_items, size=n, replace=False).tolist()
    users, items = np.array(users), np.array(items)
    ts = rng.integers(0, 200, size=len(users)) * DAY + 1_600_000_000 if with_time else None  # many ties
    return Pairs(users, items, np.ones(len(users), np.int64), np.arange(len(users)), ts, None, None)


def mmrec_counts(n: int) -> tuple[int, int, int]:
    """MMRec's rule, written the obvious way (its preprocessing notebook, for ratios 8:1:1)."""
    if n < 3:
        return n, 0, 0
    if n < 10:
        return n - 2, 1, 1
    val_test = int(n * 0.2)
    return n - val_test, val_test // 2, val_test - val_test // 2


def per_user(pairs, split):
    for u in np.unique(pairs.user):
        m = pairs.user == u
        yield m, split[m]


@pytest.mark.parametrize("protocol", ["random", "temporal_user"])
def test_per_user_counts_follow_mmrec_rule(protocol):
    pairs = random_pairs()
    split = split_pairs(pairs, SplitConfig(protocol=protocol))
    for m, s in per_user(pairs, split):
        assert tuple(np.bincount(s, minlength=3)) == mmrec_counts(int(m.sum()))


def test_temporal_user_never_trains_on_the_future():
    pairs = random_pairs(1)
    split = split_pairs(pairs, SplitConfig(protocol="temporal_user"))
    for m, s in per_user(pairs, split):
        ts = pairs.timestamp[m]
        if (s == 1).any():
            assert ts[s == 0].max() <= ts[s == 1].min() <= ts[s == 1].max() <= ts[s == 2].min()


def test_random_is_deterministic_by_seed_and_not_temporal():
    pairs = random_pairs(2)
    a = split_pairs(pairs, SplitConfig(protocol="random", seed=1))
    b = split_pairs(pairs, SplitConfig(protocol="random", seed=1))
    c = split_pairs(pairs, SplitConfig(protocol="random", seed=2))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    # not secretly ordered by time: some user has a test pair earlier than one of its train pairs
    assert any(
        (s == 2).any() and pairs.timestamp[m][s == 2].min() < pairs.timestamp[m][s == 0].max()
        for m, s in per_user(pairs, a)
    )


def test_other_ratios():
    pairs = random_pairs(3)
    split = split_pairs(pairs, SplitConfig(protocol="random", ratios=(0.6, 0.1, 0.3)))
    for m, s in per_user(pairs, split):
        n = int(m.sum())
        if n >= 10:
            n_eval = int(n * 0.4)
            assert (s == 1).sum() == int(n_eval * 0.25) and (s == 2).sum() == n_eval - int(n_eval * 0.25)


def test_temporal_global_by_dates():
    pairs = random_pairs(4)
    start = dt.datetime.fromtimestamp(1_600_000_000, dt.timezone.utc).date()
    cfg = SplitConfig(protocol="temporal_global", valid_start=start + dt.timedelta(days=150),
                      test_start=start + dt.timedelta(days=175))
    split = split_pairs(pairs, cfg)
    valid_from = dt.datetime.combine(cfg.valid_start, dt.time(), dt.timezone.utc).timestamp()
    test_from = dt.datetime.combine(cfg.test_start, dt.time(), dt.timezone.utc).timestamp()
    ts = pairs.timestamp
    assert (ts[split == 0] < valid_from).all()
    assert ((ts[split == 1] >= valid_from) & (ts[split == 1] < test_from)).all()
    assert (ts[split == 2] >= test_from).all()


def test_temporal_global_by_ratios_cuts_at_quantiles():
    pairs = random_pairs(5)
    split = split_pairs(pairs, SplitConfig(protocol="temporal_global"))
    assert pairs.timestamp[split == 0].max() < pairs.timestamp[split == 1].min()
    assert pairs.timestamp[split == 1].max() < pairs.timestamp[split == 2].min()
    frac = np.bincount(split) / len(split)
    assert abs(frac[0] - 0.8) < 0.05


def test_leave_one_out_last_two():
    pairs = random_pairs(6)
    split = split_pairs(pairs, SplitConfig(protocol="leave_one_out"))
    for m, s in per_user(pairs, split):
        n = int(m.sum())
        if n < 3:
            assert (s == 0).all()
            continue
        assert (s == 1).sum() == 1 and (s == 2).sum() == 1
        ts = pairs.timestamp[m]
        assert ts[s == 2][0] >= ts.max() - 0 and ts[s == 1][0] >= ts[s == 0].max()


def test_leave_one_out_without_time_uses_file_order():
    pairs = random_pairs(7, with_time=False)
    split = split_pairs(pairs, SplitConfig(protocol="leave_one_out"))
    for m, s in per_user(pairs, split):
        if m.sum() >= 3:
            order = pairs.order[m]
            assert order[s == 2][0] == order.max() and order[s == 1][0] == np.sort(order)[-2]


def test_cold_start_items_never_in_train():
    pairs = random_pairs(8)
    split = split_pairs(pairs, SplitConfig(protocol="cold_start", cold_items=0.2))
    train_items = set(pairs.item[split == 0])
    valid_cold = set(pairs.item[split == 1]) - train_items
    test_cold = set(pairs.item[split == 2]) - train_items
    assert valid_cold and test_cold and not (valid_cold & test_cold)
    all_items = set(pairs.item)
    assert abs(len(valid_cold | test_cold) - 0.2 * len(all_items)) <= 2
    # every pair of a cold item is held out; warm items still get valid/test pairs too
    for item in valid_cold:
        assert (split[pairs.item == item] == 1).all()
    assert set(pairs.item[split == 2]) - test_cold


def test_label_passthrough():
    pairs = random_pairs(9)
    pairs.label = (np.arange(len(pairs)) % 3).astype(np.int8)
    assert np.array_equal(split_pairs(pairs, SplitConfig(protocol="label")), pairs.label)


@pytest.mark.parametrize("protocol, words", [("temporal_user", "needs timestamps"), ("label", "needs data.interactions.label")])
def test_protocols_requiring_columns(protocol, words):
    with pytest.raises(DataError, match=words):
        split_pairs(random_pairs(with_time=False), SplitConfig(protocol=protocol))


def test_empty_split_is_an_error_naming_it():
    pairs = random_pairs(10)
    late = dt.date(2030, 1, 1)
    with pytest.raises(DataError, match=r"protocol=temporal_global\) leaves the valid and test set empty"):
        split_pairs(pairs, SplitConfig(protocol="temporal_global", valid_start=late, test_start=late))
