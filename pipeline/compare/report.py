"""The comparison report: ``report.json`` (every number), ``report.md`` (and optionally
``report.html``) for people, and PNG plots, written atomically into one directory.

Sections: verdict, test metrics with paired significance, learning curves, cost, the cold-start
item slice, the per-modality ablation, failed arms, and the ``modalrec train`` command that
reproduces each run.
"""

from __future__ import annotations

import html
import json
import math
import re
import shlex
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_directory
from ..config import Config
from ..data import PreparedData
from .arms import Arm, as_overrides
from .stats import holm, mean_std, paired_test

ALPHA = 0.05
SECTIONS = ("Verdict", "Test metrics", "Learning curves", "Cost", "Cold-start items", "Per-modality ablation",
            "Failed arms", "Reproduce")
KIND_LABEL = {"id": "ID only", "frozen": "frozen", "fused": "frozen, fused", "finetuned": "fine-tuned",
              "ftfeat": "fine-tuned features, frozen model", "custom": "extra"}
KIND_COLOR = {"id": "#888888", "frozen": "#4C72B0", "fused": "#1f3b73", "finetuned": "#DD8452",
              "ftfeat": "#55A868", "custom": "#8172B3"}


# ---------------------------------------------------------------- numbers


def _modality(cfg: Config, data: PreparedData, feature: str) -> str:
    src = cfg.features.get(feature)
    if src is None or src.encoder is None:
        return "file"
    ec = cfg.encoders.get(src.encoder)
    field = src.field or (ec.fields[0] if ec else None)
    for modality, names in data.fields.items():
        if field in names:
            return modality
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
    from ..config import parse_overrides

    user = [f"{k}={v}" for k, v in parse_overrides(context["overrides"]) if k != "compare" and not k.startswith("compare.")]
    parts = ["modalrec", "train", context["config"], *user]
    if cfg.compare.model:
        parts.append(f"model.name={cfg.compare.model}")
    parts += as_overrides(cfg.compare.common)
    if context.get("train_seeds_set"):
        parts.append("train.seeds=null")
    parts += [*arm.overrides, *seed_overrides]
    return " ".join(shlex.quote(p) for p in parts)


def build_report(cfg: Config, data: PreparedData, arms: list[Arm], outcomes: dict[str, dict],
                 context: dict) -> dict[str, Any]:
    from .run import load_per_user

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
        entry: dict[str, Any] = {**arm.to_dict(), "label": KIND_LABEL[arm.kind], "status": o["status"],
                                 "error": o["error"], "runs": []}
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
    cold_metric = f"cold/{metric}"
    for arm in ok:
        e, pu = entries[arm.name], per_user[arm.name]
        if base_ok and arm.name != baseline and metric in pu:
            e["vs_baseline"] = paired_test(pu[metric], per_user[baseline][metric])
            family[arm.name] = e["vs_baseline"]["p_ttest"]
            if cold_metric in pu and cold_metric in per_user[baseline]:
                e["cold_vs_baseline"] = paired_test(pu[cold_metric], per_user[baseline][cold_metric])
        if arm.counterpart in per_user and metric in pu:
            e["vs_counterpart"] = paired_test(pu[metric], per_user[arm.counterpart][metric])
    for name, p in holm(family).items():
        entries[name]["vs_baseline"]["p_holm"] = p

    report = {
        "title": f"Frozen vs fine-tuned on {cfg.data.name}",
        "data": cfg.data.name, "split": data.meta.get("protocol", cfg.data.split.protocol),
        "model": cfg.model.name, "metric": metric, "shown_metrics": shown,
        "valid_metric": cfg.train.valid_metric, "baseline": baseline, "seeds": context["seeds"], "alpha": ALPHA,
        "users": int(len(users_ref)) if users_ref is not None else 0,
        "budget": {k2: getattr(cfg.train, k2) for k2 in ("epochs", "patience", "lr", "batch_size", "optimizer")}
        | {"encoder_lr": getattr(cfg.train, "encoder_lr", None)},
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
    fine-tuned arm of that feature, and the best arm feeding its fine-tuned features back."""

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
            row["ftfeat_best"], row["ftfeat_arm"] = best("ftfeat", feature)
        rows.append(row)
    return rows


def _p(x: float | None) -> str:
    if x is None:
        return "n/a"
    return "<0.0001" if x < 1e-4 else f"{x:.4f}"


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
                 f"paired t-test p = {_p(vs['p_ttest'])} (Holm-adjusted {_p(vs.get('p_holm'))}), Wilcoxon "
                 f"p = {_p(vs['p_wilcoxon'])}: {'significant' if sig else 'not significant'} at {ALPHA}.")
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
    ft = [(entries[a.name]["test"][metric]["mean"], a.name) for a in ok if a.kind == "finetuned"]
    if ft:
        v, name = max(ft)
        fe = entries[name]
        ref = fe.get("vs_counterpart")
        if ref and ref["p_ttest"] is not None:
            sig = ref["p_ttest"] < ALPHA and ref["diff"] > 0
            ratio = None
            base_cost = entries[fe["counterpart"]]["cost"]["total_seconds"]
            if base_cost:
                ratio = fe["cost"]["total_seconds"] / base_cost
            lines.append(
                f"Fine-tuning: the best fine-tuned arm, **{name}**, is {ref['diff']:+.4f} test {metric} against "
                f"frozen {fe['counterpart']} (paired t-test p = {_p(ref['p_ttest'])}) "
                + (f"for {ratio:.1f}x its cost" if ratio else "")
                + (": worth it on accuracy here." if sig else ": no significant gain here."))
            out["finetuning"] = {"arm": name, "counterpart": fe["counterpart"], "diff": ref["diff"],
                                 "p_ttest": ref["p_ttest"], "cost_ratio": ratio, "significant": sig}
    return out


# ---------------------------------------------------------------- plots


def _figure(width: float = 7.0, height: float = 4.0):
    from matplotlib.figure import Figure  # the object API: no pyplot, no global backend (renders with Agg)

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _ok_arms(report: dict) -> list[dict]:
    return [a for a in report["arms"] if a["status"] == "ok" and report["metric"] in a.get("test", {})]


def plot_metrics(report: dict, path: Path) -> None:
    arms = sorted(_ok_arms(report), key=lambda a: a["test"][report["metric"]]["mean"])
    fig = _figure(7, 0.9 + 0.35 * max(len(arms), 1))
    ax = fig.add_subplot()
    m = report["metric"]
    bars = ax.barh([a["name"] for a in arms], [a["test"][m]["mean"] for a in arms],
                   xerr=[a["test"][m]["std"] for a in arms], color=[KIND_COLOR[a["kind"]] for a in arms], capsize=3)
    for bar, a in zip(bars, arms):
        if a["name"] == report["baseline"]:
            bar.set_hatch("//")
    ax.set_xlabel(f"test {m} (mean ± std over seeds)")
    ax.set_title("Test metric per arm (hatched: baseline)")
    fig.savefig(path)


def plot_curves(report: dict, path: Path) -> None:
    fig = _figure(11, 4)
    left, right = fig.subplots(1, 2)
    for a in _ok_arms(report):
        c = a["curves"]
        xs = [x for x, y in zip(c["epoch"], c["valid"]) if y is not None]
        left.plot(xs, [y for y in c["valid"] if y is not None], marker=".", label=a["name"])
        xs = [x for x, y in zip(c["epoch"], c["loss"]) if y is not None]
        right.plot(xs, [y for y in c["loss"] if y is not None], label=a["name"])
    from matplotlib.ticker import MaxNLocator

    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.set(xlabel="epoch", ylabel=f"valid {report['valid_metric']}", title="Validation metric (mean over seeds)")
    right.set(xlabel="epoch", ylabel="training loss", title="Training loss (mean over seeds)")
    if _ok_arms(report):
        right.legend(fontsize=7, loc="upper right")
    fig.savefig(path)


def plot_cost(report: dict, path: Path) -> None:
    fig = _figure(7, 4.5)
    ax = fig.add_subplot()
    m = report["metric"]
    arms = [a for a in _ok_arms(report) if a["cost"].get("total_seconds")]
    for a in arms:
        x, y = a["cost"]["total_seconds"] / 60.0, a["test"][m]["mean"]
        ax.scatter([x], [y], color=KIND_COLOR[a["kind"]])
        ax.annotate(a["name"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if arms and max(a["cost"]["total_seconds"] for a in arms) > 20 * min(a["cost"]["total_seconds"] for a in arms):
        ax.set_xscale("log")
    ax.set(xlabel="compute minutes (extraction + training)", ylabel=f"test {m}", title="Accuracy against cost")
    fig.savefig(path)


def plot_cold(report: dict, path: Path) -> None:
    m = report["metric"]
    arms = [a for a in _ok_arms(report) if f"cold/{m}" in a["test"] or f"warm/{m}" in a["test"]]
    fig = _figure(max(6, 0.6 * len(arms) + 2), 4)
    ax = fig.add_subplot()
    x = np.arange(len(arms))
    for off, part in ((-0.2, "cold"), (0.2, "warm")):
        vals = [a["test"].get(f"{part}/{m}", {}).get("mean", 0.0) for a in arms]
        errs = [a["test"].get(f"{part}/{m}", {}).get("std", 0.0) for a in arms]
        ax.bar(x + off, vals, 0.4, yerr=errs, capsize=2, label=f"{part} items")
    ax.set_xticks(x, [a["name"] for a in arms], rotation=40, ha="right", fontsize=7)
    ax.set(ylabel=f"test {m}", title="Cold-start items (never seen in training) and warm items")
    if arms:
        ax.legend()
    fig.savefig(path)


def plot_ablation(report: dict, path: Path) -> None:
    rows = report["ablation"]
    fig = _figure(max(6, 1.2 * len(rows) + 2), 4)
    ax = fig.add_subplot()
    x = np.arange(len(rows))
    series = [("frozen", "frozen")] + [(k, label) for k, label in (
        ("finetuned_best", "best fine-tuned"), ("ftfeat_best", "fine-tuned features, frozen model"))
        if any(r.get(k) is not None for r in rows)]
    width = 0.8 / len(series)
    for i, (key, label) in enumerate(series):
        off = (i - (len(series) - 1) / 2) * width
        if key == "frozen":
            vals = [(r.get(key) or {}).get("mean", 0.0) for r in rows]
            errs = [(r.get(key) or {}).get("std", 0.0) for r in rows]
        else:
            vals, errs = [r.get(key) or 0.0 for r in rows], None
        ax.bar(x + off, vals, width, yerr=errs, capsize=2, label=label)
    ax.set_xticks(x, [r["modality"] for r in rows], rotation=20, ha="right", fontsize=8)
    ax.set(ylabel=f"test {report['metric']}", title="Per-modality ablation")
    if rows:
        ax.legend(fontsize=8)
    fig.savefig(path)


PLOTS = {"metrics.png": plot_metrics, "learning_curves.png": plot_curves, "cost.png": plot_cost,
         "cold_start.png": plot_cold, "ablation.png": plot_ablation}


# ---------------------------------------------------------------- text


def _f(x, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def _d(x) -> str:
    """A difference, with its sign."""
    return "n/a" if x is None else f"{x:+.4f}"


def _ms(d: dict | None) -> str:
    return "n/a" if not d else f"{d['mean']:.4f} ± {d['std']:.4f}"


def _int(x) -> str:
    return "n/a" if x is None else f"{int(round(x)):,}"


def blocks(report: dict) -> list[tuple]:
    m, base = report["metric"], report["baseline"]
    arms = report["arms"]
    ok = _ok_arms(report)
    b = report["budget"]
    out: list[tuple] = [("h1", report["title"])]
    out.append(("p", f"Data **{report['data']}** (split `{report['split']}`), recommender **{report['model']}**, "
                     f"seeds {report['seeds']}, {report['users']:,} test users. Same budget for every arm: up to "
                     f"{b['epochs']} epochs, early stopping on valid {report['valid_metric']} (patience "
                     f"{b['patience']}), lr {b['lr']}" + (f", encoder lr {b['encoder_lr']}" if b.get("encoder_lr") else "")
                + f", batch {b['batch_size']}. Device: {report['device']}. Baseline for significance: **{base}**."))

    out.append(("h2", "Verdict"))
    out.append(("list", report["verdict"]["lines"]))

    out.append(("h2", "Test metrics"))
    out.append(("p", f"Mean ± std over seeds. Δ and p-values: paired over the test users against **{base}** "
                     f"on {m}, each user's value averaged over seeds first (t-test and Wilcoxon signed-rank; Holm "
                     f"adjusts the t-test p-values for the number of arms). \"vs frozen\": a fine-tuned arm "
                     f"against the frozen arm of the same features."))
    rows = []
    for a in ok:
        vs, ref = a.get("vs_baseline") or {}, a.get("vs_counterpart") or {}
        rows.append([a["name"], a["label"], *[_ms(a["test"].get(x)) for x in report["shown_metrics"]],
                     "baseline" if a["name"] == base else _d(vs.get("diff")),
                     _p(vs.get("p_ttest")) if vs else "", _p(vs.get("p_holm")) if vs else "",
                     _p(vs.get("p_wilcoxon")) if vs else "",
                     (f"{_d(ref.get('diff'))} (p {_p(ref.get('p_ttest'))})" if ref else "")])
    out.append(("table", ["arm", "kind", *[f"{x}" for x in report["shown_metrics"]], f"Δ {m}", "p (t)",
                          "p (Holm)", "p (Wilcoxon)", "vs frozen"], rows))
    drift = [a for a in ok if (a.get("reeval_max_abs_diff") or 0) > 1e-4]
    if drift:
        out.append(("p", "Warning: re-scoring the best weights did not reproduce the training-time test metric "
                         "for " + ", ".join(f"{a['name']} (by {a['reeval_max_abs_diff']:.2g})" for a in drift) + "."))
    out.append(("img", "metrics.png", "test metric per arm"))

    out.append(("h2", "Learning curves"))
    out.append(("p", f"Validation {report['valid_metric']} and training loss per epoch, mean over seeds."))
    out.append(("img", "learning_curves.png", "learning curves"))

    out.append(("h2", "Cost"))
    out.append(("p", "Extraction: encoding the whole catalog once with the frozen encoders the arm reads (timed "
                     "by `modalrec extract`, or on a sample where it was not). Run: the training run's epochs, "
                     "training plus validation, mean over seeds; an arm reading fine-tuned features also pays for "
                     "the fine-tuning run that wrote them. Total = extraction + fine-tuning run + run. Peak memory, "
                     f"trainable parameters and samples/s as the trainer reports them. Last columns: test {m} per "
                     "compute-minute, and its gain over ID-only per extra compute-minute."))
    rows = []
    for a in ok:
        c = a["cost"]
        rows.append([a["name"], _f(c["extraction_seconds"], 1), _f(c.get("finetune_run_seconds"), 1),
                     _f(c["train_seconds_per_epoch"], 3), _f(c["eval_seconds_per_epoch"], 3), _f(c["epochs"], 1),
                     _f(c["run_seconds"], 1), _f(c["total_seconds"], 1), _f(c["peak_memory_mb"], 0),
                     _int(c["trainable_params"]), _f(c["samples_per_second"], 0), _f(c["metric_per_minute"]),
                     _f(c.get("gain_over_ids_per_extra_minute"))])
    out.append(("table", ["arm", "extraction s", "fine-tuning run s", "train s/epoch", "valid s/epoch", "epochs",
                          "run s", "total s", "peak MB", "trainable params", "samples/s", f"{m}/min",
                          "gain over ids/extra min"], rows))
    ext_rows = [[name, c.get("spec", ""), _int(c.get("items")), _f(c.get("items_per_second"), 1),
                 _f(c.get("seconds"), 1), c.get("source", ""), c.get("error", "")]
                for name, c in report["extraction_costs"].items()]
    if ext_rows:
        out.append(("table", ["feature set", "encoder", "items", "items/s", "catalog s", "timed by", "note"],
                    ext_rows))
    out.append(("img", "cost.png", "accuracy against cost"))

    out.append(("h2", "Cold-start items"))
    cold = [a for a in ok if f"cold/{m}" in a["test"]]
    if cold:
        out.append(("p", f"Test {m} with the ground truth restricted to items never seen in training (cold) and "
                         f"to the others (warm); Δ and p paired over users with cold test items, against {base}."))
        rows = []
        for a in cold:
            vs = a.get("cold_vs_baseline") or {}
            rows.append([a["name"], _ms(a["test"].get(f"cold/{m}")), _ms(a["test"].get(f"warm/{m}")),
                         "baseline" if a["name"] == base else _d(vs.get("diff")), _p(vs.get("p_ttest")) if vs else "",
                         _p(vs.get("p_wilcoxon")) if vs else ""])
        out.append(("table", ["arm", f"cold {m}", f"warm {m}", "Δ cold", "p (t)", "p (Wilcoxon)"], rows))
        out.append(("img", "cold_start.png", "cold-start slice"))
    else:
        out.append(("p", f"The test split (`{report['split']}`) has no items unseen in training, so there is no "
                         "cold-start slice (a `cold_start` or `temporal_global` split has one)."))

    out.append(("h2", "Per-modality ablation"))
    if report["ablation"]:
        rows = [[r["modality"], r["arm"], _ms(r.get("frozen")),
                 f"{_f(r.get('finetuned_best'))} ({r['finetuned_arm']})" if r.get("finetuned_arm") else "",
                 f"{_f(r.get('ftfeat_best'))} ({r['ftfeat_arm']})" if r.get("ftfeat_arm") else ""]
                for r in report["ablation"]]
        out.append(("p", f"Test {m}: each modality alone and fused, frozen; next to it the best fine-tuned arm of "
                         "that modality and the best arm feeding its fine-tuned features to the frozen model."))
        out.append(("table", ["modality", "frozen arm", f"frozen {m}", "best fine-tuned", "fine-tuned features"],
                    rows))
        out.append(("img", "ablation.png", "per-modality ablation"))
    else:
        out.append(("p", "No frozen feature arms in this grid."))

    out.append(("h2", "Failed arms"))
    failed = [a for a in arms if a["status"] != "ok"]
    if failed:
        rows = [[a["name"], ", ".join(str(r["seed"]) for r in a["runs"] if r.get("status") == "failed"), a["error"]]
                for a in failed]
        out.append(("table", ["arm", "seed", "error"], rows))
    else:
        out.append(("p", "None: every arm finished."))
    for enc, err in report["extraction_errors"].items():
        out.append(("p", f"Extraction failed for encoder {enc}: {err}"))

    out.append(("h2", "Reproduce"))
    out.append(("p", f"Every run lives under `{report['compare_dir']}/runs/<arm>-s<seed>`. Each line below "
                     "retrains one (arm, seed) with `modalrec train` into the default runs folder; on the same "
                     "machine it gives the same numbers."))
    out.append(("pre", "\n".join(f"# {a['name']} seed {r['seed']}\n{r['command']}" for a in arms for r in a["runs"])))
    return out


def _md_cell(x) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def to_markdown(items: list[tuple]) -> str:
    lines: list[str] = []
    for item in items:
        kind = item[0]
        if kind == "h1":
            lines += [f"# {item[1]}", ""]
        elif kind == "h2":
            lines += [f"## {item[1]}", ""]
        elif kind == "p":
            lines += [item[1], ""]
        elif kind == "list":
            lines += [f"- {x}" for x in item[1]] + [""]
        elif kind == "table":
            header, rows = item[1], item[2]
            lines.append("| " + " | ".join(_md_cell(h) for h in header) + " |")
            lines.append("|" + "|".join("---" for _ in header) + "|")
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
            lines.append("")
        elif kind == "img":
            lines += [f"![{item[2]}]({item[1]})", ""]
        elif kind == "pre":
            lines += ["```bash", item[1], "```", ""]
    return "\n".join(lines)


def _inline_html(text: str) -> str:
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def to_html(items: list[tuple], title: str) -> str:
    body: list[str] = []
    for item in items:
        kind = item[0]
        if kind in ("h1", "h2"):
            body.append(f"<{kind}>{html.escape(item[1])}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{_inline_html(item[1])}</p>")
        elif kind == "list":
            body.append("<ul>" + "".join(f"<li>{_inline_html(x)}</li>" for x in item[1]) + "</ul>")
        elif kind == "table":
            head = "".join(f"<th>{html.escape(str(h))}</th>" for h in item[1])
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in item[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif kind == "img":
            body.append(f'<p><img src="{html.escape(item[1])}" alt="{html.escape(item[2])}"></p>')
        elif kind == "pre":
            body.append(f"<pre>{html.escape(item[1])}</pre>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 6px;"
             "text-align:left}img{max-width:100%}pre{background:#f4f4f4;padding:1em;overflow-x:auto;font-size:12px}")
    return (f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_report(cfg: Config, data: PreparedData, arms: list[Arm], outcomes: dict[str, dict], context: dict,
                 target: Path) -> dict[str, Any]:
    """Build the report and write it into ``target`` in one atomic step; returns report.json's object."""
    report = build_report(cfg, data, arms, outcomes, context)
    report["report_dir"] = str(target)
    items = blocks(report)
    files = ["report.json", "report.md", *PLOTS]
    if cfg.compare.html:
        files.append("report.html")
    report["files"] = files
    with atomic_directory(target, "report.json") as tmp:
        for name, plot in PLOTS.items():
            plot(report, tmp / name)
        (tmp / "report.md").write_text(to_markdown(items), encoding="utf-8")
        if cfg.compare.html:
            (tmp / "report.html").write_text(to_html(items, report["title"]), encoding="utf-8")
        (tmp / "report.json").write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
    return report


__all__ = ["SECTIONS", "build_report", "write_report"]
