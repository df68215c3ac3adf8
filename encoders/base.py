"""The Encoder contract: picklable preprocessing, a pooled forward, a content fingerprint."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
import json
from typing import Any, Callable

import torch
from torch import nn

from pipeline.errors import DataError, ModalrecError

# Bump when a change in this package alters the vectors an unchanged spec produces,
# so every cached feature set built before it is recomputed.
IDENTITY_FORMAT = 1

MODALITIES = ("image", "text", "audio")


class EncoderInputError(DataError):
    """One catalog value cannot be encoded (missing/corrupt file, empty text, silent audio...)."""


class WeightsNotFoundError(ModalrecError):
    """The weights a spec names cannot be found locally and cannot (or may not) be downloaded."""


class WeightsUnreadableError(ModalrecError):
    """A local weights file exists but cannot be read safely: damaged, truncated, or a pickle that
    would need to run code to load (pickled checkpoints are only ever read with weights_only=True)."""


class Encoder(nn.Module, ABC):
    """A pretrained model turned into `raw value -> [D]` for one modality.

    Subclasses build `self.model`, pass picklable `preprocessor` / `collator` callables
    (they run in DataLoader workers, so they must not hold the model) and implement
    `encode(batch) -> [B, D]`.
    """

    def __init__(
        self,
        *,
        modality: str,
        dim: int,
        preprocessor: Callable[[str], dict[str, torch.Tensor]],
        collator: Callable[[list[dict]], dict[str, torch.Tensor]],
        identity: dict[str, Any],
        layer: int | None = None,
        normalize: bool = False,
        source: str = "",
    ):
        super().__init__()
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        self.modality = modality
        self.dim = int(dim)
        self.spec = ""  # set by encoders.create
        self.layer = layer
        self.normalize = bool(normalize)
        self.source = source  # where the weights came from, for people; never fingerprinted
        self._preprocessor = preprocessor
        self._collator = collator
        self._identity = dict(identity)

    # Properties, not methods: `enc.preprocess` is then the small picklable object itself, so
    # DataLoader workers receive the tokenizer/transform, not a pickled copy of the model.
    @property
    def preprocess(self) -> Callable[[str], dict[str, torch.Tensor]]:
        return self._preprocessor

    @property
    def collate(self) -> Callable[[list[dict]], dict[str, torch.Tensor]]:
        return self._collator

    @abstractmethod
    def encode(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The backend's pooled ``[B, D]`` output for a batch already on the model's device."""

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.encode(self._to_model(batch))
        if self.normalize:
            out = nn.functional.normalize(out, dim=-1)
        return out.float()

    def _to_model(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Move the batch where the weights are; floating inputs take the weights' dtype."""
        ref = next((p for p in self.parameters() if p.is_floating_point()), None)
        if ref is None:
            return batch
        return {
            k: v.to(ref.device, ref.dtype if v.is_floating_point() else None) if torch.is_tensor(v) else v
            for k, v in batch.items()
        }

    @property
    def dtype_name(self) -> str:
        ref = next((p for p in self.parameters() if p.is_floating_point()), None)
        return str(ref.dtype).removeprefix("torch.") if ref is not None else "none"

    def set_identity(self, identity: dict[str, Any]) -> None:
        """Backends that learn the dim or pooling by probing the built model set the identity last."""
        self._identity = dict(identity)

    def identity(self) -> dict[str, Any]:
        """Everything that decides the output vectors, as plain JSON (never paths or devices)."""
        return {
            "format": IDENTITY_FORMAT,
            **self._identity,
            "modality": self.modality,
            "dim": self.dim,
            "layer": self.layer,
            "normalize": self.normalize,
            "dtype": self.dtype_name,
        }

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(canonical_json(self.identity()).encode("utf-8")).hexdigest()

    def trainable_parts(self) -> tuple[list[nn.Module], list[nn.Parameter]]:
        """(ordered blocks, final norm/pooler/projection params) for the top-k policy."""
        from .trainable import generic_parts

        return generic_parts(self.model)

    def lora_root(self) -> nn.Module:
        """The module LoRA adapters are injected into."""
        return self.model

    def set_trainable(self, policy) -> None:
        """A `Policy` or its spelling: 'frozen' | 'full' | 'top-k:N' | 'bias' | 'lora[:rank]' (a cached
        top-k trains what top-k does). Never changes the fingerprint."""
        from .trainable import apply_policy

        apply_policy(self, policy)

    def extra_repr(self) -> str:
        return f"spec={self.spec!r}, modality={self.modality!r}, dim={self.dim}"


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def jsonable(value: Any) -> Any:
    """Config dicts from processors/extractors as JSON; big arrays become their sha256."""
    import numpy as np

    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        if len(value) > 64:
            return {"sha256": hashlib.sha256(canonical_json(jsonable(list(value))).encode()).hexdigest()}
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        if value.size > 64:
            return {"sha256": hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest(),
                    "shape": list(value.shape)}
        return jsonable(value.tolist())
    if torch.is_tensor(value):
        return jsonable(value.detach().cpu().numpy())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float):
        return round(value, 10)  # 1/255 printed two ways must not split a cache
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(getattr(value, "value", None), (int, str)):  # enums
        return value.value
    return str(value)
