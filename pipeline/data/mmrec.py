"""MMRec's on-disk formats: ``<name>.inter`` interaction files and ``*_feat.npy`` item features.

``.inter`` is tab-separated with a header: ``userID itemID [rating] [timestamp] x_label``
(x_label: 0 train, 1 valid, 2 test). Row ``i`` of a ``*_feat.npy`` file is item ``i``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data_config import InteractionsConfig
from ..errors import DataError

USER, ITEM, RATING, TIMESTAMP, LABEL = "userID", "itemID", "rating", "timestamp", "x_label"


def mmrec_columns(cfg: InteractionsConfig, columns: list[str]) -> InteractionsConfig:
    """The interaction config with MMRec's column names, for whichever optional ones exist."""
    return cfg.model_copy(update={
        "format": "tsv",
        "user": USER,
        "item": ITEM,
        "rating": RATING if RATING in columns else None,
        "timestamp": TIMESTAMP if TIMESTAMP in columns else None,
        "label": LABEL if LABEL in columns else None,
    })


def find_feature_files(directory: Path) -> dict[str, Path]:
    """``{"image": .../image_feat.npy, "audio": ...}`` for every ``*_feat.npy`` in ``directory``."""
    return {p.name[: -len("_feat.npy")]: p for p in sorted(Path(directory).glob("*_feat.npy"))}


def read_feature_file(path: Path, n_items: int | None = None) -> np.ndarray:
    """A memory-mapped ``[n_items, dim]`` float array; never unpickles (the file may be untrusted)."""
    path = Path(path)
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"feature file not found: {path}") from None
    except ValueError as e:
        raise DataError(f"{path}: not a plain numeric .npy array ({e})") from None
    if arr.ndim != 2 or arr.dtype.kind != "f":
        raise DataError(f"{path}: expected a 2-D float array [items, dim], got shape {arr.shape} dtype {arr.dtype}")
    if n_items is not None and arr.shape[0] != n_items:
        raise DataError(f"{path}: has {arr.shape[0]} rows but the catalog has {n_items} items (row i = item i)")
    return arr
