"""Frozen vs fine-tuned on one data set: the same as ``modalrec compare CONFIG``. Prepares the
data, extracts the frozen features (only what the store lacks), trains every arm of the config's
`compare` section once per seed (finished arms are reused, so a killed run picks up where it
stopped) and writes the report (report.md, report.json, PNG plots). Extra arguments are config
overrides; ``--json`` prints the report's JSON object, ``--report-dir DIR`` writes it elsewhere.

    python recipes/compare_frozen_vs_finetuned.py                               # the demo
    python recipes/compare_frozen_vs_finetuned.py recipes/configs/hm.yaml compare.seeds=[1]
    accelerate launch recipes/compare_frozen_vs_finetuned.py recipes/configs/hm.yaml
"""

import sys
from pathlib import Path

from pipeline.cli import main

DEMO = str(Path(__file__).resolve().parent / "configs" / "demo.yaml")

if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or "=" in args[0] or args[0].startswith("-"):
        args = [DEMO, *args]  # no config named: the built-in demo
    sys.exit(main(["compare", *args]))
