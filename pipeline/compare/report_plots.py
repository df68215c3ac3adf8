"""The comparison report's PNG plots, drawn from ``report.json``'s object with matplotlib's object
API (no pyplot, no global backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .report_data import ok_arms

KIND_COLOR = {"id": "#888888", "frozen": "#4C72B0", "fused": "#1f3b73", "counterpart": "#64B5CD",
              "finetuned": "#DD8452", "ftfeat": "#55A868", "custom": "#8172B3"}


def _figure(width: float = 7.0, height: float = 4.0):
    from matplotlib.figure import Figure  # the object API: no pyplot, no global backend (renders with Agg)

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def plot_metrics(report: dict, path: Path) -> None:
    arms = sorted(ok_arms(report), key=lambda a: a["test"][report["metric"]]["mean"])
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
    for a in ok_arms(report):
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
    if ok_arms(report):
        right.legend(fontsize=7, loc="upper right")
    fig.savefig(path)


def plot_cost(report: dict, path: Path) -> None:
    fig = _figure(7, 4.5)
    ax = fig.add_subplot()
    m = report["metric"]
    arms = [a for a in ok_arms(report) if a["cost"].get("total_seconds")]
    for a in arms:
        x, y = a["cost"]["total_seconds"] / 60.0, a["test"][m]["mean"]
        ax.scatter([x], [y], color=KIND_COLOR[a["kind"]])
        ax.annotate(a["name"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if arms and max(a["cost"]["total_seconds"] for a in arms) > 20 * min(a["cost"]["total_seconds"] for a in arms):
        ax.set_xscale("log")
    ax.set(xlabel="compute minutes (extraction + training)", ylabel=f"test {m}", title="Accuracy against cost")
    fig.savefig(path)


def plot_slices(report: dict, path: Path) -> None:
    m = report["metric"]
    parts = [p for p in ("cold", "warm", "tail") if any(f"{p}/{m}" in a["test"] for a in ok_arms(report))]
    arms = [a for a in ok_arms(report) if any(f"{p}/{m}" in a["test"] for p in parts)]
    fig = _figure(max(6, 0.2 * len(parts) * len(arms) + 2), 4)
    ax = fig.add_subplot()
    x = np.arange(len(arms))
    width = 0.8 / max(len(parts), 1)
    for i, part in enumerate(parts):
        vals = [a["test"].get(f"{part}/{m}", {}).get("mean", 0.0) for a in arms]
        errs = [a["test"].get(f"{part}/{m}", {}).get("std", 0.0) for a in arms]
        ax.bar(x + (i - (len(parts) - 1) / 2) * width, vals, width, yerr=errs, capsize=2, label=f"{part} items")
    ax.set_xticks(x, [a["name"] for a in arms], rotation=40, ha="right", fontsize=7)
    ax.set(ylabel=f"test {m}", title="Cold-start (never seen in training), warm and long-tail items")
    if arms:
        ax.legend()
    fig.savefig(path)


def plot_ablation(report: dict, path: Path) -> None:
    rows = report["ablation"]
    fig = _figure(max(6, 1.2 * len(rows) + 2), 4)
    ax = fig.add_subplot()
    x = np.arange(len(rows))
    series = [("frozen", "frozen")] + [(k, label) for k, label in (
        ("counterpart_frozen", "frozen, fine-tuned arms' model"), ("finetuned_best", "best fine-tuned"),
        ("ftfeat_best", "fine-tuned features, frozen model"))
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
         "cold_start.png": plot_slices, "ablation.png": plot_ablation}
