"""Interactions: read raw rows, aggregate repeats into distinct (user, item) pairs, filter.

A repeated (user, item) row (a repeat purchase, a re-watch) is kept as a ``count`` on its pair,
never dropped silently; the pair's timestamp is its first occurrence (when the user first chose
the item), its rating the most recent one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..data_config import FilterConfig, InteractionsConfig
from ..errors import DataError
from .mmrec import mmrec_columns
from .tables import read_table, require_columns, require_values, to_numbers


@dataclass
class RawInteractions:
    path: Path
    users: np.ndarray  # str ids
    items: np.ndarray  # str ids
    timestamp: np.ndarray | None  # int64 unix seconds
    rating: np.ndarray | None  # float64
    label: np.ndarray | None  # int8, MMRec x_label

    def __len__(self) -> int:
        return len(self.users)


def _parse_timestamps(df: pd.DataFrame, col: str, fmt: str | None, path: Path) -> np.ndarray:
    raw = df[col]
    if fmt is None:
        numeric = pd.to_numeric(raw, errors="coerce")
        if numeric.notna().all():
            return numeric.to_numpy(dtype=np.float64).astype(np.int64)
        parsed = pd.to_datetime(raw, errors="coerce", utc=True, format="ISO8601")
        n_numeric, n_dates = int(numeric.notna().sum()), int(parsed.notna().sum())
        # A column holds one kind of time: a stray cell among unix seconds is the bad one, not
        # the first (valid) row that ISO 8601 cannot read.
        if n_numeric > n_dates:
            i = int(np.flatnonzero(numeric.isna().to_numpy())[0])
            raise DataError(f"{path}: row {i + 1}: timestamp column {col!r} {_not_a_time(raw.iloc[i])} "
                            f"({n_numeric:,} of its {len(raw):,} rows hold unix seconds)")
        how = "unix seconds or ISO 8601; set data.interactions.timestamp_format"
    else:
        parsed = pd.to_datetime(raw, errors="coerce", utc=True, format=fmt)
        how = f"format {fmt!r}"
    bad = np.flatnonzero(parsed.isna().to_numpy())
    if len(bad):
        i = int(bad[0])
        raise DataError(f"{path}: row {i + 1}: timestamp column {col!r} {_not_a_time(raw.iloc[i])} ({how})")
    return (parsed.astype("datetime64[s, UTC]").astype("int64")).to_numpy(dtype=np.int64)


def _not_a_time(value) -> str:
    return "is empty" if pd.isna(value) else f"has {value!r}, not a time"


def read_interactions(cfg: InteractionsConfig, data_root: Path) -> RawInteractions:
    path = data_root / cfg.path
    df = read_table(path, "tsv" if cfg.format == "mmrec" else cfg.format, cfg.encoding, "data.interactions.path")
    if cfg.format == "mmrec":
        cfg = mmrec_columns(cfg, list(df.columns))
    wanted = {"data.interactions.item": cfg.item}
    for key in ("user", "timestamp", "rating", "label"):
        if getattr(cfg, key) is not None:
            wanted[f"data.interactions.{key}"] = getattr(cfg, key)
    require_columns(df, wanted, path)
    label = None
    if cfg.label is not None:
        label_f = to_numbers(df, cfg.label, path, "label")
        bad = np.flatnonzero(~np.isin(label_f, (0, 1, 2)))
        if len(bad):
            i = int(bad[0])
            raise DataError(f"{path}: row {i + 1}: label column {cfg.label!r} must be 0, 1 or 2, got {df[cfg.label].iloc[i]!r}")
        label = label_f.astype(np.int8)
    return RawInteractions(
        path=path,
        users=require_values(df, cfg.user, path) if cfg.user is not None  # else: row numbers, from 1
        else np.arange(1, len(df) + 1).astype(str).astype(object),
        items=require_values(df, cfg.item, path),
        timestamp=None if cfg.timestamp is None else _parse_timestamps(df, cfg.timestamp, cfg.timestamp_format, path),
        rating=None if cfg.rating is None else to_numbers(df, cfg.rating, path, "rating"),
        label=label,
    )


def natural_order(ids: np.ndarray) -> np.ndarray:
    """Sorted unique ids: numerically when every id is an integer (MMRec's 0..n-1 stay in place)."""
    uniq = np.unique(ids.astype(str))
    if all(u.isdigit() for u in uniq):
        return uniq[np.argsort([int(u) for u in uniq], kind="stable")].astype(object)
    return uniq.astype(object)


@dataclass
class Pairs:
    """Distinct (user, item) pairs over contiguous indices, one row per pair."""

    user: np.ndarray  # int64 user index
    item: np.ndarray  # int64 item index
    count: np.ndarray  # int64 raw rows aggregated into the pair
    order: np.ndarray  # int64 first raw row of the pair (file order, the tie-breaker)
    timestamp: np.ndarray | None
    rating: np.ndarray | None
    label: np.ndarray | None

    def __len__(self) -> int:
        return len(self.user)

    def take(self, mask: np.ndarray) -> "Pairs":
        def sub(a):
            return None if a is None else a[mask]

        return Pairs(self.user[mask], self.item[mask], self.count[mask], self.order[mask],
                     sub(self.timestamp), sub(self.rating), sub(self.label))


def aggregate(raw: RawInteractions, user_index: dict, item_index: dict) -> Pairs:
    """Map ids to indices and merge repeated rows into pairs (vectorised with pandas)."""
    frame = pd.DataFrame({
        "user": pd.Series(raw.users).map(user_index).to_numpy(dtype=np.int64),
        "item": pd.Series(raw.items).map(item_index).to_numpy(dtype=np.int64),
        "order": np.arange(len(raw), dtype=np.int64),
    })
    agg: dict[str, tuple[str, str]] = {"count": ("order", "size"), "order": ("order", "min")}
    if raw.timestamp is not None:
        frame["timestamp"] = raw.timestamp
        agg["timestamp"] = ("timestamp", "min")
    if raw.rating is not None:
        frame["rating"] = raw.rating
        # the most recent rating wins: sort by time (file order breaks ties), keep the last
        agg["rating"] = ("rating", "last")
    if raw.label is not None:
        frame["label"] = raw.label
        agg["label"] = ("label", "min")
        agg["label_max"] = ("label", "max")
    if raw.timestamp is not None:
        frame = frame.sort_values(["timestamp", "order"], kind="stable")
    pairs = frame.groupby(["user", "item"], sort=True).agg(**agg).reset_index()
    if raw.label is not None:
        clash = np.flatnonzero(pairs["label"].to_numpy() != pairs["label_max"].to_numpy())
        if len(clash):
            row = pairs.iloc[int(clash[0])]
            raise DataError(
                f"{raw.path}: row {int(row['order']) + 1}: the pair (user {raw.users[row['order']]!r}, item "
                f"{raw.items[row['order']]!r}) repeats with different labels (splits {int(row['label'])} and "
                f"{int(row['label_max'])}); one interaction cannot be in two splits"
            )
    return Pairs(
        user=pairs["user"].to_numpy(np.int64),
        item=pairs["item"].to_numpy(np.int64),
        count=pairs["count"].to_numpy(np.int64),
        order=pairs["order"].to_numpy(np.int64),
        timestamp=pairs["timestamp"].to_numpy(np.int64) if raw.timestamp is not None else None,
        rating=pairs["rating"].to_numpy(np.float64) if raw.rating is not None else None,
        label=pairs["label"].to_numpy(np.int8) if raw.label is not None else None,
    )


def drop_unknown_items(raw: RawInteractions, known: np.ndarray, policy: str) -> tuple[RawInteractions, int]:
    """Interactions naming items absent from the catalog: an error naming them, or dropped."""
    unknown = ~pd.Series(raw.items).isin(pd.Index(known)).to_numpy()
    n = int(unknown.sum())
    if n == 0:
        return raw, 0
    if policy == "error":
        rows = np.flatnonzero(unknown)
        examples = ", ".join(f"{raw.items[i]!r} (row {i + 1})" for i in rows[:5])
        raise DataError(
            f"{raw.path}: {n} interaction rows name items not in the catalog, e.g. {examples}; "
            "fix the data or set data.interactions.unknown_items=drop"
        )
    keep = ~unknown
    return _take_raw(raw, keep), n


def _take_raw(raw: RawInteractions, keep: np.ndarray) -> RawInteractions:
    def sub(a):
        return None if a is None else a[keep]

    return RawInteractions(raw.path, raw.users[keep], raw.items[keep], sub(raw.timestamp), sub(raw.rating), sub(raw.label))


def filter_rating(raw: RawInteractions, min_rating: float | None) -> tuple[RawInteractions, int]:
    if min_rating is None:
        return raw, 0
    if raw.rating is None:
        raise DataError("data.filter.min_rating is set but data.interactions.rating names no column")
    keep = raw.rating >= min_rating
    return _take_raw(raw, keep), int((~keep).sum())


def k_core(pairs: Pairs, n_users: int, n_items: int, cfg: FilterConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Iterate to the k-core: every kept user and item has at least the minimum number of pairs.

    Returns (pair mask, user mask, item mask). Items with no pairs at all count as 0, so a
    minimum above 0 also removes catalog items nobody interacted with.
    """
    keep = np.ones(len(pairs), dtype=bool)
    users_ok = np.ones(n_users, dtype=bool)
    items_ok = np.ones(n_items, dtype=bool)
    while True:
        u_deg = np.bincount(pairs.user[keep], minlength=n_users)
        i_deg = np.bincount(pairs.item[keep], minlength=n_items)
        users_ok = u_deg >= max(cfg.min_user_interactions, 1)
        items_ok = i_deg >= cfg.min_item_interactions
        new_keep = keep & users_ok[pairs.user] & items_ok[pairs.item]
        if new_keep.sum() == keep.sum():
            return keep, users_ok, items_ok
        keep = new_keep
