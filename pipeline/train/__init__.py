"""Training: the Accelerate trainer, vectorised batches, checkpoints, and runs on disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ..config import Config, load_config
from ..data import PreparedData
from ..errors import ModalrecError
from .trainer import mean_std, run_dir_for, train


def needed_features(cfg: Config) -> list[str]:
    """The feature sets the configured model reads: its item tower's and its own (FREEDOM's graph)."""
    configured = list(cfg.features)
    return list(dict.fromkeys([*cfg.model.tower(configured).features, *cfg.model.params.extra_features(configured)]))


def run_training(cfg: Config, data: PreparedData, resume: bool = False, accelerator=None) -> dict[str, Any]:
    """Train once per seed (``train.seeds``, else ``train.seed``); several seeds add mean and std."""
    from ..features import load_features
    from ..live import load_live

    features = load_features(cfg, data, needed_features(cfg))
    live = load_live(cfg, data, accelerator)
    seeds = cfg.train.seeds or [cfg.train.seed]
    results = [train(cfg, data, features, seed=s, resume=resume, accelerator=accelerator, live=live) for s in seeds]
    if len(results) == 1:
        return results[0]
    return {"model": cfg.model.name, "data": cfg.data.name, "seeds": seeds, "runs": results, **mean_std(results)}


def load_run(run_dir: str | Path) -> tuple[Config, PreparedData, torch.nn.Module]:
    """A finished run's config, data and model with its best weights, ready to score."""
    from ..features import load_features
    from ..live import load_live
    from ..models import build_model

    run_dir = Path(run_dir)
    if not (run_dir / "best.safetensors").is_file():
        raise ModalrecError(f"{run_dir}: no trained model here (best.safetensors); run `modalrec train` first")
    cfg = load_config(run_dir / "config.yaml")
    data = PreparedData.load(cfg.prepared_dir)
    seed = cfg.train.seed  # the trainer saved the run's own seed here
    features = load_features(cfg, data, needed_features(cfg))
    model = build_model(cfg.model, data, features, cfg.cache_dir, seed, live=load_live(cfg, data),
                        encode_batch_size=cfg.train.encode_batch_size)
    model.load_state_dict(load_file(str(run_dir / "best.safetensors")))
    model.eval()
    return cfg, data, model


__all__ = ["load_run", "needed_features", "run_dir_for", "run_training", "train"]
