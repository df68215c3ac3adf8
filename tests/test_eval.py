"""Metrics and the full-ranking evaluator against plain-Python reference implementations."""

import math

import numpy as np
import pytest
import torch

from pipeline.eval import Evaluator, topk_metrics


def reference(ranked: list[int], truth: set[int], k: int) -> dict[str, float]:
    top = ranked[:k]
    rel = [1 if i in truth else 0 for i in top]
    hits = sum(rel)
    dcg = sum(r / math.log2(pos + 2) for pos, r in enumerate(rel))
    idcg = sum(1 / math.log2(pos + 2) for pos in range(min(len(truth), k)))
    ap, seen = 0.0, 0
    for pos, r in enumerate(rel):
        if r:
            seen += 1
            ap += seen / (pos + 1)
    first = next((pos + 1 for pos, r in enumerate(rel) if r), None)
    return {
        f"recall@{k}": hits / len(truth),
        f"precision@{k}": hits / k,
        f"ndcg@{k}": dcg / idcg,
        f"map@{k}": ap / min(len(truth), k),
        f"hit@{k}": float(hits > 0),
        f"mrr@{k}": 0.0 if first is None else 1 / first,
    }


def test_metrics_match_reference_on_random_rankings():
    rng = np.random.default_rng(0)
    n_items, ks = 40, [1, 5, 10, 20]
    rankings, truths = [], []
    for _ in range(200):
        rankings.append(rng.permutation(n_items).tolist())
        truths.append(set(rng.choice(n_items, size=int(rng.integers(1, 15)), replace=False).tolist()))
    hits = torch.tensor([[i in t for i in r[:20]] for r, t in zip(rankings, truths)])
    n_rel = torch.tensor([len(t) for t in truths])
    ours = topk_metrics(hits, n_rel, ks)
    for u, (r, t) in enumerate(zip(rankings, truths)):
        for k in ks:
            for name, value in reference(r, t, k).items():
                assert ours[name][u].item() == pytest.approx(value, abs=1e-6), (name, u)


def reference_evaluate(scores, train, truth, ks, mask_extra=None):
    """Loop over users: mask, sort, compare."""
    totals, n = {}, 0
    train_by_user, truth_by_user, extra = {}, {}, {}
    for u, i in zip(*train):
        train_by_user.setdefault(u, set()).add(i)
    for u, i in zip(*truth):
        truth_by_user.setdefault(u, set()).add(i)
    for u, i in zip(*(mask_extra or ((), ()))):
        extra.setdefault(u, set()).add(i)
    for u, t in truth_by_user.items():
        if u not in train_by_user:
            continue
        masked = train_by_user[u] | extra.get(u, set())
        order = [i for i in np.argsort(-scores[u], kind="stable") if i not in masked]
        for k in ks:
            for name, value in reference(order, t, k).items():
                totals[name] = totals.get(name, 0.0) + value
        n += 1
    return {name: v / n for name, v in totals.items()}, n


def random_split(rng, n_users, n_items):
    pairs = [(u, i) for u in range(n_users) for i in rng.choice(n_items, size=int(rng.integers(2, 12)), replace=False)]
    rng.shuffle(pairs)
    pairs = np.array(pairs)
    labels = rng.choice(3, size=len(pairs), p=[0.6, 0.2, 0.2])
    parts = [(pairs[labels == s, 0], pairs[labels == s, 1]) for s in range(3)]
    return parts


def test_evaluator_matches_reference_with_masking_and_batches():
    rng = np.random.default_rng(1)
    n_users, n_items = 50, 30
    train, valid, test = random_split(rng, n_users, n_items)
    scores = rng.standard_normal((n_users, n_items)).astype(np.float32)
    score_fn = lambda users: torch.as_tensor(scores)[users]  # noqa: E731
    ks = (5, 10)
    for also, truth in ((None, valid), (valid, test)):
        ev = Evaluator(n_users, n_items, train, truth, also_mask=also, ks=ks, batch_users=7)
        ours = ev.evaluate(score_fn, cold_slice=False)
        ref, n = reference_evaluate(scores, train, truth, ks, mask_extra=also)
        assert ours["users"] == n
        for name, value in ref.items():
            assert ours[name] == pytest.approx(value, abs=1e-6), name


def test_masking_changes_results_and_perfect_scores_score_one():
    rng = np.random.default_rng(2)
    n_users, n_items = 30, 25
    train, valid, test = random_split(rng, n_users, n_items)
    oracle = np.zeros((n_users, n_items), dtype=np.float32)
    oracle[train] = 10.0  # train items score highest: only masking keeps them out of the top
    oracle[test] = 5.0
    ev = Evaluator(n_users, n_items, train, test, ks=(20,))
    result = ev.evaluate(lambda u: torch.as_tensor(oracle)[u], cold_slice=False)
    assert result["ndcg@20"] == pytest.approx(1.0) and result["hit@20"] == pytest.approx(1.0)


def test_cold_slice_counts_only_unseen_items():
    n_users, n_items = 4, 6
    train = (np.array([0, 1, 2, 3]), np.array([0, 0, 1, 1]))
    test = (np.array([0, 0, 1, 2]), np.array([2, 5, 3, 5]))  # items 2..5 never trained on
    scores = np.tile(np.arange(n_items, dtype=np.float32)[::-1], (n_users, 1))  # item 0 best ... 5 worst
    ev = Evaluator(n_users, n_items, train, test, ks=(2,))
    r = ev.evaluate(lambda u: torch.as_tensor(scores)[u])
    assert r["cold/users"] == 3 and r["users"] == 3 and r["warm/users"] == 0
    # top-2 after masking the train item: user 0 gets 1, 2 (1 of its cold items {2, 5});
    # user 1 gets 1, 2 (misses 3); user 2 gets 0, 2 (misses 5)
    assert r["cold/recall@2"] == pytest.approx(0.5 / 3)
    assert r["recall@2"] == pytest.approx(0.5 / 3)


def test_users_without_training_data_are_skipped_by_default():
    train = (np.array([0]), np.array([0]))
    truth = (np.array([0, 1]), np.array([1, 1]))
    assert Evaluator(2, 3, train, truth).users.tolist() == [0]
    assert Evaluator(2, 3, train, truth, skip_cold_users=False).users.tolist() == [0, 1]


def test_per_user_values_match_reference_and_average_to_evaluate():
    """The per-user values behind paired significance tests: each user's own reference metrics,
    aligned to ``ev.users``, NaN outside a slice, and means equal to ``evaluate``."""
    rng = np.random.default_rng(3)
    n_users, n_items = 40, 30
    train, valid, test = random_split(rng, n_users, n_items)
    scores = rng.standard_normal((n_users, n_items)).astype(np.float32)
    ev = Evaluator(n_users, n_items, train, test, also_mask=valid, ks=(5, 10), batch_users=6)
    users, values = ev.per_user(lambda u: torch.as_tensor(scores)[u])
    assert np.array_equal(users, ev.users)
    summary = ev.evaluate(lambda u: torch.as_tensor(scores)[u])
    for name, v in values.items():
        kept = v[~np.isnan(v)]
        assert kept.mean() == pytest.approx(summary[name], abs=1e-6), name
    for row, u in enumerate(users):
        truth = set(test[1][test[0] == u])
        masked = set(train[1][train[0] == u]) | set(valid[1][valid[0] == u])
        order = [i for i in np.argsort(-scores[u], kind="stable") if i not in masked]
        for name, value in reference(order, truth, 10).items():
            assert values[name][row] == pytest.approx(value, abs=1e-6), (u, name)
        cold = {i for i in truth if ev.cold_items[i]}
        if cold:
            assert values["cold/recall@10"][row] == pytest.approx(reference(order, cold, 10)["recall@10"], abs=1e-6)
        else:
            assert np.isnan(values["cold/recall@10"][row])


def tail_by_definition(train_items, n_items, share):
    """The long tail written out item by item: trained items, least popular first (ties by
    index), taken while their interactions stay within ``share`` of all training interactions."""
    counts = {i: int(np.sum(train_items == i)) for i in range(n_items)}
    total = sum(counts.values())
    tail, running = set(), 0
    for i in sorted((i for i in counts if counts[i] > 0), key=lambda i: (counts[i], i)):
        running += counts[i]
        if running > share * total + 1e-9:
            break
        tail.add(i)
    return tail


def test_long_tail_items_hand_computed():
    from pipeline.eval import long_tail_items

    # training counts: item 0: 5, 1: 1, 2: 2, 3: never, 4: 1, 5: 3, 6: never (12 interactions)
    items = np.array([0] * 5 + [1] + [2] * 2 + [4] + [5] * 3)
    # least popular first: 1 (1), 4 (1), 2 (2), 5 (3), 0 (5); cumulative 1, 2, 4, 7, 12
    assert np.flatnonzero(long_tail_items(items, 7, 0.25)).tolist() == [1, 4]  # 2 <= 3.0 < 4
    assert np.flatnonzero(long_tail_items(items, 7, 0.34)).tolist() == [1, 2, 4]  # 4 <= 4.08
    assert np.flatnonzero(long_tail_items(items, 7, 1 / 12)).tolist() == [1]  # a tie: the lower index
    assert np.flatnonzero(long_tail_items(items, 7, 7 / 12)).tolist() == [1, 2, 4, 5]  # exactly 7 of 12
    assert not long_tail_items(items, 7, 0.05).any()  # less than the least popular item's share
    for share in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="long-tail share"):
            long_tail_items(items, 7, share)
    rng = np.random.default_rng(4)
    skewed = rng.zipf(1.6, size=500) % 60
    for share in (0.1, 0.2, 0.5, 0.9):
        assert set(np.flatnonzero(long_tail_items(skewed, 70, share)).tolist()) == tail_by_definition(skewed, 70, share)


def test_tail_slice_matches_reference_and_per_user():
    rng = np.random.default_rng(5)
    n_users, n_items = 60, 40
    train, valid, test = random_split(rng, n_users, n_items)
    scores = rng.standard_normal((n_users, n_items)).astype(np.float32)
    score_fn = lambda users: torch.as_tensor(scores)[users]  # noqa: E731
    ev = Evaluator(n_users, n_items, train, test, also_mask=valid, ks=(5, 10), batch_users=9, long_tail_share=0.3)
    tail = tail_by_definition(train[1], n_items, 0.3)
    assert set(np.flatnonzero(ev.tail_items).tolist()) == tail and 0 < len(tail) < n_items
    totals, n = {}, 0
    for u in ev.users:
        truth = set(test[1][test[0] == u]) & tail
        if not truth:
            continue
        masked = set(train[1][train[0] == u]) | set(valid[1][valid[0] == u])
        order = [i for i in np.argsort(-scores[u], kind="stable") if i not in masked]
        for k in (5, 10):
            for name, value in reference(order, truth, k).items():
                totals[name] = totals.get(name, 0.0) + value
        n += 1
    ours = ev.evaluate(score_fn, cold_slice=False)
    assert ours["tail/users"] == n > 0 and "cold/users" not in ours  # the tail slice needs no cold slice
    for name, value in totals.items():
        assert ours[f"tail/{name}"] == pytest.approx(value / n, abs=1e-6), name
    _, values = ev.per_user(score_fn)
    assert int((~np.isnan(values["tail/recall@10"])).sum()) == n
    assert np.nanmean(values["tail/ndcg@10"]) == pytest.approx(ours["tail/ndcg@10"], abs=1e-6)
    assert "tail/recall@10" not in Evaluator(n_users, n_items, train, test, ks=(10,)).evaluate(score_fn)


def test_coverage_matches_brute_force():
    """Share of the catalog in at least one evaluated user's top K; a masked item filling a short
    list (a user who has seen nearly everything) is not recommended."""
    rng = np.random.default_rng(6)
    n_users, n_items = 30, 50
    train, valid, test = random_split(rng, n_users, n_items)
    heavy = np.arange(n_items - 3)  # user 0 trained on all but 3 items: fewer than K left to rank
    train = (np.r_[train[0], np.zeros(len(heavy), dtype=int)], np.r_[train[1], heavy])
    test = (np.r_[test[0], 0], np.r_[test[1], n_items - 1])
    # popular items score high for everyone, so coverage is well below 1
    scores = (np.linspace(3, 0, n_items)[None, :] + 0.5 * rng.standard_normal((n_users, n_items))).astype(np.float32)
    ks = (5, 10, 20)
    ev = Evaluator(n_users, n_items, train, test, also_mask=valid, ks=ks, batch_users=4)
    ours = ev.evaluate(lambda u: torch.as_tensor(scores)[u], cold_slice=False)
    assert 0 in ev.users
    for k in ks:
        recommended = set()
        for u in ev.users:
            masked = set(train[1][train[0] == u]) | set(valid[1][valid[0] == u])
            recommended |= set([i for i in np.argsort(-scores[u], kind="stable") if i not in masked][:k])
        assert ours[f"coverage@{k}"] == pytest.approx(len(recommended) / n_items), k
    assert ours["coverage@5"] < ours["coverage@10"] < ours["coverage@20"] < 1.0


def test_long_tail_share_is_validated():
    from pipeline.config import load_config
    from pipeline.errors import ConfigError

    from conftest import REPO

    demo = REPO / "recipes" / "configs" / "demo.yaml"
    assert load_config(demo, ["eval.long_tail_share=0.3"]).eval.long_tail_share == 0.3
    for bad in ("0", "1.5"):
        with pytest.raises(ConfigError, match=r"eval\.long_tail_share"):
            load_config(demo, [f"eval.long_tail_share={bad}"])
