"""End to end: live encoders inside the item tower, trained by the frozen track's trainer.

A small CLIP (random weights, recipes/models/clip-demo.json) and the real all-MiniLM-L6-v2 on a
small slice of the demo data: the tower learns the planted content signal (beats ids on
cold-start items), resume equals an uninterrupted run, cached top-k equals uncached top-k,
fine-tuned features reach the store and a frozen model reads them, negatives are gathered
across processes correctly, and the run works under ``accelerate launch`` with 2 processes.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pipeline.config import load_config
from pipeline.data import prepare
from pipeline.errors import ConfigError
from pipeline.features import load_features
from pipeline.live import load_live
from pipeline.train import load_run, run_training

from conftest import REPO

CLIP = REPO / "recipes" / "configs" / "e2e_clip_demo.yaml"
FAST = ["data.demo.n_items=120", "data.demo.n_users=160", "data.demo.mean_interactions=12", "train.progress=false",
        "train.tensorboard=false", "train.batch_size=128", "eval.ks=[10,20]", "extract.num_workers=0"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    overrides = [f"cache_dir={tmp}", f"data.root={tmp}/raw", *FAST]
    return overrides, prepare(load_config(CLIP, overrides), progress=False)


def cfg_of(demo, *extra):
    return load_config(CLIP, [*demo[0], *extra])


def train_once(demo, *extra, resume=False):
    return run_training(cfg_of(demo, *extra), demo[1], resume=resume)


TEXT_ONLY = "model.item_tower={ids: false, live: {clip_text: {policy: 'top-k:1'}}}"


def test_content_tower_learns_the_planted_signal_on_cold_items(demo, tmp_path):
    runs = f"train.runs_dir={tmp_path}"
    ids = train_once(demo, runs, "train.run_name=ids", "model.item_tower={ids: true}", "train.epochs=6")
    live = train_once(demo, runs, "train.run_name=live", "train.epochs=6")
    assert live["test"]["cold/recall@20"] > ids["test"]["cold/recall@20"] + 0.05, (live["test"], ids["test"])
    # what --json reports for end-to-end runs
    assert live["trainable_params"] > ids["trainable_params"] and live["peak_memory_mb"] > 0
    assert live["samples_per_second"] > 0
    assert set(live["finetuned_features"]) == {"clip_image", "clip_text"}


def test_resume_equals_uninterrupted(demo, tmp_path):
    base = [f"train.runs_dir={tmp_path}", TEXT_ONLY, "train.patience=100", "train.warmup_steps=3"]
    straight = train_once(demo, *base, "train.run_name=a", "train.epochs=3")
    train_once(demo, *base, "train.run_name=b", "train.epochs=2")
    resumed = train_once(demo, *base, "train.run_name=b", "train.epochs=3", resume=True)
    assert [h["loss"] for h in resumed["history"]] == pytest.approx([h["loss"] for h in straight["history"]], rel=1e-5)
    assert resumed["test"] == pytest.approx(straight["test"], rel=1e-5, abs=1e-7)


def test_cached_top_k_equals_uncached(demo, tmp_path):
    base = [f"train.runs_dir={tmp_path}", "train.epochs=2", "train.patience=100"]
    tower = "model.item_tower={{ids: false, live: {{clip_text: {{policy: 'top-k:1', cached: {}}}}}}}"
    plain = train_once(demo, *base, "train.run_name=plain", tower.format("false"))
    cached = train_once(demo, *base, "train.run_name=cached", tower.format("true"))
    assert [h["loss"] for h in cached["history"]] == pytest.approx([h["loss"] for h in plain["history"]], rel=1e-4)
    assert cached["test"] == pytest.approx(plain["test"], rel=1e-4, abs=1e-6)
    # the trained weights agree too (the cached tower lacks the frozen bottom block)
    a, b = (load_file(f"{r['run_dir']}/best.safetensors") for r in (plain, cached))
    assert set(b) < set(a)
    for key in b:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)
    # the hidden states went to the store: a second load reads them instead of computing
    cfg = cfg_of(demo, tower.format("true"))
    from pipeline.store import FeatureStore

    sets = [s for s in FeatureStore(cfg.features_dir).list() if s["field"].endswith(".hidden")]
    assert len(sets) == 1 and sets[0]["rows"] == len({k for k in load_live(cfg, demo[1])["clip_text"].keys if k})


def test_finetuned_features_feed_a_frozen_model(demo, tmp_path):
    result = train_once(demo, f"train.runs_dir={tmp_path}", TEXT_ONLY, "train.epochs=1")
    cfg = cfg_of(demo, f"features.ft={{run: {result['run_dir']}, encoder: clip_text}}", "model.name=vbpr",
                 "model.item_tower={ids: true, features: [ft]}")
    loaded = load_features(cfg, demo[1], ["ft"])["ft"]
    _, _, model = load_run(result["run_dir"])
    tower = model.item_tower
    expected = tower.encode_catalog("clip_text")
    torch.testing.assert_close(loaded.values, expected, rtol=1e-5, atol=1e-6)
    assert loaded.mask.all()
    frozen = run_training(cfg_of(demo, f"features.ft={{run: {result['run_dir']}, encoder: clip_text}}",
                                 "model.name=vbpr", "model.item_tower={ids: true, features: [ft]}",
                                 f"train.runs_dir={tmp_path}", "train.epochs=1"), demo[1])
    assert frozen["test"]["recall@20"] >= 0


def test_optimizer_groups_and_warmup(demo):
    from pipeline.models import build_model
    from pipeline.train.trainer import _optimizer

    cfg = cfg_of(demo, "train.encoder_lr=0.0001", "train.lr=0.01", "train.encoder_weight_decay=0.05", TEXT_ONLY)
    model = build_model(cfg.model, demo[1], {}, cfg.cache_dir, 0, live=load_live(cfg, demo[1]))
    opt = _optimizer(cfg, model)
    encoder_params = {id(p) for p in model.item_tower.encoders.parameters() if p.requires_grad}
    groups = {(g["lr"], g["weight_decay"]): {id(p) for p in g["params"]} for g in opt.param_groups}
    assert groups[(0.0001, 0.05)] == encoder_params
    assert groups[(0.01, 0.0)] and not groups[(0.01, 0.0)] & encoder_params
    # top-k:1 of the 2-block text tower: the bottom block and the token table stay frozen
    frozen = [n for n, p in model.item_tower.encoders["clip_text"].named_parameters() if not p.requires_grad]
    assert any("resblocks.0." in n for n in frozen) and any("token_embedding" in n for n in frozen)
    assert not any("resblocks.1." in n for n in frozen)


@pytest.mark.parametrize("override, words", [
    ("model.item_tower={ids: false, live: {nope: {}}}", "model.item_tower.live.nope: no encoder 'nope'"),
    ("model.item_tower={ids: false, live: {clip_text: {cached: true}}}", "cached needs policy top-k"),
    ("model.item_tower={ids: false, live: {clip_text: {policy: sideways}}}", "unknown trainable policy"),
    ("model.item_tower={ids: false, live: {clip_text: {policy: 'top-k:9'}}}", "out of range"),
])
def test_bad_live_settings_name_their_key(demo, override, words):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(")):
        cfg = cfg_of(demo, override)
        from pipeline.models import build_model

        build_model(cfg.model, demo[1], {}, cfg.cache_dir, 0, live=load_live(cfg, demo[1]))


def test_graph_models_refuse_live_encoders(demo):
    from pipeline.models import build_model

    cfg = cfg_of(demo, "model.name=lightgcn", TEXT_ONLY)
    with pytest.raises(ConfigError, match="lightgcn propagates over the whole item graph"):
        build_model(cfg.model, demo[1], {}, cfg.cache_dir, 0, live=load_live(cfg, demo[1]))


def _case(n: int):
    g = torch.Generator().manual_seed(n)
    ids = torch.tensor([0, 1, 2, 1, 3, 4, 5, 2])[:n]  # repeated items are not each other's negatives
    return torch.randn(n, 4, generator=g), torch.randn(n, 4, generator=g), ids, torch.rand(n, generator=g)


SHARES = {8: [slice(0, 4), slice(4, 8)], 7: [slice(0, 4), slice(4, 7)]}  # even, and uneven (padding)


def _gather_worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from pipeline.models.base import gather_batches, in_batch_softmax

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    for n, shares in SHARES.items():
        users, items, ids, log_q = _case(n)
        rows = shares[rank]
        u, v = users[rows].clone().requires_grad_(), items[rows].clone().requires_grad_()
        (v_all, q_all, ids_all), offset = gather_batches(v, log_q[rows], ids[rows])
        loss = in_batch_softmax(u, v_all, q_all, 0.5, item_ids=ids_all, offset=offset)
        loss.backward()
        torch.save({"loss": loss.detach(), "gu": u.grad, "gv": v.grad}, f"{out}/{n}-{rank}.pt")
    dist.barrier()  # neither process tears the group down while the other is still in a collective
    dist.destroy_process_group()
    # torch 2.15 stashes a Python object in the thread-local state of every collective issued in
    # a backward pass; when a gloo thread drops the last reference to such a collective while the
    # interpreter shuts down, the process aborts ("terminate called without an active exception",
    # 6 of 64 runs here). The results are on disk: leave without the interpreter's shutdown.
    os._exit(0)


def test_gathered_in_batch_softmax_equals_one_process(tmp_path):
    import socket

    from pipeline.models.base import in_batch_softmax

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_gather_worker, args=(2, port, str(tmp_path)), nprocs=2)
    for n, shares in SHARES.items():
        parts = [torch.load(tmp_path / f"{n}-{r}.pt") for r in range(2)]
        sizes = [s.stop - s.start for s in shares]
        users, items, ids, log_q = _case(n)
        u, v = users.clone().requires_grad_(), items.clone().requires_grad_()
        rows_loss = in_batch_softmax(u, v, log_q, 0.5, item_ids=ids) * n  # the sum of per-row losses
        rows_loss.backward()
        # every row sees every process's positives: the per-process means add up to the whole
        assert sum(p["loss"] * k for p, k in zip(parts, sizes)) == pytest.approx(rows_loss.item(), rel=1e-5)
        torch.testing.assert_close(torch.cat([p["gu"] * k for p, k in zip(parts, sizes)]), u.grad)
        if len(set(sizes)) == 1:  # item rows: all_gather's backward sums every process's gradient
            torch.testing.assert_close(torch.cat([p["gv"] * sizes[0] for p in parts]), v.grad)


def test_accelerate_launch_two_cpu_processes(demo, tmp_path):
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
         str(REPO / "recipes" / "e2e_clip.py"), "--json", *demo[0], TEXT_ONLY, "train.epochs=1",
         f"train.runs_dir={tmp_path}"],
        capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-20000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["epochs"] == 1 and result["test"]["recall@20"] > 0
    assert (tmp_path / "demo-two_tower-s999" / "best.safetensors").is_file()


def test_plain_python_recipe_json(demo, tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "recipes" / "e2e_clip.py"), "--json", *demo[0], TEXT_ONLY,
                          "train.epochs=1", f"train.runs_dir={tmp_path}"], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    for key in ("model", "best_epoch", "valid", "test", "epochs", "train_seconds_per_epoch",
                "eval_seconds_per_epoch", "trainable_params", "peak_memory_mb", "samples_per_second"):
        assert key in result, key
    shutil.rmtree(tmp_path)


@pytest.mark.parametrize("name", ["e2e_clip_demo", "e2e_timm_demo", "e2e_audio_demo"])
def test_each_demo_e2e_config_trains_a_step(demo, name):
    from pipeline.models import build_model

    cfg = load_config(REPO / "recipes" / "configs" / f"{name}.yaml", demo[0])
    model = build_model(cfg.model, demo[1], {}, cfg.cache_dir, 0, live=load_live(cfg, demo[1])).train()
    batch = next(iter(model.train_batches(demo[1], 16, seed=0)))
    torch.manual_seed(0)  # wav2vec2 skips layers at random in training (layerdrop): a fixed draw
    model(batch).backward()
    trained = [p for p in model.item_tower.encoders.parameters() if p.requires_grad]
    assert trained and all(p.grad is not None for p in trained)


def test_hm_configs_validate_and_missing_weights_say_so(demo):
    from encoders import WeightsNotFoundError

    for name in ("e2e_clip_hm", "e2e_text_hm"):
        cfg = load_config(REPO / "recipes" / "configs" / f"{name}.yaml")
        assert cfg.model.item_tower.live and cfg.data.name == "hm"
    # the hm CLIP config's weights are not in this machine's cache: one clear error, before any work
    cfg = cfg_of(demo, "encoders.clip_image.spec=open_clip:ViT-B-32@openai", "encoders.clip_image.random_init=false",
                 "model.item_tower={ids: false, live: {clip_image: {}}}", "extract.offline=true")
    with pytest.raises(WeightsNotFoundError, match="ViT-B-32"):
        load_live(cfg, demo[1])


def test_gradient_checkpointing_changes_nothing_but_memory(demo):
    from pipeline.models import build_model

    grads = []
    for ckpt in ("false", "true"):
        cfg = cfg_of(demo, f"model.item_tower={{ids: false, live: {{clip_text: {{gradient_checkpointing: {ckpt}}}}}}}")
        torch.manual_seed(0)
        model = build_model(cfg.model, demo[1], {}, cfg.cache_dir, 0, live=load_live(cfg, demo[1])).train()
        batch = next(iter(model.train_batches(demo[1], 16, seed=0)))
        model(batch).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("model_name", ["two_tower", "sasrec", "bpr", "vbpr"])
def test_every_vector_model_takes_the_live_tower_unchanged(demo, model_name):
    from pipeline.models import build_model

    cfg = cfg_of(demo, f"model.name={model_name}", "model.dim=16", TEXT_ONLY)
    model = build_model(cfg.model, demo[1], {}, cfg.cache_dir, 0, live=load_live(cfg, demo[1])).train()
    batch = next(iter(model.train_batches(demo[1], 16, seed=0)))
    model(batch).backward()
    assert all(p.grad is not None for p in model.item_tower.parameters() if p.requires_grad)
    model.eval().use_history("test")
    with torch.no_grad():
        scores = model.score(torch.arange(4))
        again = model.score(torch.arange(4, 8))  # the catalog is encoded once per evaluation
    assert scores.shape == (4, demo[1].n_items) and torch.isfinite(scores).all()
    assert model.item_tower._catalog is not None and again.shape == scores.shape
    model.train()
    assert model.item_tower._catalog is None  # training invalidates it
