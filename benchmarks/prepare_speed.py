"""How long `modalrec data prepare` takes on the real data sets, against the bare cost of
reading the same interaction file with pandas (measured in the same run).

    python benchmarks/prepare_speed.py            # needs ../shared/data (or MODALREC_DATA)
"""

import tempfile
import time
from pathlib import Path

import pandas as pd

from pipeline.config import load_config
from pipeline.data import prepare

CONFIGS = Path(__file__).resolve().parents[1] / "recipes" / "configs"


def best_of(fn, repeats=3):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    print(f"{'data set':<10} {'rows':>8} {'read_csv s':>11} {'prepare s':>10} {'ratio':>6}")
    for name, sep in (("hm", ","), ("tiktok", "\t")):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = load_config(CONFIGS / f"{name}.yaml", [f"cache_dir={tmp}"])
            inter = cfg.data.root / cfg.data.interactions.path
            if not inter.exists():
                print(f"{name:<10} skipped: {inter} not found")
                continue
            baseline = best_of(lambda: pd.read_csv(inter, sep=sep, dtype=str))
            ours = best_of(lambda: prepare(cfg, progress=False))
            rows = prepare(cfg, progress=False).stats()["rows"]
        print(f"{name:<10} {rows:>8,} {baseline:>11.3f} {ours:>10.3f} {ours / baseline:>5.1f}x")


if __name__ == "__main__":
    main()
