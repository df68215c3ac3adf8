"""Pickled (non-safetensors) local checkpoints: read with weights_only=True, or refused naming the file.

A ``pytorch_model.bin`` / ``.pt`` / ``.pth`` / ``.ckpt`` is a pickle; loading one may run code
stored in it. Each library loads them with ``weights_only=True`` today, but a refusal or a
damaged file then surfaces as whatever that library raises, naming no file. Backends call
`check_pickled_weights` on a local location before loading it: every pickled checkpoint the
library would read is opened here with ``weights_only=True`` (memory-mapped, so the tensors
are not read) and a failure is a `WeightsUnreadableError` that names the file.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import zipfile
from collections.abc import Iterator
from pathlib import Path

from .base import WeightsUnreadableError
from .file_hashes import model_files

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
# Pickles that sit next to weights in training outputs; no library loads them as weights.
_NOT_WEIGHTS = ("training_args", "optimizer", "scheduler", "rng_state", "scaler")


def pickled_weights(location: str | os.PathLike) -> list[Path]:
    """The pickled checkpoints a library would load from a weights file or a model folder (none when
    the folder holds safetensors weights: every library prefers those)."""
    location = Path(location)
    if location.is_file():
        return [location] if location.suffix.lower() in PICKLE_SUFFIXES else []
    if not location.is_dir():
        return []
    files = [p for _, p in model_files(location)]
    if any(p.suffix.lower() == ".safetensors" for p in files):
        return []
    return [p for p in files if p.suffix.lower() in PICKLE_SUFFIXES and not p.name.startswith(_NOT_WEIGHTS)]


def _why(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    first = lines[0] if lines else ""
    if first.startswith("Weights only load failed"):
        return ("it is a pickle that needs more than plain tensors to load, and modalrec never runs code "
                "from a checkpoint (torch.load weights_only=True refused it)")
    return f"it is damaged or not a PyTorch checkpoint ({type(exc).__name__}: {first[:200]})"


def check_checkpoint(path: str | os.PathLike, backend: str) -> None:
    """Open a pickled checkpoint the safe way; WeightsUnreadableError naming it when that fails."""
    import torch

    path = Path(path)
    try:
        if zipfile.is_zipfile(path):  # torch.save's format: the tensors stay on disk
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        else:  # the legacy format (or not a checkpoint at all) cannot be memory-mapped
            torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # anything torch.load raises means the library cannot load it either
        raise WeightsUnreadableError(
            f"{backend}: cannot read the weights file {path}: {_why(exc)}. Save the weights as safetensors "
            f"(model.safetensors) where the file is trusted, or point the spec at an intact copy.") from None


def check_pickled_weights(location: str | os.PathLike, backend: str) -> None:
    for path in pickled_weights(location):
        check_checkpoint(path, backend)


@contextlib.contextmanager
def refusing_pickles(backend: str, name: str) -> Iterator[None]:
    """Around a library's load from a hub or cache, where the file is the library's to find: a
    pickled checkpoint it cannot read names the model instead of ending in a traceback."""
    try:
        yield
    except pickle.UnpicklingError as exc:
        raise WeightsUnreadableError(
            f"{backend}: cannot read the pickled checkpoint {name!r} resolves to: {_why(exc)}. Use a "
            f"safetensors copy of the weights, or download them again.") from None
