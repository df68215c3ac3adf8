"""Hyper-parameter search that selects on validation only.

A grid (every combination) or a random sample of it; each trial is a normal training run with
its overrides, so any trial can be reproduced with ``modalrec train CONFIG <its overrides>``.
The test metric of the chosen trial is reported, never used to choose.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import Any

import yaml

from ..config import load_config
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


def search(config: str | Path, overrides: list[str], grid: dict[str, list[str]], n_random: int | None,
           train_fn, data_fn) -> dict[str, Any]:
    """Run every trial; return them all plus the one with the best validation metric."""
    base = load_config(config, overrides)
    metric = base.train.valid_metric
    results = []
    for i, trial in enumerate(trials(grid, n_random, base.train.seed)):
        cfg = load_config(config, [*overrides, *trial])
        # the config's hash in the name: a later search with another grid never meets this trial's run
        name = f"tune-{base.data.name}-{i:03d}-{config_digest(cfg)[:8]}"
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"run_name": name})})
        r = train_fn(cfg, data_fn(cfg))
        valid = r["valid"][metric]["mean"] if "runs" in r else r["valid"][metric]
        test = r["test"][metric]["mean"] if "runs" in r else r["test"][metric]
        results.append({"trial": i, "overrides": trial, "valid": valid, "test": test})
    best = max(results, key=lambda t: t["valid"])
    return {"metric": metric, "selected_on": "valid", "best": best, "trials": results}
