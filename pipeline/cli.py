"""The ``modalrec`` command line.

Every command that produces results takes ``--json`` and then prints exactly one JSON object on
stdout (progress and warnings go to stderr); otherwise it prints a human summary. Errors in the
input print one line naming the file, row, item or config key, and exit with status 2.
"""

from __future__ import annotations

import argparse
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modalrec", description="Multimodal recommendation toolkit.")
    parser.add_argument("--version", action="version", version=f"modalrec {__import__('pipeline').__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = commands.add_parser("data", help="prepare data sets and inspect them")
    data_cmds = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    p = data_cmds.add_parser(
        "prepare",
        help="load, clean, filter, split and save a data set",
        description="Overrides: key=value or --key value, e.g. data.split.protocol=random --data.split.seed 7",
    )
    p.add_argument("config", help="YAML config file")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=_cmd_data_prepare)
    s = data_cmds.add_parser("stats", help="statistics of a prepared data set")
    s.add_argument("path", help="prepared data set directory")
    s.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    s.set_defaults(func=_cmd_data_stats)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    try:
        args.func(args, rest)
    except ModalrecError as e:
        print(f"modalrec: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
