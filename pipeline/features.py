"""Named feature sets for training: the `features` config section resolved against the store.

``modalrec extract`` leaves a small link per (data set, encoder, field) that names the feature
set it filled and the encoder config that filled it; training follows the link, so it needs no
model weights to find its features, and refuses features made by an encoder config that has
since changed. MMRec ``*_feat.npy`` sources are imported into the store on first use.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .config import Config
from .data import PreparedData
from .errors import ConfigError, DataError


def content_keys(values: list[str | None], modality: str) -> list[str | None]:
    """The store keys of catalog values: hashes of the text, or of the media file's bytes."""
    from .store import content_key_file, content_key_text

    if modality == "text":
        return [None if v is None else content_key_text(v) for v in values]
    return [None if v is None else content_key_file(v) for v in values]


def link_path(cfg: Config, encoder: str, field: str) -> Path:
    return cfg.features_dir / "links" / cfg.data.name / f"{encoder}.{field}.json"


def write_link(cfg: Config, encoder: str, field: str, fingerprint: str, stamp: str | None = None) -> None:
    """``stamp``: a cheap stand-in for the weights (``extract.weights_stamp``); with the encoder
    config it lets a re-run prove everything is stored without loading the model."""
    path = link_path(cfg, encoder, field)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"fingerprint": fingerprint, "field": field, "encoder": cfg.encoders[encoder].model_dump(mode="json"),
            "stamp": stamp}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(body, indent=1), encoding="utf-8")
    tmp.replace(path)


def _modality(data: PreparedData, field: str) -> str:
    for modality, names in data.fields.items():
        if field in names:
            return modality
    raise ConfigError(f"{field!r} is not a field of the catalog {data.fields}")


def _resolve(cfg: Config, data: PreparedData, name: str, store):
    """(feature set, keys aligned to the catalog) for one entry of `features`."""
    from .store import mmrec_keys

    src = cfg.features[name]
    item_ids = data.items["item_id"]
    if src.run is not None:  # fine-tuned features written by an end-to-end run
        from .live import finetuned_set

        return finetuned_set(cfg, data, name, store)
    if src.mmrec is not None:
        path = cfg.data.root / src.mmrec
        # row i of the file is catalog item i (MMRec's itemID i); importing again stores nothing
        (fs,) = store.import_mmrec(path, item_ids=item_ids, field=name).values()
        return fs, mmrec_keys(fs, item_ids)
    field = src.field or cfg.encoders[src.encoder].fields[0]
    link = link_path(cfg, src.encoder, field)
    if not link.is_file():
        raise DataError(f"features.{name}: encoder {src.encoder!r} has not been run on {cfg.data.name}/{field}; "
                        f"run `modalrec extract CONFIG` first")
    record = json.loads(link.read_text(encoding="utf-8"))
    if record["encoder"] != cfg.encoders[src.encoder].model_dump(mode="json"):
        raise DataError(f"features.{name}: encoders.{src.encoder} changed since its features were extracted; "
                        f"run `modalrec extract CONFIG` again")
    matches = store.find(fingerprint=record["fingerprint"], field=field)
    if not matches:
        raise DataError(f"features.{name}: feature set {record['fingerprint'][:12]}/{field} is gone from "
                        f"{cfg.features_dir}; run `modalrec extract CONFIG` again")
    from .extract import ContentKeys  # file keys remembered by stat; an unreadable file is a mask

    return matches[0], ContentKeys.for_config(cfg).keys(list(data.items[field]), _modality(data, field))


def load_features(cfg: Config, data: PreparedData, names: list[str] | None = None) -> dict:
    """``{name: LoadedFeature}`` aligned to the catalog, for the named (default: all) features."""
    from .models import LoadedFeature
    from .store import FeatureStore

    store = FeatureStore(cfg.features_dir)
    out = {}
    for name in names if names is not None else list(cfg.features):
        fs, keys = _resolve(cfg, data, name, store)
        values, present = fs.read(keys)
        failed = fs.failed()
        not_done = [i for i, k in enumerate(keys) if k is not None and not present[i] and k not in failed]
        if not_done:
            example = data.items[not_done[0]]["item_id"]
            raise DataError(f"features.{name}: {len(not_done)} items were never extracted (e.g. item {example!r}); "
                            "run `modalrec extract CONFIG` to finish them")
        if not present.any():
            raise DataError(f"features.{name}: no item of {cfg.data.name} has a vector in {fs.name}")
        tensor = fs.as_torch(values).float().clone()  # training holds its own copy, not the store's map
        out[name] = LoadedFeature(tensor, torch.from_numpy(np.asarray(present, dtype=bool)), fs.fingerprint)
    return out
