"""What checking a view's checksum costs when it is opened.

A view (one key list's rows, materialised as one file) carries the sha256 of its bytes, checked
by ``FeatureSet.read`` the first time a process opens that file version. This times, on a view of
``--mb`` megabytes (float32 rows in the page cache, as right after extraction):

- open unchecked: ``open_view`` without the check (header, memory map, present mask);
- open checked: the same with the sha256 check, the process-wide cache of checked files cleared;
- copy: what training does next anyway (``load_features`` copies the rows into a float tensor).

    python benchmarks/store_checksum.py               # 256 MB, best of 5
    python benchmarks/store_checksum.py --mb 1024 --repeats 3
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=256)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import torch

    from pipeline.store import FeatureSet, FeatureStore
    from pipeline.store.tensor_file import forget_checksums
    from pipeline.store.views import open_view

    rows = args.mb * (1 << 20) // (4 * args.dim)
    keys = [f"k{i}" for i in range(rows)]
    with tempfile.TemporaryDirectory() as tmp:
        fs = FeatureStore(Path(tmp) / "features").open_set("bench", "field", dim=args.dim)
        rng = np.random.default_rng(0)
        for s in range(0, rows, 1 << 16):
            fs.write(keys[s:s + (1 << 16)], rng.standard_normal((len(keys[s:s + (1 << 16)]), args.dim), np.float32))
        start = time.perf_counter()
        FeatureSet(fs.path).read(keys)  # builds the view (its checksum computed at commit)
        build = time.perf_counter() - start
        (view,) = (fs.path / "views").glob("*.safetensors")
        size = view.stat().st_size

        def checked():
            forget_checksums()
            open_view(view, rows, args.dim)

        unchecked = best(lambda: open_view(view, rows, args.dim, verify=False), args.repeats)
        check = best(checked, args.repeats)
        copy = best(lambda: torch.from_numpy(open_view(view, rows, args.dim, verify=False)[0]).float().clone(),
                    args.repeats)
    mb = size / (1 << 20)
    sha = check - unchecked
    print(f"view: {rows:,} rows x {args.dim} float32 = {mb:,.0f} MB (built in {build:.2f} s)")
    print(f"open unchecked  {unchecked * 1e3:8.1f} ms")
    print(f"open checked    {check * 1e3:8.1f} ms   sha256 {mb / sha:,.0f} MB/s = {sha * 1024 / mb:.2f} s per GB")
    print(f"copy to tensor  {copy * 1e3:8.1f} ms   ({mb / copy:,.0f} MB/s); the check adds {sha / copy:.0%} of it")


if __name__ == "__main__":
    main()
