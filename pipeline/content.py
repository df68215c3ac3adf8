"""The content layer: catalog values as the encoders and the feature store see them.

One owner for what extraction, training with live encoders, frozen features and reports all
need to agree on: a field's values and modality, the content key of each value (the store's row
key), the preprocessed sample an encoder reads (made in DataLoader workers, where bad input
comes back as a record instead of killing the worker), the error that names a bad item, and the
encoder a config's ``encoders.<name>`` stands for, with a stamp of its weights taken without
building it (for warm re-runs).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .config import Config, EncoderConfig
from .data import PreparedData
from .errors import ConfigError, DataError, ModalrecError

_STAMP_FORMAT = 2  # 2: weights files enter by content (sha256 per file version)

# ---------------------------------------------------------------- values, modality, keys


def field_values(prepared: PreparedData, field_name: str) -> list:
    """The catalog's values of one field, in catalog order (None: the item has none)."""
    items = prepared.items
    if getattr(items, "_indices", None) is not None:  # a selection of rows: go through datasets
        return list(items[field_name])
    return items.data.column(field_name).to_pylist()  # straight from the Arrow column: fast


def field_modality(prepared: PreparedData, field_name: str) -> str:
    """The modality ("text", "image", "audio") of a catalog field."""
    for modality, names in prepared.fields.items():
        if field_name in names:
            return modality
    raise ConfigError(f"{field_name!r} is not a field of the catalog {prepared.fields}")


def encoder_modality(prepared: PreparedData, name: str, ec: EncoderConfig) -> str:
    """The one modality of the fields ``encoders.<name>`` reads."""
    modalities = {m for f in ec.fields for m, names in prepared.fields.items() if f in names}
    unknown = [f for f in ec.fields if not any(f in names for names in prepared.fields.values())]
    if unknown:
        have = {m: names for m, names in prepared.fields.items() if names}
        raise ConfigError(f"encoders.{name}.fields: {unknown[0]!r} is not a catalog field (fields: {have})")
    if len(modalities) != 1:
        raise ConfigError(f"encoders.{name}.fields mixes modalities {sorted(modalities)}; one encoder, one modality")
    return modalities.pop()


def content_keys(values: list[str | None], modality: str) -> list[str | None]:
    """The store keys of catalog values: hashes of the text, or of the media file's bytes."""
    from .store import content_key_file, content_key_text

    if modality == "text":
        return [None if v is None else content_key_text(v) for v in values]
    return [None if v is None else content_key_file(v) for v in values]


def catalog_keys(cfg: Config, values: list, modality: str) -> list[str | None]:
    """Content keys of this data set's values, media files remembered by stat in the store's
    content-key cache (an unreadable file is None: a mask)."""
    from .store import FeatureStore

    return FeatureStore.from_config(cfg).content_keys(cfg.data.name).keys(values, modality)


# ---------------------------------------------------------------- samples and bad input


class ItemSamples(Dataset):
    """Raw catalog values -> encoder inputs, in DataLoader workers: each item is (row, sample,
    error), so bad input reaches the main process to be handled by the field's ``on_error``."""

    def __init__(self, encoder, values: list[str], rows: list[int]):
        self.preprocess = encoder.preprocess
        self.values = values
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        from encoders import EncoderInputError

        try:
            return self.rows[i], self.preprocess(self.values[i]), None
        except EncoderInputError as e:
            return self.rows[i], None, str(e)


class SampleBatches:
    """Collate for :class:`ItemSamples`: (rows, the encoder's batch of the good ones or None,
    [(row, error)] of the bad ones)."""

    def __init__(self, encoder):
        self.collate = encoder.collate

    def __call__(self, samples):
        ok = [(row, sample) for row, sample, err in samples if err is None]
        failed = [(row, err) for row, _, err in samples if err is not None]
        batch = self.collate([s for _, s in ok]) if ok else None
        return [row for row, _ in ok], batch, failed


def _as_list(samples):
    return samples


def preprocess_items(encoder, values: list, name: str, field: str, item_ids: list, on_error: str,
                     num_workers: int, progress: bool = True) -> list:
    """Every item's preprocessed sample (None: no value, or unreadable with ``on_error: skip``)."""
    rows = [i for i, v in enumerate(values) if v is not None]
    out: list = [None] * len(values)
    workers = num_workers if len(rows) > 64 else 0
    if workers:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    loader = DataLoader(ItemSamples(encoder, [values[i] for i in rows], rows), batch_size=64, num_workers=workers,
                        collate_fn=_as_list)
    done = 0
    for batch in tqdm(loader, desc=f"preprocess {name}:{field}", unit="batch", disable=not progress,
                      dynamic_ncols=True):
        for row, sample, err in batch:
            if err is not None and on_error == "error":
                raise input_error(name, field, row, err, item_ids, values, encoder.modality, done)
            out[row] = sample
            done += 1
    return out


def input_error(name: str, field_name: str, row: int, reason: str, item_ids: list, values: list,
                modality: str, computed: int) -> DataError:
    """The error for a bad catalog value: the encoder, item, row, field and (media) file, and
    how to mask it instead."""
    where = "" if modality == "text" or str(values[row]) in reason else f" (file {values[row]})"
    return DataError(
        f"encoders.{name}: item {item_ids[row]!r} (catalog row {row}), field {field_name!r}{where}: {reason}. "
        f"Fix the input or set encoders.{name}.on_error=skip to mask it; "
        f"{computed} items computed before it are kept in the store")


# ---------------------------------------------------------------- the encoders a config names


def build_encoder(cfg: Config, name: str, modality: str):
    """The encoder ``encoders.<name>`` of ``cfg`` stands for, for content of ``modality``."""
    import encoders

    ec = cfg.encoders[name]
    return encoders.create(ec.spec, modality=modality, offline=cfg.extract.offline or None,
                           random_init=ec.random_init, **ec.options)


def weights_hashes(cfg: Config):
    """The store's record of weights-file hashes by file version (``encoders.HashRecord``)."""
    from encoders.file_hashes import HashRecord

    return HashRecord(cfg.features_dir / "weights-sha256.json")


def weights_stamp(ec: EncoderConfig, hashes=None) -> str | None:
    """A cheap stand-in for the encoder's fingerprint, taken without loading any model.

    The encoder's backend says where the spec's weights live (``Backend.weights``): local files
    and folders enter by content (sha256 per file, hashed once per file version and kept in
    ``hashes``, an ``encoders.HashRecord``) and by size and mtime; architectures a library builds
    from its own code enter by name, with the backend's library versions. None when the backend
    cannot locate the weights without loading them (hub weights, backends that do not say), and
    extraction builds the encoder to learn its fingerprint.
    """
    from encoders import get_backend, parse_spec
    from encoders.base import IDENTITY_FORMAT
    from encoders.file_hashes import HashRecord

    from .store import library_versions

    hashes = hashes if hashes is not None else HashRecord(None)
    try:
        prefix, name = parse_spec(ec.spec)
        backend = get_backend(prefix)
        where = backend.weights(name, random_init=ec.random_init)
    except ModalrecError:
        return None
    if where is None or not all(p.exists() for p in where.paths):
        return None  # building the encoder gives the proper error for a missing path
    try:
        files = [hashes.describe(p) for p in where.paths]
    except OSError:
        return None
    body: dict[str, Any] = {
        "format": _STAMP_FORMAT, "identity_format": IDENTITY_FORMAT, "backend": backend.prefix,
        "versions": library_versions(ec.spec), "spec": ec.spec, "random_init": ec.random_init,
        "files": files, "architectures": list(where.builtin)}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()
