"""The item catalog: one row per item, ``item_id`` plus named text / image / audio fields.

Row ``i`` of the catalog is item index ``i`` everywhere else (interactions, feature store,
models). Text fields hold the text; media fields hold absolute file paths. A value that is
missing in the source stays ``None`` (a mask downstream, never an empty string or a zero row).
"""

from __future__ import annotations

import os
import string
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..data_config import ItemsConfig
from ..errors import DataError
from .tables import as_strings, read_table, require_columns, require_values

MODALITIES = ("text", "image", "audio")


@dataclass
class CatalogTable:
    """The catalog before it is written: a DataFrame plus which field has which modality."""

    frame: pd.DataFrame  # columns: item_id, then one per field
    fields: dict[str, list[str]] = field(default_factory=lambda: {m: [] for m in MODALITIES})
    source_rows: int = 0
    duplicates_dropped: int = 0  # later rows of a repeated id, with ``data.items.duplicates: first``

    @property
    def item_ids(self) -> np.ndarray:
        return self.frame["item_id"].to_numpy(dtype=object)


def _template_columns(template: str, key: str) -> list[str]:
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as e:
        raise DataError(f"{key}: bad template {template!r}: {e}") from None
    if any(n == "" or n.isdigit() or "." in n or "[" in n for n in names):
        raise DataError(f"{key}: template {template!r} must name whole columns, e.g. {{title}}")
    return names


def _field_values(df: pd.DataFrame, spec: str, key: str, path: Path, join_missing: bool) -> list[str | None]:
    """Values of one field: a plain column, or a template filled per row.

    Text templates (``join_missing``) skip missing parts; a media template with a missing part
    yields ``None`` because a half-filled path names no file.
    """
    if "{" not in spec:
        require_columns(df, {key: spec}, path)
        return [None if v is None or not v.strip() else v for v in as_strings(df[spec])]
    names = _template_columns(spec, key)
    require_columns(df, {key: n for n in names}, path)
    cols = {n: as_strings(df[n]) for n in set(names)}
    out: list[str | None] = []
    for i in range(len(df)):
        row = {n: cols[n][i] for n in cols}
        if any(v is None for v in row.values()):
            if not join_missing:
                out.append(None)
                continue
            row = {n: "" if v is None else v for n, v in row.items()}
        try:
            out.append(spec.format_map(row))
        except (ValueError, KeyError, IndexError) as e:
            raise DataError(f"{path}: row {df.index[i] + 1}: cannot fill {key} template {spec!r}: {e}") from None
    return out


def _clean_text(v: str | None) -> str | None:
    if v is None:
        return None
    v = " ".join(v.split())
    # a template such as "{a}. {b}" with both parts missing leaves only punctuation
    return v if any(ch.isalnum() for ch in v) else None


def load_catalog(cfg: ItemsConfig, data_root: Path) -> CatalogTable:
    """Read the item table named by ``data.items`` and build its fields."""
    path = data_root / cfg.path
    df = read_table(path, cfg.format, cfg.encoding, "data.items.path")
    require_columns(df, {"data.items.id": cfg.id}, path)
    ids = require_values(df, cfg.id, path)
    source_rows = len(df)
    repeat = pd.Series(ids).duplicated(keep="first").to_numpy()
    if repeat.any():
        if cfg.duplicates == "error":
            i = int(np.flatnonzero(repeat)[0])
            first = int(np.flatnonzero(ids == ids[i])[0])
            raise DataError(
                f"{path}: duplicate item id {ids[i]!r} in column {cfg.id!r} at rows {first + 1} and {i + 1} "
                f"({int(repeat.sum())} repeated rows in all); remove them or set data.items.duplicates=first "
                "to keep each id's first row"
            )
        # the frame keeps its source row labels, so later errors still name the file's rows
        df, ids = df[~repeat], ids[~repeat]

    media_root = str((data_root / cfg.media_root if cfg.media_root else path.parent).resolve())
    out = {"item_id": ids}
    fields: dict[str, list[str]] = {m: [] for m in MODALITIES}
    for modality in MODALITIES:
        for name, spec in getattr(cfg, modality).items():
            key = f"data.items.{modality}.{name}"
            values = _field_values(df, spec, key, path, join_missing=modality == "text")
            if modality == "text":
                values = [_clean_text(v) for v in values]
            else:
                # normpath, not resolve(): one stat per item is the cost of a real data set's size
                values = [None if v is None else os.path.normpath(os.path.join(media_root, v.strip())) for v in values]
            out[name] = values
            fields[modality].append(name)
    # object columns keep None as None (pandas would turn it into NaN in a string column)
    frame = pd.DataFrame({k: pd.Series(v, dtype=object) for k, v in out.items()})
    return CatalogTable(frame, fields, source_rows=source_rows, duplicates_dropped=int(repeat.sum()))


def catalog_from_ids(item_ids: np.ndarray) -> CatalogTable:
    """A content-free catalog (MMRec-style data sets whose features come precomputed)."""
    return CatalogTable(pd.DataFrame({"item_id": pd.Series(item_ids, dtype=object)}), source_rows=0)


def missing_media(table: CatalogTable) -> dict[str, int]:
    """Per field, how many items have no value or point at a file that does not exist."""
    counts: dict[str, int] = {}
    for modality in MODALITIES:
        for name in table.fields[modality]:
            values = table.frame[name]
            if modality == "text":
                counts[name] = int(values.isna().sum())
            else:
                counts[name] = int(sum(1 for v in values if v is None or not os.path.isfile(v)))
    return counts
