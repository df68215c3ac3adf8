"""Frozen vs fine-tuned on one data set: the same as ``modalrec compare CONFIG``. Prepares the
data, extracts the frozen features (only what the store lacks), trains every arm of the config's
`compare` section once per seed (finished arms are reused, so a killed run picks up where it
stopped) and writes the report (report.md, report.json, PNG plots). Extra arguments are config
overrides; ``--json`` prints the report's JSON object, ``--report-dir DIR`` writes it elsewhere.

    python recipes/compare_frozen_vs_finetuned.py                               # the demo
    python recipes/compare_frozen_vs_finetuned.py recipes/configs/hm.yaml compare.seeds=[1]
    accelerate launch recipes/compare_frozen_vs_finetuned.py recipes/configs/hm.yaml
"""

import argparse
import json
import sys
from pathlib import Path

DEMO = str(Path(__file__).resolve().parent / "configs" / "demo.yaml")


def compare(config: str, overrides: list[str], report_dir: str | None = None, dry_run: bool = False) -> dict:
    """The report's JSON object (``{}`` on the other processes of ``accelerate launch``)."""
    from pipeline import api

    return api.compare(config, overrides, report_dir=report_dir, dry_run=dry_run)


def main() -> int:
    from pipeline import summaries
    from pipeline.errors import ModalrecError

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", nargs="?", help="YAML config file (default: the built-in demo)")
    parser.add_argument("--json", action="store_true", help="print the report's JSON object")
    parser.add_argument("--report-dir", help="write the report here (default: <cache_dir>/compare/<name>/report)")
    parser.add_argument("--dry-run", action="store_true", help="list the arms and their overrides; train nothing")
    args, overrides = parser.parse_known_args()
    if args.config is None or "=" in args.config:  # no config named: the built-in demo
        overrides = [args.config, *overrides] if args.config else overrides
        args.config = DEMO
    try:
        result = compare(args.config, overrides, args.report_dir, args.dry_run)
    except ModalrecError as e:
        print(f"compare_frozen_vs_finetuned: error: {e}", file=sys.stderr)
        return 2
    if result:
        print(json.dumps(result)) if args.json else summaries.print_compare(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
