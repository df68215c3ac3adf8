"""The ``modalrec`` command line: arguments parsed, the Python API (``pipeline.api``) called,
results printed (``summaries``).

Every command that produces results takes ``--json`` and then prints exactly one JSON object on
stdout (progress and warnings go to stderr); otherwise it prints a human summary. Errors in the
input print one line naming the file, row, item or config key, and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from . import api
from . import summaries as fmt
from .errors import ModalrecError


def _emit(result: dict[str, Any], as_json: bool, human) -> None:
    if as_json:
        print(json.dumps(result, sort_keys=False))
    else:
        human(result)


def _is_main_process() -> bool:
    """Under `accelerate launch` only the main process prints results."""
    from accelerate import PartialState

    return PartialState().is_main_process


def _no_overrides(command: str, overrides: list[str]) -> None:
    if overrides:
        raise ModalrecError(f"{command} takes no overrides, got {' '.join(overrides)}")


def _cmd_data_prepare(args: argparse.Namespace, overrides: list[str]) -> None:
    prepared = api.prepare(args.config, overrides, progress=not args.json)
    result = {"path": str(prepared.path), **prepared.stats()}
    _emit(result, args.json, lambda r: (fmt.print_stats(r), print(f"saved to   {r['path']}")))


def _cmd_data_stats(args: argparse.Namespace, overrides: list[str]) -> None:
    from .data import PreparedData

    _no_overrides("data stats", overrides)
    prepared = PreparedData.load(args.path)
    _emit({"path": str(prepared.path), **prepared.stats()}, args.json, fmt.print_stats)


def _cmd_extract(args: argparse.Namespace, overrides: list[str]) -> None:
    cfg = api.configure(args.config, overrides)
    results = api.extract(cfg, only=args.encoder)
    if _is_main_process():
        out = {"store": str(cfg.features_dir), "feature_sets": [r.to_dict() for r in results]}
        _emit(out, args.json, fmt.print_extract)


def _cmd_train(args: argparse.Namespace, overrides: list[str]) -> None:
    result = api.train(args.config, overrides, resume=args.resume, overwrite=args.overwrite)
    if _is_main_process():
        if args.json:
            result = {k: v for k, v in result.items() if k != "history"}
        _emit(result, args.json, fmt.print_train)


def _cmd_evaluate(args: argparse.Namespace, overrides: list[str]) -> None:
    _no_overrides("evaluate", overrides)
    _emit(api.evaluate(args.run_dir), args.json, fmt.print_evaluate)


def _cmd_recommend(args: argparse.Namespace, overrides: list[str]) -> None:
    from pathlib import Path

    from .eval.recommend import write_table

    _no_overrides("recommend", overrides)
    users = None
    if args.users:
        users = [u.strip() for u in args.users.split(",") if u.strip()]
    elif args.users_file:
        users = [line.strip() for line in Path(args.users_file).read_text(encoding="utf-8").splitlines() if line.strip()]
    frame = api.recommend(args.run_dir, users, args.k)
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
        return FeatureStore.from_config(api.configure(args.config))
    return FeatureStore(Path(args.root) if args.root else None)


def _cmd_store_ls(args: argparse.Namespace, overrides: list[str]) -> None:
    store = _store(args)
    _emit({"root": str(store.root), "sets": store.list()}, args.json, fmt.print_sets)


def _cmd_store_info(args: argparse.Namespace, overrides: list[str]) -> None:
    _emit(_store(args).info(args.selector), args.json, fmt.print_info)


def _cmd_store_gc(args: argparse.Namespace, overrides: list[str]) -> None:
    report = _store(args).gc(prune_unlinked=args.prune_unlinked, dry_run=args.dry_run, views=args.views)
    _emit(report, args.json, lambda r: fmt.print_gc(r, args.dry_run))


def _cmd_tune(args: argparse.Namespace, overrides: list[str]) -> None:
    result = api.tune(args.config, args.grid, overrides, n_random=args.random)
    if _is_main_process():
        _emit(result, args.json, fmt.print_tune)


def _cmd_compare(args: argparse.Namespace, overrides: list[str]) -> None:
    result = api.compare(args.config, overrides, report_dir=args.report_dir, dry_run=args.dry_run)
    if result:  # empty on the other processes of `accelerate launch`
        _emit(result, args.json, fmt.print_compare)


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
        api.end_process_group_at_exit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
