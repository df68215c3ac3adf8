"""Run a comparison: every arm once per seed, resumably, then the report.

Each (arm, seed) is an ordinary training run under ``<cache_dir>/compare/<name>/runs/<arm>-s<seed>``
(``modalrec evaluate`` / ``recommend`` work on it). A stamp in ``<name>/stamps/`` holds the hash
of the run's resolved config and data: written as ``started`` before training, ``finished`` once
the run is done and the test users' own metric values have been computed from its best weights
(``per_user.safetensors`` in the run, for the paired tests). A re-run reuses every (arm, seed)
whose finished stamp matches, continues one that was killed (started stamp with the same hash)
from its last checkpoint, and trains the rest from scratch. An arm that fails is reported with
its error; the others still run.
"""

from __future__ import annotations

import gc
import hashlib
import json
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from ..atomic import write_json_atomic
from ..config import Config, load_config
from ..data import PreparedData
from ..errors import ConfigError
from .arms import Arm, baseline_arm, build_arms, common_overrides, compared_features, compared_models
from .per_user import PER_USER, per_user_metrics, save_per_user
from .report_data import train_budget

_STAMP_FORMAT = 1


def compare_dir(cfg: Config) -> Path:
    return cfg.cache_dir / "compare" / (cfg.compare.name or cfg.data.name)


def check_metric(cfg: Config) -> str:
    metric = cfg.compare.metric or cfg.train.valid_metric
    name, _, k = metric.partition("@")
    if name not in cfg.eval.metrics or not k.isdigit() or int(k) not in cfg.eval.ks:
        raise ConfigError(f"compare.metric {metric!r} must be one of eval.metrics {cfg.eval.metrics} "
                          f"at one of eval.ks {cfg.eval.ks}")
    return metric


def config_hash(cfg: Config, data: PreparedData, depends: str = "") -> str:
    """What decides a run's result: its resolved config (less the compare section and display
    switches), the content of the data's input files, and the runs it reads features from."""
    tree = cfg.to_dict()
    tree.pop("compare", None)
    for key in ("progress", "tensorboard"):
        tree["train"].pop(key, None)
    inputs = {k: v.get("sha256") for k, v in data.meta.get("inputs", {}).items()}
    body = json.dumps({"config": tree, "inputs": inputs, "depends": depends}, sort_keys=True, default=str)
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def _stamp(path: Path) -> dict:
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return body if isinstance(body, dict) and body.get("format") == _STAMP_FORMAT else {}


def _finished(stamp: dict, run_dir: Path, digest: str) -> bool:
    return (stamp.get("hash") == digest and stamp.get("state") == "finished" and (run_dir / "result.json").is_file()
            and (run_dir / PER_USER).is_file())


def _can_resume(stamp: dict, run_dir: Path, cfg: Config, digest: str) -> bool:
    """A run killed part-way: its checkpoint continues it when it was started for this same hash."""
    from ..train.run import Run

    if stamp.get("hash") != digest or not Run(run_dir).has_checkpoint():
        return False
    try:
        saved = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return False
    return saved == json.loads(json.dumps(cfg.to_dict()))


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _error_text(e: BaseException) -> str:
    """Our own errors already read as one sentence; anything else keeps its type for context."""
    from ..errors import ModalrecError

    text = str(e).strip() or type(e).__name__
    return text if isinstance(e, (ModalrecError, _Blocked)) else f"{type(e).__name__}: {text}"


def _extract(cfg: Config, data: PreparedData, features: list[str], accelerator) -> tuple[list[dict], dict[str, str]]:
    """Extract what the compared frozen features need (only what the store lacks). An encoder
    that fails is remembered with its error; the arms reading it fail, the others run."""
    from ..extract import extract

    needed = list(dict.fromkeys(cfg.features[f].encoder for f in features
                                if cfg.features[f].encoder is not None and getattr(cfg.features[f], "run", None) is None))
    if not needed:
        return [], {}
    try:
        sub = cfg.model_copy(update={"encoders": {e: cfg.encoders[e] for e in needed}})
        return [r.to_dict() for r in extract(sub, data, accelerator)], {}
    except Exception:  # noqa: BLE001  (find out which encoder: each alone)
        results, errors = [], {}
        for e in needed:
            try:
                sub = cfg.model_copy(update={"encoders": {e: cfg.encoders[e]}})
                results += [r.to_dict() for r in extract(sub, data, accelerator)]
            except Exception as err:  # noqa: BLE001
                errors[e] = f"extracting encoders.{e}: {_error_text(err)}"
                _log(f"compare: {errors[e]}")
        return results, errors


@dataclass
class ComparePlan:
    """A comparison before anything runs: its config, the arms and what they share."""

    config: str | Path | Config  # what each arm's config is loaded from, with the arm's overrides
    overrides: list[str]
    cfg: Config
    shared: Config  # every arm's common part (compare.common, the frozen arms' recommender): budget and evaluation
    arms: list[Arm]
    baseline: str
    metric: str

    @property
    def root(self) -> Path:
        return compare_dir(self.cfg)

    @property
    def seeds(self) -> list[int]:
        return list(self.cfg.compare.seeds)

    def arm_overrides(self, arm: Arm, seed: int) -> list[str]:
        runs = self.root / "runs"
        return [*self.overrides, *common_overrides(self.cfg, runs, arm.name, arm.model), *arm.overrides,
                *arm.seed_overrides(seed, lambda name, s: runs / f"{name}-s{s}")]

    def listing(self) -> dict[str, Any]:
        """The arms and the overrides of their first seed's run (what ``--dry-run`` prints)."""
        return {"compare_dir": str(self.root), "baseline": self.baseline, "seeds": self.seeds, "metric": self.metric,
                "arms": [{**a.to_dict(), "run_overrides": self.arm_overrides(a, self.seeds[0])} for a in self.arms]}


def plan_compare(config: str | Path | Config, overrides: list[str] | None = None) -> ComparePlan:
    """The arms of ``config``'s `compare` grid and their shared config (bad grids fail here)."""
    overrides = list(overrides or [])
    cfg = load_config(config, overrides)
    arms = build_arms(cfg)
    baseline = baseline_arm(cfg, arms)
    frozen_model, _ = compared_models(cfg)
    shared = load_config(config, [*overrides, *common_overrides(cfg, compare_dir(cfg) / "runs", "shared",
                                                                 frozen_model)])
    return ComparePlan(config, overrides, cfg, shared, arms, baseline, check_metric(shared))


def run_compare(plan: ComparePlan, data: PreparedData, accelerator=None,
                report_dir: str | Path | None = None) -> dict[str, Any]:
    """Run (or reuse) every arm of the plan on ``data`` (prepared for ``plan.shared``) and write
    the report; returns the report's JSON object on the main process, ``{}`` on the others.
    ``accelerator``: extraction's and every arm's (default: each makes its own)."""
    from accelerate import Accelerator, PartialState

    from ..train import run_training
    from ..train.run import run_dir_for
    from .costs import extraction_costs
    from .report import write_report

    config, overrides, cfg, shared, arms = plan.config, plan.overrides, plan.cfg, plan.shared, plan.arms
    baseline, metric, root, seeds, arm_overrides = plan.baseline, plan.metric, plan.root, plan.seeds, plan.arm_overrides
    stamps = root / "stamps"
    state = accelerator if accelerator is not None else PartialState()
    main = state.is_main_process
    features = compared_features(shared)
    extracted, extract_errors = _extract(shared, data, features, accelerator or Accelerator())
    costs = extraction_costs(shared, data, [f for f in features if shared.features[f].encoder not in extract_errors]) \
        if main else {}

    if main:
        stamps.mkdir(parents=True, exist_ok=True)
    outcomes: dict[str, dict[str, Any]] = {}
    hashes: dict[tuple[str, int], str] = {}
    total = len(arms) * len(seeds)
    step = 0
    for arm in arms:
        out = outcomes[arm.name] = {"status": "ok", "error": None, "seeds": []}
        blocked = next((extract_errors[shared.features[f].encoder] for f in arm.features
                        if f in shared.features and shared.features[f].encoder in extract_errors), None)
        if arm.depends_on and outcomes.get(arm.depends_on, {}).get("status") != "ok":
            blocked = f"reads the fine-tuned features of arm {arm.depends_on}, which failed"
        for seed in seeds:
            step += 1
            record: dict[str, Any] = {"seed": seed, "overrides": arm_overrides(arm, seed)}
            out["seeds"].append(record)
            started = time.perf_counter()
            try:
                if blocked:
                    raise _Blocked(blocked)
                acfg = load_config(config, record["overrides"])
                # what it trained, and with what budget: a custom arm's overrides may name another model
                out.update(model=acfg.model.name, budget=train_budget(acfg))
                run_dir = run_dir_for(acfg, seed)
                record["run_dir"] = str(run_dir)
                digest = config_hash(acfg, data, hashes.get((arm.depends_on, seed), ""))
                hashes[(arm.name, seed)] = digest
                stamp_path = stamps / f"{arm.name}-s{seed}.json"
                stamp = _stamp(stamp_path)
                state.wait_for_everyone()  # every process has read the stamp before the main one writes it
                if _finished(stamp, run_dir, digest):
                    record["status"] = "reused"
                else:
                    resume = _can_resume(stamp, run_dir, acfg, digest)
                    _log(f"compare [{step}/{total}] {arm.name} seed {seed}: "
                         f"{'resuming from its checkpoint' if resume else 'training'}")
                    body = {"format": _STAMP_FORMAT, "hash": digest, "arm": arm.name, "seed": seed,
                            "run_dir": str(run_dir), "state": "started", "at": time.strftime("%Y-%m-%dT%H:%M:%S")}
                    if main:
                        write_json_atomic(stamp_path, body)
                    # the stamp, not the run directory, says whether an earlier run of this arm still counts
                    run_training(acfg, data, resume=resume, accelerator=accelerator, overwrite=True)
                    if main:
                        users, values = per_user_metrics(run_dir)
                        save_per_user(run_dir / PER_USER, users, values)
                        write_json_atomic(stamp_path, {**body, "state": "finished", "at": time.strftime("%Y-%m-%dT%H:%M:%S")})
                    record["status"] = "trained"
                record["seconds"] = time.perf_counter() - started
                if main:
                    record["result"] = json.loads((run_dir / "result.json").read_text(encoding="utf-8"))
                    record["per_user"] = str(run_dir / PER_USER)
                    value = record["result"]["test"].get(metric)
                    shown = f", test {metric} {value:.4f}" if value is not None else ""
                    _log(f"compare [{step}/{total}] {arm.name} seed {seed}: {record['status']}{shown}")
            except Exception as e:  # noqa: BLE001  (one failing arm must not stop the others)
                record.update(status="failed", error=_error_text(e))
                if not isinstance(e, _Blocked):
                    record["traceback"] = traceback.format_exc()
                out.update(status="failed", error=record["error"])
                _log(f"compare [{step}/{total}] {arm.name} seed {seed}: FAILED: {record['error']}")
            finally:
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                state.wait_for_everyone()
            if out["status"] == "failed":
                step += len(seeds) - len(out["seeds"])
                break  # the other seeds would fail the same way

    if not main:
        return {}
    context = {"config": str(config) if not isinstance(config, Config) else "(a Config object)", "overrides": list(overrides), "compare_dir": str(root), "metric": metric,
               "train_seeds_set": cfg.train.seeds is not None,
               "baseline": baseline, "seeds": seeds, "extraction": extracted, "extraction_errors": extract_errors,
               "extraction_costs": costs}
    target = Path(report_dir) if report_dir is not None else root / "report"
    return write_report(shared, data, arms, outcomes, context, target)


class _Blocked(Exception):
    """An arm that cannot start because something it needs failed first."""
