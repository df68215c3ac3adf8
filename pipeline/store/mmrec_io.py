"""MMRec interop: ``*_feat.npy`` files (row i = item i) in and out of the store.

Imported rows are keyed by (file content, item id) rather than by item content, which MMRec
files do not carry; the set's fingerprint is ``mmrec:<sha256 of the file>``, so importing the
same file again stores nothing new and a changed file is a new set.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import DataError
from .dtypes import to_float32
from .feature_set import FeatureSet
from ..atomic import atomic_file
from .files import READ_ONLY
from .keys import content_key_file, mmrec_key

_CHUNK_ROWS = 1 << 16


def import_mmrec(store, source: str | Path, item_ids: list[str] | None = None, *, field: str | None = None,
                 dtype: str = "float32", link: tuple[str, str] | None = None) -> dict[str, FeatureSet]:
    """Import one ``*_feat.npy`` file or every one in a directory: ``{field: FeatureSet}``.

    ``item_ids[i]`` is the catalog id of row i (default: ``str(i)``, MMRec's itemID i).
    ``field`` defaults to the file name without ``_feat.npy`` (image, text, audio). Rows with
    NaN/inf are recorded as failed, not imported. ``link=(data set, source)``: record each
    imported set as that source's link (``<source>.<field>`` when a directory holds several).
    """
    from ..data.mmrec import find_feature_files  # the data package is heavy (datasets): load on use

    source = Path(source)
    if source.is_dir():
        files = find_feature_files(source)
        if not files:
            raise DataError(f"{source}: no *_feat.npy files to import")
        if field is not None and len(files) > 1:
            raise DataError(f"{source}: field={field!r} given for {len(files)} files; import them one by one")
    elif source.is_file():
        stem = source.name[: -len("_feat.npy")] if source.name.endswith("_feat.npy") else source.stem
        files = {stem: source}
    else:
        raise DataError(f"MMRec feature file or directory not found: {source}")
    out = {}
    for f, path in files.items():
        name = field or f
        where = None if link is None else (link[0], link[1] if len(files) == 1 else f"{link[1]}.{name}")
        out[name] = _import_file(store, path, item_ids, name, dtype, where)
    return out


def _import_file(store, path: Path, item_ids: list[str] | None, field: str, dtype: str,
                 link: tuple[str, str] | None) -> FeatureSet:
    from ..data.mmrec import read_feature_file

    arr = read_feature_file(path)
    n, dim = arr.shape
    ids = [str(i) for i in range(n)] if item_ids is None else [str(i) for i in item_ids]
    if len(ids) != n:
        raise DataError(f"{path}: has {n} rows but {len(ids)} item ids were given (row i = item i)")
    if len(set(ids)) != n:
        raise DataError(f"{path}: the item ids given for its rows are not unique")
    sha = content_key_file(path)
    with store.lease(f"mmrec:{sha}", field, dtype, "import"):
        fs = store.open_set(f"mmrec:{sha}", field, dim=dim, dtype=dtype, spec=f"mmrec:{path.name}",
                            identity={"source": "mmrec", "file": path.name, "path": str(path.resolve()), "sha256": sha,
                                      "rows": n, "dim": dim, "file_dtype": str(arr.dtype)})
        keys = [mmrec_key(sha, i) for i in ids]
        todo = np.asarray(fs.missing(keys), dtype=np.int64)
        for s in range(0, len(todo), _CHUNK_ROWS):
            rows = todo[s:s + _CHUNK_ROWS]
            block = np.asarray(arr[rows], dtype=np.float32 if arr.dtype != np.float64 else np.float64)
            ok = np.isfinite(block).all(axis=1)
            if (~ok).any():
                fs.write_failed([keys[i] for i in rows[~ok]],
                                [f"{path.name} row {i} (item {ids[i]}): NaN or inf" for i in rows[~ok]])
            if ok.any():
                fs.write([keys[i] for i in rows[ok]], block[ok])
        if link is not None:
            try:
                store.write_link(link[0], link[1], kind="mmrec", fingerprint=fs.fingerprint, field=fs.field,
                                 set_name=fs.name, file=str(path.resolve()))
            except OSError as e:
                if e.errno not in READ_ONLY:
                    raise  # a store we may only read: nothing was imported that gc could remove
    return fs


def mmrec_keys(fs: FeatureSet, item_ids: list[str]) -> list[str]:
    """Keys of these items in a set imported from an MMRec file."""
    identity = fs.identity
    if identity.get("source") != "mmrec" or "sha256" not in identity:
        raise DataError(f"feature set {fs.name} was not imported from MMRec; pass the items' content keys")
    return [mmrec_key(identity["sha256"], str(i)) for i in item_ids]


def export_mmrec(fs: FeatureSet, item_ids: list[str], out_dir: str | Path, name: str,
                 keys: list[str] | None = None) -> Path:
    """Write ``<out_dir>/<name>_feat.npy``, float32, row i = ``item_ids[i]``.

    ``keys[i]``: the content key of ``item_ids[i]`` (derived for sets imported from MMRec).
    Refuses, naming the items, when any has no stored row: MMRec would read a zero row as a
    real feature.
    """
    item_ids = [str(i) for i in item_ids]
    if not item_ids:
        raise DataError(f"export of feature set {fs.name}: no item ids given")
    if not name or "/" in name or os.sep in name or name.startswith("."):
        raise DataError(f"export name must be a plain file name stem, got {name!r}")
    if keys is None:
        keys = mmrec_keys(fs, item_ids)
    if len(keys) != len(item_ids):
        raise DataError(f"export of feature set {fs.name}: {len(keys)} keys for {len(item_ids)} items")
    vectors, present = fs.read(keys)
    if not present.all():
        missing = np.nonzero(~present)[0]
        failed = fs.failed()
        shown = ", ".join(item_ids[i] + (f" (failed: {failed[keys[i]]})" if keys[i] in failed else "")
                          for i in missing[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise DataError(f"cannot export feature set {fs.name} ({fs.field}) to MMRec: {len(missing)} of {len(item_ids)} "
                        f"items have no features: {shown}{more}; extract them first (MMRec would read zeros)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / f"{name}_feat.npy"
    with atomic_file(final) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=vectors.shape)
        for s in range(0, len(vectors), _CHUNK_ROWS):
            out[s:s + _CHUNK_ROWS] = to_float32(vectors[s:s + _CHUNK_ROWS], fs.dtype)
        out.flush()
        del out
    return final
