"""LATTICE against a dense reference written the way MMRec states it (dense similarity matrices,
top-k by scatter, ``D^-1/2 A D^-1/2`` by diagonal matrices, the ``D^-1 (A + I)`` user-item
graph as one square matrix), plus the zoo's checks on the demo data."""

import numpy as np
import pytest
import torch

from pipeline.errors import ConfigError
from pipeline.models.lattice import LATTICE, raw_feature_graph
from pipeline.models.towers import IdTower

from test_models import demo, run  # noqa: F401
from zoo_checks import check_bad_features, check_learns, check_resume

N_USERS, N_ITEMS, DIM, K = 30, 25, 8, 4


def random_graph(seed=0):
    rng = np.random.default_rng(seed)
    users = np.concatenate([rng.integers(0, N_USERS, 200), np.arange(N_USERS)])
    items = np.concatenate([rng.integers(0, N_ITEMS, 200), np.arange(N_USERS) % N_ITEMS])
    return users, items


def dense_knn(x, k):
    z = x / x.norm(dim=1, keepdim=True)
    sim = z @ z.T
    val, ind = sim.topk(k, dim=-1)
    return torch.zeros_like(sim).scatter(-1, ind, val)


def laplacian(adj):
    d = adj.sum(-1).pow(-0.5)
    d[torch.isinf(d)] = 0.0
    return torch.diag(d) @ adj @ torch.diag(d)


def dense_ui_adj(users, items):
    n = N_USERS + N_ITEMS
    a = torch.zeros(n, n, dtype=torch.float64)
    a[users, N_USERS + items] = 1.0  # repeated interactions: one edge
    a[N_USERS + items, users] = 1.0
    a = a + torch.eye(n, dtype=torch.float64)
    return a / a.sum(1, keepdim=True)


def reference(model, feats, users, items, b, n_layers, n_ui_layers, lam, reg, graph=None):
    """MMRec's forward and loss in float64; returns (loss, scores, leaves, graph)."""
    leaves = {"user": model.user.weight, "item": model.item_tower.embedding.weight,
              "modal": model.modal_weight}
    for k, p in model.projections.items():
        leaves[f"w_{k}"], leaves[f"b_{k}"] = p.weight, p.bias
        leaves[f"x_{k}"] = model.feature_tables[k]
    leaves = {k: v.detach().double().requires_grad_() for k, v in leaves.items()}
    if graph is None:
        w = torch.softmax(leaves["modal"], 0)
        learned = sum(w[m] * dense_knn(leaves[f"x_{k}"] @ leaves[f"w_{k}"].T + leaves[f"b_{k}"], K)
                      for m, k in enumerate(feats))
        raw = sum(w[m] * laplacian(dense_knn(feats[k].double(), K)) for m, k in enumerate(feats))
        graph = (1 - lam) * laplacian(learned) + lam * raw
    h = leaves["item"]
    for _ in range(n_layers):
        h = graph @ h
    x = torch.cat([leaves["user"], leaves["item"]])
    layers = [x]
    adj = dense_ui_adj(users, items)
    for _ in range(n_ui_layers):
        x = adj @ x
        layers.append(x)
    mean = torch.stack(layers, 1).mean(1)
    u_all, i_all = mean[:N_USERS], mean[N_USERS:] + torch.nn.functional.normalize(h, dim=1)
    u, p, n = u_all[b["users"]], i_all[b["pos"]], i_all[b["neg"]]
    loss = -torch.nn.functional.logsigmoid((u * p).sum(-1) - (u * n).sum(-1)).mean()
    loss = loss + reg * 0.5 * ((u ** 2).sum() + (p ** 2).sum() + (n ** 2).sum()) / len(u)
    return loss, u_all @ i_all.T, leaves, graph.detach()


def batch(seed, n=16):
    g = torch.Generator().manual_seed(seed)
    return {"users": torch.randint(0, N_USERS, (n,), generator=g), "pos": torch.randint(0, N_ITEMS, (n,), generator=g),
            "neg": torch.randint(0, N_ITEMS, (n,), generator=g)}


def grads(model):
    out = {"user": model.user.weight.grad, "item": model.item_tower.embedding.weight.grad,
           "modal": model.modal_weight.grad}
    for k, p in model.projections.items():
        out[f"w_{k}"], out[f"b_{k}"], out[f"x_{k}"] = p.weight.grad, p.bias.grad, model.feature_tables[k].grad
    return out


@pytest.mark.parametrize("n_layers,n_ui_layers,reg", [(1, 2, 0.0), (2, 1, 0.1), (1, 0, 0.01)])
def test_lattice_loss_gradients_and_scores_match_dense_reference(n_layers, n_ui_layers, reg):
    torch.manual_seed(0)
    users, items = random_graph()
    feats = {"a": torch.randn(N_ITEMS, 6), "b": torch.rand(N_ITEMS, 5)}
    raw = {k: raw_feature_graph(f, K) for k, f in feats.items()}
    model = LATTICE(N_USERS, IdTower(N_ITEMS, DIM, "xavier_uniform"), users, items, feats, raw, feat_embed_dim=7,
                    knn_k=K, lambda_coeff=0.7, n_layers=n_layers, n_ui_layers=n_ui_layers, reg_weight=reg,
                    trainable_features=True)
    with torch.no_grad():
        model.modal_weight.copy_(torch.tensor([0.2, 0.9]))  # unequal: the weights' gradient shows
    model.pre_epoch(0)
    settings = dict(n_layers=n_layers, n_ui_layers=n_ui_layers, lam=0.7, reg=reg)

    # the epoch's first batch builds the learned graph, with gradients into everything
    b = batch(1)
    loss = model.loss(b)
    loss.backward()
    ref, scores, leaves, graph = reference(model, feats, users, items, b, **settings)
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    got = grads(model)
    for k, leaf in leaves.items():
        assert got[k] is not None and torch.allclose(got[k].double(), leaf.grad, atol=1e-6), k
    assert leaves["modal"].grad.abs().sum() > 0 and leaves["w_a"].grad.abs().sum() > 0

    # later batches of the epoch hold that graph fixed: only the embeddings get gradients
    model.zero_grad(set_to_none=True)
    b = batch(2)
    loss = model.loss(b)
    loss.backward()
    ref, _, leaves, _ = reference(model, feats, users, items, b, graph=graph, **settings)
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    got = grads(model)
    for k in ("user", "item"):
        assert torch.allclose(got[k].double(), leaves[k].grad, atol=1e-6), k
    assert all(got[k] is None for k in got if k not in ("user", "item"))

    with torch.no_grad():
        assert torch.allclose(model.score(torch.arange(N_USERS)).double(), scores, atol=1e-5)
        # scores are kept per version of the weights: an update shows at once
        model.projections["a"].weight.mul_(-1.0)
        _, flipped, _, _ = reference(model, feats, users, items, b, **settings)
        assert torch.allclose(model.score(torch.arange(N_USERS)).double(), flipped.detach(), atol=1e-5)
        assert not torch.allclose(flipped, scores, atol=1e-5)
    # a fused optimizer updates in place without a version bump: the trainer's mode switch resets
    opt = torch.optim.Adam(model.parameters(), lr=0.1, fused=True)
    model.loss(batch(3)).backward()
    opt.step()
    model.eval()
    _, stepped, _, _ = reference(model, feats, users, items, b, **settings)
    with torch.no_grad():
        assert torch.allclose(model.score(torch.arange(N_USERS)).double(), stepped.detach(), atol=1e-5)


def test_lattice_raw_graph_is_mmrec_dense_knn_laplacian():
    x = torch.randn(N_ITEMS, 6)
    assert torch.allclose(raw_feature_graph(x, K).to_dense(), laplacian(dense_knn(x, K)), atol=1e-6)


def test_lattice_learns_on_demo(demo):  # noqa: F811
    check_learns(demo, "lattice", epochs=12)


def test_lattice_resumes_exactly(demo, tmp_path):  # noqa: F811
    check_resume(demo, tmp_path, "lattice")


def test_lattice_bad_features_and_settings(demo):  # noqa: F811
    check_bad_features(demo, "lattice")
    with pytest.raises(ConfigError, match=r"model\.lattice\.knn_k"):
        run(demo, "model.name=lattice", "model.lattice.knn_k=100000", epochs=1)
    with pytest.raises(ConfigError, match=r"model\.lattice\.modalities"):
        run(demo, "model.name=lattice", "model.lattice.modalities=[nope]", epochs=1)
