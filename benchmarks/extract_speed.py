"""Extraction throughput: `modalrec extract`'s per-field runner against a bare model loop.

For the demo config's three encoders (image: resnet18 random-init, text: the real
all-MiniLM-L6-v2, audio: wav2vec2-demo random-init) on generated demo data:

- pipeline: ``extract_field`` end to end into an empty store: content keys (file hashes),
  decoding and preprocessing in DataLoader workers, collation, forward, atomic store writes;
- bare: the same encoder called on batches that were decoded, preprocessed and collated
  beforehand (same batch size), under ``torch.inference_mode``; nothing else.

Both count only encoding time (the model is built once, before either). The two alternate for
``--repeats`` rounds; the ratio is given best against best and median against median.

    python benchmarks/extract_speed.py                 # 1000 demo items
    python benchmarks/extract_speed.py --items 300 --repeats 1
    python benchmarks/extract_speed.py extract.num_workers=0      # extra arguments: config overrides

"decode ms/item" is one item's decoding and preprocessing on one thread: work the pipeline does
and the bare loop does not. On a machine whose cores the model already keeps busy, no scheduling
hides it; it bounds the ratio from above.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

CONFIG = Path(__file__).resolve().parents[1] / "recipes" / "configs" / "demo.yaml"


def decode_ms_per_item(encoder, values: list[str]) -> float:
    """What the pipeline does per item that the bare loop does not: decode and preprocess."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    try:
        start = time.perf_counter()
        for v in values:
            encoder.preprocess(v)
        return (time.perf_counter() - start) / len(values) * 1e3
    finally:
        torch.set_num_threads(threads)


def bare_items_per_second(encoder, values: list[str], batch_size: int) -> float:
    samples = [encoder.preprocess(v) for v in values]
    batches = [encoder.collate(samples[i:i + batch_size]) for i in range(0, len(samples), batch_size)]
    with torch.inference_mode():
        encoder(batches[0])  # warm-up: first-call allocations
        start = time.perf_counter()
        for batch in batches:
            encoder(batch)
        return len(values) / (time.perf_counter() - start)


def pipeline_items_per_second(encoder, name, cfg, prepared, field, accelerator, root: Path) -> float:
    from pipeline.extract import extract_field
    from pipeline.store import FeatureStore

    store = FeatureStore(root)  # empty: everything is computed
    res = extract_field(store, encoder, name, cfg.encoders[name], field, prepared, cfg, accelerator)
    assert res.computed == res.items - res.absent, res.to_dict()
    return res.items_per_second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--encoders", default="image,text,audio")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. extract.num_workers=2")
    args = parser.parse_args()

    import os
    import statistics

    from accelerate import Accelerator

    from pipeline.config import load_config
    from pipeline.content import build_encoder, encoder_modality
    from pipeline.data import prepare

    accelerator = Accelerator()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(CONFIG, [f"cache_dir={tmp}", f"data.root={tmp}/raw", f"data.demo.n_items={args.items}",
                                   f"data.demo.n_users={max(args.items // 2, 10)}", *args.overrides])
        prepared = prepare(cfg, progress=False)
        print(f"{len(prepared.items)} demo items, batch_size {cfg.extract.batch_size}, "
              f"num_workers {cfg.extract.num_workers}, torch threads {torch.get_num_threads()}, "
              f"{args.repeats} interleaved rounds; load average {os.getloadavg()[0]:.1f}")
        print(f"{'encoder':<8} {'spec':<24} {'decode':>7} {'bare items/s':>18} {'extract items/s':>18} "
              f"{'ratio':>14}")
        print(f"{'':<8} {'':<24} {'ms/item':>7} {'best / median':>18} {'best / median':>18} {'best / median':>14}")
        for name in args.encoders.split(","):
            ec = cfg.encoders[name]
            encoder = build_encoder(cfg, name, encoder_modality(prepared, name, ec)).eval()
            field = ec.fields[0]
            values = [v for v in prepared.items[field] if v is not None]
            bare, ours = [], []
            for r in range(args.repeats):  # interleaved, order alternating: drifting load hits both alike
                for which in ((0, 1) if r % 2 == 0 else (1, 0)):
                    if which == 0:
                        bare.append(bare_items_per_second(encoder, values, cfg.extract.batch_size))
                    else:
                        ours.append(pipeline_items_per_second(encoder, name, cfg, prepared, field, accelerator,
                                                              Path(tmp) / f"store-{name}-{r}"))
            decode = decode_ms_per_item(encoder, values[:200])
            spec = ec.spec if len(ec.spec) <= 24 else "..." + ec.spec[-21:]
            print(f"{name:<8} {spec:<24} {decode:>7.2f} {max(bare):>8.1f} / {statistics.median(bare):>7.1f} "
                  f"{max(ours):>8.1f} / {statistics.median(ours):>7.1f} {max(ours) / max(bare):>6.2f}x / "
                  f"{statistics.median(ours) / statistics.median(bare):.2f}x", flush=True)
        print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
