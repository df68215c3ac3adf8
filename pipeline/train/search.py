"""Hyper-parameter search that selects on validation only.

A grid (every combination) or a random sample of it; each trial is a normal training run with
its overrides, so any trial can be reproduced with ``modalrec train CONFIG <its overrides>``.
The test metric of the chosen trial is reported, never used to choose. ``pipeline.api.tune``
trains the trials; this module plans them and selects.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..config import Config, load_config
from ..errors import ConfigError
from .run import config_digest


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """``["train.lr=1e-3,1e-2", "model.lightgcn.n_layers=1,2"]`` -> ``{key: [values...]}``."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not values:
            raise ConfigError(f"--grid {item!r}: write key=v1,v2,...")
        if values.startswith("["):  # a YAML list of values, e.g. eval.ks=[[10,20],[20,50]]
            parsed = yaml.safe_load(values)
            grid[key] = [yaml.safe_dump(v, default_flow_style=True).strip() for v in parsed]
        else:
            grid[key] = [v.strip() for v in values.split(",") if v.strip()]
    return grid


def trials(grid: dict[str, list[str]], n_random: int | None, seed: int) -> list[list[str]]:
    keys = list(grid)
    combos = [list(c) for c in itertools.product(*(grid[k] for k in keys))]
    if n_random is not None and n_random < len(combos):
        combos = random.Random(seed).sample(combos, n_random)
    return [[f"{k}={v}" for k, v in zip(keys, combo)] for combo in combos]


@dataclass
class Trial:
    """One point of the grid: its overrides and the config they make."""

    index: int
    overrides: list[str]
    cfg: Config


def plan_trials(config: str | Path | Config, overrides: list[str], grid: dict[str, list[str]],
                n_random: int | None) -> tuple[str, list[Trial]]:
    """(the validation metric that selects, every trial to train), each trial under its own run name."""
    base = load_config(config, overrides)
    out = []
    for i, trial in enumerate(trials(grid, n_random, base.train.seed)):
        cfg = load_config(config, [*overrides, *trial])
        # the config's hash in the name: a later search with another grid never meets this trial's run
        name = f"tune-{base.data.name}-{i:03d}-{config_digest(cfg)[:8]}"
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"run_name": name})})
        out.append(Trial(i, trial, cfg))
    return base.train.valid_metric, out


def trial_record(trial: Trial, result: dict[str, Any], metric: str) -> dict[str, Any]:
    """What a trained trial scored (the mean over seeds when it ran several)."""
    several = "runs" in result
    valid = result["valid"][metric]["mean"] if several else result["valid"][metric]
    test = result["test"][metric]["mean"] if several else result["test"][metric]
    return {"trial": trial.index, "overrides": trial.overrides, "valid": valid, "test": test}


def select_on_valid(records: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """Every trial plus the one with the best validation metric; test is reported, never used."""
    best = max(records, key=lambda t: t["valid"])
    return {"metric": metric, "selected_on": "valid", "best": best, "trials": records}
