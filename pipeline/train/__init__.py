"""Training: the Accelerate trainer, vectorised batches, checkpoints, and runs on disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..config import Config, load_config
from ..data import PreparedData
from ..errors import ModalrecError
from .callbacks import ExportFinetuned
from .run import Run, run_dir_for
from .trainer import mean_std, train


def needed_features(cfg: Config) -> list[str]:
    """The feature sets the configured model reads: its item tower's and its own (FREEDOM's graph)."""
    readable = cfg.model.readable(list(cfg.features))
    return list(dict.fromkeys([*cfg.model.tower(readable).features, *cfg.model.params.extra_features(readable)]))


def run_training(cfg: Config, data: PreparedData, resume: bool = False, accelerator=None,
                 overwrite: bool = False) -> dict[str, Any]:
    """Train once per seed (``train.seeds``, else ``train.seed``); several seeds add mean and std.
    End-to-end runs (live encoders) also export their fine-tuned features when they finish."""
    from ..features import load_features
    from ..live import load_live

    features = load_features(cfg, data, needed_features(cfg))
    live = load_live(cfg, data, accelerator)
    callbacks = [ExportFinetuned(cfg, data)] if live else []
    seeds = cfg.train.seeds or [cfg.train.seed]
    results = [train(cfg, data, features, seed=s, resume=resume, overwrite=overwrite, accelerator=accelerator,
                     live=live, callbacks=callbacks) for s in seeds]
    if len(results) == 1:
        return results[0]
    return {"model": cfg.model.name, "data": cfg.data.name, "seeds": seeds, "runs": results, **mean_std(results)}


def load_run(run_dir: str | Path) -> tuple[Config, PreparedData, torch.nn.Module]:
    """A finished run's config, data and model with its best weights, ready to score."""
    from ..features import load_features
    from ..live import load_live
    from ..models import build_model

    run = Run(run_dir)
    if not run.best_path.is_file():
        raise ModalrecError(f"{run.path}: no trained model here ({Run.BEST}); run `modalrec train` first")
    cfg = load_config(run.config_path)
    data = PreparedData.load(cfg.prepared_dir)
    seed = cfg.train.seed  # the trainer saved the run's own seed here
    features = load_features(cfg, data, needed_features(cfg))
    model = build_model(cfg.model, data, features, cfg.cache_dir, seed, live=load_live(cfg, data),
                        encode_batch_size=cfg.train.encode_batch_size)
    run.load_best(model)
    model.eval()
    return cfg, data, model


__all__ = ["Run", "load_run", "needed_features", "run_dir_for", "run_training", "train"]
