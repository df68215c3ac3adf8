"""The comparison report's numbers (``report.json``): per arm the test and validation metrics as
mean ± std over seeds, learning curves, cost, paired significance tests over the test users
against the baseline and the frozen counterpart, the per-modality ablation and the verdict.
Each arm's entry names the recommender it trained (``model``); the top-level ``model`` is the
frozen arms' (``compare.model``), ``finetune_model`` the fine-tuned arms'.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Config
from ..content import field_modality
from ..data import PreparedData
from ..errors import ConfigError
from .arms import Arm, compared_models, model_overrides
from .formats import p_value
from .per_user import load_per_user
from .stats import holm, mean_std, paired_test

ALPHA = 0.05
KIND_LABEL = {"id": "ID only", "frozen": "frozen", "fused": "frozen, fused",
              "counterpart": "frozen, fine-tuned arms' model", "finetuned": "fine-tuned",
              "ftfeat": "fine-tuned features, frozen model", "custom": "extra"}


def train_budget(cfg: Config) -> dict[str, Any]:
    """What a run's training was allowed: the report's budget of one arm."""
    return {k: getattr(cfg.train, k) for k in ("epochs", "patience", "lr", "batch_size", "optimizer")} | \
        {"encoder_lr": getattr(cfg.train, "encoder_lr", None)}


def _modality(cfg: Config, data: PreparedData, feature: str) -> str:
    src = cfg.features.get(feature)
    if src is None or src.encoder is None:
        return "file"
    ec = cfg.encoders.get(src.encoder)
    field = src.field or (ec.fields[0] if ec else None)
    try:
        return field_modality(data, field)
    except ConfigError:  # a report still gets written; the arm's own run says what was wrong
        return "?"


def _curves(results: list[dict], valid_metric: str) -> dict[str, list]:
    """Per epoch, the mean over seeds of the validation metric and the training loss."""
    longest = max((len(r.get("history", [])) for r in results), default=0)
    valid, loss = [], []
    for e in range(longest):
        rows = [r["history"][e] for r in results if e < len(r.get("history", []))]
        v = [h["valid"][valid_metric] for h in rows if valid_metric in h.get("valid", {})]
        valid.append(float(np.mean(v)) if v else None)
        losses = [h["loss"] for h in rows if "loss" in h]
        loss.append(float(np.mean(losses)) if losses else None)
    return {"epoch": list(range(1, longest + 1)), "valid": valid, "loss": loss}


def _numeric_keys(results: list[dict], split: str) -> list[str]:
    keys = [k for k, v in results[0].get(split, {}).items() if isinstance(v, (int, float)) and "users" not in k]
    return [k for k in keys if all(k in r.get(split, {}) for r in results)]


def _mean_of(results: list[dict], key: str) -> float | None:
    values = [r[key] for r in results if isinstance(r.get(key), (int, float))]
    return float(np.mean(values)) if values else None


def _command(context: dict, cfg: Config, arm: Arm, seed_overrides: list[str]) -> str:
    """``modalrec train`` with the arm's overrides, writing to the default runs folder (so the
    compare's own runs stay untouched)."""
    from ..config_tree import parse_overrides

    user = [f"{k}={v}" for k, v in parse_overrides(context["overrides"]) if k != "compare" and not k.startswith("compare.")]
    parts = ["modalrec", "train", context["config"], *user, *model_overrides(cfg, arm.model)]
    if context.get("train_seeds_set"):
        parts.append("train.seeds=null")
    parts += [*arm.overrides, *seed_overrides]
    return " ".join(shlex.quote(p) for p in parts)


def build_report(cfg: Config, data: PreparedData, arms: list[Arm], outcomes: dict[str, dict],
                 context: dict) -> dict[str, Any]:
    metric, baseline = context["metric"], context["baseline"]
    k = metric.split("@")[1]
    shown = list(dict.fromkeys(m for m in (metric, f"recall@{k}", f"ndcg@{k}")
                               if m.split("@")[0] in cfg.eval.metrics))
    costs = context["extraction_costs"]
    entries: dict[str, dict] = {}
    per_user: dict[str, dict[str, np.ndarray]] = {}
    users_ref: np.ndarray | None = None
    for arm in arms:
        o = outcomes[arm.name]
        entry: dict[str, Any] = {**arm.to_dict(), "model": o.get("model") or arm.model, "label": KIND_LABEL[arm.kind],
                                 "status": o["status"], "error": o["error"], "runs": []}
        if o.get("budget"):
            entry["budget"] = o["budget"]
        for s in o["seeds"]:
            run = {k2: s.get(k2) for k2 in ("seed", "status", "run_dir", "seconds", "error", "traceback")
                   if s.get(k2) is not None}
            seed_part = [x for x in s["overrides"] if x.startswith(("features.", "train.seed="))
                         and not x.startswith("train.seeds")]
            run["command"] = _command(context, cfg, arm, seed_part)
            entry["runs"].append(run)
        entries[arm.name] = entry
        if o["status"] != "ok":
            continue
        results = [s["result"] for s in o["seeds"]]
        entry["test"] = {m: mean_std([r["test"][m] for r in results]) for m in _numeric_keys(results, "test")}
        entry["valid"] = {m: mean_std([r["valid"][m] for r in results]) for m in _numeric_keys(results, "valid")}
        entry["curves"] = _curves(results, cfg.train.valid_metric)
        loaded = [load_per_user(Path(s["per_user"])) for s in o["seeds"]]
        for users, _ in loaded:
            if users_ref is None:
                users_ref = users
            elif not np.array_equal(users, users_ref):
                raise RuntimeError(f"arm {arm.name}: its test users differ from the other arms'; "
                                   "were they trained on different splits?")
        names = set.intersection(*(set(v) for _, v in loaded))
        with np.errstate(invalid="ignore"):
            per_user[arm.name] = {n: np.mean([v[n] for _, v in loaded], axis=0) for n in names}
        # the per-user values come from the best weights, re-scored: their mean must be the run's result
        drift = [abs(float(np.mean(v[metric])) - r["test"][metric]) for (_, v), r in zip(loaded, results)
                 if metric in v and metric in r["test"]]
        entry["reeval_max_abs_diff"] = max(drift) if drift else None
        train_total = [sum(h.get("train_seconds", 0.0) for h in r.get("history", [])) for r in results]
        run_total = [sum(h.get("train_seconds", 0.0) + h.get("eval_seconds", 0.0) for h in r.get("history", []))
                     for r in results]
        peaks = [r["peak_memory_mb"] for r in results if isinstance(r.get("peak_memory_mb"), (int, float))]
        ext = [costs.get(f, {}).get("seconds") for f in arm.features if f in costs]
        entry["cost"] = {
            "extraction_seconds": float(sum(ext)) if ext and all(x is not None for x in ext) else
            (0.0 if not arm.features or arm.kind == "ftfeat" else None),
            "train_seconds_per_epoch": _mean_of(results, "train_seconds_per_epoch"),
            "eval_seconds_per_epoch": _mean_of(results, "eval_seconds_per_epoch"),
            "epochs": float(np.mean([r["epochs"] for r in results])),
            "best_epoch": float(np.mean([r["best_epoch"] for r in results])),
            "train_seconds": float(np.mean(train_total)),
            "run_seconds": float(np.mean(run_total)),
            "peak_memory_mb": max(peaks) if peaks else None,
            "trainable_params": _mean_of(results, "trainable_params"),
            "samples_per_second": _mean_of(results, "samples_per_second"),
        }

    ok = [a for a in arms if entries[a.name]["status"] == "ok"]
    for arm in ok:  # totals need the fine-tuning run an ftfeat arm reads from
        c = entries[arm.name]["cost"]
        upstream = entries[arm.depends_on]["cost"]["run_seconds"] if arm.depends_on else 0.0
        c["finetune_run_seconds"] = upstream
        c["total_seconds"] = (c["extraction_seconds"] or 0.0) + c["run_seconds"] + upstream
        m = entries[arm.name]["test"].get(metric, {}).get("mean")
        c["metric_per_minute"] = m / (c["total_seconds"] / 60.0) if m is not None and c["total_seconds"] > 0 else None
    ids = next((entries[a.name] for a in ok if a.kind == "id"), None)
    for arm in ok:  # what the content buys over ids, per extra minute
        c, m = entries[arm.name]["cost"], entries[arm.name]["test"].get(metric, {}).get("mean")
        c["gain_over_ids_per_extra_minute"] = None
        if ids is not None and arm.kind != "id" and m is not None:
            extra = c["total_seconds"] - ids["cost"]["total_seconds"]
            gain = m - ids["test"][metric]["mean"]
            if extra > 0 and gain > 0:
                c["gain_over_ids_per_extra_minute"] = gain / (extra / 60.0)

    base_ok = baseline in per_user
    family: dict[str, float | None] = {}
    for arm in ok:
        e, pu = entries[arm.name], per_user[arm.name]
        if base_ok and arm.name != baseline and metric in pu:
            e["vs_baseline"] = paired_test(pu[metric], per_user[baseline][metric])
            family[arm.name] = e["vs_baseline"]["p_ttest"]
            for part in ("cold", "tail"):  # paired over the users with test items in the slice
                sliced = f"{part}/{metric}"
                if sliced in pu and sliced in per_user[baseline]:
                    e[f"{part}_vs_baseline"] = paired_test(pu[sliced], per_user[baseline][sliced])
        if arm.counterpart in per_user and metric in pu:
            e["vs_counterpart"] = paired_test(pu[metric], per_user[arm.counterpart][metric])
    for name, p in holm(family).items():
        entries[name]["vs_baseline"]["p_holm"] = p

    report = {
        "title": f"Frozen vs fine-tuned on {cfg.data.name}",
        "data": cfg.data.name, "split": data.meta.get("protocol", cfg.data.split.protocol),
        "model": cfg.model.name, "finetune_model": compared_models(cfg)[1], "metric": metric, "shown_metrics": shown,
        "slice_metrics": [x for x in (f"recall@{k}", f"ndcg@{k}") if x.split("@")[0] in cfg.eval.metrics] or [metric],
        "long_tail_share": cfg.eval.long_tail_share if cfg.eval.long_tail_slice else None,
        "valid_metric": cfg.train.valid_metric, "baseline": baseline, "seeds": context["seeds"], "alpha": ALPHA,
        "users": int(len(users_ref)) if users_ref is not None else 0,
        "budget": train_budget(cfg),
        "device": _device(), "config": context["config"], "overrides": context["overrides"],
        "compare_dir": context["compare_dir"], "extraction": context["extraction"],
        "extraction_costs": costs, "extraction_errors": context["extraction_errors"],
        "arms": [entries[a.name] for a in arms],
    }
    report["ablation"] = _ablation(cfg, data, arms, entries, metric)
    report["verdict"] = _verdict(report, entries, ok, metric)
    return report


def _device() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def _ablation(cfg: Config, data: PreparedData, arms: list[Arm], entries: dict, metric: str) -> list[dict]:
    """One row per modality (image only / text only / audio only / fused): frozen, the best
    fine-tuned arm of that feature (and, when it trains another recommender, its frozen
    counterpart), and the best arm feeding its fine-tuned features back."""

    def value(name):
        e = entries.get(name)
        return e["test"][metric] if e and e["status"] == "ok" and metric in e.get("test", {}) else None

    def best(kind, feature):
        cands = [(value(a.name)["mean"], a.name) for a in arms
                 if a.kind == kind and a.feature == feature and value(a.name) is not None]
        return max(cands) if cands else (None, None)

    rows = []
    for a in arms:
        if a.kind not in ("frozen", "fused", "id"):
            continue
        feature = a.features[0] if a.kind == "frozen" else None
        row = {"arm": a.name, "modality": {"id": "none (ids)", "fused": "fused: " + " + ".join(
            _modality(cfg, data, f) for f in a.features)}.get(a.kind) or f"{_modality(cfg, data, feature)} only",
            "frozen": value(a.name)}
        if feature is not None:
            row["finetuned_best"], row["finetuned_arm"] = best("finetuned", feature)
            ref = next((b.counterpart for b in arms if b.name == row["finetuned_arm"]), None)
            if ref is not None and ref != a.name and value(ref) is not None:
                row["counterpart_frozen"], row["counterpart_arm"] = value(ref)["mean"], ref
            row["ftfeat_best"], row["ftfeat_arm"] = best("ftfeat", feature)
        rows.append(row)
    return rows


def _verdict(report: dict, entries: dict, ok: list[Arm], metric: str) -> dict[str, Any]:
    out: dict[str, Any] = {"lines": []}
    lines = out["lines"]
    scored = [(entries[a.name]["test"][metric]["mean"], a.name) for a in ok if metric in entries[a.name].get("test", {})]
    if not scored:
        lines.append("No arm finished, so there is no winner; see Failed arms.")
        return out
    best_value, best = max(scored)
    e = entries[best]
    out["accuracy"] = best
    text = (f"Most accurate: **{best}** ({e['label']}), test {metric} {best_value:.4f} ± "
            f"{e['test'][metric]['std']:.4f} over {len(report['seeds'])} seed(s).")
    vs = e.get("vs_baseline")
    if best == report["baseline"]:
        text += " It is the baseline itself."
    elif vs and vs["p_ttest"] is not None:
        sig = vs.get("p_holm") is not None and vs["p_holm"] < ALPHA
        text += (f" Against the baseline {report['baseline']}: {vs['diff']:+.4f} over {vs['n']} test users, "
                 f"paired t-test p = {p_value(vs['p_ttest'])} (Holm-adjusted {p_value(vs.get('p_holm'))}), Wilcoxon "
                 f"p = {p_value(vs['p_wilcoxon'])}: {'significant' if sig else 'not significant'} at {ALPHA}.")
    lines.append(text)
    per_cost = [(entries[a.name]["cost"]["metric_per_minute"], a.name) for a in ok
                if entries[a.name]["cost"].get("metric_per_minute") is not None]
    if per_cost:
        value, name = max(per_cost)
        c = entries[name]["cost"]
        out["cost"] = name
        lines.append(f"Best accuracy per unit of cost: **{name}**, {value:.4f} test {metric} per compute-minute "
                     f"({entries[name]['test'][metric]['mean']:.4f} for {c['total_seconds']:.1f} s of extraction "
                     "and training).")
    gains = [(entries[a.name]["cost"]["gain_over_ids_per_extra_minute"], a.name) for a in ok
             if entries[a.name]["cost"].get("gain_over_ids_per_extra_minute") is not None]
    if gains:
        value, name = max(gains)
        out["cost_over_ids"] = name
        lines.append(f"Among the content arms, **{name}** buys the most over ID-only per extra compute-minute: "
                     f"{value:+.4f} test {metric} per minute.")
    slices = []
    for part, key, what in (("cold", f"cold/{metric}", "best on cold-start items"),
                            ("tail", f"tail/{metric}", "best on long-tail items"),
                            ("coverage", f"coverage@{metric.split('@')[1]}", "widest catalog coverage")):
        best_in = max(((entries[a.name]["test"][key]["mean"], a.name) for a in ok if key in entries[a.name]["test"]),
                      default=None)
        if best_in is not None:
            out[part] = best_in[1]
            slices.append(f"{what}: **{best_in[1]}** ({key} {best_in[0]:.4f})")
    if slices:
        lines.append(slices[0][0].upper() + "; ".join(slices)[1:] + ".")
    ft = [(entries[a.name]["test"][metric]["mean"], a.name) for a in ok if a.kind == "finetuned"]
    if ft:
        v, name = max(ft)
        fe = entries[name]
        ref = fe.get("vs_counterpart")
        if ref and ref["p_ttest"] is not None:
            sig = ref["p_ttest"] < ALPHA and ref["diff"] > 0
            ratio = None
            base_cost = entries[fe["counterpart"]]["cost"]["total_seconds"]
            pair = (fe["model"], entries[fe["counterpart"]]["model"])
            models = f"both {pair[0]}" if pair[0] == pair[1] else f"{pair[0]} against {pair[1]}"
            if base_cost:
                ratio = fe["cost"]["total_seconds"] / base_cost
            lines.append(
                f"Fine-tuning: the best fine-tuned arm, **{name}**, is {ref['diff']:+.4f} test {metric} against "
                f"frozen {fe['counterpart']} ({models}; paired t-test p = {p_value(ref['p_ttest'])}) "
                + (f"for {ratio:.1f}x its cost" if ratio else "")
                + (": worth it on accuracy here." if sig else ": no significant gain here."))
            out["finetuning"] = {"arm": name, "counterpart": fe["counterpart"], "diff": ref["diff"],
                                 "p_ttest": ref["p_ttest"], "cost_ratio": ratio, "significant": sig}
    return out


def ok_arms(report: dict) -> list[dict]:
    """The arms that finished and have the report's metric."""
    return [a for a in report["arms"] if a["status"] == "ok" and report["metric"] in a.get("test", {})]
