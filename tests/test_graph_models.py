"""LightGCN and FREEDOM against dense references written the way the papers (and MMRec) state
them: one symmetric normalised (users + items) adjacency, the mean of the layer outputs, rows
gathered by plain indexing. Loss and every parameter's gradient must agree."""

import numpy as np
import pytest
import torch

from pipeline.models.freedom import FREEDOM
from pipeline.models.graphs import knn_graph
from pipeline.models.lightgcn import LightGCN
from pipeline.models.towers import IdTower

N_USERS, N_ITEMS, DIM = 30, 25, 8


def random_graph(seed=0):
    rng = np.random.default_rng(seed)
    users = rng.integers(0, N_USERS, 200)
    items = rng.integers(0, N_ITEMS, 200)
    users = np.concatenate([users, np.arange(N_USERS)])  # every user and item has an edge
    items = np.concatenate([items, np.arange(N_USERS) % N_ITEMS])
    return users, items


def dense_norm_adj(users, items):
    a = torch.zeros(N_USERS + N_ITEMS, N_USERS + N_ITEMS, dtype=torch.float64)
    a[users, N_USERS + items] = 1.0
    a[N_USERS + items, users] = 1.0
    d = (a.sum(1) + 1e-7) ** -0.5
    return d[:, None] * a * d[None, :]


def dense_lightgcn(user_w, item_w, adj, n_layers):
    x = torch.cat([user_w, item_w]).double()
    layers = [x]
    for _ in range(n_layers):
        x = adj @ x
        layers.append(x)
    mean = torch.stack(layers, 1).mean(1)
    return mean[:N_USERS], mean[N_USERS:]


def batch(seed=1, n=16):
    g = torch.Generator().manual_seed(seed)
    return {"users": torch.randint(0, N_USERS, (n,), generator=g), "pos": torch.randint(0, N_ITEMS, (n,), generator=g),
            "neg": torch.randint(0, N_ITEMS, (n,), generator=g)}


def bpr(u, p, n):
    return -torch.log(1e-10 + torch.sigmoid((u * p).sum(-1) - (u * n).sum(-1))).mean()


@pytest.mark.parametrize("n_layers", [1, 2, 3])
def test_lightgcn_loss_and_gradients_match_dense_reference(n_layers):
    torch.manual_seed(0)
    users, items = random_graph()
    model = LightGCN(N_USERS, IdTower(N_ITEMS, DIM, "xavier_uniform"), users, items, n_layers=n_layers,
                     reg_weight=0.01)
    b = batch()
    loss = model.loss(b)
    loss.backward()

    user_w = model.user.weight.detach().double().requires_grad_()
    item_w = model.item_tower.embedding.weight.detach().double().requires_grad_()
    u_all, i_all = dense_lightgcn(user_w, item_w, dense_norm_adj(users, items), n_layers)
    u, p, n = u_all[b["users"]], i_all[b["pos"]], i_all[b["neg"]]
    reg = (user_w[b["users"]].norm() + item_w[b["pos"]].norm() + item_w[b["neg"]].norm()) / len(b["users"])
    ref = bpr(u, p, n) + 0.01 * reg
    ref.backward()

    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert torch.allclose(model.user.weight.grad.double(), user_w.grad, atol=1e-6)
    assert torch.allclose(model.item_tower.embedding.weight.grad.double(), item_w.grad, atol=1e-6)
    assert model.r.crow_indices().dtype == torch.int32  # the sparse BLAS takes these without converting
    # scoring uses the same propagated embeddings
    scores = model.score(torch.arange(N_USERS))
    assert torch.allclose(scores.double(), u_all @ i_all.T, atol=1e-5)


@pytest.mark.parametrize("reg_weight,trainable", [(0.0, False), (0.5, False), (0.5, True)])
def test_freedom_loss_and_gradients_match_dense_reference(reg_weight, trainable):
    torch.manual_seed(0)
    users, items = random_graph(2)
    feats = {"a": torch.randn(N_ITEMS, 6), "b": torch.randn(N_ITEMS, 4)}
    weights = {"a": 0.3, "b": 0.7}
    graph = knn_graph(feats, weights, k=4)
    model = FREEDOM(N_USERS, IdTower(N_ITEMS, DIM, "xavier_uniform"), users, items, graph, feats,
                    n_ui_layers=2, n_mm_layers=1, dropout=0.0, reg_weight=reg_weight, trainable_features=trainable)
    model.pre_epoch(0)  # dropout 0: the epoch's graph is the full graph
    b = batch(3)
    loss = model.loss(b)
    loss.backward()

    user_w = model.user.weight.detach().double().requires_grad_()
    item_w = model.item_tower.embedding.weight.detach().double().requires_grad_()
    tables = {k: f.double().requires_grad_() for k, f in feats.items()}
    projs = {k: (p.weight.detach().double().requires_grad_(), p.bias.detach().double().requires_grad_())
             for k, p in model.projections.items()}
    edges = np.unique(users * N_ITEMS + items)  # FREEDOM's graph has each edge once
    u_all, i_all = dense_lightgcn(user_w, item_w, dense_norm_adj(edges // N_ITEMS, edges % N_ITEMS), 2)
    i_all = i_all + graph.to_dense().double() @ item_w

    def bpr_terms(u, p, n):  # the paper's code: project every item, then pick the batch's rows
        return -torch.nn.functional.logsigmoid((u * p).sum(-1) - (u * n).sum(-1)).mean()

    u = u_all[b["users"]]
    ref = bpr_terms(u, i_all[b["pos"]], i_all[b["neg"]])
    for k, (w, bias) in projs.items():
        projected = tables[k] @ w.T + bias
        ref = ref + reg_weight * bpr_terms(u, projected[b["pos"]], projected[b["neg"]])
    ref.backward()

    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert torch.allclose(model.user.weight.grad.double(), user_w.grad, atol=1e-6)
    assert torch.allclose(model.item_tower.embedding.weight.grad.double(), item_w.grad, atol=1e-6)
    for k, (w, _) in projs.items():
        got = model.projections[k].weight.grad  # None when the terms are off (reg_weight 0)
        assert torch.allclose(torch.zeros_like(w) if got is None else got.double(), w.grad, atol=1e-6)
        table = model.feature_tables[k]
        if trainable:
            assert torch.allclose(table.grad.double(), tables[k].grad, atol=1e-6)
        else:
            assert table.grad is None and not table.requires_grad
    if reg_weight:
        assert any(w.grad.abs().sum() > 0 for w, _ in projs.values())
