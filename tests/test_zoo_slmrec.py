"""SLMRec against a dense reference written the way MMRec states it (one LightGCN per modality
over the dense adjacency, concatenation, FAC's chain step by step), and the zoo's checks."""

import pytest
import torch

from pipeline.errors import ConfigError
from pipeline.models.slmrec import SLMRec
from pipeline.models.towers import IdTower

from test_graph_models import N_ITEMS, N_USERS, batch, dense_lightgcn, dense_norm_adj, random_graph
from test_models import demo, run  # noqa: F401
from zoo_checks import check_bad_features, check_learns, check_resume

DIM = 8


def infonce(q, k, t):  # -mean log softmax of the diagonal, written out
    logits = q @ k.T / t
    return -(logits.diag() - logits.logsumexp(dim=1)).mean()


@pytest.mark.parametrize("n_feats", [1, 3])
def test_slmrec_loss_gradients_and_scores_match_dense_reference(n_feats):
    torch.manual_seed(0)
    users, items = random_graph(7)
    widths = [6, 5, 3][:n_feats]
    feats = {f"m{k}": torch.randn(N_ITEMS, w) for k, w in enumerate(widths)}
    model = SLMRec(N_USERS, IdTower(N_ITEMS, DIM, "xavier_uniform"), users, items, feats, n_layers=2, temp=0.2,
                   ssl_temp=0.5, ssl_alpha=0.3)
    b = batch(8)
    # repeated positives, as real batches have: FAC weighs a repeated item's one row by its count
    b["pos"][[3, 5]] = int(b["pos"][0])
    assert len(torch.unique(b["pos"])) < len(b["pos"])
    loss = model.loss(b)
    loss.backward()

    p = {n: w.detach().double().requires_grad_() for n, w in model.named_parameters()}
    adj = dense_norm_adj(users, items)
    lin = lambda x, name: x @ p[f"{name}.weight"].T + p[f"{name}.bias"]  # noqa: E731
    u_parts, i_parts = [], []
    u_id, i_id = dense_lightgcn(p["user.weight"], p["item_tower.embedding.weight"], adj, 2)
    u_parts.append(u_id)
    i_parts.append(i_id)
    for name, f in feats.items():
        x = f.double() / f.double().norm(dim=1, keepdim=True)
        u_m, i_m = dense_lightgcn(p["user.weight"], lin(x, f"dense.{name}"), adj, 2)
        u_parts.append(u_m)
        i_parts.append(i_m)
    user = lin(torch.cat(u_parts, 1), "user_out")
    item = lin(torch.cat(i_parts, 1), "item_out")
    un = torch.nn.functional.normalize(user[b["users"]], dim=1)
    pn = torch.nn.functional.normalize(item[b["pos"]], dim=1)
    ref = infonce(un, pn, 0.2)
    z, ssl = i_parts[0][b["pos"]], 0.0
    for k, name in enumerate(feats):
        z = lin(z, f"chain.{k}")
        ssl = ssl + infonce(z, lin(i_parts[k + 1][b["pos"]], f"keys.{name}"), 0.5)
    ref = ref + 0.3 * ssl
    ref.backward()

    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    for n, w in model.named_parameters():
        assert torch.allclose(w.grad.double(), p[n].grad, atol=1e-6), n
    # the last space is the coarse one when there are several feature sets
    assert model.keys[f"m{n_feats - 1}"].out_features == (DIM // 2 if n_feats > 1 else DIM)
    scores = model.score(torch.arange(N_USERS))
    assert torch.allclose(scores.double(), user @ item.T, atol=1e-5)
    # the optimizer's weight decay (MMRec's regulariser) covers every parameter
    groups = model.param_groups(None)
    assert groups[0]["weight_decay"] == 1e-4 and len(groups[0]["params"]) == len(list(model.parameters()))


def test_slmrec_learns(demo):  # noqa: F811
    check_learns(demo, "slmrec", epochs=8)


def test_slmrec_resumes(demo, tmp_path):  # noqa: F811
    check_resume(demo, tmp_path, "slmrec")


def test_slmrec_bad_features_and_settings(demo):  # noqa: F811
    check_bad_features(demo, "slmrec")
    with pytest.raises(ConfigError, match=r"model\.slmrec\.features: \['nope'\]"):
        run(demo, "model.name=slmrec", "model.slmrec.features=[nope]", epochs=1)
    with pytest.raises(ConfigError, match=r"model\.slmrec"):
        run(demo, "model.name=slmrec", "model.dim=1", epochs=1)
    with pytest.raises(ConfigError, match=r"model\.slmrec\.temp"):
        run(demo, "model.name=slmrec", "model.slmrec.temp=0", epochs=1)
