"""MGCN against a dense reference written the way the paper (and MMRec) states it: one
symmetric normalised (users + items) adjacency, dense similarity-weighted kNN graphs, the
fuser's attention and gates as plain formulas. Then the zoo's checks on the demo data."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.errors import ConfigError
from pipeline.models.mgcn import MGCN, info_nce, similarity_knn_graph
from pipeline.models.towers import IdTower

from test_models import demo, run  # noqa: F401
from zoo_checks import check_bad_features, check_learns, check_resume

N_USERS, N_ITEMS, DIM = 30, 25, 8


def random_graph(seed=0):
    rng = np.random.default_rng(seed)
    users = np.concatenate([rng.integers(0, N_USERS, 200), np.arange(N_USERS)])
    items = np.concatenate([rng.integers(0, N_ITEMS, 200), np.arange(N_USERS) % N_ITEMS])
    return users, items


def dense_knn(x, k):
    """MMRec's build_sim + build_knn_normalized_graph(norm_type='sym'), densely."""
    x = x.double()
    xn = x / x.norm(dim=1, keepdim=True)
    sim = xn @ xn.T
    val, ind = sim.topk(k, dim=1)
    adj = torch.zeros_like(sim).scatter_(1, ind, val)
    d = adj.sum(1) ** -0.5
    return d[:, None] * adj * d[None, :]


def test_similarity_graph_matches_dense_construction():
    x = torch.rand(N_ITEMS, 5)  # non-negative, as CNN features: every row sum is positive
    assert torch.allclose(similarity_knn_graph(x, 4).to_dense().double(), dense_knn(x, 4), atol=1e-6)


def dense_reference(model, params, users, items, graphs, b, k_layers=1, ui_layers=2):
    """loss and all embeddings from plain dense formulas, over ``params`` (float64 leaves)."""
    n = N_USERS + N_ITEMS
    edges = np.unique(users * N_ITEMS + items)
    a = torch.zeros(n, n, dtype=torch.float64)
    a[edges // N_ITEMS, N_USERS + edges % N_ITEMS] = 1.0
    a = a + a.T
    d = a.sum(1) ** -0.5
    adj = d[:, None] * a * d[None, :]
    x = torch.cat([params["user"], params["item"]])
    layers = [x]
    for _ in range(ui_layers):
        layers.append(adj @ layers[-1])
    content = torch.stack(layers).mean(0)
    r = adj[:N_USERS, N_USERS:]
    views = []
    for name, g in graphs.items():
        feats = params[f"{name}.table"] @ params[f"{name}.proj.w"].T + params[f"{name}.proj.b"]
        h = params["item"] * torch.sigmoid(feats @ params[f"{name}.pur.w"].T + params[f"{name}.pur.b"])
        for _ in range(k_layers):
            h = g @ h
        views.append(torch.cat([r @ h, h]))
    att = torch.cat([torch.tanh(v @ params["q1.w"].T + params["q1.b"]) @ params["q2.w"].T for v in views], dim=1)
    w = torch.softmax(att, dim=1)
    common = sum(w[:, m:m + 1] * v for m, v in enumerate(views))
    side = common
    for name, v in zip(graphs, views):
        side = side + torch.sigmoid(content @ params[f"{name}.pref.w"].T + params[f"{name}.pref.b"]) * (v - common)
    side = side / (len(views) + 1)
    allv = content + side
    u, p, ng = allv[b["users"]], allv[N_USERS + b["pos"]], allv[N_USERS + b["neg"]]
    bpr = -torch.mean(F.logsigmoid((u * p).sum(1) - (u * ng).sum(1)))
    reg = 0.5 * (u ** 2).sum() + 0.5 * (p ** 2).sum() + 0.5 * (ng ** 2).sum()

    def nce(v1, v2):  # MMRec's InfoNCE, written as there
        v1, v2 = F.normalize(v1, dim=1), F.normalize(v2, dim=1)
        pos = torch.exp((v1 * v2).sum(-1) / 0.2)
        ttl = torch.exp(v1 @ v2.T / 0.2).sum(1)
        return torch.mean(-torch.log(pos / ttl))

    cl = nce(side[N_USERS + b["pos"]], content[N_USERS + b["pos"]]) + nce(side[b["users"]], content[b["users"]])
    loss = bpr + model.reg_weight * reg / len(b["users"]) + model.cl_weight * cl
    return loss, allv


def leaves(model):
    out = {"user": model.user.weight, "item": model.item_tower.embedding.weight,
           "q1.w": model.query[0].weight, "q1.b": model.query[0].bias, "q2.w": model.query[2].weight}
    for name in model.names:
        out[f"{name}.table"] = model.feature_tables[name]
        out[f"{name}.proj.w"], out[f"{name}.proj.b"] = model.projections[name].weight, model.projections[name].bias
        out[f"{name}.pur.w"], out[f"{name}.pur.b"] = model.purifiers[name][0].weight, model.purifiers[name][0].bias
        pref = model.preferences[name][0]
        out[f"{name}.pref.w"], out[f"{name}.pref.b"] = pref.weight, pref.bias
    return out


@pytest.mark.parametrize("n_modalities,trainable", [(1, False), (2, True), (3, False)])
def test_mgcn_loss_gradients_and_scores_match_dense_reference(n_modalities, trainable):
    torch.manual_seed(0)
    users, items = random_graph(1)
    feats = {f"m{j}": torch.rand(N_ITEMS, 4 + j) for j in range(n_modalities)}
    graphs = {n: similarity_knn_graph(f, 4) for n, f in feats.items()}
    model = MGCN(N_USERS, IdTower(N_ITEMS, DIM, "xavier_uniform"), users, items, graphs, feats, n_ui_layers=2,
                 n_layers=1, reg_weight=0.1, cl_weight=0.5, trainable_features=trainable)
    g = torch.Generator().manual_seed(2)
    b = {"users": torch.randint(0, N_USERS, (16,), generator=g), "pos": torch.randint(0, N_ITEMS, (16,), generator=g),
         "neg": torch.randint(0, N_ITEMS, (16,), generator=g)}
    loss = model.loss(b)
    loss.backward()

    params = {k: p.detach().double().requires_grad_() for k, p in leaves(model).items()}
    dense_graphs = {n: dense_knn(f, 4) for n, f in feats.items()}
    ref, allv = dense_reference(model, params, users, items, dense_graphs, b)
    ref.backward()

    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    for k, p in leaves(model).items():
        if k.endswith(".table") and not trainable:
            assert p.grad is None and not p.requires_grad
            continue
        assert p.grad is not None, k
        assert torch.allclose(p.grad.double(), params[k].grad, atol=1e-6), k
    with torch.no_grad():
        scores = model.score(torch.arange(N_USERS))
    assert torch.allclose(scores.double(), allv[:N_USERS] @ allv[N_USERS:].T, atol=1e-5)


def test_counted_info_nce_equals_the_repeated_rows():
    """A batch's repeated users / items enter the InfoNCE once with their counts: value and
    gradients must be those of the naive formula over the rows as they repeat in the batch."""
    g = torch.Generator().manual_seed(3)
    a0, b0 = torch.randn(7, 5, generator=g, dtype=torch.float64), torch.randn(7, 5, generator=g, dtype=torch.float64)
    picks = torch.tensor([0, 3, 3, 1, 6, 3, 0, 2, 5, 4, 6, 6])
    distinct, counts = picks.unique(return_counts=True)
    a, b = a0.clone().requires_grad_(), b0.clone().requires_grad_()
    counted = info_nce(a[distinct], b[distinct], 0.2, counts)
    counted.backward()
    ra, rb = a0.clone().requires_grad_(), b0.clone().requires_grad_()
    va, vb = F.normalize(ra[picks], dim=1), F.normalize(rb[picks], dim=1)
    naive = torch.mean(-torch.log(torch.exp((va * vb).sum(-1) / 0.2) / torch.exp(va @ vb.T / 0.2).sum(1)))
    naive.backward()
    assert counted.item() == pytest.approx(naive.item(), rel=1e-12)
    assert torch.allclose(a.grad, ra.grad, atol=1e-12) and torch.allclose(b.grad, rb.grad, atol=1e-12)
    plain = info_nce(a0[picks], b0[picks], 0.2)  # no counts: every row its own
    assert plain.item() == pytest.approx(naive.item(), rel=1e-12)


def test_mgcn_learns_on_demo(demo):  # noqa: F811
    check_learns(demo, "mgcn", epochs=30)


def test_mgcn_resumes_exactly(demo, tmp_path):  # noqa: F811
    check_resume(demo, tmp_path, "mgcn")


def test_mgcn_bad_features_and_settings(demo):  # noqa: F811
    check_bad_features(demo, "mgcn")
    with pytest.raises(ConfigError, match=r"model\.mgcn\.modalities"):
        run(demo, "model.name=mgcn", "model.mgcn.modalities=[attrs,video]", epochs=1)
    with pytest.raises(ConfigError, match=r"model\.mgcn\.knn_k"):
        run(demo, "model.name=mgcn", "model.mgcn.knn_k=1000", epochs=1)
