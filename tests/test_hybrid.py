"""Towers that mix ids with content: unseen items carry no id noise, id dropout trains the
content path alone, MMRec's behaviour stays selectable."""

import numpy as np
import pytest
import torch

from pipeline.config import load_config
from pipeline.models import build_model
from pipeline.models.factory import MIXED_ID_DROPOUT
from pipeline.models.mf import MF
from pipeline.models.towers import CombinedTower, FeatureTower, IdTower

from test_models import DEMO, QUICK, demo  # noqa: F401  (the demo with its ground-truth attributes)


def build(demo, *extra, seed=0):
    overrides, data, feats = demo
    cfg = load_config(DEMO, [*overrides, *QUICK, "features.attrs.mmrec=unused.npy", *extra])
    return cfg, build_model(cfg.model, data, feats, cfg.cache_dir, seed)


def rescored(demo, run_dir, overrides, **settings) -> dict:
    """Test metrics (K=20) of a demo run's best model ranked with ranking-time ``settings`` set on it."""
    from pipeline.eval import Evaluator
    from pipeline.train import Run

    _, model = build(demo, *overrides)
    Run(run_dir).load_best(model)
    data = demo[1]
    ev = Evaluator(data.n_users, data.n_items, data.pairs("train"), data.pairs("test"), also_mask=data.pairs("valid"),
                   ks=(20,))
    model.eval().use_history("test")
    for name, value in settings.items():
        setattr(model, name, value)
    with torch.no_grad():
        return ev.evaluate(model.score)


def id_part(model) -> IdTower:
    return next(m for m in model.item_tower.modules() if isinstance(m, IdTower))


def unseen_items(data) -> torch.Tensor:
    seen = np.bincount(data.pairs("train")[1], minlength=data.n_items) > 0
    return torch.from_numpy(np.flatnonzero(~seen))


@pytest.mark.parametrize("model", ["vbpr", "hybrid"])
def test_unseen_item_scores_do_not_read_their_id_parameters(demo, model):
    _, mf = build(demo, f"model.name={model}")
    cold = unseen_items(demo[1])
    assert len(cold) > 0
    mf.eval()
    users = torch.arange(50)
    before = mf.score(users).detach()
    with torch.no_grad():
        id_part(mf).embedding.weight[cold] += 100 * torch.randn(len(cold), mf.item_tower.dim // 2)
    after = mf.score(users).detach()
    assert torch.equal(before, after)
    # and in training: an unseen item sampled as a negative passes no gradient to its id row
    mf.train()
    batch = {"users": torch.arange(len(cold)), "pos": torch.zeros(len(cold), dtype=torch.long), "neg": cold}
    mf.loss(batch).backward()
    assert torch.count_nonzero(id_part(mf).embedding.weight.grad[cold]) == 0


def test_mmrec_switch_keeps_untrained_ids(demo):
    """`unseen_ids: keep, id_dropout: 0` on its own keeps the model's tower (ids + features) and
    gives exactly the tower MMRec's VBPR has: the same vectors from the same seed."""
    cfg, mf = build(demo, "model.name=vbpr", "model.item_tower={unseen_ids: keep, id_dropout: 0}")
    tower = mf.item_tower
    assert isinstance(tower, CombinedTower) and cfg.model.tower(["attrs"]).features == ["attrs"]
    ids = id_part(mf)
    assert ids.known is None and ids.dropout == 0
    torch.manual_seed(3)
    plain = IdTower(demo[1].n_items, cfg.model.dim, "xavier_uniform")
    plain.load_state_dict(ids.state_dict())
    tower.train()
    items = torch.randint(0, demo[1].n_items, (64,))
    rng = torch.get_rng_state()
    assert torch.equal(tower(items)[:, :cfg.model.dim], plain(items))
    assert torch.equal(torch.get_rng_state(), rng)  # no random draw: seeded runs are unchanged
    cold = unseen_items(demo[1])
    mf.eval()
    before = mf.score(torch.arange(5)).detach()
    with torch.no_grad():
        ids.embedding.weight[cold] += 1.0
    assert not torch.equal(before, mf.score(torch.arange(5)).detach())


def test_defaults_on_for_mixed_towers_off_for_ids_alone(demo):
    _, bpr = build(demo, "model.name=bpr")
    assert isinstance(bpr.item_tower, IdTower) and bpr.item_tower.known is None and bpr.item_tower.dropout == 0
    _, vbpr = build(demo, "model.name=vbpr")
    ids = id_part(vbpr)
    assert ids.known is not None and ids.dropout == MIXED_ID_DROPOUT
    assert int(ids.known.sum()) == demo[1].n_items - len(unseen_items(demo[1]))
    _, two = build(demo, "model.name=two_tower", "model.item_tower={ids: true, features: [attrs]}",
                   "model.item_tower.id_dropout=0.5")
    assert id_part(two).dropout == 0.5 and id_part(two).known is not None


def test_id_dropout_at_rate_one_is_the_content_only_tower():
    torch.manual_seed(0)
    n, d = 30, 8
    feats, masks = {"a": torch.randn(n, 5)}, {"a": torch.ones(n, dtype=torch.bool)}
    content = FeatureTower(feats, masks, d)
    mixed = CombinedTower([IdTower(n, d, dropout=1.0), content], "sum")
    items = torch.randint(0, n, (40,))
    mixed.train()
    assert torch.equal(mixed(items), content(items)) and torch.equal(mixed(), content())
    # the same loss, and no gradient reaches the ids
    users = torch.randint(0, 10, (20,))
    batch = {"users": users, "pos": items[:20], "neg": items[20:]}
    with_ids, alone = MF(10, mixed, reg_weight=0.1), MF(10, content, reg_weight=0.1)
    alone.user.load_state_dict(with_ids.user.state_dict())
    loss = with_ids.loss(batch)
    assert torch.equal(loss, alone.loss(batch))
    loss.backward()
    assert torch.count_nonzero(mixed.parts[0].embedding.weight.grad) == 0
    # ranking sees whole id vectors
    mixed.eval()
    assert not torch.allclose(mixed(items), content(items))


def test_id_dropout_drops_about_its_rate_per_item_row():
    torch.manual_seed(0)
    tower = IdTower(100, 4, dropout=0.3).train()
    rows = tower(torch.randint(0, 100, (20000,)))
    dropped = float((rows.abs().sum(1) == 0).float().mean())
    assert abs(dropped - 0.3) < 0.02, dropped
    assert torch.count_nonzero(tower.eval()(torch.arange(100)).abs().sum(1)) == 100



@pytest.mark.parametrize("weight", [0.5, 0.75, 1.0])
def test_hybrid_reads_isolated_items_at_their_weight(weight):
    """An item without training interactions reads weight x its own tower vector; weight
    1/(n_layers+1) is LightGCN's mean readout, and trained items read exactly LightGCN's."""
    from pipeline.models.hybrid import HybridGCN
    from pipeline.models.lightgcn import LightGCN

    torch.manual_seed(0)
    users, items = np.array([0, 0, 1, 2, 2]), np.array([0, 1, 1, 2, 3])  # items 4, 5 unseen
    known = torch.from_numpy(np.bincount(items, minlength=6) > 0)
    tower = CombinedTower([IdTower(6, 4, known=known), FeatureTower({"a": torch.randn(6, 3)},
                                                                    {"a": torch.ones(6, dtype=torch.bool)}, 4)])
    hybrid = HybridGCN(3, tower, users, items, n_layers=1, isolated_weight=weight).eval()
    plain = LightGCN(3, tower, users, items, n_layers=1)
    plain.user.load_state_dict(hybrid.user.state_dict())
    with torch.no_grad():
        (hu, hi), (pu, pi), own = hybrid.embeddings(), plain.embeddings(), tower()
    assert torch.equal(hu, pu) and torch.equal(hi[:4], pi[:4])
    assert torch.allclose(hi[4:], weight * own[4:]) and torch.allclose(pi[4:], 0.5 * own[4:])


def test_hybrid_knn_unseen_items_do_not_read_their_id_parameters(demo):
    """Its tower is ids alone, with unseen ids zeroed: an unseen item ranks by its warm content
    neighbours, whatever its own id row holds, and training leaves that row alone."""
    _, model = build(demo, "model.name=hybrid_knn")
    cold = unseen_items(demo[1])
    ids = id_part(model)
    model.eval()
    users = torch.arange(50)
    before = model.score(users).detach()
    with torch.no_grad():
        ids.embedding.weight[cold] += 100 * torch.randn(len(cold), ids.dim)
    assert torch.equal(before, model.score(users).detach())
    model.train()
    model.pre_epoch(0)
    batch = {"users": torch.arange(len(cold)), "pos": torch.zeros(len(cold), dtype=torch.long), "neg": cold}
    model.loss(batch).backward()
    assert torch.count_nonzero(ids.embedding.weight.grad[cold]) == 0


def test_hybrid_knn_cold_items_read_their_warm_content_neighbours():
    """An unseen item's vector is cold_weight x the mean of its k nearest warm items' vectors, per
    feature set, weighted; warm items keep FREEDOM's vectors."""
    from pipeline.models.freedom import FREEDOM
    from pipeline.models.graphs import knn_graph
    from pipeline.models.hybrid_knn import ColdFill, content_neighbours

    torch.manual_seed(0)
    users, items = np.array([0, 0, 1, 1, 2, 2]), np.array([0, 1, 1, 2, 3, 4])  # items 5, 6 unseen
    cold = torch.from_numpy(np.bincount(items, minlength=7) == 0)
    # one feature set: item 5 looks like items 0 and 1, item 6 like items 3 and 4
    a = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.5, 0.5], [0.1, 0.9], [0.0, 1.0], [1.0, 0.05], [0.05, 1.0]])
    b = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.5, 0.5], [0.2, 0.8], [0.0, 1.0], [0.1, 1.0], [1.0, 0.1]])
    near = content_neighbours({"a": a, "b": b}, {"a": 0.75, "b": 0.25}, cold, k=2)
    dense = near.to_dense()
    assert torch.count_nonzero(dense[:5]) == 0 and torch.allclose(dense.sum(1)[5:], torch.ones(2))
    # item 5: a -> {0, 1} at 0.375 each; b -> {3, 4} (cosine with [0.1, 1]) at 0.125 each
    assert torch.allclose(dense[5], torch.tensor([0.375, 0.375, 0, 0.125, 0.125, 0, 0]))
    known = torch.from_numpy(np.bincount(items, minlength=7) > 0)
    feats = {"a": a, "b": b}
    freedom = FREEDOM(3, IdTower(7, 4, known=known), users, items, knn_graph(feats, {"a": 0.5, "b": 0.5}, 2),
                      feats, dropout=0.0)
    model = ColdFill(freedom, near, cold, cold_weight=1.5).eval()
    with torch.no_grad():
        (fu, fi), (hu, hi) = freedom.embeddings(freedom.r, freedom.rt), model.embeddings()
    assert torch.equal(fu, hu) and torch.equal(fi[:5], hi[:5])
    assert torch.allclose(hi[5], 1.5 * (0.375 * (fi[0] + fi[1]) + 0.125 * (fi[3] + fi[4])))
    assert torch.allclose(model.score(torch.arange(3)), hu @ hi.T)


def test_hybrid_knn_on_the_demo_carries_cold_items_and_its_weight_keeps_warm_ones(demo):
    """The issue's bar on the small demo with its ground-truth attributes. At the default
    cold_weight, cold R@20 far above the id-only LightGCN's (ids put unseen items last: 0) and
    the best overall; ranked with cold items behind their neighbours (weight 1), the same model's
    warm R@20 is LightGCN's. With features this good the default gives warm slots to cold items
    (measured: warm 0.26 against 0.47, cold 0.39 against 0, all 0.32 against 0.25)."""
    from test_models import run

    ids = run(demo, "model.name=lightgcn", epochs=20)["test"]
    trained = run(demo, "model.name=hybrid_knn", epochs=20)
    hybrid = trained["test"]
    assert hybrid["cold/recall@20"] > ids["cold/recall@20"] + 0.2, (hybrid, ids)
    assert hybrid["recall@20"] > ids["recall@20"], (hybrid, ids)
    behind = rescored(demo, trained["run_dir"], ["model.name=hybrid_knn"], cold_weight=1.0)
    assert behind["warm/recall@20"] >= 0.95 * ids["warm/recall@20"], (behind, ids)
