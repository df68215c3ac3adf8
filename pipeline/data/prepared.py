"""A prepared data set on disk, and its statistics.

Layout of a prepared directory (all tables are HF datasets, Arrow files memory-mapped on load)::

    items/          catalog: row i = item index i (item_id + text / image / audio fields)
    users/          row u = user index u (user_id)
    interactions/   distinct pairs: user, item, count, order, split (0/1/2) [, timestamp, rating]
    config.yaml     the resolved config that produced it
    meta.json       rows read, rows dropped and why, modality fields, input file fingerprints
    stats.json      what ``modalrec data stats`` prints
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import yaml

from ..errors import DataError
from .splits import SPLIT_NAMES

MARKER = "meta.json"
FORMAT_VERSION = 2


@dataclass
class PreparedData:
    path: Path
    items: datasets.Dataset
    users: datasets.Dataset
    interactions: datasets.Dataset
    meta: dict[str, Any]
    config: dict[str, Any]

    @classmethod
    def load(cls, path: str | Path) -> "PreparedData":
        path = Path(path)
        if not (path / MARKER).is_file():
            raise DataError(f"{path}: not a prepared data set (no {MARKER}); run `modalrec data prepare CONFIG` first")
        try:
            meta = json.loads((path / MARKER).read_text(encoding="utf-8"))
            config = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8"))
            tables = {name: datasets.load_from_disk(str(path / name)) for name in ("items", "users", "interactions")}
        except (OSError, ValueError, yaml.YAMLError) as e:
            raise DataError(f"{path}: prepared data set is damaged ({type(e).__name__}: {e}); prepare it again") from None
        if meta.get("format_version") != FORMAT_VERSION:
            raise DataError(f"{path}: prepared with format {meta.get('format_version')}, this modalrec reads "
                            f"{FORMAT_VERSION}; prepare it again")
        return cls(path, tables["items"], tables["users"], tables["interactions"], meta, config)

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def fields(self) -> dict[str, list[str]]:
        """Modality -> catalog field names, e.g. ``{"text": ["title"], "image": ["image"], "audio": []}``."""
        return self.meta["fields"]

    @cached_property
    def _columns(self) -> dict[str, np.ndarray]:
        # zero-copy views of the memory-mapped Arrow columns
        table = self.interactions.data
        return {c: table.column(c).to_numpy() for c in ("user", "item", "count", "split")}

    def pairs(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(user indices, item indices) of one split: ``"train"``, ``"valid"`` or ``"test"``."""
        if split not in SPLIT_NAMES:
            raise ValueError(f"split must be one of {SPLIT_NAMES}, got {split!r}")
        mask = self._columns["split"] == SPLIT_NAMES.index(split)
        return self._columns["user"][mask].astype(np.int64), self._columns["item"][mask].astype(np.int64)

    def stats(self) -> dict[str, Any]:
        return compute_stats(self._columns, self.n_users, self.n_items, self.meta)


def compute_stats(cols: dict[str, np.ndarray], n_users: int, n_items: int, meta: dict[str, Any]) -> dict[str, Any]:
    """Counts a user checks a data set by; ``splits`` count distinct pairs."""
    split = cols["split"]
    sizes = np.bincount(split, minlength=3)
    train = split == 0
    train_items = np.zeros(n_items, dtype=bool)
    train_items[cols["item"][train]] = True
    train_users = np.zeros(n_users, dtype=bool)
    train_users[cols["user"][train]] = True
    evaluated = ~train
    n_pairs = len(split)
    return {
        "name": meta["name"],
        "users": n_users,
        "items": n_items,
        "rows": meta["rows"],
        "interactions": n_pairs,
        "repeats": int(cols["count"].sum()) - n_pairs,
        "density": n_pairs / max(n_users * n_items, 1),
        "splits": {name: int(sizes[i]) for i, name in enumerate(SPLIT_NAMES)},
        "protocol": meta["protocol"],
        "cold_items": {  # items never seen in train, among those in each evaluation split
            name: int(np.unique(cols["item"][(split == i) & ~train_items[cols["item"]]]).size)
            for i, name in ((1, "valid"), (2, "test"))
        },
        "cold_users": int(np.unique(cols["user"][evaluated & ~train_users[cols["user"]]]).size),
        "dropped": meta["dropped"],
        "fields": meta["fields"],
        "missing": meta["missing"],
    }
