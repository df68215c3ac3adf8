"""``modalrec data prepare``: load, clean, filter, split and save a data set in one pass."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import datasets
import numpy as np
import pandas as pd

from ..atomic import atomic_directory
from ..config import Config, save_config
from .catalog import CatalogTable, catalog_from_ids, load_catalog, missing_media
from .interactions import Pairs, aggregate, drop_unknown_items, filter_rating, k_core, natural_order, read_interactions
from .prepared import FORMAT_VERSION, MARKER, PreparedData, compute_stats
from .splits import split_pairs


def file_sha256(path: Path) -> str | None:
    if not path.is_file():
        return None  # an HF dataset directory: its Arrow files carry their own fingerprints
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _reindex(pairs: Pairs, keep: np.ndarray, users_ok: np.ndarray, items_ok: np.ndarray) -> Pairs:
    """Drop filtered pairs and renumber users and items contiguously, keeping their order."""
    kept = pairs.take(keep)
    user_new = np.cumsum(users_ok) - 1
    item_new = np.cumsum(items_ok) - 1
    kept.user = user_new[kept.user]
    kept.item = item_new[kept.item]
    return kept


def prepare(cfg: Config, progress: bool = True) -> PreparedData:
    """Build the prepared data set described by ``cfg.data`` and write it to ``cfg.prepared_dir``."""
    data = cfg.data
    if data.demo is not None:
        from .demo import generate_demo

        generate_demo(data.root, progress=progress, **data.demo.model_dump())

    catalog: CatalogTable | None = load_catalog(data.items, data.root) if data.items.path else None
    raw = read_interactions(data.interactions, data.root)
    rows = len(raw)
    dropped = {"duplicate_items": 0, "unknown_items": 0, "min_rating": 0,
               "k_core_pairs": 0, "k_core_users": 0, "k_core_items": 0}
    if catalog is not None:
        dropped["duplicate_items"] = catalog.duplicates_dropped
        raw, dropped["unknown_items"] = drop_unknown_items(raw, catalog.item_ids, data.interactions.unknown_items)
    raw, dropped["min_rating"] = filter_rating(raw, data.filter.min_rating)

    user_ids = natural_order(raw.users)
    if catalog is None:
        catalog = catalog_from_ids(natural_order(raw.items))
    item_ids = catalog.item_ids
    pairs = aggregate(
        raw,
        {u: i for i, u in enumerate(user_ids)},
        {it: i for i, it in enumerate(item_ids)},
    )
    keep, users_ok, items_ok = k_core(pairs, len(user_ids), len(item_ids), data.filter)
    dropped["k_core_pairs"] = int((~keep).sum())
    dropped["k_core_users"] = int((~users_ok).sum())
    dropped["k_core_items"] = int((~items_ok).sum())
    pairs = _reindex(pairs, keep, users_ok, items_ok)
    user_ids = user_ids[users_ok]
    catalog.frame = catalog.frame[items_ok].reset_index(drop=True)
    split = split_pairs(pairs, data.split)

    interactions = {
        "user": pairs.user.astype(np.int32),
        "item": pairs.item.astype(np.int32),
        "count": pairs.count.astype(np.int32),
        "order": pairs.order,  # first raw row of the pair: the interaction order without timestamps
        "split": split,
    }
    if pairs.timestamp is not None:
        interactions["timestamp"] = pairs.timestamp
    if pairs.rating is not None:
        interactions["rating"] = pairs.rating.astype(np.float32)

    meta = {
        "format_version": FORMAT_VERSION,
        "name": data.name,
        "rows": rows,
        "dropped": dropped,
        "protocol": data.split.protocol,
        "fields": catalog.fields,
        "missing": missing_media(catalog),
        "inputs": {
            "interactions": {"path": str(raw.path), "sha256": file_sha256(raw.path)},
            **({"items": {"path": str(data.root / data.items.path), "sha256": file_sha256(data.root / data.items.path)}}
               if data.items.path else {}),
        },
    }
    out = cfg.prepared_dir
    datasets.disable_progress_bars()  # tiny writes; their bars would only clutter the output
    with atomic_directory(out, MARKER) as tmp:
        datasets.Dataset.from_pandas(catalog.frame, preserve_index=False).save_to_disk(str(tmp / "items"))
        datasets.Dataset.from_pandas(pd.DataFrame({"user_id": user_ids.astype(str)}), preserve_index=False).save_to_disk(
            str(tmp / "users"))
        datasets.Dataset.from_dict(interactions).save_to_disk(str(tmp / "interactions"))
        save_config(cfg, tmp / "config.yaml")
        stats = compute_stats(interactions, len(user_ids), len(catalog.frame), meta)
        (tmp / "stats.json").write_text(json.dumps(stats, indent=2), encoding="utf-8")
        (tmp / MARKER).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return PreparedData.load(out)
