"""The comparison report for people: ``blocks`` lays out its sections as (kind, ...) tuples,
rendered as Markdown (``report.md``) or standalone HTML (``report.html``)."""

from __future__ import annotations

import html
import re

from .formats import integer, mean_pm, number, p_value, signed
from .report_data import ok_arms

SECTIONS = ("Verdict", "Test metrics", "Learning curves", "Cost", "Item slices", "Per-modality ablation",
            "Failed arms", "Reproduce")
SLICES = (("", "overall"), ("warm/", "warm"), ("cold/", "cold-start"), ("tail/", "long tail"))


def blocks(report: dict) -> list[tuple]:
    m, base = report["metric"], report["baseline"]
    arms = report["arms"]
    ok = ok_arms(report)
    out: list[tuple] = [("h1", report["title"])]
    out.append(("p", f"Data **{report['data']}** (split `{report['split']}`), {_recommenders(report)}, "
                     f"seeds {report['seeds']}, {report['users']:,} test users. {_budgets(report)} "
                     f"Device: {report['device']}. Baseline for significance: **{base}**."))

    out.append(("h2", "Verdict"))
    out.append(("list", report["verdict"]["lines"]))

    out.append(("h2", "Test metrics"))
    out.append(("p", f"Mean ± std over seeds. Δ and p-values: paired over the test users against **{base}** "
                     f"on {m}, each user's value averaged over seeds first (t-test and Wilcoxon signed-rank; Holm "
                     f"adjusts the t-test p-values for the number of arms). \"vs frozen\": a fine-tuned arm "
                     f"against the frozen arm of the same features and recommender."))
    rows = []
    for a in ok:
        vs, ref = a.get("vs_baseline") or {}, a.get("vs_counterpart") or {}
        rows.append([a["name"], a["label"], a.get("model", report["model"]),
                     *[mean_pm(a["test"].get(x)) for x in report["shown_metrics"]],
                     "baseline" if a["name"] == base else signed(vs.get("diff")),
                     p_value(vs.get("p_ttest")) if vs else "", p_value(vs.get("p_holm")) if vs else "",
                     p_value(vs.get("p_wilcoxon")) if vs else "",
                     (f"{signed(ref.get('diff'))} (p {p_value(ref.get('p_ttest'))})" if ref else "")])
    out.append(("table", ["arm", "kind", "model", *[f"{x}" for x in report["shown_metrics"]], f"Δ {m}", "p (t)",
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
        rows.append([a["name"], number(c["extraction_seconds"], 1), number(c.get("finetune_run_seconds"), 1),
                     number(c["train_seconds_per_epoch"], 3), number(c["eval_seconds_per_epoch"], 3), number(c["epochs"], 1),
                     number(c["run_seconds"], 1), number(c["total_seconds"], 1), number(c["peak_memory_mb"], 0),
                     integer(c["trainable_params"]), number(c["samples_per_second"], 0), number(c["metric_per_minute"]),
                     number(c.get("gain_over_ids_per_extra_minute"))])
    out.append(("table", ["arm", "extraction s", "fine-tuning run s", "train s/epoch", "valid s/epoch", "epochs",
                          "run s", "total s", "peak MB", "trainable params", "samples/s", f"{m}/min",
                          "gain over ids/extra min"], rows))
    ext_rows = [[name, c.get("spec", ""), integer(c.get("items")), number(c.get("items_per_second"), 1),
                 number(c.get("seconds"), 1), c.get("source", ""), c.get("error", "")]
                for name, c in report["extraction_costs"].items()]
    if ext_rows:
        out.append(("table", ["feature set", "encoder", "items", "items/s", "catalog s", "timed by", "note"],
                    ext_rows))
    out.append(("img", "cost.png", "accuracy against cost"))

    out += _slices(report, ok)

    out.append(("h2", "Per-modality ablation"))
    if report["ablation"]:
        counterparts = any(r.get("counterpart_arm") for r in report["ablation"])
        rows = [[r["modality"], r["arm"], mean_pm(r.get("frozen")),
                 *([f"{number(r.get('counterpart_frozen'))} ({r['counterpart_arm']})" if r.get("counterpart_arm")
                    else ""] if counterparts else []),
                 f"{number(r.get('finetuned_best'))} ({r['finetuned_arm']})" if r.get("finetuned_arm") else "",
                 f"{number(r.get('ftfeat_best'))} ({r['ftfeat_arm']})" if r.get("ftfeat_arm") else ""]
                for r in report["ablation"]]
        out.append(("p", f"Test {m}: each modality alone and fused, frozen; next to it the best fine-tuned arm of "
                         "that modality and the best arm feeding its fine-tuned features to the frozen model"
                    + (f" ({report['model']})" if counterparts else "") + "."
                    + (f" The fine-tuned arms train {report.get('finetune_model')}: the frozen arm of the same "
                       "recommender is shown before them." if counterparts else "")))
        out.append(("table", ["modality", "frozen arm", f"frozen {m}",
                              *([f"frozen, {report.get('finetune_model')}"] if counterparts else []),
                              "best fine-tuned", "fine-tuned features"], rows))
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


def _recommenders(report: dict) -> str:
    """Which recommender the arms trained: one, or each with its arms (reports written before
    the arms had their own ``model`` name one for all)."""
    by_model: dict[str, list[str]] = {}
    for a in report["arms"]:
        by_model.setdefault(a.get("model", report["model"]), []).append(a["name"])
    if len(by_model) <= 1:
        return f"recommender **{next(iter(by_model), report['model'])}**"
    return "recommenders " + "; ".join(f"**{m}** ({', '.join(names)})" for m, names in by_model.items())


def _budgets(report: dict) -> str:
    """The arms' budget: one for all, or one per recommender (``compare.by_model``)."""
    def words(b: dict) -> str:
        return (f"up to {b['epochs']} epochs, early stopping on valid {report['valid_metric']} (patience "
                f"{b['patience']}), lr {b['lr']}" + (f", encoder lr {b['encoder_lr']}" if b.get("encoder_lr") else "")
                + f", batch {b['batch_size']}")

    by_model: dict[str, dict] = {}
    for a in report["arms"]:
        by_model.setdefault(a.get("model", report["model"]), a.get("budget") or report["budget"])
    if len({words(b) for b in by_model.values()}) <= 1:
        return f"Same budget for every arm: {words(report['budget'])}."
    return "Budget per recommender: " + "; ".join(
        f"**{m}**: {words(b)}" for m, b in by_model.items()) + "."


def _slices(report: dict, ok: list[dict]) -> list[tuple]:
    """Each arm on all test items, on warm, cold-start and long-tail items, and its catalog
    coverage; then the paired tests on the cold and long-tail slices against the baseline."""
    m, base, metrics = report["metric"], report["baseline"], report["slice_metrics"]
    coverage = f"coverage@{m.split('@')[1]}"
    columns = [(f"{prefix}{x}", f"{label} {x}") for prefix, label in SLICES for x in metrics
               if any(f"{prefix}{x}" in a["test"] for a in ok)]
    columns += [(coverage, coverage)] if any(coverage in a["test"] for a in ok) else []
    share = report.get("long_tail_share")
    out: list[tuple] = [("h2", "Item slices")]
    out.append(("p", "Test metrics, mean ± std over seeds, with the ground truth restricted to items seen in training "
                     "(warm), never seen in training (cold-start) and the long tail"
                + (f" (the least popular trained items, together at most {share:.0%} of the training interactions)"
                   if share else "")
                + f"; each slice over the users with test items in it. {coverage}: the share of the catalog in at "
                  f"least one test user's top {m.split('@')[1]}."))
    out.append(("table", ["arm", *[label for _, label in columns]],
                [[a["name"], *[mean_pm(a["test"].get(key)) for key, _ in columns]] for a in ok]))
    tested = [part for part in ("cold", "tail") if any(f"{part}/{m}" in a["test"] for a in ok)]
    if tested:
        out.append(("p", f"Δ {m} and p on each slice, paired over the users with test items in it, against {base}."))
        rows = []
        for a in ok:
            row = [a["name"]]
            for part in tested:
                vs = a.get(f"{part}_vs_baseline") or {}
                row += ["baseline" if a["name"] == base else signed(vs.get("diff")),
                        p_value(vs.get("p_ttest")) if vs else "", p_value(vs.get("p_wilcoxon")) if vs else ""]
            rows.append(row)
        out.append(("table", ["arm", *[h for part in tested for h in (f"Δ {part}", f"p (t, {part})",
                                                                      f"p (Wilcoxon, {part})")]], rows))
    if not any(f"cold/{m}" in a["test"] for a in ok):
        out.append(("p", f"The test split (`{report['split']}`) has no items unseen in training, so there is no "
                         "cold-start slice (a `cold_start` or `temporal_global` split has one)."))
    out.append(("img", "cold_start.png", "cold-start, warm and long-tail slices"))
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
