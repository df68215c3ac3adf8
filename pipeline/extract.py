"""Feature extraction: every configured encoder over its catalog fields, into the feature store.

Only items whose (encoder fingerprint, content key) is not in the store yet are computed, so a
re-run on unchanged data computes nothing and a killed run resumes where its last atomic write
ended. Under ``accelerate launch`` the work is sharded across processes (rank r computes every
world-th missing item) and every rank writes its own shards into the same feature set.

A warm re-run does not build the encoders at all: the link a run leaves per (encoder, field)
(``FeatureStore.write_link``) records the encoder config and a cheap stamp of the weights' files
(:func:`pipeline.content.weights_stamp`). When both still match and the store holds every current content key,
the feature set is reported as reused without loading a model. Content keys of media files are
remembered by file stat in the store's content-key cache (:class:`ContentKeys`), so that check
reads no item file either; a file whose stat changed is hashed again. Before anything stored is
reused, what training will read is checked against its checksums (``FeatureSet.check``).

Every catalog row lands in exactly one count: ``computed`` (its vector was computed by this
run), ``reused`` (already stored), ``failed`` (bad input, masked under ``on_error: skip``) or
``absent`` (no value for the field, or a file that does not exist: a mask, nothing to compute).
``missing`` counts the files among ``absent`` (``data prepare`` reported them already), so they
are told apart from inputs that failed to decode.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .config import Config, EncoderConfig
from .content import (ItemSamples, SampleBatches, build_encoder, content_keys, encoder_modality, field_values,
                      input_error, weights_hashes, weights_stamp)
from .data import PreparedData
from .errors import ConfigError, DataError


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
    absent: int = 0  # catalog rows with no value for the field, or no file (a mask, nothing to compute)
    missing: int = 0  # of ``absent``: files the catalog names that do not exist (reported by prepare)
    seconds: float = 0.0
    encoder_built: bool = True  # False: the warm path proved everything stored without loading weights
    failures: list[dict[str, str]] = field(default_factory=list)  # failed and missing rows, each with its kind
    set_name: str = ""  # the feature set in the store

    @property
    def items_per_second(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "encoder": self.encoder, "field": self.field, "spec": self.spec, "fingerprint": self.fingerprint,
            "dim": self.dim, "items": self.items, "computed": self.computed, "reused": self.reused,
            "failed": self.failed, "absent": self.absent, "missing": self.missing, "set": self.set_name,
            "seconds": round(self.seconds, 3),
            "items_per_second": round(self.items_per_second, 1), "encoder_built": self.encoder_built,
            "failures": self.failures,
        }


# ---------------------------------------------------------------- planning


@dataclass
class _Plan:
    """What one feature set lacks for the current catalog."""

    todo: list[int]  # one catalog row per content key still to compute
    rows_of: dict[str, list[int]]  # content key -> catalog rows that share it
    reused: int
    absent: int  # no value (the files in ``missing`` are counted apart)
    failed: list[tuple[int, str]]  # rows that fail before computing: unreadable files, recorded failures
    missing: list[tuple[int, str]]  # rows naming a file that does not exist (prepare reported them)


def _plan(fs, values: list, keys: list[str | None], on_error: str,
          unreadable: dict[str, str] | None = None) -> _Plan:
    rows_of: dict[str, list[int]] = {}
    absent = 0
    failed: list[tuple[int, str]] = []
    missing_files: list[tuple[int, str]] = []
    for i, (v, k) in enumerate(zip(values, keys)):
        if k is not None:
            rows_of.setdefault(k, []).append(i)
        elif v is None:
            absent += 1
        elif unreadable and v in unreadable:
            failed.append((i, unreadable[v]))  # a file that exists but cannot be read: bad input
        else:
            missing_files.append((i, f"file not found: {v}"))
    unique = list(rows_of)
    retry = on_error == "error"  # a policy of "error" wants every item: earlier failures are tried again
    missing = {unique[j] for j in fs.missing(unique, retry_failed=retry)}
    recorded = {} if retry else fs.failed()
    todo, reused = [], 0
    for k, rows in rows_of.items():
        if k in missing:
            todo.append(rows[0])
        elif k in recorded:
            failed.extend((r, recorded[k]) for r in rows)
        else:
            reused += len(rows)
    failed.sort()
    return _Plan(todo, rows_of, reused, absent, failed, missing_files)


def _failure_records(failed: list[tuple[int, str]], item_ids: list, values: list,
                     missing: list[tuple[int, str]] = ()) -> list[dict[str, str]]:
    """One record per row without a vector because of its input: ``kind`` "failed" (it could
    not be read or decoded) or "missing" (its file does not exist), sorted by row."""
    rows = [(r, why, "failed") for r, why in failed] + [(r, why, "missing") for r, why in missing]
    return [{"item_id": item_ids[r], "row": r, "value": values[r], "reason": why, "kind": kind}
            for r, why, kind in sorted(rows)]


def _record_failed(fs, keys: list, values: list, failed: list[tuple[int, str]]) -> None:
    """Keep a record of bad inputs (for ``store info`` and later runs), once per key and reason."""
    known = fs.failed()
    todo = {}
    for r, why in failed:
        key = keys[r] if keys[r] is not None else f"path:{values[r]}"
        if known.get(key) != why:
            todo[key] = why
    if todo:
        fs.write_failed(list(todo), list(todo.values()))


# ---------------------------------------------------------------- computing


def _autocast(device: torch.device, precision: str):
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return contextlib.nullcontext()
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _warm_up(preprocess, value) -> None:
    """Decode one item in this process first: decoders import their libraries on first use
    (scipy.signal alone takes over a second), and forked workers then inherit them instead of
    each paying for the import again on every run."""
    from encoders import EncoderInputError

    with contextlib.suppress(EncoderInputError):
        preprocess(value)


def _encode(encoder, fs, values: list, keys: list, rows: list[int], rows_of: dict[str, list[int]], desc: str,
            cfg: Config, on_error: str, accelerator) -> tuple[int, list[tuple[int, str]]]:
    """Encode ``rows`` (this rank's share), writing every ``flush_every`` rows; returns (rows
    computed including rows that share a computed key, failures). With ``on_error: error`` it
    stops after the batch holding the first bad item, keeping the good rows of that batch."""
    device = accelerator.device
    workers = cfg.extract.num_workers if len(rows) > cfg.extract.batch_size else 0
    if workers:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # forked workers tokenize one at a time
        _warm_up(encoder.preprocess, values[rows[0]])
    loader = DataLoader(
        ItemSamples(encoder, [values[i] for i in rows], rows),
        batch_size=cfg.extract.batch_size,
        num_workers=workers,
        collate_fn=SampleBatches(encoder),
        pin_memory=device.type == "cuda",
    )
    pending_keys: list[str] = []
    pending_vecs: list[np.ndarray] = []
    computed = 0
    failures: list[tuple[int, str]] = []

    def flush():
        if pending_keys:
            fs.write(list(pending_keys), np.concatenate(pending_vecs))
            pending_keys.clear()
            pending_vecs.clear()

    encoder.to(device).eval()
    bar = tqdm(total=len(rows), desc=desc, unit="item", disable=not accelerator.is_local_main_process,
               dynamic_ncols=True)
    try:
        with torch.inference_mode():
            for batch_rows, batch, failed in loader:
                for row, why in failed:
                    failures.extend((r, why) for r in rows_of[keys[row]])
                if batch is not None:
                    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                    with _autocast(device, cfg.extract.precision):
                        out = encoder(batch)
                    pending_keys.extend(keys[r] for r in batch_rows)
                    pending_vecs.append(out.float().cpu().numpy())
                    computed += sum(len(rows_of[keys[r]]) for r in batch_rows)
                    if len(pending_keys) >= cfg.extract.flush_every:
                        flush()
                bar.update(len(batch_rows) + len(failed))
                if failed and on_error == "error":
                    break
    finally:
        flush()  # finished work is kept, whatever stops the loop
        bar.close()
    return computed, failures


def extract_field(store, encoder, name: str, ec: EncoderConfig, field_name: str, prepared: PreparedData,
                  cfg: Config, accelerator, keys: list[str | None] | None = None,
                  unreadable: dict[str, str] | None = None) -> ExtractResult:
    """Compute the missing rows of one feature set (this rank's share); every rank returns the
    merged counts of all ranks."""
    started = time.perf_counter()
    values = field_values(prepared, field_name)
    item_ids = field_values(prepared, "item_id")
    keys = content_keys(values, encoder.modality) if keys is None else keys
    fs = store.open_set(encoder.fingerprint, field_name, dim=encoder.dim, dtype=cfg.extract.storage_dtype,
                        spec=ec.spec, identity=encoder.identity())
    main = accelerator.is_main_process
    if main:  # rows of damaged files become work for this run, before any rank plans
        fs.check(keys)
    accelerator.wait_for_everyone()
    plan = _plan(fs, values, keys, ec.on_error, unreadable)
    accelerator.wait_for_everyone()  # every rank has planned from the same store state before any writes
    result = ExtractResult(name, field_name, ec.spec, encoder.fingerprint, encoder.dim, len(values),
                           reused=plan.reused if main else 0, absent=plan.absent + len(plan.missing),
                           missing=len(plan.missing), set_name=fs.name)
    if (plan.failed or plan.missing) and ec.on_error == "error":  # the same on every rank: all stop first
        row, reason = min(plan.failed + plan.missing)
        raise input_error(name, field_name, row, reason, item_ids, values, encoder.modality, 0)

    mine = plan.todo[accelerator.process_index :: accelerator.num_processes]
    computed, failures = 0, []
    if mine:
        computed, failures = _encode(encoder, fs, values, keys, mine, plan.rows_of, f"{name}:{field_name}", cfg,
                                     ec.on_error, accelerator)
    if ec.on_error == "skip":
        _record_failed(fs, keys, values, (plan.failed if main else []) + failures)
    result.computed = computed
    result.failures = _failure_records((plan.failed if main else []) + failures, item_ids, values,
                                       plan.missing if main else [])
    result.failed = sum(f["kind"] == "failed" for f in result.failures)
    result.seconds = time.perf_counter() - started
    result = _merge_ranks(result, accelerator)
    if result.failed and ec.on_error == "error":
        first = next(f for f in result.failures if f["kind"] == "failed")
        raise input_error(name, field_name, first["row"], first["reason"], item_ids, values, encoder.modality,
                           result.computed)
    return result


def _reuse(store, cfg: Config, name: str, ec: EncoderConfig, field_name: str, values: list,
           keys: list[str | None], stamp: str | None, item_ids: list,
           unreadable: dict[str, str] | None = None, check: bool = True) -> ExtractResult | None:
    """The warm path: a result without building the encoder, or None when that cannot be proved.
    ``check``: verify what training will read first (one process does it for all)."""
    started = time.perf_counter()
    if stamp is None:
        return None
    try:
        link = store.read_link(cfg.data.name, f"{name}.{field_name}")
        if link is None or link.get("stamp") != stamp or link.get("encoder") != ec.model_dump(mode="json"):
            return None
        fs = store.linked_set(link)
    except DataError:
        return None
    if fs is None or fs.dtype != cfg.extract.storage_dtype:
        return None
    if check:  # a damaged view is rebuilt here; rows of a damaged shard become work (the plan sees them)
        fs.check(keys)
    plan = _plan(fs, values, keys, ec.on_error, unreadable)
    if plan.todo or ((plan.failed or plan.missing) and ec.on_error == "error"):
        return None
    return ExtractResult(name, field_name, ec.spec, fs.fingerprint, fs.dim, len(values), reused=plan.reused,
                         failed=len(plan.failed), absent=plan.absent + len(plan.missing), missing=len(plan.missing),
                         encoder_built=False, failures=_failure_records(plan.failed, item_ids, values, plan.missing),
                         seconds=time.perf_counter() - started, set_name=fs.name)


def extract(cfg: Config, prepared: PreparedData, accelerator=None,
            only: list[str] | None = None) -> list[ExtractResult]:
    """Run every encoder of ``cfg.encoders`` (or those named in ``only``) over its fields;
    returns one result per feature set."""
    from accelerate import Accelerator

    from .store import FeatureStore

    if not cfg.encoders:
        raise ConfigError("no encoders configured: add an `encoders:` section (see README, Feature extraction)")
    unknown = [n for n in only or [] if n not in cfg.encoders]
    if unknown:
        raise ConfigError(f"--encoder {unknown[0]!r}: not in `encoders` ({', '.join(cfg.encoders)})")
    chosen = {n: ec for n, ec in cfg.encoders.items() if not only or n in only}
    accelerator = accelerator or Accelerator()
    if cfg.extract.offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    store = FeatureStore.from_config(cfg)
    key_cache = store.content_keys(cfg.data.name)
    hashes = weights_hashes(cfg)
    item_ids = field_values(prepared, "item_id")
    main = accelerator.is_main_process
    results = []
    for name, ec in chosen.items():
        modality = encoder_modality(prepared, name, ec)
        stamp = weights_stamp(ec, hashes)  # taken before the model loads: a later change is seen next run
        if accelerator.is_main_process:
            hashes.save()
        values = {f: field_values(prepared, f) for f in ec.fields}
        keys = {f: key_cache.keys(values[f], modality) for f in ec.fields}
        if main:
            key_cache.save()
        warm = [_reuse(store, cfg, name, ec, f, values[f], keys[f], stamp, item_ids, key_cache.unreadable, main)
                for f in ec.fields]
        if _everywhere(all(r is not None for r in warm), accelerator):
            results.extend(warm)
            continue
        encoder = build_encoder(cfg, name, modality)
        for field_name in ec.fields:
            # leased from before the set exists until its link is written: gc keeps it meanwhile
            with store.lease(encoder.fingerprint, field_name, cfg.extract.storage_dtype, "extract"):
                res = extract_field(store, encoder, name, ec, field_name, prepared, cfg, accelerator,
                                    keys[field_name], key_cache.unreadable)
                accelerator.wait_for_everyone()
                if main:
                    store.write_link(cfg.data.name, f"{name}.{field_name}", fingerprint=res.fingerprint,
                                     field=field_name, set_name=res.set_name, dim=res.dim,
                                     dtype=cfg.extract.storage_dtype, encoder=ec.model_dump(mode="json"), stamp=stamp)
                    record_timing(store, cfg, res, accelerator)
            results.append(res)
        del encoder
    if main:
        key_cache.save(prune=only is None or set(only) >= set(cfg.encoders))
    return results


def record_timing(store, cfg: Config, res: ExtractResult, accelerator) -> None:
    """Remember how fast a feature set was computed, for cost reports (``modalrec compare``) that
    run after the features are stored."""
    if res.computed <= 0:
        return
    store.record_timing(res.fingerprint, res.field, {
        "encoder": res.encoder, "field": res.field, "spec": res.spec, "computed": res.computed,
        "seconds": round(res.seconds, 4), "items_per_second": res.computed / max(res.seconds, 1e-9),
        "device": str(accelerator.device), "processes": accelerator.num_processes,
        "batch_size": cfg.extract.batch_size, "recorded": time.strftime("%Y-%m-%dT%H:%M:%S")})


def _everywhere(ok: bool, accelerator) -> bool:
    """True only if ``ok`` on every rank (all ranks must take the same path through collectives)."""
    if accelerator.num_processes == 1:
        return ok
    from accelerate.utils import gather_object

    return all(gather_object([ok]))


def _merge_ranks(res: ExtractResult, accelerator) -> ExtractResult:
    """Every rank computed a share: add the shares up so each rank reports the whole."""
    if accelerator.num_processes == 1:
        return res
    from accelerate.utils import gather_object

    parts = gather_object([res])
    res.computed = sum(p.computed for p in parts)
    res.reused = sum(p.reused for p in parts)  # counted by the main process only
    res.failures = sorted((f for p in parts for f in p.failures), key=lambda f: f["row"])
    res.failed = sum(f["kind"] == "failed" for f in res.failures)
    res.seconds = max(p.seconds for p in parts)
    return res
