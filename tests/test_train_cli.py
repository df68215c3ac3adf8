"""`modalrec train / evaluate / recommend / tune` end to end on a small demo, through the CLI."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import REPO

DEMO = REPO / "recipes" / "configs" / "demo.yaml"


def modalrec(*args):
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, args)], capture_output=True, text=True,
                       timeout=600)
    return r


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    return [f"cache_dir={tmp}", f"data.root={tmp}/raw", "data.demo.n_items=200", "data.demo.n_users=150",
            "model.name=bpr", "train.epochs=8", "train.patience=3", "train.lr=0.01", "train.batch_size=256",
            "train.tensorboard=false", "train.progress=false", "eval.ks=[10,20]"], tmp


def test_train_evaluate_recommend(small):
    overrides, tmp = small
    r = modalrec("train", DEMO, "--json", *overrides)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["model"] == "bpr" and 0 <= out["best_epoch"] < out["epochs"] <= 8
    for split in ("valid", "test"):
        assert {"recall@20", "ndcg@20", "recall@10", "ndcg@10"} <= set(out[split])
    assert out["train_seconds_per_epoch"] > 0 and out["eval_seconds_per_epoch"] > 0
    assert "cold/recall@20" in out["test"]

    run_dir = out["run_dir"]
    ev = modalrec("evaluate", run_dir, "--json")
    assert ev.returncode == 0, ev.stderr
    # the saved best weights reproduce the reported test metrics
    assert json.loads(ev.stdout)["test"] == pytest.approx(out["test"], rel=1e-5)

    recs = tmp / "recs.parquet"
    rc = modalrec("recommend", run_dir, "--k", 5, "--out", recs, "--json")
    assert rc.returncode == 0, rc.stderr
    frame = pd.read_parquet(recs)
    assert json.loads(rc.stdout)["users"] == frame["user_id"].nunique() == 150
    assert (frame.groupby("user_id").size() == 5).all()
    assert frame.groupby("user_id")["score"].apply(lambda s: s.is_monotonic_decreasing).all()
    # nothing the user already interacted with in train or valid is recommended
    from pipeline.data import PreparedData

    data = PreparedData.load(tmp / "prepared" / "demo")
    seen = set()
    for split in ("train", "valid"):
        u, i = data.pairs(split)
        seen |= set(zip(np.asarray(data.users["user_id"])[u], np.asarray(data.items["item_id"])[i]))
    assert not seen & set(zip(frame["user_id"], frame["item_id"]))

    one = modalrec("recommend", run_dir, "--users", "u00003,u00007", "--k", 3, "--json")
    got = json.loads(one.stdout)["recommendations"]
    assert [g["user_id"] for g in got] == ["u00003"] * 3 + ["u00007"] * 3
    bad = modalrec("recommend", run_dir, "--users", "nobody")
    assert bad.returncode == 2 and "unknown user ids" in bad.stderr


def test_seeds_give_mean_and_std(small):
    overrides, _ = small
    r = modalrec("train", DEMO, "--json", *overrides, "train.seeds=[1,2]", "train.epochs=3")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    values = [run["test"]["recall@20"] for run in out["runs"]]
    assert out["test"]["recall@20"]["mean"] == pytest.approx(np.mean(values))
    assert out["test"]["recall@20"]["std"] == pytest.approx(np.std(values, ddof=1))
    assert [run["seed"] for run in out["runs"]] == [1, 2]


def test_tune_selects_on_validation(small):
    overrides, _ = small
    r = modalrec("tune", DEMO, "--json", *overrides, "--grid", "train.lr=0.0001,0.01", "train.epochs=3")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert len(out["trials"]) == 2 and out["selected_on"] == "valid"
    assert out["best"]["valid"] == max(t["valid"] for t in out["trials"])


def test_feature_errors(small, tmp_path):
    overrides, tmp = small
    # an MMRec-style file with the wrong number of rows for this catalog
    np.save(tmp / "raw" / "short_feat.npy", np.random.rand(10, 4).astype(np.float32))
    r = modalrec("train", DEMO, *overrides, "model.name=vbpr", "features={short: {mmrec: short_feat.npy}}")
    assert r.returncode == 2 and "short_feat.npy" in r.stderr and "rows" in r.stderr, r.stderr
    # an encoder whose features were never extracted
    r = modalrec("train", DEMO, *overrides, "model.name=vbpr")
    assert r.returncode == 2 and "has not been run" in r.stderr and "modalrec extract" in r.stderr, r.stderr


def test_mmrec_features_train(small):
    overrides, tmp = small
    n_items = json.loads(modalrec("data", "stats", tmp / "prepared" / "demo", "--json").stdout)["items"]
    np.save(tmp / "raw" / "rand_feat.npy", np.random.default_rng(0).random((n_items, 8)).astype(np.float32))
    r = modalrec("train", DEMO, "--json", *overrides, "model.name=freedom", "features={rand: {mmrec: rand_feat.npy}}",
                 "train.epochs=2")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["model"] == "freedom"


def test_progress_bar_and_printed_slices(small):
    """No metric in the progress bar before the first evaluation (it used to show
    ``recall@20=-1.0000``); the printed test line has the long-tail slice and coverage."""
    import os

    overrides, _ = small
    env = {**os.environ, "TQDM_MININTERVAL": "0"}  # draw the bar at every epoch, however fast
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "train", str(DEMO), *overrides, "train.progress=true",
                        "train.epochs=3", "train.eval_every=2", "train.valid_metric=recall@20"],
                       capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr
    frames = [f for f in r.stderr.replace("\r", "\n").splitlines() if "epoch" in f and "loss=" in f]
    first = next(f for f in frames if "1/3" in f)
    assert "recall@20" not in first, first
    assert any("2/3" in f and "recall@20=0." in f for f in frames), frames
    assert "-1.0000" not in r.stderr
    test_line = next(line for line in r.stdout.splitlines() if line.startswith("test "))
    assert "long-tail items: tail/recall@20 " in test_line and "coverage@20 " in test_line
    assert "tail/" not in next(line for line in r.stdout.splitlines() if line.startswith("valid "))
