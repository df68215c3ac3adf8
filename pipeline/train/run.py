"""A training run on disk. ``Run`` owns its directory; the trainer only asks it to save and load.

``<runs_dir>/<name>/`` holds ``config.yaml`` (the resolved config with the run's own seed: it
alone rebuilds the model for ``evaluate`` and ``recommend``), ``checkpoint/`` (the last epoch)
and ``checkpoint.prev/`` (the one before), ``best.safetensors`` (the best validation epoch's
weights), ``result.json`` and ``tb/``. Every checkpoint and weights file is verified when read
(``checkpoint.py``).

A run is never replaced silently. The default name carries a short hash of every config key that
can change a result (``<data>-<model>-<hash8>-s<seed>``), so different experiments get different
directories, and ``<data>-<model>-s<seed>`` links to the latest of them. A name that already
holds a run with another config is refused, naming the keys that differ, unless ``overwrite``
(the same config trains it again). ``resume`` refuses a config that differs in anything but the
budget (``BUDGET_KEYS``), which only an explicit ``train.run_name`` keeps across a change.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any

import torch
import yaml

from ..atomic import remove_leftovers, write_json_atomic
from ..config import Config, save_config
from ..errors import ConfigError, ModalrecError
from .checkpoint import (Checkpoint, DamagedFile, exists, load_weights, restore_checkpoint, save_checkpoint,
                         save_weights, verify_checkpoint)

# Keys that never change a result: display, where things are written, parallelism of I/O.
IGNORED_KEYS = ("cache_dir", "compare", "train.progress", "train.tensorboard", "train.runs_dir", "train.run_name",
                "train.keep_freed_memory", "train.seeds", "eval.batch_users", "extract.num_workers",
                "extract.offline", "extract.flush_every")
# How long to train: a resumed run may be given more (or fewer) epochs or patience.
BUDGET_KEYS = ("train.epochs", "train.patience")


def snapshot(cfg: Config, seed: int) -> Config:
    """The config one seed's run saves: its own seed, no seed list."""
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"seed": seed, "seeds": None})})


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def _skipped(key: str, skip: tuple[str, ...]) -> bool:
    return any(key == k or key.startswith(k + ".") for k in skip)


def differing_keys(old: dict, new: dict, skip: tuple[str, ...] = IGNORED_KEYS) -> list[str]:
    """``key (old in the run, new now)`` for every dotted key whose value differs."""
    a, b = _flat(old), _flat(new)
    keys = sorted(k for k in {*a, *b} if not _skipped(k, skip) and a.get(k) != b.get(k))
    return [f"{k} ({json.dumps(a.get(k))} in the run, {json.dumps(b.get(k))} now)" for k in keys]


def config_digest(cfg: Config) -> str:
    """sha256 of the config keys that can change a result, less the seed (the name has it)."""
    flat = _flat(snapshot(cfg, 0).to_dict())
    body = {k: v for k, v in flat.items() if not _skipped(k, (*IGNORED_KEYS, "train.seed"))}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()


def run_dir_for(cfg: Config, seed: int) -> Path:
    if cfg.train.run_name:
        return cfg.runs_dir / f"{cfg.train.run_name}-s{seed}"
    return cfg.runs_dir / f"{cfg.data.name}-{cfg.model.name}-{config_digest(cfg)[:8]}-s{seed}"


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _listed(items: list[str], most: int = 8) -> str:
    return "; ".join(items[:most]) + (f"; and {len(items) - most} more" if len(items) > most else "")


class Run:
    CONFIG, BEST, RESULT = "config.yaml", "best.safetensors", "result.json"

    def __init__(self, path: str | Path, latest_link: Path | None = None):
        self.path = Path(path)
        self.latest_link = latest_link  # <data>-<model>-s<seed>: points at the latest default-named run

    @classmethod
    def for_config(cls, cfg: Config, seed: int) -> Run:
        link = None if cfg.train.run_name else cfg.runs_dir / f"{cfg.data.name}-{cfg.model.name}-s{seed}"
        return cls(run_dir_for(cfg, seed), link)

    @property
    def config_path(self) -> Path:
        return self.path / self.CONFIG

    @property
    def best_path(self) -> Path:
        return self.path / self.BEST

    @property
    def result_path(self) -> Path:
        return self.path / self.RESULT

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoint"

    @property
    def previous_dir(self) -> Path:
        return self.path / "checkpoint.prev"

    # ------------------------------------------------------------------ opening

    def saved_config(self) -> dict:
        try:
            tree = yaml.safe_load(self.config_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise ModalrecError(f"cannot read {self.config_path}: {e}") from None
        if not isinstance(tree, dict):
            raise ModalrecError(f"{self.config_path} is not a config (a mapping of sections)")
        return tree

    def check(self, cfg: Config, seed: int, *, resume: bool, overwrite: bool) -> None:
        """Refuse what must not happen here: resuming a run that cannot be continued with ``cfg``,
        or replacing a run of another config without ``overwrite``. Only reads: every process
        checks, so all of them stop together."""
        if self.path.is_symlink():
            raise ModalrecError(f"{self.path} is a link to another run; name this run differently (train.run_name)")
        new = json.loads(json.dumps(snapshot(cfg, seed).to_dict()))
        if resume:
            if not self.has_checkpoint():
                hint = ("; a default run name carries a hash of the config, train.epochs included: resume with "
                        "the run's own config, or name runs with train.run_name to give one more epochs later"
                        if self.latest_link is not None else "")
                raise ModalrecError(f"no checkpoint to resume from in {self.checkpoint_dir}{hint}")
            if not self.config_path.is_file():
                raise ModalrecError(f"cannot resume {self.path}: its {self.CONFIG} is missing, so its config "
                                    "cannot be checked")
            diff = differing_keys(self.saved_config(), new, (*IGNORED_KEYS, *BUDGET_KEYS))
            if diff:
                raise ConfigError(f"cannot resume {self.path} with a different config: {_listed(diff)} "
                                  f"(a resumed run may change only {', '.join(BUDGET_KEYS)}); "
                                  "train it with --overwrite, or under another train.run_name")
            return
        if not self.path.is_dir() or not any(self.path.iterdir()):
            return
        if not self.config_path.is_file():
            raise ModalrecError(f"refusing to replace {self.path}: it is not a modalrec run (no {self.CONFIG})")
        try:
            diff = differing_keys(self.saved_config(), new)
        except ModalrecError as e:
            if not overwrite:
                raise ModalrecError(f"{e}; --overwrite replaces the run {self.path}") from None
            return
        if diff and not overwrite:
            raise ModalrecError(f"run {self.path} exists with a different config: {_listed(diff)}. Continue it "
                                f"with --resume (if only {', '.join(BUDGET_KEYS)} differ), replace it with "
                                "--overwrite, or name this run with train.run_name")

    def prepare(self, cfg: Config, seed: int, *, resume: bool) -> None:
        """After ``check``, on the main process only: a fresh run starts from an empty directory
        (an earlier run of that name is removed, saying so) with its config; a resumed one keeps
        its files and loses what a kill left half-written."""
        if resume:
            remove_leftovers(self.path)
            return
        if self.path.is_dir() and any(self.path.iterdir()):
            _stderr(f"replacing the earlier run in {self.path}: training it again from scratch")
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.save_config(cfg, seed)

    def save_config(self, cfg: Config, seed: int) -> None:
        """The run's own seed goes in, so the saved config alone rebuilds this run (evaluate, recommend)."""
        save_config(snapshot(cfg, seed), self.config_path)

    # ------------------------------------------------------------------ checkpoints

    def has_checkpoint(self) -> bool:
        return exists(self.checkpoint_dir) or exists(self.previous_dir)

    def save_checkpoint(self, model: torch.nn.Module, optimizer, state: dict[str, Any], scheduler=None) -> None:
        save_checkpoint(self.checkpoint_dir, model, optimizer, state, scheduler, previous=self.previous_dir)

    def load_checkpoint(self, model: torch.nn.Module, optimizer, scheduler=None, report: bool = True) -> dict:
        """Restore the newest checkpoint whose files verify (the last, else the one before) and
        return its trainer state; say on stderr when it is not the last one."""
        good: list[Checkpoint] = []
        damaged: list[DamagedFile] = []
        for folder in (self.checkpoint_dir, self.previous_dir):
            if exists(folder):
                try:
                    good.append(verify_checkpoint(folder))
                except DamagedFile as e:
                    damaged.append(e)
        if not good:
            if damaged:
                raise ModalrecError(f"cannot resume {self.path}: " + "; ".join(str(e) for e in damaged)
                                    + "; train it again with --overwrite")
            raise ModalrecError(f"no checkpoint to resume from in {self.checkpoint_dir}")
        chosen = max(good, key=lambda c: c.epoch)
        if report:
            for e in damaged:
                _stderr(f"warning: {e}")
            if chosen.folder != self.checkpoint_dir:
                why = "is damaged" if damaged and damaged[0].path.parent == self.checkpoint_dir else "was never completed"
                _stderr(f"the last checkpoint of {self.path} {why}: resuming from the one before it, "
                        f"{chosen.folder} (epoch {chosen.epoch})")
        return restore_checkpoint(chosen, model, optimizer, scheduler)

    # ------------------------------------------------------------------ best weights, result

    def save_best(self, model: torch.nn.Module) -> None:
        save_weights(self.best_path, model.state_dict())

    def load_best(self, model: torch.nn.Module) -> None:
        if not self.best_path.is_file():
            raise ModalrecError(f"{self.path}: no trained model here ({self.BEST}); run `modalrec train` first")
        tensors = load_weights(self.best_path)
        try:
            model.load_state_dict(tensors)
        except RuntimeError as e:
            raise ModalrecError(f"{self.best_path} does not fit the model its run's config builds: "
                                f"{str(e).splitlines()[0]}") from None

    def finish(self, result: dict[str, Any]) -> None:
        """Write the result; point ``<data>-<model>-s<seed>`` at this run (default names only)."""
        write_json_atomic(self.result_path, result)
        link = self.latest_link
        if link is None or (link.exists() and not link.is_symlink()):
            return  # a run directory of that name (an older modalrec's) stays as it is
        tmp = link.with_name(f".{link.name}.tmp-{uuid.uuid4().hex[:8]}")
        os.symlink(self.path.name, tmp)
        os.replace(tmp, link)
