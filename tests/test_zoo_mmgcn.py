"""MMGCN against a dense reference written the way MMRec states it (one (users + items) node
table per modality, a dense mean-aggregation matrix, rows gathered by plain indexing), and on
the demo data: it learns, resumes exactly, and rejects bad features and settings."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.errors import ConfigError
from pipeline.models.mmgcn import MMGCN
from pipeline.models.towers import IdTower

from test_models import demo, run  # noqa: F401
from zoo_checks import check_bad_features, check_learns, check_resume

N_USERS, N_ITEMS, DIM = 12, 10, 4


def tiny_graph():
    rng = np.random.default_rng(0)
    users = np.concatenate([rng.integers(0, N_USERS - 1, 40), np.arange(N_USERS - 1)])
    items = np.concatenate([rng.integers(0, N_ITEMS - 1, 40), np.arange(N_USERS - 1) % (N_ITEMS - 1)])
    return users, items  # the last user and the last item have no edge


def dense_mean_adj(users, items):
    n = N_USERS + N_ITEMS
    a = torch.zeros(n, n, dtype=torch.float64)
    a[users, N_USERS + items] = 1.0  # repeated pairs are one edge
    a[N_USERS + items, users] = 1.0
    deg = a.sum(1, keepdim=True)
    return torch.where(deg > 0, a / deg.clamp(min=1), 0.0)


def dense_gcn(gcn, feat, ids, adj, concat):
    """MMRec's GCN.forward on the stacked node table, with parameters as float64 leaves."""
    p = {k: v.detach().double().requires_grad_(v.requires_grad) for k, v in gcn.named_parameters()}
    t = feat.double() @ p["mlp.weight"].T + p["mlp.bias"] if gcn.mlp is not None else feat.double()
    x = F.normalize(torch.cat([p["preference"], t]))
    for layer in range(len(gcn.conv)):
        h = F.leaky_relu(adj @ (x @ p[f"conv.{layer}"]))
        x_hat = F.leaky_relu(x @ p[f"linear.{layer}.weight"].T + p[f"linear.{layer}.bias"]) + ids
        w, b = p[f"combine.{layer}.weight"], p[f"combine.{layer}.bias"]
        x = F.leaky_relu(torch.cat([h, x_hat], 1) @ w.T + b) if concat else F.leaky_relu(h @ w.T + b + x_hat)
    return x, p


# (concat, latent_dim, reg_weight, train_ids, train_preferences, mlp_modalities): MMRec's default (ids and
# preferences frozen, the MLP on the first set only), both trained, and the MLP on two sets: "a" (5 -> 6)
# takes the reassociated product, "c" (7 -> 6) the plain one
CASES = [(True, 6, 0.0, False, False, None), (True, 6, 0.1, False, False, None), (False, 0, 0.1, True, True, None),
         (True, 6, 0.01, True, False, ["a", "c"]), (True, 6, 0.01, False, True, ["c"])]


@pytest.mark.parametrize("concat,latent,reg,train_ids,train_prefs,mlp", CASES)
def test_mmgcn_loss_gradients_and_scores_match_dense_reference(concat, latent, reg, train_ids, train_prefs, mlp):
    torch.manual_seed(0)
    users, items = tiny_graph()
    feats = {"a": torch.randn(N_ITEMS, 5), "b": torch.randn(N_ITEMS, 3), "c": torch.randn(N_ITEMS, 7)}
    model = MMGCN(N_USERS, IdTower(N_ITEMS, DIM), users, items, feats, n_layers=2, latent_dim=latent,
                  concat=concat, reg_weight=reg, mlp_modalities=mlp, train_ids=train_ids,
                  train_preferences=train_prefs)
    with_mlp = {"a"} if mlp is None and latent else set(mlp or [])
    assert {n for n, g in model.gcns.items() if g.mlp is not None} == with_mlp
    g = torch.Generator().manual_seed(1)
    b = {k: torch.randint(0, n, (9,), generator=g) for k, n in (("users", N_USERS), ("pos", N_ITEMS), ("neg", N_ITEMS))}
    model.score(torch.arange(3))  # the constants are made before the loss, and must not go stale
    loss = model.loss(b)
    loss.backward()

    user_w = model.user.weight.detach().double().requires_grad_(train_ids)
    item_w = model.item_tower.embedding.weight.detach().double().requires_grad_(train_ids)
    ids = torch.cat([user_w, item_w])
    adj = dense_mean_adj(users, items)
    outs, params = [], {}
    for name, f in feats.items():
        out, params[name] = dense_gcn(model.gcns[name], f, ids, adj, concat)
        outs.append(out)
    rep = torch.stack(outs).mean(0)
    # MMRec's pairing: each user twice, its positive and negative interleaved
    user_t = b["users"].repeat_interleave(2)
    item_t = torch.stack([b["pos"], b["neg"]]).t().reshape(-1) + N_USERS
    score = (rep[user_t] * rep[item_t]).sum(1).view(-1, 2)
    ref = -torch.log(1e-10 + torch.sigmoid(score[:, 0] - score[:, 1])).mean()
    # the regulariser's terms of what trains (a frozen table's term is a constant)
    reg_term = (ids[user_t] ** 2 + ids[item_t] ** 2).mean() if train_ids else 0.0
    reg_term = reg_term + sum((p["preference"] ** 2).mean() for p in params.values() if train_prefs)
    ref = ref + reg * reg_term
    ref.backward()

    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    if train_ids:
        assert torch.allclose(model.user.weight.grad.double(), user_w.grad, atol=1e-6)
        assert torch.allclose(model.item_tower.embedding.weight.grad.double(), item_w.grad, atol=1e-6)
    else:
        assert model.user.weight.grad is None and model.item_tower.embedding.weight.grad is None
    for name, p in params.items():
        got = dict(model.gcns[name].named_parameters())
        for key, ref_p in p.items():
            if ref_p.requires_grad:
                assert torch.allclose(got[key].grad.double(), ref_p.grad, atol=1e-6), (name, key)
            else:
                assert key == "preference" and got[key].grad is None, (name, key)
    scores = model.score(torch.arange(N_USERS))
    assert torch.allclose(scores.double(), rep[:N_USERS] @ rep[N_USERS:].T, atol=1e-5)


def test_mmgcn_trains_only_what_its_switches_say():
    """MMRec (and the authors' code) never update the id table or the users' preferences:
    off, they are outside the optimizer and stay at their draw through a step; on, they move."""
    users, items = tiny_graph()
    feats = {"a": torch.randn(N_ITEMS, 5), "b": torch.randn(N_ITEMS, 3)}
    g = torch.Generator().manual_seed(1)
    b = {k: torch.randint(0, n, (9,), generator=g) for k, n in (("users", N_USERS), ("pos", N_ITEMS), ("neg", N_ITEMS))}
    for on in (False, True):
        torch.manual_seed(0)
        model = MMGCN(N_USERS, IdTower(N_ITEMS, DIM), users, items, feats, n_layers=2, latent_dim=6,
                      train_ids=on, train_preferences=on)
        tables = [model.user.weight, model.item_tower.embedding.weight] + [m.preference for m in model.gcns.values()]
        before = [t.detach().clone() for t in tables]
        # MMRec's one xavier-normal table over users and items: one scale for both halves
        assert model.user.weight.std().item() == pytest.approx((2 / (N_USERS + N_ITEMS + DIM)) ** 0.5, rel=0.35)
        in_optimizer = {id(p) for group in model.param_groups(None) for p in group["params"]}
        assert all((id(t) in in_optimizer) == on for t in tables)
        opt = torch.optim.Adam([p for group in model.param_groups(None) for p in group["params"]], lr=0.1)
        model.loss(b).backward()
        opt.step()
        assert all(torch.equal(t, t0) != on for t, t0 in zip(tables, before))


def test_mmgcn_scores_follow_loaded_weights():
    """The frozen inputs' aggregations are cached: loading another model's weights replaces them."""
    users, items = tiny_graph()
    feats = {"a": torch.randn(N_ITEMS, 5), "b": torch.randn(N_ITEMS, 3)}
    torch.manual_seed(0)
    a = MMGCN(N_USERS, IdTower(N_ITEMS, DIM), users, items, feats, n_layers=2, latent_dim=6).eval()
    torch.manual_seed(1)
    b = MMGCN(N_USERS, IdTower(N_ITEMS, DIM), users, items, feats, n_layers=2, latent_dim=6).eval()
    everyone = torch.arange(N_USERS)
    assert not torch.allclose(a.score(everyone), b.score(everyone))
    b.load_state_dict(a.state_dict())
    assert torch.allclose(a.score(everyone), b.score(everyone), atol=1e-6)


def test_mmgcn_learns_on_demo(demo):  # noqa: F811
    # cold=False: an item with no training edge has nothing to aggregate, so every layer's
    # aggregation part is zero for it, a signature no warm item has; in training such items only
    # ever appear as negatives, and the combination layers learn to rank that signature last
    # (measured: cold R@20 0.0, as BPR's). With trained ids, warm R@20 measured 0.39 at 40 epochs,
    # popularity 0.325; with frozen ids (the default, as MMRec) it stops early at 0.346 here, trained
    # preferences or not, where the demo's one feature set leaves the random id inputs little else
    # to learn around.
    check_learns(demo, "mmgcn", "model.mmgcn.train_ids=true", epochs=40, cold=False)


def test_mmgcn_resumes_exactly(demo, tmp_path):  # noqa: F811
    check_resume(demo, tmp_path, "mmgcn", "model.mmgcn.latent_dim=32", "model.mmgcn.reg_weight=0.01")


def test_mmgcn_rejects_bad_features_and_settings(demo):  # noqa: F811
    check_bad_features(demo, "mmgcn")
    with pytest.raises(ConfigError, match=r"model\.mmgcn\.modalities"):
        run(demo, "model.name=mmgcn", "model.mmgcn.modalities=[image]", epochs=1)
    with pytest.raises(ConfigError, match="latent_dim"):
        run(demo, "model.name=mmgcn", "model.mmgcn.latent_dim=-1", epochs=1)
