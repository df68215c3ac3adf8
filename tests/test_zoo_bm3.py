"""BM3 against a dense reference written the way MMRec states it (whole tables through the
predictor, then rows gathered), and the zoo's checks on the demo data."""

import pytest
import torch
import torch.nn.functional as F

from pipeline.errors import ConfigError
from pipeline.models.bm3 import BM3
from pipeline.models.towers import IdTower

from test_graph_models import N_ITEMS, N_USERS, batch, dense_lightgcn, dense_norm_adj, random_graph
from test_models import demo, run  # noqa: F401
from zoo_checks import check_bad_features, check_learns, check_resume

DIM = 8


def make(dropout=0.0, trainable=False, n_layers=2):
    torch.manual_seed(0)
    users, items = random_graph(4)
    feats = {"a": torch.randn(N_ITEMS, 6), "b": torch.randn(N_ITEMS, 5), "c": torch.randn(N_ITEMS, 3)}
    model = BM3(N_USERS, IdTower(N_ITEMS, DIM, "xavier_uniform"), users, items, feats, n_layers=n_layers,
                dropout=dropout, reg_weight=0.1, cl_weight=2.0, trainable_features=trainable)
    return model, users, items, feats


@pytest.mark.parametrize("trainable,n_layers", [(False, 1), (True, 2)])
def test_bm3_loss_gradients_and_scores_match_dense_reference(trainable, n_layers):
    model, users, items, feats = make(trainable=trainable, n_layers=n_layers)
    b = batch(5)
    loss = model.loss(b)
    loss.backward()

    user_w = model.user.weight.detach().double().requires_grad_()
    item_w = model.item_tower.embedding.weight.detach().double().requires_grad_()
    pw = model.predictor.weight.detach().double().requires_grad_()
    pb = model.predictor.bias.detach().double().requires_grad_()
    tables = {k: f.double().requires_grad_() for k, f in feats.items()}
    projs = {k: (p.weight.detach().double().requires_grad_(), p.bias.detach().double().requires_grad_())
             for k, p in model.projections.items()}
    u_all, i_all = dense_lightgcn(user_w, item_w, dense_norm_adj(users, items), n_layers)
    i_all = i_all + item_w

    def pred(x):
        return x @ pw.T + pb

    def gap(a, t):
        return 1 - F.cosine_similarity(a, t.detach(), dim=-1).mean()

    u_on, i_on = pred(u_all)[b["users"]], pred(i_all)[b["pos"]]
    u_t, i_t = u_all[b["users"]], i_all[b["pos"]]  # dropout 0: the targets are the online vectors
    ref = gap(u_on, i_t) + gap(i_on, u_t) + 0.1 * (u_all.norm() + i_all.norm()) / N_ITEMS
    for k, (w, bias) in projs.items():
        f = tables[k] @ w.T + bias
        f_on = pred(f)[b["pos"]]
        ref = ref + 2.0 * (gap(f_on, i_t) + gap(f_on, f[b["pos"]]))
    ref.backward()

    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    pairs = [(model.user.weight, user_w), (model.item_tower.embedding.weight, item_w), (model.predictor.weight, pw),
             (model.predictor.bias, pb)]
    pairs += [(model.projections[k].weight, w) for k, (w, _) in projs.items()]
    pairs += [(model.projections[k].bias, bias) for k, (_, bias) in projs.items()]
    for got, want in pairs:
        assert torch.allclose(got.grad.double(), want.grad, atol=1e-6)
    for k, table in model.feature_tables.items():
        if trainable:
            assert torch.allclose(table.grad.double(), tables[k].grad, atol=1e-6)
        else:
            assert table.grad is None and not table.requires_grad
    scores = model.score(torch.arange(N_USERS))
    assert torch.allclose(scores.double(), pred(u_all) @ pred(i_all).T, atol=1e-5)


def test_bm3_targets_are_dropped_out_from_the_global_generator():
    model, *_ = make(dropout=0.5)
    b = batch(6)
    torch.manual_seed(1)
    first = model.loss(b).item()
    torch.manual_seed(1)
    again = model.loss(b).item()
    torch.manual_seed(2)
    other = model.loss(b).item()
    model.dropout = 0.0
    clean = model.loss(b).item()
    assert first == again  # the trainer's checkpointed generator state replays it on resume
    assert first != other and first != clean


def test_bm3_learns(demo):  # noqa: F811
    # cold=False: BM3 ranks items by their id vectors alone (features only steer training), so
    # an item never seen in training has nothing learned to be scored by
    check_learns(demo, "bm3", epochs=30, cold=False)


def test_bm3_resumes(demo, tmp_path):  # noqa: F811
    check_resume(demo, tmp_path, "bm3")


def test_bm3_bad_features_and_settings(demo):  # noqa: F811
    check_bad_features(demo, "bm3")
    with pytest.raises(ConfigError, match=r"model\.bm3\.features: \['nope'\]"):
        run(demo, "model.name=bm3", "model.bm3.features=[nope]", epochs=1)
    with pytest.raises(ConfigError, match=r"model\.bm3\.dropout"):
        run(demo, "model.name=bm3", "model.bm3.dropout=1.5", epochs=1)
