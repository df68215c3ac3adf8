"""What each arm costs: extracting the catalog's features, and training.

Extraction time is the time to encode every catalog item that has a value for the field, at the
speed ``modalrec extract`` recorded when it computed the feature set (the store's timings).
Features stored before such records existed are timed here on a sample of items instead
(``source: "probe"``), with the config's batch size on this machine's device.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from ..config import Config
from ..data import PreparedData
from ..errors import DataError, ModalrecError

PROBE_ITEMS = 64


def _present(data: PreparedData, field: str) -> int:
    return sum(v is not None for v in data.items[field])


def _probe(cfg: Config, data: PreparedData, encoder: str, field: str) -> dict[str, Any]:
    """Items per second of the encoder on up to PROBE_ITEMS catalog items (preprocessing included),
    after one untimed batch that loads libraries and warms the kernels."""
    from encoders import EncoderInputError

    from ..content import build_encoder, encoder_modality

    enc = build_encoder(cfg, encoder, encoder_modality(data, encoder, cfg.encoders[encoder]))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    enc.to(device).eval()
    values = [v for v in data.items[field] if v is not None][: PROBE_ITEMS + cfg.extract.batch_size]
    bs = cfg.extract.batch_size

    def run(chunk):
        samples = []
        for v in chunk:
            try:
                samples.append(enc.preprocess(v))
            except EncoderInputError:
                continue
        if samples:
            with torch.inference_mode():
                enc(enc.collate(samples))
        return len(samples)

    run(values[: min(bs, len(values))])
    timed = values[min(bs, len(values)) :] or values
    started = time.perf_counter()
    done = sum(run(timed[i : i + bs]) for i in range(0, len(timed), bs))
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    del enc
    return {"items_per_second": done / max(seconds, 1e-9), "computed": done, "seconds": seconds,
            "device": str(device), "source": "probe"}


def extraction_costs(cfg: Config, data: PreparedData, features: list[str], probe: bool = True) -> dict[str, dict]:
    """Per cached feature set: ``{"seconds": catalog extraction time, "items": n, ...}``; an
    ``error`` instead when neither a record nor a probe could time it."""
    from ..store import FeatureStore

    store = FeatureStore.from_config(cfg)
    out: dict[str, dict] = {}
    for name in features:
        src = cfg.features[name]
        if src.encoder is None or getattr(src, "run", None) is not None:
            out[name] = {"seconds": 0.0, "source": "file" if src.mmrec else "run", "items": 0}
            continue
        ec = cfg.encoders[src.encoder]
        field = src.field or ec.fields[0]
        entry: dict[str, Any] = {"encoder": src.encoder, "field": field, "spec": ec.spec}
        try:
            link = store.read_link(cfg.data.name, f"{src.encoder}.{field}")
        except DataError:
            link = None
        record = None if link is None else store.timing(link["fingerprint"], field)
        if record is not None:
            record["source"] = "extract"
        if record is None and probe:
            try:
                record = _probe(cfg, data, src.encoder, field)
            except (ModalrecError, OSError, RuntimeError, ValueError) as e:
                entry["error"] = f"could not time {ec.spec}: {e}"
        if record is not None:
            items = _present(data, field)
            ips = float(record["items_per_second"])
            entry.update(items=items, items_per_second=ips, seconds=items / ips if ips > 0 else None,
                         device=record.get("device"), source=record["source"],
                         timed_items=record.get("computed"))
        out[name] = entry
    return out
