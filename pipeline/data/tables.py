"""Reading user tables (CSV / TSV / MMRec .inter / Parquet / JSONL / HF dataset directories).

CSV/TSV columns are read as strings so that ids such as H&M's ``0108775015`` keep their leading
zeros; other formats keep their types and callers take id and text columns through
:func:`as_strings`. Numeric columns are converted explicitly with :func:`to_numbers`, which names
the first bad row.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError

_SUFFIX_FORMAT = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".inter": "tsv",
    ".txt": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".json": "jsonl",
}


def detect_format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    if path.is_dir():
        return "hf"
    try:
        return _SUFFIX_FORMAT[path.suffix.lower()]
    except KeyError:
        raise DataError(
            f"{path}: cannot tell the table format from the suffix {path.suffix!r}; "
            "set format to csv, tsv, parquet, jsonl or hf"
        ) from None


def read_table(path: Path, fmt: str, encoding: str, key: str) -> pd.DataFrame:
    """Read ``path`` as a table of strings. ``key`` is the config key that named it (for errors)."""
    if not path.exists():
        raise DataError(f"{key}: file not found: {path}")
    fmt = detect_format(path, fmt)
    try:
        if fmt in ("csv", "tsv"):
            df = pd.read_csv(
                path,
                sep="," if fmt == "csv" else "\t",
                dtype=str,
                keep_default_na=False,
                na_values=[""],
                encoding=encoding,
            )
        elif fmt == "parquet":
            df = pd.read_parquet(path)
        elif fmt == "jsonl":
            df = pd.read_json(path, lines=True, dtype=False, encoding=encoding)
        else:
            import datasets

            df = datasets.load_from_disk(str(path)).to_pandas()
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file is empty ({key})") from None
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}: not valid {encoding} text at {_where_undecodable(path, fmt, encoding, e)}; "
            f"set {key.rsplit('.', 1)[0]}.encoding to the file's encoding"
        ) from None
    except (pd.errors.ParserError, ValueError, OSError) as e:
        raise DataError(f"{path}: cannot read as {fmt}: {e}") from None
    except Exception as e:  # pyarrow / datasets raise their own types for corrupt files
        raise DataError(f"{path}: cannot read as {fmt}: {type(e).__name__}: {e}") from None
    if len(df.columns) == 0 or len(df) == 0:
        raise DataError(f"{path}: no rows ({key})")
    df.columns = [str(c).strip() for c in df.columns]
    return df


def _where_undecodable(path: Path, fmt: str, encoding: str, err: UnicodeDecodeError) -> str:
    """The file offset, row and column of the first byte that is not ``encoding`` text.

    The parser's own error counts bytes from the start of one field, so the file is decoded
    again here (only on this error path) to place the byte in the file and in the table.
    """
    data = path.read_bytes()
    try:
        data.decode(encoding)
    except UnicodeDecodeError as e:
        err = e
    else:  # the parser decodes differently (it should not); keep what it said
        return f"byte {err.start} of a field ({err.reason})"
    bad = " ".join(f"0x{b:02x}" for b in data[err.start:err.end])
    where = f"byte {err.start} ({bad}, {err.reason}"
    if fmt == "jsonl":
        line = data.count(b"\n", 0, err.start) + 1
        return f"{where}; line {line})"
    if fmt not in ("csv", "tsv"):
        return where + ")"
    # A placeholder stands for the bad byte, so the record holding it is always the last one
    # parsed, even when the byte opens a record; blank lines are skipped as pandas skips them.
    text = data[: err.start].decode(encoding) + "?"
    records = [r for r in csv.reader(io.StringIO(text, newline=""), delimiter="," if fmt == "csv" else "\t") if r]
    header, column = records[0], len(records[-1]) - 1
    if len(records) == 1:
        return f"{where}; the header, field {column + 1})"
    name = repr(header[column]) if column < len(header) else f"{column + 1} (past the header's {len(header)})"
    return f"{where}; row {len(records) - 1}, column {name})"


def as_strings(series: pd.Series) -> np.ndarray:
    """A column as an object array of ``str`` (``None`` where missing), whatever its dtype."""
    if pd.api.types.is_float_dtype(series) and bool((series.dropna() % 1 == 0).all()):
        series = series.astype("Int64")  # 12.0 from a float column means the id "12"
    values = series.astype(object).where(series.notna(), None)
    return np.array([None if v is None else str(v) for v in values], dtype=object)


def require_columns(df: pd.DataFrame, columns: dict[str, str], path: Path) -> None:
    """``columns`` maps config key -> column name; fail naming the first one missing."""
    for key, col in columns.items():
        if col not in df.columns:
            present = ", ".join(map(repr, df.columns[:20]))
            raise DataError(f"{path}: missing column {col!r} (config key {key}); columns present: {present}")


def require_values(df: pd.DataFrame, col: str, path: Path) -> np.ndarray:
    """Column as a string array with surrounding whitespace stripped; no empty values allowed."""
    values = as_strings(df[col])
    bad = [i for i, v in enumerate(values) if v is None or not str(v).strip()]
    if bad:
        raise DataError(f"{path}: row {bad[0] + 1}: empty value in column {col!r} ({len(bad)} rows in all)")
    return np.array([str(v).strip() for v in values], dtype=object)


def to_numbers(df: pd.DataFrame, col: str, path: Path, what: str) -> np.ndarray:
    """Column as float64; a non-numeric or empty cell fails naming its row."""
    raw = df[col]
    num = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = np.flatnonzero(np.isnan(num))
    if len(bad):
        i = int(bad[0])
        raise DataError(f"{path}: row {i + 1}: {what} column {col!r} has {raw.iloc[i]!r}, not a number")
    return num
