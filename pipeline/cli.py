"""The ``modalrec`` command line.

Every command that produces results takes ``--json`` and then prints exactly one JSON object on
stdout (progress and warnings go to stderr); otherwise it prints a human summary. Errors in the
input print one line naming the file, row, item or config key, and exit with status 2.
"""

from __future__ import annotations

import argparse
import atexit
import json
import sys
from typing import Any

from .errors import ModalrecError


def _emit(result: dict[str, Any], as_json: bool, human) -> None:
    if as_json:
        print(json.dumps(result, sort_keys=False))
    else:
        human(result)


def _print_stats(s: dict[str, Any]) -> None:
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


def _cmd_data_prepare(args: argparse.Namespace, overrides: list[str]) -> None:
    from .config import load_config
    from .data import prepare

    cfg = load_config(args.config, overrides)
    prepared = prepare(cfg, progress=not args.json)
    result = {"path": str(prepared.path), **prepared.stats()}
    _emit(result, args.json, lambda r: (_print_stats(r), print(f"saved to   {r['path']}")))


def _cmd_data_stats(args: argparse.Namespace, overrides: list[str]) -> None:
    from .data import PreparedData

    if overrides:
        raise ModalrecError(f"data stats takes no overrides, got {' '.join(overrides)}")
    prepared = PreparedData.load(args.path)
    _emit({"path": str(prepared.path), **prepared.stats()}, args.json, _print_stats)


def _prepared_for(cfg):
    """The prepared data set for ``cfg``: reused when it was made from the same data config and
    the same input files (by content), prepared again otherwise."""
    from pathlib import Path

    from .data import PreparedData, prepare
    from .data.prepare import file_sha256

    try:
        prepared = PreparedData.load(cfg.prepared_dir)
        same_inputs = all(file_sha256(Path(f["path"])) == f["sha256"] for f in prepared.meta["inputs"].values())
        if prepared.config.get("data") == cfg.to_dict()["data"] and same_inputs:
            return prepared
    except ModalrecError:
        pass
    print(f"preparing {cfg.data.name} into {cfg.prepared_dir}", file=sys.stderr)
    return prepare(cfg)


def _print_extract(r: dict[str, Any]) -> None:
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


def _cmd_extract(args: argparse.Namespace, overrides: list[str]) -> None:
    from accelerate import Accelerator

    from .config import load_config
    from .extract import extract

    cfg = load_config(args.config, overrides)
    accelerator = Accelerator()
    prepared = _prepared_for(cfg) if accelerator.is_main_process else None
    accelerator.wait_for_everyone()
    if prepared is None:
        from .data import PreparedData

        prepared = PreparedData.load(cfg.prepared_dir)
    results = extract(cfg, prepared, accelerator, only=args.encoder)
    if accelerator.is_main_process:
        out = {"store": str(cfg.features_dir), "feature_sets": [r.to_dict() for r in results]}
        _emit(out, args.json, _print_extract)


def _metrics_line(split: str, metrics: dict[str, Any], keys=("recall@10", "recall@20", "ndcg@10", "ndcg@20")) -> str:
    shown = "  ".join(f"{k} {metrics[k]:.4f}" for k in keys if k in metrics)
    for prefix, label in (("cold", "cold-start items"), ("tail", "long-tail items")):
        part = "  ".join(f"{k} {metrics[k]:.4f}" for k in (f"{prefix}/{x}" for x in keys[1::2]) if k in metrics)
        shown += f"   {label}: {part}" if part else ""
    coverage = "coverage@" + keys[-1].split("@")[1]
    return f"{split:<6} {shown}" + (f"   {coverage} {metrics[coverage]:.4f}" if coverage in metrics else "")


def _print_train(r: dict[str, Any]) -> None:
    if "runs" in r:
        for run in r["runs"]:
            _print_train(run)
        print(f"mean over seeds {r['seeds']}:")
        for split in ("valid", "test"):
            print(f"{split:<6} " + "  ".join(f"{k} {v['mean']:.4f}±{v['std']:.4f}"
                                            for k, v in r[split].items() if k in ("recall@20", "ndcg@20")))
        return
    print(f"model {r['model']} on {r['data']} (seed {r['seed']}): best epoch {r['best_epoch']} of {r['epochs']}, "
          f"{r['train_seconds_per_epoch']:.3f} s/epoch train, {r['eval_seconds_per_epoch']:.3f} s/epoch eval")
    print(_metrics_line("valid", r["valid"]))
    print(_metrics_line("test", r["test"]))
    print(f"run    {r['run_dir']}")


def _cmd_train(args: argparse.Namespace, overrides: list[str]) -> None:
    from accelerate import Accelerator

    from .config import load_config
    from .train import run_training

    cfg = load_config(args.config, overrides)
    if cfg.model is None:
        from .models import MODELS

        raise ModalrecError(f"{args.config}: no `model` section; pick one with model.name=... ({', '.join(MODELS)})")
    accelerator = Accelerator(mixed_precision=cfg.train.mixed_precision, gradient_accumulation_steps=cfg.train.grad_accum)
    data = _prepared_for(cfg) if accelerator.is_main_process else None
    accelerator.wait_for_everyone()
    if data is None:
        from .data import PreparedData

        data = PreparedData.load(cfg.prepared_dir)
    result = run_training(cfg, data, resume=args.resume, accelerator=accelerator, overwrite=args.overwrite)
    if accelerator.is_main_process:
        if args.json:
            result = {k: v for k, v in result.items() if k != "history"}
        _emit(result, args.json, _print_train)


def _cmd_evaluate(args: argparse.Namespace, overrides: list[str]) -> None:
    from .eval import Evaluator  # noqa: F401  (import check before the heavy load)
    from .train import load_run
    from .train.trainer import evaluators

    if overrides:
        raise ModalrecError(f"evaluate takes no overrides, got {' '.join(overrides)}")
    cfg, data, model = load_run(args.run_dir)
    valid_eval, test_eval = evaluators(cfg, data)
    out = {"run_dir": str(args.run_dir), "model": cfg.model.name}
    for split, ev in (("valid", valid_eval), ("test", test_eval)):
        model.use_history(split)
        out[split] = ev.evaluate(model.score, cold_slice=cfg.eval.cold_slice)
    _emit(out, args.json, lambda r: (print(_metrics_line("valid", r["valid"])), print(_metrics_line("test", r["test"]))))


def _cmd_recommend(args: argparse.Namespace, overrides: list[str]) -> None:
    from .eval.recommend import recommend, write_table
    from .train import load_run

    if overrides:
        raise ModalrecError(f"recommend takes no overrides, got {' '.join(overrides)}")
    cfg, data, model = load_run(args.run_dir)
    users = None
    if args.users:
        users = [u.strip() for u in args.users.split(",") if u.strip()]
    elif args.users_file:
        from pathlib import Path

        users = [line.strip() for line in Path(args.users_file).read_text(encoding="utf-8").splitlines() if line.strip()]
    model.use_history("test")
    frame = recommend(model, data, users, args.k)
    if args.out:
        write_table(frame, args.out)
    result = {"run_dir": str(args.run_dir), "users": int(frame["user_id"].nunique()), "k": args.k,
              "rows": len(frame), "out": args.out}
    if not args.out:
        result["recommendations"] = frame.to_dict(orient="records")
    _emit(result, args.json, lambda r: print(frame.to_string(index=False) if not args.out else
                                             f"wrote {r['rows']:,} rows for {r['users']:,} users to {r['out']}"))


def _store(args):
    from pathlib import Path

    from .store import FeatureStore

    if args.config:
        from .config import load_config

        return FeatureStore.from_config(load_config(args.config))
    return FeatureStore(Path(args.root) if args.root else None)


def _print_sets(r: dict[str, Any]) -> None:
    if not r["sets"]:
        print(f"no feature sets in {r['root']}")
        return
    print(f"{'set':<30} {'spec':<36} {'dim':>5} {'dtype':<9} {'rows':>8} {'failed':>6}")
    for m in r["sets"]:
        print(f"{m['name']:<30} {str(m.get('spec'))[:36]:<36} {m['dim']:>5} {m['dtype']:<9} {m['rows']:>8,} {m['failed']:>6,}")


def _cmd_store_ls(args: argparse.Namespace, overrides: list[str]) -> None:
    store = _store(args)
    _emit({"root": str(store.root), "sets": store.list()}, args.json, _print_sets)


def _cmd_store_info(args: argparse.Namespace, overrides: list[str]) -> None:
    info = _store(args).info(args.selector)
    _emit(info, args.json, lambda r: print(json.dumps(r, indent=1)))


def _cmd_store_gc(args: argparse.Namespace, overrides: list[str]) -> None:
    report = _store(args).gc(prune_unlinked=args.prune_unlinked, dry_run=args.dry_run, views=args.views)
    verb = "would remove" if args.dry_run else "removed"

    def human(r):
        for kind, paths in r.items():
            if paths and kind != "keep_unmatched":
                print(f"{'kept (being written)' if kind == 'in_use' else verb} {len(paths)} {kind}: "
                      + ", ".join(p.rsplit('/', 1)[-1] for p in paths[:8]) + (" ..." if len(paths) > 8 else ""))
        if not any(v for k, v in r.items() if k not in ("keep_unmatched", "in_use")):
            print("nothing to remove")

    _emit(report, args.json, human)


def _cmd_tune(args: argparse.Namespace, overrides: list[str]) -> None:
    from .train import run_training
    from .train.search import parse_grid, search

    if not args.grid:
        raise ModalrecError("tune needs at least one --grid key=v1,v2,...")
    result = search(args.config, overrides, parse_grid(args.grid), args.random,
                    lambda cfg, data: run_training(cfg, data), _prepared_for)

    def human(r):
        print(f"{'trial':>5}  {'valid ' + r['metric']:>18}  {'test ' + r['metric']:>17}  overrides")
        for t in r["trials"]:
            mark = "*" if t is r["best"] or t == r["best"] else " "
            print(f"{t['trial']:>4}{mark}  {t['valid']:>18.4f}  {t['test']:>17.4f}  {' '.join(t['overrides'])}")
        print(f"selected on validation: trial {r['best']['trial']} ({' '.join(r['best']['overrides'])})")

    _emit(result, args.json, human)


def _print_compare(r: dict[str, Any]) -> None:
    if "arms" in r and "report_dir" not in r:  # --dry-run
        print(f"{len(r['arms'])} arms x seeds {r['seeds']} (baseline {r['baseline']}, metric {r['metric']}):")
        for a in r["arms"]:
            print(f"  {a['name']:<32} {' '.join(a['overrides'])}")
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


def _cmd_compare(args: argparse.Namespace, overrides: list[str]) -> None:
    from .compare import run_compare

    result = run_compare(args.config, overrides, _prepared_for, report_dir=args.report_dir, dry_run=args.dry_run)
    if result:  # empty on the other processes of `accelerate launch`
        _emit(result, args.json, _print_compare)


def _command(group, name: str, func, help: str, positional: tuple[str, str] | None = ("config", "YAML config file"),
             description: str | None = None) -> argparse.ArgumentParser:
    """A subcommand with its positional argument and ``--json`` (every result-producing command has it)."""
    p = group.add_parser(name, help=help, description=description or help)
    if positional:
        p.add_argument(positional[0], help=positional[1])
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=func)
    return p


OVERRIDES = "Overrides: key=value or --key value, e.g. data.split.protocol=random --data.split.seed 7."
RUN_DIR = ("run_dir", "a run directory written by `modalrec train`")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modalrec", description="Multimodal recommendation toolkit.")
    parser.add_argument("--version", action="version", version=f"modalrec {__import__('pipeline').__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = commands.add_parser("data", help="prepare data sets and inspect them")
    data_cmds = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    _command(data_cmds, "prepare", _cmd_data_prepare, "load, clean, filter, split and save a data set",
             description=OVERRIDES)
    _command(data_cmds, "stats", _cmd_data_stats, "statistics of a prepared data set",
             positional=("path", "prepared data set directory"))

    ex = _command(commands, "extract", _cmd_extract,
                  "encode item content with the configured encoders into the feature store",
                  description="Computes only what the store lacks. Runs under `accelerate launch` to shard items "
                              "across processes/GPUs. " + OVERRIDES)
    ex.add_argument("--encoder", action="append", metavar="NAME",
                    help="only this encoder of the config's `encoders` (repeat for several; default: all)")

    st = commands.add_parser("store", help="inspect and clean the feature store")
    st_cmds = st.add_subparsers(dest="store_command", required=True, metavar="SUBCOMMAND")
    for name, func, helptext, positional in (
            ("ls", _cmd_store_ls, "list feature sets", None),
            ("info", _cmd_store_info, "one feature set's manifest, storage and failures",
             ("selector", "set name, fingerprint prefix, field, or FINGERPRINT/FIELD")),
            ("gc", _cmd_store_gc, "remove leftovers of killed writers, damaged files, stale views", None)):
        sp = _command(st_cmds, name, func, helptext, positional=positional)
        if name == "gc":
            sp.add_argument("--dry-run", action="store_true", help="only list what would be removed")
            sp.add_argument("--views", action="store_true", help="also remove all read views (rebuilt on use)")
            sp.add_argument("--prune-unlinked", action="store_true",
                            help="also remove feature sets no link points at (links are left by `modalrec extract`, "
                                 "MMRec imports and fine-tuning runs); sets being written are kept")
        where = sp.add_mutually_exclusive_group()
        where.add_argument("--root", help="store directory (default: ./cache/features)")
        where.add_argument("--config", help="take the store directory from this config's cache_dir")

    t = _command(commands, "train", _cmd_train,
                 "train the configured recommender; early-stops on validation, reports test at the best epoch",
                 description="The model is model.name; item features come from the `features` section. Runs "
                             "under `accelerate launch` for several GPUs. " + OVERRIDES)
    again = t.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue the run from its last checkpoint")
    again.add_argument("--overwrite", action="store_true", help="replace a same-named run of another config")

    tu = _command(commands, "tune", _cmd_tune, "grid or random hyper-parameter search, selected on validation only",
                  description="Each --grid key=v1,v2 adds a dimension; every trial is a normal training run.")
    tu.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2", help="values to try for a key")
    tu.add_argument("--random", type=int, metavar="N", help="try N random combinations instead of all")

    cp = _command(commands, "compare", _cmd_compare,
                  "frozen vs fine-tuned: train a grid of arms over seeds and write a report",
                  description="Arms come from the config's `compare` section (ID-only, frozen per feature set and "
                              "fused, fine-tuned per encoder and policy, fine-tuned features fed back to the frozen "
                              "model, extra arms); finished arms are reused on a re-run. " + OVERRIDES)
    cp.add_argument("--report-dir", help="write the report here (default: <cache_dir>/compare/<name>/report)")
    cp.add_argument("--dry-run", action="store_true", help="list the arms and their overrides; train nothing")

    _command(commands, "evaluate", _cmd_evaluate, "evaluate a trained run's best weights on valid and test",
             positional=RUN_DIR)

    rc = _command(commands, "recommend", _cmd_recommend, "top-K items for users of a trained run (seen items excluded)",
                  positional=RUN_DIR)
    who = rc.add_mutually_exclusive_group()
    who.add_argument("--users", help="comma-separated user ids (default: every user)")
    who.add_argument("--users-file", help="a file with one user id per line")
    rc.add_argument("--k", type=int, default=10, help="items per user (default 10)")
    rc.add_argument("--out", help="write to this .csv or .parquet file instead of stdout")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    try:
        args.func(args, rest)
    except ModalrecError as e:
        print(f"modalrec: error: {e}", file=sys.stderr)
        return 2
    finally:
        _end_process_group_at_exit()
    return 0


def _end_process_group_at_exit() -> None:
    """Under `accelerate launch`, destroy the process group when the process exits, while the
    interpreter is still whole. torch asks for this (NCCL warns otherwise); and where gloo's
    threads still hold a finished collective when interpreter shutdown begins, the process
    aborts ("terminate called without an active exception"). Not at the end of each command:
    `recipes/demo.py` and `recipes/two_step.py` run several in one process."""
    if "torch" not in sys.modules:  # no command here touched torch: there is no group
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        atexit.unregister(_destroy_process_group)  # once, however many commands ran
        atexit.register(_destroy_process_group)


def _destroy_process_group() -> None:
    from accelerate import PartialState

    PartialState().destroy_process_group()  # a no-op when none is up, or under notebook_launcher


if __name__ == "__main__":
    sys.exit(main())
