"""Live encoders for end-to-end training: built from the config, fed with preprocessed content.

``load_live`` creates each encoder of ``model.item_tower.live`` and preprocesses every catalog
item once (DataLoader workers; the encoder's ``on_error`` policy decides what a bad file does).
For cached top-k it also fills the feature store with the hidden states entering the first
trained block, keyed by the encoder's fingerprint and the cut, so later runs reuse them.
``export_finetuned`` writes the catalog as a finished run's best encoders see it back to the
store: "fine-tuned features" that frozen models read through ``features: {x: {run: RUN_DIR}}``,
recorded as store links (kind ``finetuned``, named by the run's best weights) like extracted ones.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import Config
from .content import build_encoder, catalog_keys, encoder_modality, field_values, preprocess_items
from .data import PreparedData
from .errors import DataError


def load_live(cfg: Config, data: PreparedData, accelerator=None) -> dict:
    """``{encoder name: LiveSource}`` for ``model.item_tower.live`` (empty when there is none)."""
    from .models.live import LiveSource

    tower = cfg.model.item_tower if cfg.model is not None else None
    if tower is None or not tower.live:
        return {}
    if cfg.extract.offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    item_ids = field_values(data, "item_id")
    out = {}
    for name, live in tower.live.items():
        ec = cfg.encoders[name]
        field = live.field or ec.fields[0]
        modality = encoder_modality(data, name, ec)
        encoder = build_encoder(cfg, name, modality)
        values = field_values(data, field)
        inputs = preprocess_items(encoder, values, name, field, item_ids, ec.on_error, cfg.extract.num_workers,
                                  progress=cfg.train.progress)
        keys = catalog_keys(cfg, values, modality)
        src = LiveSource(encoder, field, live.policy, inputs, keys, live.gradient_checkpointing, live.cached)
        if live.cached:
            src.hidden = cached_hidden(cfg, name, src, accelerator)
            # only token ids and masks are still read; pixels and waveforms need not stay in memory
            src.inputs = [None if x is None else {key: v for key, v in x.items() if not v.is_floating_point()}
                          for x in src.inputs]
        out[name] = src
    return out


def cached_hidden(cfg: Config, name: str, src, accelerator=None) -> torch.Tensor:
    """Per item, the hidden state entering the first trained block of a top-k encoder, from the
    store (computed for the items it lacks). Items without content get zeros (never read)."""
    from encoders.cut import hidden_below

    from .store import FeatureStore

    k = src.policy.k
    enc = src.encoder
    enc.set_trainable(src.policy)  # the cut must see the same blocks the policy trains
    fingerprint = hashlib.sha256(f"{enc.fingerprint}:hidden-below-top-{k}".encode()).hexdigest()
    from accelerate import PartialState

    state = accelerator if accelerator is not None else PartialState()
    device = state.device
    enc.to(device).eval()
    rows = [i for i, x in enumerate(src.inputs) if x is not None]

    def compute(part: list[int], check: bool = False) -> torch.Tensor:
        batch = enc.collate([src.inputs[i] for i in part])
        batch = {key: v.to(device) if torch.is_tensor(v) else v for key, v in batch.items()}
        with torch.inference_mode():  # stored as float32, whatever the model's dtype
            return hidden_below(enc, batch, k, check=check).float().cpu()

    # the widest item (longest text) fixes the padded shape every item is stored in
    widest = max(rows, key=lambda i: sum(v.numel() for v in src.inputs[i].values() if torch.is_tensor(v)))
    shape = compute([widest], check=True).shape[1:]  # also proves nothing below the cut is random
    store = FeatureStore.from_config(cfg)
    fs = store.open_set(fingerprint, f"{src.field}.hidden", dim=int(np.prod(shape)),
                        spec=f"{cfg.encoders[name].spec} (hidden below top {k})",
                        identity={"encoder": enc.identity(), "hidden_below_top": k, "shape": list(shape)})
    keys = [src.keys[i] for i in rows]
    todo: dict[str, int] = {}
    for key, row, ok in zip(keys, rows, fs.present(keys)):
        if not ok:
            todo.setdefault(key, row)
    if todo and state.is_main_process:  # computed once, then read back by every later run with this encoder and cut
        todo_rows = list(todo.values())
        step = cfg.extract.batch_size
        for start in tqdm(range(0, len(todo_rows), step), desc=f"hidden states {name}:{src.field}",
                          disable=not cfg.train.progress, dynamic_ncols=True):
            part = todo_rows[start:start + step]
            fs.write([src.keys[i] for i in part], _pad_to(compute(part), shape).reshape(len(part), -1).numpy())
    state.wait_for_everyone()
    values, present = fs.read(keys)
    if not present.all():
        raise DataError(f"hidden states of encoders.{name} are missing from {fs.path} after computing them")
    enc.cpu()  # the trainer moves the tower where it trains
    full = torch.zeros((len(src.inputs), *shape))
    full[rows] = torch.from_numpy(np.asarray(values, dtype=np.float32)).reshape(len(rows), *shape)
    return full


def _pad_to(x: torch.Tensor, shape) -> torch.Tensor:
    """Zero-pad ``[b, ...]`` to ``[b, *shape]`` (shorter texts in a batch)."""
    pad = []
    for d in reversed(range(1, x.dim())):
        pad += [0, shape[d - 1] - x.shape[d]]
    return torch.nn.functional.pad(x, pad)


def export_finetuned(cfg: Config, data: PreparedData, model: torch.nn.Module, run_dir: Path) -> dict:
    """Write each live encoder's catalog vectors (from ``model``'s current weights: the trainer
    loads the best ones first) to the store, each recorded as a link named by the run's best
    weights (``finetuned_source``), which ``features: {x: {run: RUN_DIR}}`` resolves."""
    from .models.live import live_towers
    from .store import FeatureStore

    towers = live_towers(model)
    if not towers:
        return {}
    weights = _weights_sha256(run_dir)
    store = FeatureStore.from_config(cfg)
    record = {}
    for tower in towers:
        tower.eval()
        for name in tower.names:
            enc = tower.encoders[name]
            field = cfg.model.item_tower.live[name].field or cfg.encoders[name].fields[0]
            fingerprint = hashlib.sha256(f"{enc.fingerprint}:finetuned:{weights}".encode()).hexdigest()
            vectors = tower.encode_catalog(name).cpu().numpy()
            mask = getattr(tower, f"mask_{name}").cpu().numpy()
            keys, modality = _keys(cfg, data, name, field)
            with store.lease(fingerprint, field, purpose="export"):  # until linked: gc keeps it
                fs = store.open_set(fingerprint, field, dim=vectors.shape[1], spec=f"{cfg.encoders[name].spec} "
                                    f"fine-tuned in {run_dir.name}",
                                    identity={"encoder": enc.identity(), "finetuned_weights_sha256": weights})
                uniq: dict[str, int] = {}
                for i, key in enumerate(keys):
                    if key is not None and mask[i]:
                        uniq.setdefault(key, i)
                todo = [key for key, ok in zip(uniq, fs.present(list(uniq))) if not ok]
                if todo:
                    fs.write(todo, vectors[[uniq[key] for key in todo]])
                store.write_link(cfg.data.name, finetuned_source(weights, name), kind="finetuned",
                                 fingerprint=fingerprint, field=field, set_name=fs.name, encoder=name,
                                 modality=modality, spec=cfg.encoders[name].spec,
                                 run=str(Path(run_dir).resolve()))
            record[name] = {"fingerprint": fingerprint, "field": field, "spec": cfg.encoders[name].spec}
    return record


def finetuned_source(weights_sha256: str, encoder: str) -> str:
    """The link source of an encoder fine-tuned into these best weights."""
    return f"{weights_sha256[:32]}.{encoder}"


def _weights_sha256(run_dir: Path) -> str:
    from .train.run import Run

    return hashlib.sha256(Run(run_dir).best_path.read_bytes()).hexdigest()


def _keys(cfg: Config, data: PreparedData, name: str, field: str) -> tuple[list, str]:
    """(content keys of the catalog's ``field``, its modality)."""
    modality = encoder_modality(data, name, cfg.encoders[name])
    return catalog_keys(cfg, field_values(data, field), modality), modality


def finetuned_set(cfg: Config, data: PreparedData, feature: str, store):
    """(feature set, catalog keys) for ``features.<feature>: {run: RUN_DIR, encoder: NAME}``: the
    link the run left, found by its best weights."""
    src = cfg.features[feature]
    try:
        weights = _weights_sha256(src.run)
    except FileNotFoundError:
        weights = None
    link = None if weights is None else store.read_link(cfg.data.name, finetuned_source(weights, src.encoder),
                                                        kind="finetuned")
    if link is None:
        raise DataError(f"features.{feature}.run: {src.run} holds no fine-tuned features of encoder "
                        f"{src.encoder!r} for {cfg.data.name}; it must be a finished end-to-end run "
                        "(model.item_tower.live) of that encoder")
    fs = store.linked_set(link)
    if fs is None:
        raise DataError(f"features.{feature}: the fine-tuned features of {src.run} are gone from the store "
                        f"{cfg.features_dir} (removed by `store gc`?); train that run again")
    if not any(link["field"] in names for names in data.fields.values()):
        raise DataError(f"features.{feature}: run {src.run} fine-tuned field {link['field']!r}, which the catalog "
                        f"of {cfg.data.name} does not have ({data.fields})")
    return fs, catalog_keys(cfg, field_values(data, link["field"]), link["modality"])
