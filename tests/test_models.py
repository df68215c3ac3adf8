"""Recommenders and the trainer on the demo data: they learn, content helps cold items,
resume equals an uninterrupted run, bad configs fail clearly."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.config import load_config
from pipeline.data import prepare
from pipeline.errors import ConfigError, DataError
from pipeline.eval import Evaluator
from pipeline.models import LoadedFeature
from pipeline.train import train
from pipeline.train.sampling import PairIndex, sample_negatives

from conftest import REPO

DEMO = REPO / "recipes" / "configs" / "demo.yaml"
QUICK = ["train.tensorboard=false", "train.progress=false", "train.batch_size=512", "train.lr=0.005",
         "eval.ks=[10,20]", "train.patience=10"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("demo")
    overrides = [f"cache_dir={tmp}", f"data.root={tmp}/raw", "data.demo.n_items=300", "data.demo.n_users=400",
                 "data.demo.mean_interactions=25"]
    cfg = load_config(DEMO, overrides)
    data = prepare(cfg, progress=False)
    attrs = pd.read_csv(tmp / "raw" / "attributes.csv", dtype=str).set_index("item_id").loc[data.items["item_id"]]
    # the demo's ground-truth attributes as a perfect "encoder": one-hot colour, shape, texture, pitch, rhythm
    onehot = pd.get_dummies(attrs[["colour", "shape", "texture", "pitch", "rhythm"]]).to_numpy(np.float32)
    truth = LoadedFeature(torch.from_numpy(onehot), torch.ones(len(onehot), dtype=torch.bool), "attributes-v1")
    return overrides, data, {"attrs": truth}


def run(demo, *extra, features=None, epochs=60, seed=0):
    overrides, data, feats = demo
    cfg = load_config(DEMO, [*overrides, *QUICK, f"train.epochs={epochs}", *extra])
    return train(cfg, data, feats if features is None else features, seed=seed)


def popularity(data):
    train_u, train_i = data.pairs("train")
    counts = torch.from_numpy(np.bincount(train_i, minlength=data.n_items).astype(np.float32))
    ev = Evaluator(data.n_users, data.n_items, (train_u, train_i), data.pairs("test"),
                   also_mask=data.pairs("valid"), ks=(10, 20))
    return ev.evaluate(lambda users: counts.expand(len(users), -1))


@pytest.mark.parametrize("model", ["bpr", "lightgcn", "vbpr", "freedom"])
def test_each_model_beats_popularity_on_warm_items(demo, model):
    # VBPR's MMRec default reg_weight (2.0) is tuned for Amazon data; the small demo wants less
    r = run(demo, f"model.name={model}", *(["model.vbpr.reg_weight=0.01"] if model == "vbpr" else []))
    pop = popularity(demo[1])
    # measured: popularity 0.325; bpr 0.37-0.39, lightgcn 0.46, vbpr 0.38, freedom 0.47
    assert r["test"]["warm/recall@20"] > 1.1 * pop["warm/recall@20"], (r["test"]["warm/recall@20"], pop)
    assert r["best_epoch"] >= 0 and r["epochs"] >= r["best_epoch"] + 1


def test_content_beats_ids_on_cold_items(demo):
    ids = run(demo, "model.name=bpr")
    content = run(demo, "model.name=vbpr", "model.vbpr.reg_weight=0.01")
    assert content["test"]["cold/recall@20"] > 2 * ids["test"]["cold/recall@20"] + 0.02, (
        content["test"]["cold/recall@20"], ids["test"]["cold/recall@20"])


def test_resume_equals_uninterrupted(demo, tmp_path):
    overrides, data, feats = demo
    base = [*overrides, *QUICK, "model.name=freedom", f"train.runs_dir={tmp_path}", "train.patience=100"]
    straight = train(load_config(DEMO, [*base, "train.epochs=4", "train.run_name=a"]), data, feats, seed=3)
    train(load_config(DEMO, [*base, "train.epochs=2", "train.run_name=b"]), data, feats, seed=3)
    resumed = train(load_config(DEMO, [*base, "train.epochs=4", "train.run_name=b"]), data, feats, seed=3, resume=True)
    assert resumed["epochs"] == 4
    # equal up to CPU float nondeterminism (two uninterrupted runs differ at ~1e-8 too: parallel
    # embedding-gradient accumulation), far below any difference a wrong resume would make
    assert [h["loss"] for h in resumed["history"]] == pytest.approx([h["loss"] for h in straight["history"]], rel=1e-6)
    assert resumed["test"] == pytest.approx(straight["test"], rel=1e-5, abs=1e-7)
    from safetensors.torch import load_file

    a, b = load_file(str(tmp_path / "a-s3" / "best.safetensors")), load_file(str(tmp_path / "b-s3" / "best.safetensors"))
    # Adam turns ~1e-9 gradient noise into ~lr-sized steps on near-flat parameters: 1e-4, not 1e-6
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)


def test_resume_is_not_a_restart(demo, tmp_path):
    """A resumed run must continue, not start again: its epoch-3 loss differs from a fresh epoch 1."""
    overrides, data, feats = demo
    base = [*overrides, *QUICK, "model.name=bpr", f"train.runs_dir={tmp_path}", "train.patience=100", "train.run_name=c"]
    first = train(load_config(DEMO, [*base, "train.epochs=2"]), data, feats, seed=1)
    resumed = train(load_config(DEMO, [*base, "train.epochs=3"]), data, feats, seed=1, resume=True)
    assert len(resumed["history"]) == 3 and resumed["history"][:2] == first["history"]
    assert resumed["history"][2]["loss"] < first["history"][0]["loss"] - 1e-3


def test_run_directory_contents(demo, tmp_path):
    r = run(demo, "model.name=bpr", f"train.runs_dir={tmp_path}", "train.tensorboard=true", epochs=2)
    run_dir = tmp_path / "demo-bpr-s0"
    assert {"config.yaml", "best.safetensors", "result.json", "checkpoint"} <= {p.name for p in run_dir.iterdir()}
    assert json.loads((run_dir / "result.json").read_text())["test"] == r["test"]
    assert list((run_dir / "tb").rglob("events.out.tfevents.*")), "no TensorBoard log"
    assert "seed: 0" in (run_dir / "config.yaml").read_text()


def test_unknown_model_and_missing_features(demo):
    overrides = demo[0]
    with pytest.raises(ConfigError, match=r"model.name: Input should be 'bpr'.*\(got 'resnet'\)"):
        load_config(DEMO, [*overrides, "model.name=resnet"])
    with pytest.raises(ConfigError, match=r"model.item_tower.features: 'nope' is not in `features`"):
        load_config(DEMO, [*overrides, "model.name=bpr", "model.item_tower.features=[nope]"])
    with pytest.raises(ConfigError, match="model vbpr needs features"):
        run(demo, "model.name=vbpr", features={}, epochs=1)


def test_negative_sampling_avoids_training_items():
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(50), 30)
    items = np.concatenate([rng.choice(40, 30, replace=False) for _ in range(50)])
    index = PairIndex(users, items, 40)
    neg = sample_negatives(users, np.arange(40), index, rng, n_neg=3)
    assert neg.shape == (1500, 3)
    assert not index.contains(np.repeat(users, 3), neg.reshape(-1)).any()
    # uniform over the allowed items: every allowed item shows up
    assert len(np.unique(neg)) == 40


def test_model_settings_live_under_the_model_name(demo):
    overrides = demo[0]
    cfg = load_config(DEMO, [*overrides, "model.name=freedom", "model.freedom.dropout=0.5", "model.bpr.reg_weight=3"])
    assert cfg.model.params.dropout == 0.5 and cfg.model.bpr.reg_weight == 3
    with pytest.raises(ConfigError, match=r"model\.freedom\.dropot: unknown key"):
        load_config(DEMO, [*overrides, "model.freedom.dropot=0.5"])


def test_trainer_keeps_freed_memory_on_cpu_unless_told_not_to(demo, monkeypatch):
    calls = []
    monkeypatch.setattr("pipeline.train.trainer.keep_freed_memory", lambda: calls.append(1) or True)
    run(demo, "model.name=bpr", epochs=1)
    assert calls == [1]
    run(demo, "model.name=bpr", "train.keep_freed_memory=false", epochs=1)
    assert calls == [1]


@pytest.mark.parametrize("fusion", ["concat", "sum", "gate"])
@pytest.mark.parametrize("fill", ["zeros", "mean", "learned"])
def test_feature_tower_batch_rows_equal_whole_table_rows(fusion, fill):
    """Batches with repeated items are projected once per distinct item: same vectors, same gradients."""
    from pipeline.models.towers import FeatureTower

    torch.manual_seed(0)
    feats = {"a": torch.randn(20, 6), "b": torch.randn(20, 3)}
    masks = {"a": torch.ones(20, dtype=torch.bool), "b": torch.rand(20) > 0.3}
    tower = FeatureTower(feats, masks, 4, fusion=fusion, fill=fill)
    items = torch.tensor([3, 7, 3, 3, 19, 0, 7, int(torch.nonzero(~masks["b"])[0])])
    out, ref = tower(items), tower()[items]
    assert torch.allclose(out, ref, atol=1e-6)
    g = torch.randn_like(out)
    params = [p for p in tower.parameters() if p.requires_grad]
    got = torch.autograd.grad((out * g).sum(), params)
    want = torch.autograd.grad((ref * g).sum(), params)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("reg_weight", [0.0, 0.01, 2.0])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_bpr_with_reg_equals_the_composed_loss(reg_weight, dtype):
    """MF's one-node loss against bpr_loss + reg * emb_loss through autograd: value and gradients,
    with repeated rows, an all-zero tensor (torch.norm's zero gradient) and low-precision inputs."""
    from pipeline.models.base import bpr_loss, bpr_with_reg, emb_loss

    torch.manual_seed(0)
    u, pos = torch.randn(2, 16, 5, dtype=torch.float64) * 2
    u[3] = u[0]
    neg = torch.zeros(16, 5, dtype=torch.float64) if reg_weight == 2.0 else torch.randn(16, 5, dtype=torch.float64)
    leaves = [t.to(dtype).requires_grad_() for t in (u, torch.cat([pos, neg]))]
    got = bpr_with_reg(*leaves, reg_weight)
    got_grads = torch.autograd.grad(got, leaves)
    got_grads = (got_grads[0], *got_grads[1].split(16))
    ref_leaves = [t.to(dtype).double().requires_grad_() for t in (u, pos, neg)]  # the same rounded inputs
    a, p, n = ref_leaves
    ref = bpr_loss((a * p).sum(-1), (a * n).sum(-1)) + reg_weight * emb_loss(a, p, n)
    ref_grads = torch.autograd.grad(ref, ref_leaves)
    tol = 1e-12 if dtype == torch.float64 else 1e-2
    assert abs(got.item() - ref.item()) < tol * max(1.0, abs(ref.item()))
    for g, r in zip(got_grads, ref_grads):
        assert g.dtype == dtype and g.shape == r.shape
        assert torch.allclose(g.double(), r, atol=tol, rtol=tol)
    assert any(g.abs().sum() > 0 for g in got_grads)


def test_gradient_accumulation_steps_every_k_batches_and_after_the_last(demo, tmp_path):
    """grad_accum=k: one optimizer step per k batches, plus one for the epoch's remainder (no
    gradient carries into the next epoch); weights equal a plain loop doing the same."""
    import math

    from accelerate.utils import set_seed
    from safetensors.torch import load_file

    from pipeline.models import build_model

    overrides, data, feats = demo
    n_batches = math.ceil(len(data.pairs("train")[0]) / 512)  # QUICK's batch size
    k = next(k for k in (3, 5, 7) if n_batches % k)
    cfg = load_config(DEMO, [*overrides, *QUICK, "model.name=bpr", f"train.runs_dir={tmp_path}", "train.epochs=2",
                             f"train.grad_accum={k}", "train.run_name=acc"])
    train(cfg, data, feats, seed=4)
    saved = load_file(str(tmp_path / "acc-s4" / "checkpoint" / "tensors.safetensors"))
    assert int(saved["optim.0.step"]) == 2 * math.ceil(n_batches / k)

    set_seed(4)
    model = build_model(cfg.model, data, feats, cfg.cache_dir, 4)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    batches = model.train_batches(data, 512, 4)
    for epoch in range(2):
        batches.set_epoch(epoch)
        for i, batch in enumerate(batches):
            (model.loss(batch) / k).backward()
            if (i + 1) % k == 0 or i + 1 == n_batches:
                opt.step()
                opt.zero_grad()
    for name, value in model.state_dict().items():
        assert torch.allclose(saved[f"model.{name}"], value, atol=1e-5), name


def test_package_lookups_happen_once_per_run_not_per_step(demo, monkeypatch):
    """accelerate's optimizer step asks importlib whether lomo_optim is installed; the trainer
    caches the answer (a file-system search per step was 15% of a small model's epoch)."""
    import importlib.util

    import accelerate.optimizer

    check = accelerate.optimizer.is_lomo_available
    monkeypatch.setattr(accelerate.optimizer, "is_lomo_available", getattr(check, "__wrapped__", check))
    searched = []
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: (searched.append(name) if name == "lomo_optim" else None) or find_spec(name, *a))
    run(demo, "model.name=bpr", epochs=2)
    # once when the optimizer is prepared, once cached for all steps (uncached: twice a step, 61 here)
    assert searched.count("lomo_optim") <= 2
