"""GRCN against a dense reference written the paper's way (one (users + items) node table, dense
score matrices masked by the adjacency, softmax over each node's neighbours, the refined graph
as a dense weight matrix), and on the demo data: it learns, resumes exactly, and rejects bad
features and settings."""

import pytest
import torch
import torch.nn.functional as F

from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.models.grcn import GRCN
from pipeline.models.towers import IdTower

from test_models import DEMO, demo, run  # noqa: F401
from test_zoo_mmgcn import tiny_graph  # the same 12 x 10 graph: the last user and item have no edge
from zoo_checks import check_bad_features, check_learns, check_resume

N_USERS, N_ITEMS, DIM, C = 12, 10, 4, 3


def adjacency(users, items):
    n = N_USERS + N_ITEMS
    a = torch.zeros(n, n, dtype=torch.bool)
    a[users, N_USERS + items] = True
    a[N_USERS + items, users] = True
    return a


def attention(x, adj):
    """alpha[t, s]: softmax over t's neighbours s of <x_t, x_s>; zero off the graph."""
    logits = (x @ x.T).masked_fill(~adj, -torch.inf)
    return torch.nan_to_num(torch.softmax(logits, dim=1))  # a node with no neighbour: a zero row


def dense_content(graph, feat, adj, n_routing):
    pref = graph.preference.detach().double().requires_grad_()
    w, b = graph.mlp.weight.detach().double().requires_grad_(), graph.mlp.bias.detach().double().requires_grad_()
    f = F.normalize(F.leaky_relu(feat.double() @ w.T + b))
    p = F.normalize(pref)
    for _ in range(n_routing):  # each user's preference moves toward its items' content
        x = torch.cat([p, f])
        p = F.normalize(p + (attention(x, adj) @ x)[:N_USERS])
    x = torch.cat([p, f])
    alpha = attention(x, adj)
    return x + alpha @ x, alpha, {"preference": pref, "mlp.weight": w, "mlp.bias": b}


@pytest.mark.parametrize("n_routing,reg", [(0, 0.0), (2, 0.1), (3, 0.01)])
def test_grcn_loss_gradients_and_scores_match_dense_reference(n_routing, reg):
    torch.manual_seed(0)
    users, items = tiny_graph()
    feats = {"a": torch.randn(N_ITEMS, 5), "b": torch.randn(N_ITEMS, 3), "c": torch.randn(N_ITEMS, 7)}
    model = GRCN(N_USERS, IdTower(N_ITEMS, DIM), users, items, feats, content_dim=C, n_routing=n_routing,
                 reg_weight=reg)
    with torch.no_grad():  # larger confidences than the init's: more edges survive and matter
        model.confidence.normal_()
    g = torch.Generator().manual_seed(1)
    b = {k: torch.randint(0, n, (9,), generator=g) for k, n in (("users", N_USERS), ("pos", N_ITEMS), ("neg", N_ITEMS))}
    loss = model.loss(b)
    loss.backward()

    user_w = model.user.weight.detach().double().requires_grad_()
    item_w = model.item_tower.embedding.weight.detach().double().requires_grad_()
    conf = model.confidence.detach().double().requires_grad_()
    adj = adjacency(users, items)
    reps, alphas, params = [], [], {}
    for name, f in feats.items():
        rep, alpha, params[name] = dense_content(model.content[name], f, adj, n_routing)
        reps.append(rep)
        alphas.append(alpha)
    # the refined graph: message s -> t weighted by relu(max over modalities of alpha[t, s] * conf[s])
    weight = torch.relu(torch.stack([a * conf[:, m][None, :] for m, a in enumerate(alphas)]).amax(0)) * adj
    x0 = F.normalize(torch.cat([user_w, item_w]))
    x1 = weight @ x0
    rep = torch.cat([x0 + x1 + weight @ x1, *reps], 1)
    user_t = b["users"].repeat_interleave(2)
    item_t = torch.stack([b["pos"], b["neg"]]).t().reshape(-1) + N_USERS
    score = (rep[user_t] * rep[item_t]).sum(1).view(-1, 2)
    ref = -torch.log(1e-10 + torch.sigmoid(score[:, 0] - score[:, 1])).mean()
    ids = torch.cat([user_w, item_w])
    reg_term = (ids[user_t] ** 2 + ids[item_t] ** 2).mean()
    reg_term = reg_term + sum((p["preference"][user_t] ** 2).mean() for p in params.values())
    ref = ref + reg * reg_term
    ref.backward()

    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert torch.allclose(model.user.weight.grad.double(), user_w.grad, atol=1e-6)
    assert torch.allclose(model.item_tower.embedding.weight.grad.double(), item_w.grad, atol=1e-6)
    assert torch.allclose(model.confidence.grad.double(), conf.grad, atol=1e-6)
    assert conf.grad.abs().sum() > 0  # the refined graph is learned
    for name, p in params.items():
        for key, ref_p in p.items():
            got = dict(model.content[name].named_parameters())[key].grad
            assert torch.allclose(got.double(), ref_p.grad, atol=1e-6), (name, key)
    scores = model.score(torch.arange(N_USERS))
    assert torch.allclose(scores.double(), rep[:N_USERS] @ rep[N_USERS:].T, atol=1e-5)


def test_grcn_routing_moves_preferences():
    # MMRec's routing writes to item rows and reads user rows, so it never changes anything;
    # here more rounds must change the content vectors of users with items
    torch.manual_seed(0)
    users, items = tiny_graph()
    feats = {"a": torch.randn(N_ITEMS, 5)}
    model = GRCN(N_USERS, IdTower(N_ITEMS, DIM), users, items, feats, content_dim=C, n_routing=0)
    graph, f = model.content["a"], model.feat_a
    u0 = graph(f, model.edges(), 0)[0]
    u2 = graph(f, model.edges(), 2)[0]
    assert (u0[:-1] - u2[:-1]).abs().amax(1).min() > 1e-4  # every user with an item moved
    assert torch.allclose(u0[-1], u2[-1])  # the user without items keeps its preference


def test_grcn_zero_rounds_is_mmrecs_routing():
    # MMRec's (and the released code's) routing, written naively: messages along user -> item edges
    # only, summed at each target, and the preference update reads the user rows. Its rounds leave
    # every preference where it was, so its content vectors are those of our default 0 rounds
    torch.manual_seed(0)
    users, items = tiny_graph()
    feats = {"a": torch.randn(N_ITEMS, 5)}
    model = GRCN(N_USERS, IdTower(N_ITEMS, DIM), users, items, feats, content_dim=C)
    assert model.n_routing == 0
    graph = model.content["a"]
    with torch.no_grad():
        f = F.normalize(F.leaky_relu(model.feat_a @ graph.mlp.weight.T + graph.mlp.bias))
        p = F.normalize(graph.preference)
        to_items = torch.zeros(N_USERS + N_ITEMS, N_USERS + N_ITEMS, dtype=torch.bool)
        to_items[N_USERS + torch.as_tensor(items), torch.as_tensor(users)] = True  # [target, source]
        for _ in range(3):  # MMRec's n_layers
            x = torch.cat([p, f])
            p = F.normalize(p + (attention(x, to_items) @ x)[:N_USERS])
        x = torch.cat([p, f])
        ref = x + attention(x, adjacency(users, items)) @ x
        got_u, got_i, _, _ = graph(model.feat_a, model.edges(), model.n_routing)
    assert torch.allclose(torch.cat([got_u, got_i]), ref, atol=1e-6)


def test_grcn_routing_default_and_paper_setting(demo):  # noqa: F811
    def rounds(*extra):
        return load_config(DEMO, [*demo[0], "model.name=grcn", *extra]).model.params.n_routing

    assert rounds() == 0  # chosen on validation (grcn.py's docstring)
    assert rounds("model.grcn.n_routing=3") == 3  # the paper's rounds stay reachable
    with pytest.raises(ConfigError, match="n_routing"):
        run(demo, "model.name=grcn", "model.grcn.n_routing=-1", epochs=1)


def test_grcn_learns_on_demo(demo):  # noqa: F811
    # measured at the defaults (0 routing rounds, reg_weight 0.1; popularity 0.325, BPR cold 0.003):
    # warm R@20 0.46, cold 0.059 (best epoch 5 of 30; seeds 1 / 2: cold 0.056 / 0.034). The paper's
    # 3 rounds wanted reg_weight 1.0 here (warm 0.50, cold 0.028; cold 0.023 at 0.1)
    check_learns(demo, "grcn", epochs=30)


@pytest.mark.parametrize("rounds", [0, 3])
def test_grcn_resumes_exactly(demo, tmp_path, rounds):  # noqa: F811
    check_resume(demo, tmp_path, "grcn", f"model.grcn.n_routing={rounds}")


def test_grcn_rejects_bad_features_and_settings(demo):  # noqa: F811
    check_bad_features(demo, "grcn")
    with pytest.raises(ConfigError, match=r"model\.grcn\.modalities"):
        run(demo, "model.name=grcn", "model.grcn.modalities=[image]", epochs=1)
    with pytest.raises(ConfigError, match="content_dim"):
        run(demo, "model.name=grcn", "model.grcn.content_dim=0", epochs=1)
