"""The main job on the built-in demo data: generate it (first run only), prepare and split it,
print its statistics. Extra arguments are config overrides, e.g. ``data.demo.n_items=300``.

    python recipes/demo.py
"""

import sys
from pathlib import Path

from pipeline.cli import main

CONFIG = Path(__file__).resolve().parent / "configs" / "demo.yaml"

if __name__ == "__main__":
    sys.exit(main(["data", "prepare", str(CONFIG), *sys.argv[1:]]))
