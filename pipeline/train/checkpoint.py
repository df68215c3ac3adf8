"""Checkpoints without pickle: every tensor (model, optimizer state, RNG) in one safetensors
file, everything else in JSON. Written to a temporary folder and renamed, so a kill while
saving leaves the previous checkpoint intact."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..atomic import atomic_directory
from ..errors import ModalrecError

MARKER = "state.json"


def save_checkpoint(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict[str, Any], scheduler=None) -> None:
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
    with atomic_directory(folder, MARKER) as tmp:
        save_file(tensors, str(tmp / "tensors.safetensors"))
        (tmp / MARKER).write_text(json.dumps(meta, indent=1), encoding="utf-8")


def load_checkpoint(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler=None) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and RNG; return the trainer state saved with them."""
    if not (folder / MARKER).is_file():
        raise ModalrecError(f"no checkpoint to resume from in {folder}")
    meta = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    tensors = load_file(str(folder / "tensors.safetensors"))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, pid, slot = k.split(".", 2)
            state.setdefault(int(pid), {})[slot] = v
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    if scheduler is not None and meta["scheduler"] is not None:
        scheduler.load_state_dict(meta["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    if torch.cuda.is_available():
        cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)
    return meta["trainer"]
