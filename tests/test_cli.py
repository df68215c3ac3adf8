"""The `modalrec` command line: JSON output, human output, exit codes, overrides."""

import json
import shutil
import subprocess
import sys

import pytest

from conftest import REPO


def modalrec(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def test_prepare_json_is_one_object_on_stdout(tiny_config, tmp_path):
    r = modalrec("data", "prepare", tiny_config, "--json", "--data.split.protocol", "random",
                 "data.split.seed=3")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)  # the whole of stdout is one JSON object
    assert (out["users"], out["items"], out["rows"], out["interactions"]) == (3, 4, 13, 12)
    assert out["splits"] == {"train": 6, "valid": 3, "test": 3}
    assert out["protocol"] == "random"
    stats = modalrec("data", "stats", out["path"], "--json")
    assert stats.returncode == 0 and json.loads(stats.stdout) == out


def test_human_output(tiny_config):
    r = modalrec("data", "prepare", tiny_config)
    assert r.returncode == 0, r.stderr
    assert "users       3" in r.stdout and "train 6 / valid 3 / test 3 pairs" in r.stdout
    assert "photo: 2 present, 2 missing" in r.stdout


def test_errors_exit_nonzero_with_one_line(tiny_config, tmp_path):
    r = modalrec("data", "prepare", tiny_config, "data.split.protocl=random")
    assert r.returncode == 2
    assert "data.split.protocl: unknown key" in r.stderr and "Traceback" not in r.stderr
    r = modalrec("data", "stats", tmp_path)
    assert r.returncode == 2 and "not a prepared data set" in r.stderr
    r = modalrec("data", "prepare", tmp_path / "missing.yaml")
    assert r.returncode == 2 and "config file not found" in r.stderr


def test_process_group_is_destroyed_once_at_exit_not_between_commands(tmp_path):
    """Under `accelerate launch` the CLI leaves the group up between commands (the recipes run
    several in one process) and destroys it at exit, before interpreter shutdown."""
    script = f"""
import atexit, sys
import torch.distributed as dist
from pipeline.cli import main
atexit.register(lambda: print("at exit, group up:", dist.is_initialized()))  # runs after the CLI's hook
dist.init_process_group("gloo", init_method="file://{tmp_path / 'store'}", rank=0, world_size=1)
for _ in range(2):
    assert main(["data", "stats", "{tmp_path}"]) == 2  # a command that fails on bad input still counts
    print("between commands, group up:", dist.is_initialized())
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["between commands, group up: True"] * 2 + ["at exit, group up: False"]


def test_no_placeholder_commands():
    r = modalrec("--help")
    assert r.returncode == 0
    from pipeline.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    # every command listed is exercised by a test (extract: test_extract.py; train, evaluate,
    # recommend, tune: test_train_cli.py; store: test_extract.py; compare: test_compare.py)
    assert sorted(commands) == ["compare", "data", "evaluate", "extract", "recommend", "store", "train", "tune"]
    for name, sub in commands.items():
        assert name in r.stdout and sub.format_help()


def test_console_script_installed():
    exe = shutil.which("modalrec")
    assert exe, "the modalrec console script is not on PATH: install the package (pip install -e .)"
    r = subprocess.run([exe, "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("modalrec ")


def test_demo_config_end_to_end(tmp_path):
    """The shipped demo config, shrunk by overrides, through the CLI."""
    r = modalrec("data", "prepare", REPO / "recipes/configs/demo.yaml", "--json", f"cache_dir={tmp_path}",
                 f"data.root={tmp_path}/raw", "data.demo.n_items=150", "data.demo.n_users=100")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["items"] <= 150 and out["users"] == 100
    assert out["fields"] == {"text": ["text"], "image": ["image"], "audio": ["audio"]}
    assert out["missing"] == {"text": 0, "image": 0, "audio": 0}
    assert out["cold_items"]["test"] > 0 and all(out["splits"].values())


def test_commands_reprepare_when_input_files_change(tiny_config, tiny_data):
    """`train`/`extract` reuse prepared data only while the raw files are unchanged."""
    from pipeline.api import prepared as _prepared_for
    from pipeline.config import load_config

    cfg = load_config(tiny_config)
    first = _prepared_for(cfg)
    assert _prepared_for(cfg).path == first.path and _prepared_for(cfg).stats()["items"] == 4
    with (tiny_data / "items.csv").open("a") as f:
        f.write("011,White shirt,Cotton,\n")
    assert _prepared_for(cfg).stats()["items"] == 5
