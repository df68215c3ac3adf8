"""Named feature sets for training: the `features` config section resolved against the store.

Every way features get into the store leaves a link there (``FeatureStore.write_link``):
``modalrec extract`` one per (data set, encoder, field), naming the feature set it filled and
the encoder config that filled it; an MMRec ``*_feat.npy`` source, imported on first use, one
per feature; an end-to-end run one per fine-tuned encoder. Training follows the link, so it
needs no model weights to find its features, and refuses features made by an encoder config
that has since changed.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from .config import Config
from .content import catalog_keys, field_modality, field_values
from .data import PreparedData
from .errors import DataError


def link_path(cfg: Config, encoder: str, field: str) -> Path:
    """Where ``modalrec extract`` records the set it filled for (encoder, field) of this data set."""
    from .store import FeatureStore

    return FeatureStore.from_config(cfg).link_path(cfg.data.name, f"{encoder}.{field}")


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
        (fs,) = store.import_mmrec(path, item_ids=item_ids, field=name, link=(cfg.data.name, name)).values()
        return fs, mmrec_keys(fs, item_ids)
    field = src.field or cfg.encoders[src.encoder].fields[0]
    record = store.read_link(cfg.data.name, f"{src.encoder}.{field}")
    if record is None:
        raise DataError(f"features.{name}: encoder {src.encoder!r} has not been run on {cfg.data.name}/{field}; "
                        f"run `modalrec extract CONFIG` first")
    if record.get("encoder") != cfg.encoders[src.encoder].model_dump(mode="json"):
        raise DataError(f"features.{name}: encoders.{src.encoder} changed since its features were extracted; "
                        f"run `modalrec extract CONFIG` again")
    fs = store.linked_set(record)
    if fs is None:
        raise DataError(f"features.{name}: feature set {record['fingerprint'][:12]}/{field} is gone from "
                        f"{cfg.features_dir}; run `modalrec extract CONFIG` again")
    # file keys remembered by stat; an unreadable file is a mask
    return fs, catalog_keys(cfg, field_values(data, field), field_modality(data, field))


def load_features(cfg: Config, data: PreparedData, names: list[str] | None = None) -> dict:
    """``{name: LoadedFeature}`` aligned to the catalog, for the named (default: all) features."""
    from .models import LoadedFeature
    from .store import FeatureStore

    store = FeatureStore.from_config(cfg)
    out = {}
    for name in names if names is not None else list(cfg.features):
        fs, keys = _resolve(cfg, data, name, store)
        values, present = fs.read(keys)
        failed = fs.failed()
        not_done = [i for i, k in enumerate(keys) if k is not None and not present[i] and k not in failed]
        if not_done:
            raise _not_stored(cfg, data, name, fs, keys, not_done)
        if cfg.features[name].mmrec is not None:
            _warn_refused_rows(cfg, data, name, keys, present, failed)
        if not present.any():
            raise DataError(f"features.{name}: no item of {cfg.data.name} has a vector in {fs.name}")
        tensor = fs.as_torch(values).float().clone()  # training holds its own copy, not the store's map
        out[name] = LoadedFeature(tensor, torch.from_numpy(np.asarray(present, dtype=bool)), fs.fingerprint)
    return out


def _not_stored(cfg: Config, data: PreparedData, name: str, fs, keys: list, rows: list[int]) -> DataError:
    """Rows the store lacks: set aside as damaged (and told so), or never extracted."""
    damaged, unknown = fs.damaged_keys()
    lost = [i for i in rows if keys[i] in damaged]
    if lost:
        example = data.items[lost[0]]["item_id"]
        return DataError(f"features.{name}: {len(lost)} items had their vectors in damaged store files, set aside "
                         f"as *.damaged in {fs.path} (e.g. item {example!r}); run `modalrec extract CONFIG` to "
                         "compute them again")
    example = data.items[rows[0]]["item_id"]
    also = f" (or were in one of {unknown} damaged store files, set aside in {fs.path})" if unknown else ""
    return DataError(f"features.{name}: {len(rows)} items were never extracted{also} (e.g. item {example!r}); "
                     "run `modalrec extract CONFIG` to finish them")


def _warn_refused_rows(cfg: Config, data: PreparedData, name: str, keys: list, present, failed: dict) -> None:
    """MMRec rows refused at import (NaN/inf) are masks now: say how many, and from which file."""
    refused = [i for i, k in enumerate(keys) if not present[i] and k in failed]
    if refused:
        example = data.items[refused[0]]["item_id"]
        warnings.warn(f"features.{name}: {len(refused)} rows of {cfg.data.root / cfg.features[name].mmrec} hold "
                      f"NaN or inf and were not imported; those items have no {name} features (e.g. item "
                      f"{example!r}: {failed[keys[refused[0]]]})", UserWarning, stacklevel=3)
