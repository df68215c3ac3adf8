"""Results as people read them: what the ``modalrec`` command line (and the recipes) print without ``--json``."""

from __future__ import annotations

import json
from typing import Any


def print_stats(s: dict[str, Any]) -> None:
    sp = s["splits"]
    print(f"data set    {s['name']}  (split: {s['protocol']})")
    print(f"users       {s['users']:,}")
    print(f"items       {s['items']:,}")
    print(f"rows        {s['rows']:,} read, {s['interactions']:,} distinct user-item pairs kept "
          f"({s['repeats']:,} repeats kept as counts)")
    print(f"splits      train {sp['train']:,} / valid {sp['valid']:,} / test {sp['test']:,} pairs")
    print(f"density     {s['density']:.5f}")
    print(f"cold        items only in valid {s['cold_items']['valid']:,}, only in test {s['cold_items']['test']:,}; "
          f"users with no train pairs {s['cold_users']:,}")
    dropped = {k: v for k, v in s["dropped"].items() if v}
    if dropped:
        print("dropped     " + ", ".join(f"{k} {v:,}" for k, v in dropped.items()))
    for modality, names in s["fields"].items():
        for name in names:
            print(f"{modality:<11} {name}: {s['items'] - s['missing'][name]:,} present, {s['missing'][name]:,} missing")


def print_extract(r: dict[str, Any]) -> None:
    print(f"{'feature set':<28} {'dim':>5} {'items':>7} {'computed':>9} {'reused':>7} {'failed':>7} {'s':>8} {'items/s':>8}")
    for f in r["feature_sets"]:
        name = f"{f['encoder']}:{f['field']}"
        print(f"{name:<28} {f['dim']:>5} {f['items']:>7,} {f['computed']:>9,} {f['reused']:>7,} {f['failed']:>7,} "
              f"{f['seconds']:>8.2f} {f['items_per_second']:>8.1f}")
        failed = [x for x in f["failures"] if x["kind"] == "failed"]  # missing files: one line, prepare told
        for fail in failed[:10]:
            print(f"    skipped {fail['item_id']}: {fail['reason']}")
        if len(failed) > 10:
            print(f"    ... and {len(failed) - 10} more (see --json)")
        if f["missing"]:
            print(f"    {f['missing']:,} files do not exist (masked), e.g. "
                  + next(x["value"] for x in f["failures"] if x["kind"] == "missing"))
    print(f"store      {r['store']}")


def metrics_line(split: str, metrics: dict[str, Any], keys=("recall@10", "recall@20", "ndcg@10", "ndcg@20")) -> str:
    shown = "  ".join(f"{k} {metrics[k]:.4f}" for k in keys if k in metrics)
    for prefix, label in (("cold", "cold-start items"), ("tail", "long-tail items")):
        part = "  ".join(f"{k} {metrics[k]:.4f}" for k in (f"{prefix}/{x}" for x in keys[1::2]) if k in metrics)
        shown += f"   {label}: {part}" if part else ""
    coverage = "coverage@" + keys[-1].split("@")[1]
    return f"{split:<6} {shown}" + (f"   {coverage} {metrics[coverage]:.4f}" if coverage in metrics else "")


def print_train(r: dict[str, Any]) -> None:
    if "runs" in r:
        for run in r["runs"]:
            print_train(run)
        print(f"mean over seeds {r['seeds']}:")
        for split in ("valid", "test"):
            print(f"{split:<6} " + "  ".join(f"{k} {v['mean']:.4f}±{v['std']:.4f}"
                                            for k, v in r[split].items() if k in ("recall@20", "ndcg@20")))
        return
    print(f"model {r['model']} on {r['data']} (seed {r['seed']}): best epoch {r['best_epoch']} of {r['epochs']}, "
          f"{r['train_seconds_per_epoch']:.3f} s/epoch train, {r['eval_seconds_per_epoch']:.3f} s/epoch eval")
    print(metrics_line("valid", r["valid"]))
    print(metrics_line("test", r["test"]))
    print(f"run    {r['run_dir']}")


def print_evaluate(r: dict[str, Any]) -> None:
    print(metrics_line("valid", r["valid"]))
    print(metrics_line("test", r["test"]))


def print_sets(r: dict[str, Any]) -> None:
    if not r["sets"]:
        print(f"no feature sets in {r['root']}")
        return
    print(f"{'set':<30} {'spec':<36} {'dim':>5} {'dtype':<9} {'rows':>8} {'failed':>6}")
    for m in r["sets"]:
        print(f"{m['name']:<30} {str(m.get('spec'))[:36]:<36} {m['dim']:>5} {m['dtype']:<9} {m['rows']:>8,} {m['failed']:>6,}")


def print_info(r: dict[str, Any]) -> None:
    print(json.dumps(r, indent=1))


def print_gc(r: dict[str, Any], dry_run: bool) -> None:
    verb = "would remove" if dry_run else "removed"
    for kind, paths in r.items():
        if paths and kind != "keep_unmatched":
            print(f"{'kept (being written)' if kind == 'in_use' else verb} {len(paths)} {kind}: "
                  + ", ".join(p.rsplit('/', 1)[-1] for p in paths[:8]) + (" ..." if len(paths) > 8 else ""))
    if not any(v for k, v in r.items() if k not in ("keep_unmatched", "in_use")):
        print("nothing to remove")


def print_tune(r: dict[str, Any]) -> None:
    print(f"{'trial':>5}  {'valid ' + r['metric']:>18}  {'test ' + r['metric']:>17}  overrides")
    for t in r["trials"]:
        mark = "*" if t is r["best"] or t == r["best"] else " "
        print(f"{t['trial']:>4}{mark}  {t['valid']:>18.4f}  {t['test']:>17.4f}  {' '.join(t['overrides'])}")
    print(f"selected on validation: trial {r['best']['trial']} ({' '.join(r['best']['overrides'])})")


def print_compare(r: dict[str, Any]) -> None:
    if "arms" in r and "report_dir" not in r:  # --dry-run
        print(f"{len(r['arms'])} arms x seeds {r['seeds']} (baseline {r['baseline']}, metric {r['metric']}):")
        for a in r["arms"]:
            print(f"  {a['name']:<32} {a.get('model', ''):<12} {' '.join(a['overrides'])}")
        return
    m = r["metric"]
    print(f"{'arm':<32} {'test ' + m:>20} {'cold':>7} {'tail':>7} {'vs baseline':>12} {'p (t)':>8} {'total s':>9}  status")
    for a in r["arms"]:
        if a["status"] != "ok":
            print(f"{a['name']:<32} {'':>20} {'':>7} {'':>7} {'':>12} {'':>8} {'':>9}  FAILED: {a['error']}")
            continue
        t, vs = a["test"].get(m, {}), a.get("vs_baseline") or {}
        diff = "baseline" if a["name"] == r["baseline"] else (f"{vs['diff']:+.4f}" if vs.get("diff") is not None else "")
        p = f"{vs['p_ttest']:.4f}" if vs.get("p_ttest") is not None else ""
        cold, tail = (f"{a['test'][k]['mean']:.4f}" if k in a["test"] else "" for k in (f"cold/{m}", f"tail/{m}"))
        print(f"{a['name']:<32} {t.get('mean', float('nan')):>11.4f} ± {t.get('std', 0):.4f} {cold:>7} {tail:>7} "
              f"{diff:>12} {p:>8} {a['cost']['total_seconds']:>9.1f}  " + ", ".join(run["status"] for run in a["runs"]))
    for line in r["verdict"]["lines"]:
        print(line.replace("**", ""))
    print(f"report     {r['report_dir']}/report.md")
