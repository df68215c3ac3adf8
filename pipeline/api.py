"""The Python API: what each ``modalrec`` command does, callable from a script or a notebook.

Every function takes a config (a ``Config``, or a YAML path) with optional ``key=value``
overrides, or a run directory, and an optional ``accelerate.Accelerator``; it returns plain
results (dicts, ``ExtractResult`` dataclasses, ``PreparedData``, DataFrames) and prints nothing
but progress and notes on stderr. The CLI parses arguments, calls these and prints; recipes
call these directly. Under ``accelerate launch`` call them on every process: data is prepared
once on the main process while the others wait, then loaded by all.

    from pipeline import api
    data = api.prepare("recipes/configs/demo.yaml")
    api.extract("recipes/configs/demo.yaml")
    result = api.train("recipes/configs/demo.yaml", ["model.name=vbpr"])
    top = api.recommend(result["run_dir"], users=["u1"], k=5)
"""

from __future__ import annotations

import atexit
import functools
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from .errors import ConfigError, ModalrecError

if TYPE_CHECKING:  # the heavy modules load when a function runs: `modalrec --help` stays instant
    from .config import Config
    from .data import PreparedData

ConfigLike = Union["Config", str, Path]


def end_process_group_at_exit() -> None:
    """Under `accelerate launch`, destroy the process group when the process exits, while the
    interpreter is still whole. torch asks for this (NCCL warns otherwise); and where gloo's
    threads still hold a finished collective when interpreter shutdown begins, the process
    aborts ("terminate called without an active exception"). Not at the end of each call:
    a script (`recipes/two_step.py`) runs several in one process."""
    if "torch" not in sys.modules:  # nothing here touched torch: there is no group
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        atexit.unregister(_destroy_process_group)  # once, however many calls ran
        atexit.register(_destroy_process_group)


def _destroy_process_group() -> None:
    from accelerate import PartialState

    PartialState().destroy_process_group()  # a no-op when none is up, or under notebook_launcher


def _group_ends_at_exit(func):
    """For the calls that may start a process group (they make an Accelerator)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        finally:
            end_process_group_at_exit()

    return wrapper


def configure(config: ConfigLike, overrides: list[str] | None = None) -> Config:
    """The validated config: a YAML file or a ``Config``, with ``key=value`` overrides applied."""
    from .config import Config, load_config

    if isinstance(config, Config) and not overrides:
        return config
    return load_config(config, overrides)


def prepared(cfg: Config) -> PreparedData:
    """The prepared data set for ``cfg``: reused when it was made from the same data config and
    the same input files (by content), prepared again otherwise."""
    from .data import PreparedData
    from .data import prepare as prepare_data
    from .data.prepare import file_sha256

    try:
        data = PreparedData.load(cfg.prepared_dir)
        same_inputs = all(file_sha256(Path(f["path"])) == f["sha256"] for f in data.meta["inputs"].values())
        if data.config.get("data") == cfg.to_dict()["data"] and same_inputs:
            return data
    except ModalrecError:
        pass
    print(f"preparing {cfg.data.name} into {cfg.prepared_dir}", file=sys.stderr)
    return prepare_data(cfg)


def prepared_on_main(cfg: Config, accelerator=None) -> PreparedData:
    """:func:`prepared` on the main process while the others wait, then loaded by every process."""
    from accelerate import PartialState

    from .data import PreparedData

    state = accelerator if accelerator is not None else PartialState()
    data = prepared(cfg) if state.is_main_process else None
    state.wait_for_everyone()
    return data if data is not None else PreparedData.load(cfg.prepared_dir)


def prepare(config: ConfigLike, overrides: list[str] | None = None, progress: bool = True) -> PreparedData:
    """Load, clean, filter, split and save the data set (always anew; see :func:`prepared`)."""
    from .data import prepare as prepare_data

    return prepare_data(configure(config, overrides), progress=progress)


@_group_ends_at_exit
def extract(config: ConfigLike, overrides: list[str] | None = None, accelerator=None,
            only: list[str] | None = None) -> list:
    """Encode the catalog with the config's encoders (``only``: those named) into the feature
    store, computing only what it lacks; one ``ExtractResult`` per feature set, on every process."""
    from accelerate import Accelerator

    from .extract import extract as extract_features

    cfg = configure(config, overrides)
    accelerator = accelerator or Accelerator()
    return extract_features(cfg, prepared_on_main(cfg, accelerator), accelerator, only=only)


@_group_ends_at_exit
def train(config: ConfigLike, overrides: list[str] | None = None, accelerator=None, resume: bool = False,
          overwrite: bool = False) -> dict[str, Any]:
    """Train the configured recommender (once per seed of ``train.seeds``); the result dict of
    ``modalrec train --json`` plus the per-epoch ``history``. ``resume``: continue the run from its
    last checkpoint; ``overwrite``: replace a same-named run of another config."""
    from accelerate import Accelerator

    from .train import run_training

    cfg = configure(config, overrides)
    if cfg.model is None:
        where = config if isinstance(config, (str, Path)) else "the config"
        from .models import MODELS

        raise ModalrecError(f"{where}: no `model` section; pick one with model.name=... ({', '.join(MODELS)})")
    accelerator = accelerator or Accelerator(mixed_precision=cfg.train.mixed_precision,
                                             gradient_accumulation_steps=cfg.train.grad_accum)
    return run_training(cfg, prepared_on_main(cfg, accelerator), resume=resume, accelerator=accelerator,
                        overwrite=overwrite)


def _device(accelerator):
    return accelerator.device if accelerator is not None else "cpu"


def evaluate(run_dir: str | Path, accelerator=None) -> dict[str, Any]:
    """A finished run's best weights evaluated on valid and test (full ranking)."""
    from .train import load_run
    from .train.trainer import evaluators

    cfg, data, model = load_run(run_dir)
    model.to(_device(accelerator))
    valid_eval, test_eval = evaluators(cfg, data)
    out: dict[str, Any] = {"run_dir": str(run_dir), "model": cfg.model.name}
    for split, ev in (("valid", valid_eval), ("test", test_eval)):
        model.use_history(split)
        out[split] = ev.evaluate(model.score, device=_device(accelerator), cold_slice=cfg.eval.cold_slice)
    return out


def recommend(run_dir: str | Path, users: list[str] | None = None, k: int = 10, accelerator=None):
    """Top-``k`` items per user (default: every user) of a finished run, items seen in train and
    valid excluded: a DataFrame ``user_id, rank, item_id, score``."""
    from .eval.recommend import recommend as top_k
    from .train import load_run

    _, data, model = load_run(run_dir)
    model.to(_device(accelerator))
    model.use_history("test")
    return top_k(model, data, users, k, device=_device(accelerator))


@_group_ends_at_exit
def compare(config: ConfigLike, overrides: list[str] | None = None, accelerator=None,
            report_dir: str | Path | None = None, dry_run: bool = False) -> dict[str, Any]:
    """Frozen vs fine-tuned: train (or reuse) every arm of the config's `compare` grid over its
    seeds and write the report; returns the report's JSON object (``{}`` on the other processes
    of ``accelerate launch``). ``dry_run``: only the arms and their overrides."""
    from .compare import plan_compare, run_compare

    plan = plan_compare(config, overrides)
    if dry_run:
        return plan.listing()
    data = prepared_on_main(plan.shared, accelerator)
    return run_compare(plan, data, accelerator, report_dir=report_dir)


@_group_ends_at_exit
def tune(config: ConfigLike, grid: dict[str, list[str]] | list[str], overrides: list[str] | None = None,
         n_random: int | None = None, accelerator=None) -> dict[str, Any]:
    """Grid (or ``n_random`` sampled) hyper-parameter search selected on validation only. ``grid``:
    ``{key: [values]}`` or ``["key=v1,v2", ...]``; each trial is a :func:`train` run."""
    from .train.search import parse_grid, plan_trials, select_on_valid, trial_record

    grid = parse_grid(grid) if isinstance(grid, list) else dict(grid)
    if not grid:
        raise ConfigError("tune needs at least one --grid key=v1,v2,...")
    metric, trials = plan_trials(config, list(overrides or []), grid, n_random)
    records = [trial_record(t, train(t.cfg, accelerator=accelerator), metric) for t in trials]
    return select_on_valid(records, metric)
