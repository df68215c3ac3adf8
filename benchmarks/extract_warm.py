"""Cold vs warm `modalrec extract` on the H&M sample (5,499 product photos and texts) with the
encoders of recipes/configs/hm.yaml (resnet18 random-init, the real all-MiniLM-L6-v2).

cold: an empty feature store, every item encoded. warm: the same command again, nothing changed;
the runner proves everything is stored from its links, the weights' file stats and the item
files' stats, without loading a model or reading an item file. Both are whole `modalrec extract`
processes timed from outside (interpreter start and imports included); the data set is prepared
before either, untimed. The warm run is repeated (best and median reported), alternating with the
bare cost of starting Python and importing the libraries every `modalrec` command needs, which
bounds a warm run from below; also the warm `extract()` call alone, inside one process.

    python benchmarks/extract_warm.py                          # needs ../shared/data (or MODALREC_DATA)
    python benchmarks/extract_warm.py extract.num_workers=1    # extra arguments: config overrides
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIG = Path(__file__).resolve().parents[1] / "recipes" / "configs" / "hm.yaml"
REPEATS = 5


def timed(*args: str) -> tuple[float, str]:
    start = time.perf_counter()
    r = subprocess.run([sys.executable, *args], capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if r.returncode:
        sys.exit(f"{' '.join(args[:4])} failed:\n{r.stderr[-3000:]}")
    return seconds, r.stdout


def main() -> None:
    import statistics

    from pipeline.config import load_config

    overrides = sys.argv[1:]
    with tempfile.TemporaryDirectory() as tmp:
        args = [str(CONFIG), f"cache_dir={tmp}", *overrides]
        cfg = load_config(CONFIG, args[1:])
        if not (cfg.data.root / cfg.data.items.path).is_file():
            sys.exit(f"skipped: {cfg.data.root} not found (set MODALREC_DATA to the folder holding hm/)")
        timed("-m", "pipeline.cli", "data", "prepare", *args, "--json")
        print("H&M sample, encoders: " + ", ".join(f"{n}={e.spec}" for n, e in cfg.encoders.items()), flush=True)
        cold, out = timed("-m", "pipeline.cli", "extract", *args, "--json")
        cold_sets = json.loads(out)["feature_sets"]
        warm, floor = [], []
        for _ in range(REPEATS):  # short runs on a shared machine: several, alternating with the floor
            seconds, out = timed("-m", "pipeline.cli", "extract", *args, "--json")
            warm.append(seconds)
            floor.append(timed("-c", "import torch, accelerate, datasets")[0])
        warm_sets = json.loads(out)["feature_sets"]
        inside = in_process_warm(cfg)
    for c, w in zip(cold_sets, warm_sets):
        print(f"  {c['encoder']}:{c['field']}: cold computed {c['computed']:,} in {c['seconds']:.1f} s "
              f"({c['items_per_second']:.1f} items/s); warm computed {w['computed']}, reused {w['reused']:,}, "
              f"encoder built: {w['encoder_built']}")
    best, median = min(warm), statistics.median(warm)
    print(f"cold {cold:.2f} s   warm {best:.2f} s (median of {REPEATS}: {median:.2f} s)   "
          f"warm is {cold / best:.0f}x faster ({cold / median:.0f}x on the median)")
    print(f"of a warm run, python start + import torch, accelerate, datasets alone: {min(floor):.2f} s "
          f"(median {statistics.median(floor):.2f} s); extract() itself inside a warm process: {inside:.3f} s")


def in_process_warm(cfg) -> float:
    """The warm check without interpreter start and imports: `extract()` in this process."""
    from accelerate import Accelerator

    from pipeline.data import PreparedData
    from pipeline.extract import extract

    accelerator, prepared = Accelerator(), PreparedData.load(cfg.prepared_dir)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        results = extract(cfg, prepared, accelerator)
        times.append(time.perf_counter() - start)
        assert all(r.computed == 0 and not r.encoder_built for r in results)
    return min(times)


if __name__ == "__main__":
    main()
