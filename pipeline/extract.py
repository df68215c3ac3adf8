"""Feature extraction: every configured encoder over its catalog fields, into the feature store.

Only items whose (encoder fingerprint, content key) is not in the store yet are computed, so a
re-run on unchanged data computes nothing and a killed run resumes where its last atomic write
ended. Under ``accelerate launch`` the work is sharded across processes (rank r takes every
world-th item) and every rank writes its own shards into the same feature set.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .config import Config, EncoderConfig
from .data import PreparedData
from .errors import ConfigError, DataError
from .features import content_keys, write_link


@dataclass
class ExtractResult:
    """What one (encoder, field) feature set needed and got."""

    encoder: str
    field: str
    spec: str
    fingerprint: str
    dim: int
    items: int
    computed: int = 0
    reused: int = 0
    failed: int = 0
    absent: int = 0  # catalog rows with no value for the field (a mask, nothing to compute)
    seconds: float = 0.0
    failures: list[dict[str, str]] = field(default_factory=list)

    @property
    def items_per_second(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "encoder": self.encoder, "field": self.field, "spec": self.spec, "fingerprint": self.fingerprint,
            "dim": self.dim, "items": self.items, "computed": self.computed, "reused": self.reused,
            "failed": self.failed, "absent": self.absent, "seconds": round(self.seconds, 3),
            "items_per_second": round(self.items_per_second, 1), "failures": self.failures,
        }


class _Items(Dataset):
    """Raw catalog values -> encoder inputs, in DataLoader workers.

    Bad input does not kill the worker: it comes back as a failure record for the main
    process to handle by the field's ``on_error`` policy.
    """

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


class _Collate:
    def __init__(self, encoder):
        self.collate = encoder.collate

    def __call__(self, samples):
        ok = [(row, sample) for row, sample, err in samples if err is None]
        failed = [(row, err) for row, _, err in samples if err is not None]
        batch = self.collate([s for _, s in ok]) if ok else None
        return [row for row, _ in ok], batch, failed


def _autocast(device: torch.device, precision: str):
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return contextlib.nullcontext()
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _modality_of(prepared: PreparedData, name: str, ec: EncoderConfig) -> str:
    modalities = {m for f in ec.fields for m, names in prepared.fields.items() if f in names}
    unknown = [f for f in ec.fields if not any(f in names for names in prepared.fields.values())]
    if unknown:
        have = {m: names for m, names in prepared.fields.items() if names}
        raise ConfigError(f"encoders.{name}.fields: {unknown[0]!r} is not a catalog field (fields: {have})")
    if len(modalities) != 1:
        raise ConfigError(f"encoders.{name}.fields mixes modalities {sorted(modalities)}; one encoder, one modality")
    return modalities.pop()


def extract_field(store, encoder, name: str, ec: EncoderConfig, field_name: str, prepared: PreparedData,
                  cfg: Config, accelerator) -> ExtractResult:
    """Compute the missing rows of one feature set; return what was computed, reused, failed."""
    started = time.perf_counter()
    values = prepared.items[field_name]
    item_ids = prepared.items["item_id"]
    keys = content_keys(values, encoder.modality)
    fs = store.open_set(encoder.fingerprint, field_name, dim=encoder.dim, dtype=cfg.extract.storage_dtype,
                        spec=ec.spec, identity=encoder.identity())
    result = ExtractResult(name, field_name, ec.spec, encoder.fingerprint, encoder.dim, len(values))
    result.absent = sum(k is None for k in keys)

    # A file that vanished has no content key either: it is bad input, not an absent value.
    vanished = [i for i, (v, k) in enumerate(zip(values, keys)) if v is not None and k is None]
    present = [i for i, k in enumerate(keys) if k is not None]
    first_of_key: dict[str, int] = {}
    for i in present:
        first_of_key.setdefault(keys[i], i)  # identical content is computed once
    unique_rows = list(first_of_key.values())
    todo_idx = fs.missing([keys[i] for i in unique_rows])
    todo = [unique_rows[j] for j in todo_idx]
    todo_keys = {keys[r] for r in todo}
    result.reused = sum(1 for i in present if keys[i] not in todo_keys)
    result.absent -= len(vanished)
    failures = [(i, f"file not found: {values[i]}") for i in vanished]

    mine = todo[accelerator.process_index :: accelerator.num_processes]
    device = accelerator.device
    encoder.to(device).eval()
    loader = DataLoader(
        _Items(encoder, [values[i] for i in mine], mine),
        batch_size=cfg.extract.batch_size,
        num_workers=cfg.extract.num_workers,
        collate_fn=_Collate(encoder),
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    pending_keys: list[str] = []
    pending_vecs: list[np.ndarray] = []

    def flush():
        if pending_keys:
            fs.write(list(pending_keys), np.concatenate(pending_vecs))
            pending_keys.clear()
            pending_vecs.clear()

    bar = tqdm(total=len(mine), desc=f"{name}:{field_name}", unit="item", disable=not accelerator.is_local_main_process,
               dynamic_ncols=True)
    computed = 0
    try:
        with torch.inference_mode():
            for rows, batch, failed in loader:
                failures.extend(failed)
                if failed and ec.on_error == "error":
                    break
                if batch is not None:
                    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                    with _autocast(device, cfg.extract.precision):
                        out = encoder(batch)
                    pending_keys.extend(keys[r] for r in rows)
                    pending_vecs.append(out.float().cpu().numpy())
                    computed += len(rows)
                    if len(pending_keys) >= cfg.extract.flush_every:
                        flush()
                bar.update(len(rows) + len(failed))
        flush()  # finished work is kept even when a bad item stops the run below
    finally:
        bar.close()

    if failures and ec.on_error == "error":
        row, reason = failures[0]
        raise DataError(
            f"encoders.{name}: item {item_ids[row]!r} (catalog row {row}), field {field_name!r}: {reason}. "
            f"Fix the input or set encoders.{name}.on_error=skip to mask it; "
            f"{computed} items computed before it are kept in the store"
        )
    if failures:
        fs.write_failed([keys[r] if keys[r] else f"path:{values[r]}" for r, _ in failures], [r for _, r in failures])
    result.computed = computed
    result.failed = len(failures)
    result.failures = [{"item_id": item_ids[r], "value": values[r], "reason": why} for r, why in failures]
    result.seconds = time.perf_counter() - started
    return result


def extract(cfg: Config, prepared: PreparedData, accelerator=None) -> list[ExtractResult]:
    """Run every encoder of ``cfg.encoders`` over its fields; returns one result per feature set."""
    import encoders
    from accelerate import Accelerator

    from .store import FeatureStore

    if not cfg.encoders:
        raise ConfigError("no encoders configured: add an `encoders:` section (see README, Feature extraction)")
    accelerator = accelerator or Accelerator()
    if cfg.extract.offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    store = FeatureStore(cfg.features_dir)
    results = []
    for name, ec in cfg.encoders.items():
        modality = _modality_of(prepared, name, ec)
        encoder = encoders.create(ec.spec, modality=modality, offline=cfg.extract.offline or None,
                                  random_init=ec.random_init, **ec.options)
        for field_name in ec.fields:
            res = extract_field(store, encoder, name, ec, field_name, prepared, cfg, accelerator)
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                write_link(cfg, name, field_name, encoder.fingerprint)
            results.append(_merge_ranks(res, accelerator))
    return results


def _merge_ranks(res: ExtractResult, accelerator) -> ExtractResult:
    """Every rank computed a share: add the shares up so each rank reports the whole."""
    if accelerator.num_processes == 1:
        return res
    from accelerate.utils import gather_object

    parts = gather_object([res])
    res.computed = sum(p.computed for p in parts)
    res.failures = [f for p in parts for f in p.failures]
    res.failed = len(res.failures)
    res.seconds = max(p.seconds for p in parts)
    return res
