"""Runs on disk: checkpoints and best weights are verified when read, a damaged checkpoint falls
back to the previous one or fails naming the file, no moment of a checkpoint replacement leaves
nothing to resume from (real kills), leftovers of a kill are cleaned, runs are never replaced
silently, and the optimizer's groups come from the model."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from pipeline.atomic import atomic_directory, remove_leftovers
from pipeline.config import load_config
from pipeline.data import prepare
from pipeline.errors import ConfigError, ModalrecError
from pipeline.train import load_run, run_dir_for, train

from conftest import REPO

DEMO = REPO / "recipes" / "configs" / "demo.yaml"
QUICK = ["model.name=bpr", "train.tensorboard=false", "train.progress=false", "train.batch_size=256", "train.lr=0.01",
         "eval.ks=[10,20]", "train.patience=100"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runs-demo")
    overrides = [f"cache_dir={tmp}", f"data.root={tmp}/raw", "data.demo.n_items=80", "data.demo.n_users=90",
                 "data.demo.mean_interactions=12", *QUICK]
    return overrides, prepare(load_config(DEMO, overrides), progress=False)


def cfg_of(demo, *extra):
    return load_config(DEMO, [*demo[0], *extra])


def fit(demo, *extra, seed=1, **kw):
    return train(cfg_of(demo, *extra), demo[1], {}, seed=seed, **kw)


def flip(path, count=64):
    """Flip the sign bit of ``count`` float32 values at the end of the file (its tensor data)."""
    data = bytearray(path.read_bytes())
    for i in range(count):
        data[-1 - 4 * i] ^= 0x80
    path.write_bytes(bytes(data))


def losses(result):
    return [h["loss"] for h in result["history"]]


# ---------------------------------------------------------------------- config and names


def test_eval_ks_must_be_positive(demo):
    with pytest.raises(ConfigError, match=r"eval\.ks\.0: Input should be greater than 0"):
        cfg_of(demo, "eval.ks=[0,10]", "train.valid_metric=recall@10")


def test_default_run_name_tells_configs_apart(demo, tmp_path):
    base = f"train.runs_dir={tmp_path}"
    a = run_dir_for(cfg_of(demo, base), 3)
    assert a.parent == tmp_path and a.name.startswith("demo-bpr-") and a.name.endswith("-s3")
    assert run_dir_for(cfg_of(demo, base, "train.lr=0.02"), 3) != a
    assert run_dir_for(cfg_of(demo, base, "model.dim=32"), 3) != a
    assert run_dir_for(cfg_of(demo, base, "train.epochs=7"), 3) != a
    # display switches and where things go cannot change a result: same name
    assert run_dir_for(cfg_of(demo, base, "train.progress=true", "train.tensorboard=true", "eval.batch_users=7"), 3) == a


def test_default_named_runs_of_different_configs_both_survive(demo, tmp_path):
    first = fit(demo, f"train.runs_dir={tmp_path}", "train.epochs=1")
    second = fit(demo, f"train.runs_dir={tmp_path}", "train.epochs=1", "train.lr=0.02")
    assert first["run_dir"] != second["run_dir"]
    for r in (first, second):
        assert json.loads(open(f"{r['run_dir']}/result.json").read())["test"] == r["test"]
    latest = tmp_path / "demo-bpr-s1"  # the link to the latest default-named run of this data, model, seed
    assert latest.is_symlink() and latest.resolve() == tmp_path / os.path.basename(second["run_dir"])


def test_a_run_of_another_config_is_not_replaced_without_overwrite(demo, tmp_path, capsys):
    base = [f"train.runs_dir={tmp_path}", "train.run_name=x", "train.epochs=1"]
    first = fit(demo, *base)
    result = tmp_path / "x-s1" / "result.json"
    before = result.read_text()
    with pytest.raises(ModalrecError, match=r"x-s1 exists with a different config: train\.lr \(0\.01 in the run, 0\.02"):
        fit(demo, *base, "train.lr=0.02")
    assert result.read_text() == before
    fit(demo, *base, "train.progress=true")  # no result changes: trains the same run again, saying so
    assert "replacing the earlier run" in capsys.readouterr().err
    replaced = fit(demo, *base, "train.lr=0.02", overwrite=True)
    assert load_config(tmp_path / "x-s1" / "config.yaml").train.lr == 0.02
    assert losses(replaced) != losses(first)


def test_resume_refuses_a_config_that_changes_results(demo, tmp_path):
    base = [f"train.runs_dir={tmp_path}", "train.run_name=r", "train.epochs=1"]
    fit(demo, *base)
    with pytest.raises(ConfigError, match=r"cannot resume .*r-s1.*train\.lr \(0\.01 in the run, 0\.02 now\)"):
        fit(demo, *base, "train.lr=0.02", resume=True)
    with pytest.raises(ConfigError, match=r"model\.dim"):
        fit(demo, *base, "model.dim=16", resume=True)
    # the budget and display switches may change
    resumed = fit(demo, *base, "train.epochs=2", "train.patience=5", "train.progress=true", resume=True)
    assert resumed["epochs"] == 2


# ---------------------------------------------------------------------- verified checkpoints


def test_damaged_checkpoint_falls_back_to_the_previous_one(demo, tmp_path, capsys):
    base = [f"train.runs_dir={tmp_path}"]
    straight = fit(demo, *base, "train.run_name=a", "train.epochs=3")
    fit(demo, *base, "train.run_name=b", "train.epochs=2")
    flip(tmp_path / "b-s1" / "checkpoint" / "tensors.safetensors")
    capsys.readouterr()
    resumed = fit(demo, *base, "train.run_name=b", "train.epochs=3", resume=True)
    err = capsys.readouterr().err
    assert "checkpoint/tensors.safetensors is damaged" in err and "checkpoint.prev (epoch 1)" in err, err
    assert losses(resumed) == pytest.approx(losses(straight), rel=1e-5)
    assert resumed["test"] == pytest.approx(straight["test"], rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("damage", ["flipped tensors", "truncated tensors", "garbage state.json"])
def test_damaged_checkpoint_without_a_good_one_fails_naming_the_file(demo, tmp_path, damage):
    base = [f"train.runs_dir={tmp_path}", "train.run_name=d", "train.epochs=1"]
    fit(demo, *base)
    ckpt = tmp_path / "d-s1" / "checkpoint"
    if damage == "flipped tensors":
        flip(ckpt / "tensors.safetensors")
    elif damage == "truncated tensors":
        with open(ckpt / "tensors.safetensors", "r+b") as f:
            f.truncate(os.path.getsize(ckpt / "tensors.safetensors") // 2)
    else:
        (ckpt / "state.json").write_text('{"trainer": ', encoding="utf-8")
    name = "state.json" if "state" in damage else "tensors.safetensors"
    with pytest.raises(ModalrecError, match=rf"cannot resume .*checkpoint/{name} is damaged"):
        fit(demo, *base, "train.epochs=2", resume=True)


def test_damaged_best_weights_are_refused(demo, tmp_path):
    result = fit(demo, f"train.runs_dir={tmp_path}", "train.run_name=w", "train.epochs=1")
    load_run(result["run_dir"])  # intact: loads
    best = tmp_path / "w-s1" / "best.safetensors"
    intact = best.read_bytes()
    flip(best, count=1)
    with pytest.raises(ModalrecError, match=r"w-s1/best\.safetensors is damaged: its tensors do not match"):
        load_run(result["run_dir"])
    best.write_bytes(intact[: len(intact) // 2])
    with pytest.raises(ModalrecError, match=r"best\.safetensors is damaged: not a readable safetensors file"):
        load_run(result["run_dir"])


# ---------------------------------------------------------------------- kills while saving

_KILLED_RESUME = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import pipeline.atomic, pipeline.train.checkpoint as checkpoint
    from pipeline.config import load_config
    from pipeline.data import PreparedData
    from pipeline.train import train

    where, config, *overrides = sys.argv[1:]
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)
    if where == "between renames":  # the new checkpoint is complete; the kill comes as it is renamed in
        rename = os.rename
        pipeline.atomic.os.rename = lambda a, b: die() if Path(a).name.startswith(".checkpoint.tmp-") else rename(a, b)
    else:  # part of the checkpoint's tensors written
        real = checkpoint.save_file
        def save_file(tensors, path, metadata=None):
            if ".checkpoint.tmp-" not in str(path):
                return real(tensors, path, metadata=metadata)
            Path(path).write_bytes(b"\\0" * 1000)
            die()
        checkpoint.save_file = save_file
    cfg = load_config(config, overrides)
    train(cfg, PreparedData.load(cfg.prepared_dir), {}, seed=1, resume=True)
""")


@pytest.mark.parametrize("where", ["between renames", "inside save_file"])
def test_a_kill_while_saving_a_checkpoint_leaves_one_to_resume_from(demo, tmp_path, where):
    base = [*demo[0], f"train.runs_dir={tmp_path}"]
    straight = fit(demo, f"train.runs_dir={tmp_path}", "train.run_name=a", "train.epochs=4")
    fit(demo, f"train.runs_dir={tmp_path}", "train.run_name=k", "train.epochs=2")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    killed = subprocess.run([sys.executable, "-c", _KILLED_RESUME, where, str(DEMO), *base, "train.run_name=k",
                             "train.epochs=4"], capture_output=True, text=True, env=env, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    run = tmp_path / "k-s1"
    if where == "inside save_file":
        assert list(run.glob(".checkpoint.tmp-*")), "the kill should have left the half-written checkpoint"
    resumed = fit(demo, f"train.runs_dir={tmp_path}", "train.run_name=k", "train.epochs=4", resume=True)
    assert not list(run.glob(".checkpoint.*")), "leftovers of the killed save are cleaned"
    assert losses(resumed) == pytest.approx(losses(straight), rel=1e-5)
    assert resumed["test"] == pytest.approx(straight["test"], rel=1e-5, abs=1e-7)


def test_atomic_directory_keeps_the_previous_one(tmp_path):
    target, prev = tmp_path / "c", tmp_path / "c.prev"
    for n in (1, 2, 3):
        with atomic_directory(target, "m", previous=prev) as tmp:
            (tmp / "m").write_text(str(n))
    assert (target / "m").read_text() == "3" and (prev / "m").read_text() == "2"
    with pytest.raises(RuntimeError):
        with atomic_directory(target, "m", previous=prev) as tmp:
            (tmp / "m").write_text("4")
            raise RuntimeError("failed while writing")
    assert (target / "m").read_text() == "3" and (prev / "m").read_text() == "2"
    (tmp_path / ".c.tmp-abc").mkdir()
    (tmp_path / ".best.safetensors.tmp-xyz").write_bytes(b"")
    (tmp_path / ".hidden").write_bytes(b"")
    assert sorted(p.name for p in remove_leftovers(tmp_path)) == [".best.safetensors.tmp-xyz", ".c.tmp-abc"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden", "c", "c.prev"]
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "data").write_text("x")
    with pytest.raises(ModalrecError, match="not written by modalrec"):
        with atomic_directory(target, "m", previous=tmp_path / "theirs"):
            pass


# ---------------------------------------------------------------------- the command line


def test_cli_resume_json_damage_and_overwrite(demo, tmp_path, capsys):
    from pipeline.cli import main

    base = [*demo[0], f"train.runs_dir={tmp_path}", "train.run_name=cli", "train.seed=1"]
    fit(demo, f"train.runs_dir={tmp_path}", "train.run_name=cli", "train.epochs=1")
    capsys.readouterr()

    def modalrec(*args):
        code = main(["train", str(DEMO), *base, *args])
        out = capsys.readouterr()
        return code, out.out, out.err

    code, out, err = modalrec("--resume", "--json", "train.epochs=2")
    assert code == 0, err
    assert json.loads(out)["epochs"] == 2 and "resuming" in err  # stdout holds the JSON alone
    ckpt = tmp_path / "cli-s1" / "checkpoint"
    (ckpt / "tensors.safetensors").write_bytes(b"\0" * 100)
    (ckpt.parent / "checkpoint.prev" / "state.json").write_text("garbage", encoding="utf-8")
    code, out, err = modalrec("--resume", "train.epochs=3")
    assert code == 2 and "checkpoint/tensors.safetensors is damaged" in err, err
    assert "checkpoint.prev/state.json is damaged" in err
    code, out, err = modalrec("--json", "train.epochs=1", "train.lr=0.05")
    assert code == 2 and "exists with a different config: train.epochs (2 in the run, 1 now)" in err, err
    code, out, err = modalrec("--json", "--overwrite", "train.epochs=1", "train.lr=0.05")
    assert code == 0, err
    assert json.loads(out)["epochs"] == 1 and "replacing the earlier run" in err


# ---------------------------------------------------------------------- optimizer groups


def test_the_model_supplies_its_parameter_groups():
    from pipeline.models.base import Recommender

    class Tower(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder, self.fuse = nn.Linear(3, 3), nn.Linear(3, 2)

        def param_groups(self, train):
            return [{"params": list(self.encoder.parameters()), "lr": train.encoder_lr}]

    class Toy(Recommender):
        def __init__(self):
            super().__init__()
            self.users, self.item_tower, self.frozen = nn.Embedding(4, 2), Tower(), nn.Linear(2, 2)
            self.frozen.requires_grad_(False)

        def loss(self, batch):
            return torch.zeros(())

        def score(self, users):
            return torch.zeros(len(users), 1)

    model = Toy()
    train_cfg = load_config(DEMO, ["train.encoder_lr=0.125"]).train
    groups = model.param_groups(train_cfg)
    ids = [{id(p) for p in g["params"]} for g in groups]
    assert ids == [{id(p) for p in [*model.users.parameters(), *model.item_tower.fuse.parameters()]},
                   {id(p) for p in model.item_tower.encoder.parameters()}]
    assert "lr" not in groups[0] and groups[1]["lr"] == 0.125
    opt = torch.optim.Adam(groups, lr=0.5)
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.125]
