"""One training loop for every model and both tracks, on Accelerate.

Read it top to bottom: build data, model and optimizer; ``accelerator.prepare``; then per epoch
train, evaluate on validation, keep the best weights, checkpoint, stop early. The test split is
evaluated only with the weights of the best validation epoch (never used for selection).
The run directory (config, checkpoints, best weights, result) is the ``Run``'s; what a track
does besides training (the end-to-end track's export of fine-tuned features) is a callback.
Multi-GPU and multi-node come from ``accelerate launch``, not from code here.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import resource
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..config import Config
from ..data import PreparedData
from ..errors import ConfigError, ModalrecError
from ..eval import Evaluator
from ..models import build_model
from .callbacks import Callback
from .cpu_memory import keep_freed_memory
from .progress import StepBar
from .run import Run


def evaluators(cfg: Config, data: PreparedData) -> tuple[Evaluator, Evaluator]:
    train, valid, test = (data.pairs(s) for s in ("train", "valid", "test"))
    kw = dict(ks=tuple(cfg.eval.ks), metrics=tuple(cfg.eval.metrics), batch_users=cfg.eval.batch_users,
              skip_cold_users=cfg.eval.skip_cold_users)
    return (Evaluator(data.n_users, data.n_items, train, valid, **kw),
            Evaluator(data.n_users, data.n_items, train, test, also_mask=valid if cfg.eval.mask_valid_in_test else None,
                      long_tail_share=cfg.eval.long_tail_share if cfg.eval.long_tail_slice else None, **kw))


def _evaluate(model, evaluator: Evaluator, split: str, device, cold_slice: bool) -> dict[str, float]:
    model.eval()
    model.use_history(split)
    with torch.no_grad():
        return evaluator.evaluate(model.score, device=device, cold_slice=cold_slice)


def _optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Adam(W) over the groups the model asks for (live encoders: their own rate and decay)."""
    opt_cls = torch.optim.AdamW if cfg.train.optimizer == "adamw" else torch.optim.Adam
    # fused: one kernel for all parameters; the per-tensor loop is most of a small model's step on CPU
    return opt_cls(model.param_groups(cfg.train), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, fused=True)


def _look_up_packages_once() -> None:
    """accelerate (1.x) asks importlib on every optimizer step, twice, whether ``lomo_optim`` is
    installed: a search of ``sys.path`` costing 0.4 ms a step, about 15% of a BPR epoch on TikTok
    on 2 CPU cores. The answer cannot change during a run, so it is looked up once."""
    import accelerate.optimizer

    check = getattr(accelerate.optimizer, "is_lomo_available", None)
    if check is not None and not hasattr(check, "cache_info"):
        accelerate.optimizer.is_lomo_available = functools.cache(check)


def _peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated by this run, or on CPU the process's peak resident memory."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def train(cfg: Config, data: PreparedData, features: dict, *, seed: int | None = None, resume: bool = False,
          overwrite: bool = False, accelerator: Accelerator | None = None, live: dict | None = None,
          callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Train ``cfg.model`` on ``data``; returns the result object ``modalrec train --json`` prints.
    ``live``: the live encoders' sources (``pipeline.live.load_live``); each run trains a copy.
    ``resume`` continues the run's last checkpoint; ``overwrite`` replaces a run of that name
    trained with another config (refused otherwise)."""
    if cfg.model is None:
        raise ConfigError("no `model` section: name a model, e.g. model.name=bpr")
    seed = cfg.train.seed if seed is None else seed
    run = Run.for_config(cfg, seed)
    accelerator = accelerator or Accelerator(mixed_precision=cfg.train.mixed_precision,
                                             gradient_accumulation_steps=cfg.train.grad_accum,
                                             log_with="tensorboard" if cfg.train.tensorboard else None,
                                             project_dir=str(run.path))
    set_seed(seed)
    if accelerator.device.type == "cpu" and cfg.train.keep_freed_memory:
        keep_freed_memory()
    main = accelerator.is_main_process
    if live:  # every seed starts from the same pretrained encoders
        live = {n: dataclasses.replace(src, encoder=copy.deepcopy(src.encoder)) for n, src in live.items()}
    model = build_model(cfg.model, data, features, cfg.cache_dir, seed, live=live,
                        encode_batch_size=cfg.train.encode_batch_size)
    # the config is sound (the model builds): now the run directory may be checked and set up
    run.check(cfg, seed, resume=resume, overwrite=overwrite)
    accelerator.wait_for_everyone()  # every process has checked before the main one changes anything
    if main:
        run.prepare(cfg, seed, resume=resume)
    accelerator.wait_for_everyone()
    trainable_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optimizer = _optimizer(cfg, model)
    warmup = cfg.train.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup)
                                                  if warmup else 1.0)
    batches = model.train_batches(data, cfg.train.batch_size, seed, rank=accelerator.process_index,
                                  world=accelerator.num_processes)
    loader = DataLoader(batches, batch_size=None)  # the dataset yields whole vectorised batches
    n_batches, accumulate = len(batches), accelerator.gradient_accumulation_steps
    if accelerator.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(accelerator.device)
    model, optimizer = accelerator.prepare(model, optimizer)
    _look_up_packages_once()
    core = accelerator.unwrap_model(model)
    valid_eval, test_eval = evaluators(cfg, data)

    state: dict[str, Any] = {"epoch": 0, "best_epoch": -1, "best_score": -1.0, "bad_epochs": 0, "history": [],
                             "valid": {}, "test": {}}
    if resume:
        state = run.load_checkpoint(core, optimizer, scheduler, report=main)
        if main:
            run.save_config(cfg, seed)  # with the budget it now trains to
            print(f"resuming {run.path} at epoch {state['epoch']}", file=sys.stderr, flush=True)
    if cfg.train.tensorboard:
        accelerator.init_trackers("tb")
    metric = cfg.train.valid_metric
    bar = tqdm(total=cfg.train.epochs, initial=state["epoch"], desc=f"{cfg.model.name}", unit="epoch",
               disable=not (main and cfg.train.progress), dynamic_ncols=True)
    step_bar = StepBar(n_batches, enabled=main and cfg.train.progress)
    while state["epoch"] < cfg.train.epochs and state["bad_epochs"] <= cfg.train.patience:
        epoch = state["epoch"]
        model.train()
        core.pre_epoch(epoch)
        batches.set_epoch(epoch)
        started = time.perf_counter()
        step_bar.start(epoch)
        total, steps, samples = 0.0, 0, 0
        for batch in loader:
            batch = {k: v.to(accelerator.device, non_blocking=True) for k, v in batch.items()}
            # an optimizer step every grad_accum batches and after the epoch's last batch, so no
            # gradient carries over into the next epoch (or is lost from a checkpoint)
            accelerator.sync_gradients = (steps + 1) % accumulate == 0 or steps + 1 == n_batches
            with contextlib.nullcontext() if accelerator.sync_gradients else accelerator.no_sync(model):
                loss = model(batch)
                if not torch.isfinite(loss):
                    raise ModalrecError(f"training diverged at epoch {epoch}: loss is {loss.item()}; lower train.lr")
                if trainable_params:  # a model with nothing to learn (itemknncbf) reports its loss only
                    accelerator.backward(loss)
            if accelerator.sync_gradients:
                optimizer.step()
                scheduler.step()
                core.zero_grad(set_to_none=True)  # the prepared optimizer's zero_grad inspects a signature per call
            total += loss.item()
            steps += 1
            samples += len(batch["users"]) if "users" in batch else len(next(iter(batch.values())))
            step_bar.step(total / steps)
        step_bar.end()
        train_seconds = time.perf_counter() - started
        record = {"epoch": epoch, "loss": total / max(steps, 1), "train_seconds": train_seconds,
                  "samples": samples * accelerator.num_processes}
        if (epoch + 1) % cfg.train.eval_every == 0 or epoch + 1 == cfg.train.epochs:
            started = time.perf_counter()
            core.fit_ranking(lambda: _evaluate(core, valid_eval, "valid", accelerator.device, cold_slice=True), metric)
            valid = _evaluate(core, valid_eval, "valid", accelerator.device, cold_slice=False)
            record["eval_seconds"] = time.perf_counter() - started
            record["valid"] = {metric: valid[metric]}
            if valid[metric] > state["best_score"]:
                state.update(best_score=valid[metric], best_epoch=epoch, bad_epochs=0, valid=valid)
                state["test"] = _evaluate(core, test_eval, "test", accelerator.device, cfg.eval.cold_slice)
                if main:
                    run.save_best(core)
            else:
                state["bad_epochs"] += 1
        state["history"].append(record)
        state["epoch"] = epoch + 1
        accelerator.log({"train/loss": record["loss"], **{f"valid/{k}": v for k, v in record.get("valid", {}).items()}},
                        step=epoch)
        if main:
            run.save_checkpoint(core, optimizer, state, scheduler)
        # no metric before the first evaluation: -1 would read as a score
        bar.set_postfix(loss=f"{record['loss']:.4f}",
                        **({metric: f"{state['best_score']:.4f}"} if state["best_epoch"] >= 0 else {}))
        bar.update(1)
    bar.close()
    for tracker in accelerator.trackers:  # not end_training(): that also ends the process group, and
        tracker.finish()  # the callbacks and any further seeds still need it

    result = summarize(cfg, state, seed, run.path)
    result.update(trainable_params=trainable_params, peak_memory_mb=_peak_memory_mb(accelerator.device))
    if main:
        for callback in callbacks:
            callback.on_end(run, core, result)
    accelerator.wait_for_everyone()
    if main:
        run.finish(result)
    return result


def summarize(cfg: Config, state: dict[str, Any], seed: int, run_dir: Path) -> dict[str, Any]:
    hist = state["history"]
    evals = [h["eval_seconds"] for h in hist if "eval_seconds" in h]
    seconds = sum(h["train_seconds"] for h in hist)
    return {
        "model": cfg.model.name,
        "data": cfg.data.name,
        "seed": seed,
        "run_dir": str(run_dir),
        "best_epoch": state["best_epoch"],
        "epochs": len(hist),
        "valid": state["valid"],
        "test": state["test"],
        "train_seconds_per_epoch": statistics.median(h["train_seconds"] for h in hist) if hist else 0.0,
        "eval_seconds_per_epoch": statistics.median(evals) if evals else 0.0,
        "samples_per_second": sum(h.get("samples", 0) for h in hist) / seconds if seconds else 0.0,
        "history": [{k: v for k, v in h.items()} for h in hist],
    }


def mean_std(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Several seeds of one config: every test/valid metric as mean and (sample) std."""
    out: dict[str, Any] = {}
    for split in ("valid", "test"):
        keys = [k for k, v in results[0][split].items() if isinstance(v, float)]
        out[split] = {k: {"mean": float(np.mean([r[split][k] for r in results])),
                          "std": float(np.std([r[split][k] for r in results], ddof=1)) if len(results) > 1 else 0.0}
                      for k in keys}
    return out
