"""Checkpoints and weight files without pickle, verified when read.

A checkpoint is a folder: every tensor (model, optimizer state, RNG) in one safetensors file,
everything else in ``state.json``, and ``checksums.json`` with the sha256 of both, recorded when
they were written. It is written to a temporary folder and renamed into place (the replaced one
kept as the previous checkpoint). A weights file (the best weights) is one safetensors file
whose header records a sha256 of its tensors: one file, so one rename replaces weights and
checksum together.

Reading verifies first: a file that does not match its checksum, is cut short or does not parse
raises ``DamagedFile`` naming it, never a raw library error.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..atomic import atomic_directory, atomic_file
from ..errors import ModalrecError

MARKER = "state.json"
TENSORS = "tensors.safetensors"
CHECKSUMS = "checksums.json"
DIGEST_KEY = "modalrec.sha256"  # the tensors' checksum in a weights file's header


class DamagedFile(ModalrecError):
    """A checkpoint or weights file that is not what was written: changed, cut short, unparsable."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path} is damaged: {reason}")
        self.path, self.reason = Path(path), reason


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order: the same for the
    same tensors however a file lays them out."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


# ---------------------------------------------------------------------- weights files


def save_weights(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata={DIGEST_KEY: tensors_sha256(tensors)})


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001  (safetensors raises its own error types, and OSError)
        raise DamagedFile(path, f"not a readable safetensors file ({type(e).__name__}: {e})") from None


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, after checking them against the checksum in its header."""
    path = Path(path)
    tensors, meta = _read_safetensors(path)
    recorded = meta.get(DIGEST_KEY)
    if recorded is None:  # written before weights carried checksums
        print(f"warning: {path} carries no checksum (written by an older modalrec); not verified", file=sys.stderr)
    elif tensors_sha256(tensors) != recorded:
        raise DamagedFile(path, "its tensors do not match the sha256 recorded when it was written")
    return tensors


# ---------------------------------------------------------------------- checkpoints


def save_checkpoint(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict[str, Any], scheduler=None, previous: Path | None = None) -> None:
    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for pid, slots in opt["state"].items():
        for slot, value in slots.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"optim.{pid}.{slot}"] = t.detach().contiguous().cpu()
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    meta = {"trainer": state, "param_groups": opt["param_groups"],
            "scheduler": scheduler.state_dict() if scheduler is not None else None}
    with atomic_directory(folder, MARKER, previous=previous) as tmp:
        save_file(tensors, str(tmp / TENSORS))
        (tmp / MARKER).write_text(json.dumps(meta, indent=1), encoding="utf-8")
        sums = {name: file_sha256(tmp / name) for name in (TENSORS, MARKER)}
        (tmp / CHECKSUMS).write_text(json.dumps(sums, indent=1), encoding="utf-8")


@dataclass
class Checkpoint:
    """A checkpoint folder whose files matched their checksums, with its parsed state."""

    folder: Path
    meta: dict[str, Any]

    @property
    def epoch(self) -> int:
        return self.meta["trainer"]["epoch"]


def exists(folder: Path) -> bool:
    return (Path(folder) / MARKER).exists() or (Path(folder) / TENSORS).exists()


def verify_checkpoint(folder: Path) -> Checkpoint:
    """Check every file of ``folder`` against ``checksums.json`` and parse its state; raises
    ``DamagedFile`` naming the first file that fails (a missing one included)."""
    folder = Path(folder)
    sums_path = folder / CHECKSUMS
    if sums_path.exists():
        try:
            sums = json.loads(sums_path.read_text(encoding="utf-8"))
            if not isinstance(sums, dict) or set(sums) != {TENSORS, MARKER}:
                raise ValueError("unexpected content")
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise DamagedFile(sums_path, f"cannot read the checksums ({e})") from None
        for name, digest in sums.items():
            if not (folder / name).is_file():
                raise DamagedFile(folder / name, "missing")
            if file_sha256(folder / name) != digest:
                raise DamagedFile(folder / name, "its sha256 differs from the one recorded when it was written")
    else:  # written before checkpoints carried checksums: at least never a raw parse error
        print(f"warning: {folder} has no {CHECKSUMS} (written by an older modalrec); not verified", file=sys.stderr)
    state_path = folder / MARKER
    try:
        meta = json.loads(state_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DamagedFile(state_path, "missing") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DamagedFile(state_path, f"not JSON ({e})") from None
    trainer = meta.get("trainer") if isinstance(meta, dict) else None
    if not isinstance(trainer, dict) or not isinstance(trainer.get("epoch"), int) or "param_groups" not in meta:
        raise DamagedFile(state_path, "not a checkpoint's state (no trainer epoch or optimizer groups)")
    return Checkpoint(folder, meta)


def restore_checkpoint(ckpt: Checkpoint, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                       scheduler=None) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and RNG from a verified checkpoint; return the trainer
    state saved with them."""
    path = ckpt.folder / TENSORS
    tensors, _ = _read_safetensors(path)
    meta = ckpt.meta
    try:
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        state: dict[int, dict[str, torch.Tensor]] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, pid, slot = k.split(".", 2)
                state.setdefault(int(pid), {})[slot] = v
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        if scheduler is not None and meta.get("scheduler") is not None:
            scheduler.load_state_dict(meta["scheduler"])
        torch.set_rng_state(tensors["rng.torch"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise ModalrecError(f"{path} does not fit this model and optimizer: {str(e).splitlines()[0]}") from None
    if torch.cuda.is_available():
        cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)
    return meta["trainer"]
