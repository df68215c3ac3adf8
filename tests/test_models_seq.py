"""Two-tower and SASRec: they learn on the demo data, content carries cold items, SASRec reads
order, history users see what they should, the logQ loss is right, resume is exact (dropout
included), and bad settings name their key."""

import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from pipeline.config import load_config
from pipeline.data import prepare
from pipeline.errors import ConfigError
from pipeline.eval import Evaluator
from pipeline.models import LoadedFeature, build_model
from pipeline.models.base import in_batch_softmax
from pipeline.train import train
from pipeline.train.sampling import PairIndex
from pipeline.train.sequences import PAD, SequenceBatches, pad_left, user_sequences

from conftest import write_config
from test_models import DEMO, QUICK, popularity

SASREC = ["model.name=sasrec", "model.dim=32", "train.batch_size=64"]  # batch_size counts sequences


def _demo(tmp, *extra):
    overrides = [f"cache_dir={tmp}", f"data.root={tmp}/raw", "data.demo.n_items=300", "data.demo.n_users=400",
                 "data.demo.mean_interactions=25",
                 "features.attrs.mmrec=unused.npy",  # names the injected features so towers may ask for them
                 *extra]
    data = prepare(load_config(DEMO, overrides), progress=False)
    attrs = pd.read_csv(tmp / "raw" / "attributes.csv", dtype=str).set_index("item_id").loc[data.items["item_id"]]
    # the demo's ground-truth attributes as a perfect "encoder" (as in test_models)
    onehot = pd.get_dummies(attrs[["colour", "shape", "texture", "pitch", "rhythm"]]).to_numpy(np.float32)
    truth = LoadedFeature(torch.from_numpy(onehot), torch.ones(len(onehot), dtype=torch.bool), "attributes-v1")
    return overrides, data, {"attrs": truth}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):  # the demo's own cold_start split
    return _demo(tmp_path_factory.mktemp("demo_cold"))


@pytest.fixture(scope="module")
def demo_loo(tmp_path_factory):  # last item per user (by time) to test, the one before to valid
    return _demo(tmp_path_factory.mktemp("demo_loo"), "data.split.protocol=leave_one_out")


def run(d, *extra, epochs, seed=0, resume=False):
    overrides, data, feats = d
    return train(load_config(DEMO, [*overrides, *QUICK, f"train.epochs={epochs}", *extra]), data, feats, seed=seed,
                 resume=resume)


def best_model(d, result, *extra):
    overrides, data, feats = d
    cfg = load_config(DEMO, [*overrides, *QUICK, *extra])
    model = build_model(cfg.model, data, feats, cfg.cache_dir, result["seed"])
    model.load_state_dict(load_file(f"{result['run_dir']}/best.safetensors"))
    return model.eval()


def reversed_histories(indptr, items):
    """Every user's sequence back to front (vectorised, like the data code)."""
    lengths = np.diff(indptr)
    start, end = np.repeat(indptr[:-1], lengths), np.repeat(indptr[1:], lengths)
    return items[start + end - 1 - np.arange(len(items))]


def evaluate_test(data, score):
    ev = Evaluator(data.n_users, data.n_items, data.pairs("train"), data.pairs("test"), also_mask=data.pairs("valid"),
                   ks=(10, 20))
    with torch.no_grad():
        return ev.evaluate(score)


@pytest.fixture(scope="module")
def two_tower_ids(demo, tmp_path_factory):
    return run(demo, "model.name=two_tower", f"train.runs_dir={tmp_path_factory.mktemp('runs')}", epochs=15)


@pytest.fixture(scope="module")
def sasrec(demo_loo, tmp_path_factory):
    extra = [*SASREC, f"train.runs_dir={tmp_path_factory.mktemp('runs')}"]
    result = run(demo_loo, *extra, epochs=20)
    return result, best_model(demo_loo, result, *extra)


def test_two_tower_beats_popularity_on_warm_items(demo, two_tower_ids):
    pop = popularity(demo[1])["warm/recall@20"]
    # measured: popularity 0.325, two_tower ids 0.42 (history users 0.51, ids + history + attrs 0.45)
    assert two_tower_ids["test"]["warm/recall@20"] > 1.1 * pop, (two_tower_ids["test"]["warm/recall@20"], pop)


def test_two_tower_content_beats_ids_on_cold_items(demo, two_tower_ids):
    content = run(demo, "model.name=two_tower", "model.item_tower.ids=false", "model.item_tower.features=[attrs]",
                  epochs=10)
    ids = two_tower_ids["test"]["cold/recall@20"]
    # measured: ids 0.001, attribute features 0.37 (0.41 with history users)
    assert content["test"]["cold/recall@20"] > 2 * ids + 0.1, (content["test"]["cold/recall@20"], ids)


def test_sasrec_beats_popularity_on_warm_items(demo_loo, sasrec):
    pop = popularity(demo_loo[1])["warm/recall@20"]
    # measured: popularity 0.19, sasrec 0.31
    assert sasrec[0]["test"]["warm/recall@20"] > 1.1 * pop, (sasrec[0]["test"]["warm/recall@20"], pop)


def test_sasrec_scores_depend_on_order(demo_loo, sasrec):
    model = sasrec[1]
    model.use_history("test")
    indptr, items = model.histories["test"]
    users = np.arange(50)
    true = torch.from_numpy(pad_left(indptr, items, users, model.max_len))
    back = torch.from_numpy(pad_left(indptr, reversed_histories(indptr, items), users, model.max_len))
    with torch.no_grad():
        assert torch.equal(model.score(torch.from_numpy(users)), model.score_sequences(true))
        diff = (model.score_sequences(true) - model.score_sequences(back)).abs().amax(dim=1)
    assert (diff[np.diff(indptr)[users] > 1] > 1e-3).all()


@pytest.fixture(scope="module")
def chains(tmp_path_factory):
    """Users walking a ring of 100 items one step at a time: the next item is the last one + 1,
    so order is everything (the demo's order signal is weak: reversing moves its test recall by
    about 0.01)."""
    tmp = tmp_path_factory.mktemp("chains")
    (tmp / "raw").mkdir()
    rng = np.random.default_rng(0)
    lengths = rng.integers(6, 16, size=300)
    users = np.repeat(np.arange(300), lengths)
    step = np.arange(len(users)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    items = (np.repeat(rng.integers(0, 100, size=300), lengths) + step) % 100
    pd.DataFrame({"user_id": users, "item_id": [f"i{i:03d}" for i in items], "timestamp": users * 1000 + step}).to_csv(
        tmp / "raw" / "events.csv", index=False)
    path = write_config(tmp / "chains.yaml", {
        "cache_dir": str(tmp), "data": {"name": "chains", "root": str(tmp / "raw"),
                                        "interactions": {"path": "events.csv", "timestamp": "timestamp"},
                                        "split": {"protocol": "leave_one_out"}}})
    return path, prepare(load_config(path), progress=False)


def test_sasrec_uses_order_on_sequential_data(chains, tmp_path):
    path, data = chains
    extra = [*QUICK, *SASREC, "model.sasrec.max_len=16", f"train.runs_dir={tmp_path}", "train.epochs=15",
             "train.lr=0.01"]
    cfg = load_config(path, extra)
    result = train(cfg, data, {}, seed=0)
    model = build_model(cfg.model, data, {}, cfg.cache_dir, 0)
    model.load_state_dict(load_file(f"{result['run_dir']}/best.safetensors"))
    model.eval().use_history("test")
    indptr, items = model.histories["test"]
    back = reversed_histories(indptr, items)
    true = evaluate_test(data, model.score)["recall@10"]
    reverse = evaluate_test(data, lambda u: model.score_sequences(
        torch.from_numpy(pad_left(indptr, back, u.numpy(), model.max_len))))["recall@10"]
    # measured: 1.0 in time order, 0.44 reversed
    assert true > 0.9 and reverse < true - 0.3, (true, reverse)


def test_history_users_see_valid_items_at_test_time(demo):
    overrides, data, feats = demo
    cfg = load_config(DEMO, [*overrides, "model.name=two_tower", "model.two_tower.user=history"])
    model = build_model(cfg.model, data, feats, cfg.cache_dir, 0).eval()
    vu, vi = data.pairs("valid")
    tu, ti = data.pairs("train")
    user = int(vu[0])
    vectors = model.item_tower().detach()
    train_items, valid_items = ti[tu == user], vi[vu == user]
    u = torch.tensor([user])
    with torch.no_grad():
        model.use_history("valid")
        at_valid = model.score(u)
        assert torch.allclose(model.pooled(u, "valid"), vectors[train_items].mean(0), atol=1e-6)
        model.use_history("test")
        at_test = model.score(u)
        both = np.r_[train_items, valid_items]
        assert torch.allclose(model.pooled(u, "test"), vectors[both].mean(0), atol=1e-6)
        # in training a pair's own positive is left out of the user's description
        left_out = model.pooled(u, "valid", leave_out=vectors[train_items[:1]])
        assert torch.allclose(left_out, vectors[train_items[1:]].mean(0), atol=1e-6)
    assert not torch.allclose(at_valid, at_test)


def test_in_batch_softmax_matches_a_per_row_reference():
    g = torch.Generator().manual_seed(0)
    users, vecs = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    items = torch.tensor([3, 1, 3, 2, 5, 1, 7, 3])  # repeats: row 0's item is also rows 2 and 7
    log_q = torch.log(torch.rand(10, generator=g) + 0.01)[items]
    losses = []
    for i in range(8):
        # candidates: the row's own positive and every batch item that is a different item
        keep = [j for j in range(8) if j == i or items[j] != items[i]]
        logits = torch.stack([users[i] @ vecs[j] / 0.5 - log_q[j] for j in keep])
        losses.append(torch.logsumexp(logits, 0) - logits[keep.index(i)])
    reference = torch.stack(losses).mean()
    assert torch.allclose(in_batch_softmax(users, vecs, log_q, 0.5, item_ids=items), reference, atol=1e-6)
    assert not torch.allclose(in_batch_softmax(users, vecs, None, 0.5, item_ids=items), reference)


def test_sasrec_resume_equals_uninterrupted_with_dropout(demo_loo, tmp_path, monkeypatch):
    base = [*SASREC, f"train.runs_dir={tmp_path}", "train.patience=100", "model.sasrec.dropout=0.5",
            "model.sasrec.max_len=20"]
    straight = run(demo_loo, *base, "train.run_name=a", epochs=4, seed=3)
    run(demo_loo, *base, "train.run_name=b", epochs=2, seed=3)
    shutil.copytree(tmp_path / "b-s3", tmp_path / "c-s3")
    resumed = run(demo_loo, *base, "train.run_name=b", epochs=4, seed=3, resume=True)
    assert [h["loss"] for h in resumed["history"]] == pytest.approx([h["loss"] for h in straight["history"]], rel=1e-5)
    assert resumed["test"] == pytest.approx(straight["test"], rel=1e-5, abs=1e-7)
    # the equality rests on the checkpoint's RNG state: without it the dropout masks differ
    monkeypatch.setattr(torch, "set_rng_state", lambda state: None)
    no_rng = run(demo_loo, *base, "train.run_name=c", epochs=4, seed=3, resume=True)
    assert no_rng["history"][2]["loss"] != pytest.approx(straight["history"][2]["loss"], rel=1e-5)


def _tower_variants():
    return {"ids": [], "features": ["model.item_tower.ids=false", "model.item_tower.features=[attrs]",
                                    "model.item_tower.fusion=gate"],
            "both": ["model.item_tower.features=[attrs]", "model.item_tower.fill=learned"]}


@pytest.mark.parametrize("model, options", [
    ("two_tower", [["model.two_tower.loss=in_batch"], ["model.two_tower.loss=sampled_softmax", "model.two_tower.user=both"],
                   ["model.two_tower.loss=bpr", "model.two_tower.user=history", "model.two_tower.user_mlp=[16]",
                    "model.two_tower.normalize=true", "model.two_tower.temperature=0.1"]]),
    ("sasrec", [["model.sasrec.loss=bce"], ["model.sasrec.loss=sampled_softmax", "model.sasrec.n_heads=2"],
                ["model.sasrec.loss=in_batch", "model.sasrec.max_len=8"]]),
])
def test_every_tower_and_loss_trains_a_step(demo, model, options):
    overrides, data, feats = demo
    for tower, tower_opts in _tower_variants().items():
        for opts in options:
            cfg = load_config(DEMO, [*overrides, f"model.name={model}", "model.dim=16", *tower_opts, *opts])
            m = build_model(cfg.model, data, feats, cfg.cache_dir, 0)
            batch = next(iter(m.train_batches(data, 32, seed=0)))
            loss = m(batch)
            loss.backward()
            assert torch.isfinite(loss), (tower, opts)
            assert all(p.grad is not None for p in m.item_tower.parameters() if p.requires_grad), (tower, opts)
            for split in ("valid", "test"):
                m.eval().use_history(split)
                with torch.no_grad():
                    scores = m.score(torch.arange(5))
                assert scores.shape == (5, data.n_items) and torch.isfinite(scores).all(), (tower, opts)


def test_sequence_batches(demo_loo):
    data = demo_loo[1]
    indptr, items = user_sequences(data, ("train",))
    table = data.interactions.to_pandas()
    train = table[table["split"] == 0].sort_values(["user", "timestamp"], kind="stable")
    assert np.array_equal(items, train["item"].to_numpy())  # oldest first
    batches = SequenceBatches(indptr, items, data.n_items, 10, 64, seed=5, n_neg=2)
    batches.set_epoch(1)
    first = list(batches)
    assert len(first) == len(batches)
    assert torch.equal(first[0]["users"], next(iter(batches))["users"])  # the order is (seed, epoch)'s alone
    b = first[0]
    user = int(b["users"][0])
    seq = items[indptr[user]:indptr[user + 1]]
    real = b["pos"][0] != PAD
    # position t predicts the item after it; the last target is the user's last training item
    assert b["pos"][0][real][-1] == seq[-1] and torch.equal(b["seq"][0][1:][real[:-1]], b["pos"][0][real][:-1])
    index = PairIndex(np.repeat(np.arange(data.n_users), np.diff(indptr)), items, data.n_items)
    rows = np.repeat(b["users"].numpy()[:, None], b["pos"].shape[1], axis=1)[b["pos"].numpy() != PAD]
    negs = b["neg"].numpy()[b["pos"].numpy() != PAD]
    assert not index.contains(np.repeat(rows, 2), negs.reshape(-1)).any()
    # two ranks split the epoch's batches between them
    shards = [SequenceBatches(indptr, items, data.n_items, 10, 64, seed=5, rank=r, world=2) for r in (0, 1)]
    for s in shards:
        s.set_epoch(1)
    seen = np.concatenate([b["users"].numpy() for s in shards for b in s])
    assert len(np.unique(seen)) == len(seen) and len(seen) >= len(batches.users) - 2 * 64


@pytest.mark.parametrize("override, words", [
    (["model.name=sasrec", "model.sasrec.n_heads=3"], r"model\.sasrec\.n_heads=3 must divide model\.dim=64"),
    (["model.name=sasrec", "model.sasrec.loss=bpr"], r"model\.sasrec\.loss"),
    (["model.name=sasrec", "model.sasrec.dropout=1"], r"model\.sasrec\.dropout"),
    (["model.name=two_tower", "model.two_tower.user=ids"], r"model\.two_tower\.user"),
    (["model.name=two_tower", "model.two_tower.user_mlp=[32,0]"], r"model\.two_tower\.user_mlp\.1"),
    (["model.name=two_tower", "model.two_tower.temperature=0"], r"model\.two_tower\.temperature"),
])
def test_bad_settings_name_their_key(demo, override, words):
    with pytest.raises(ConfigError, match=words):
        load_config(DEMO, [*demo[0], *override])
