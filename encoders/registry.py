"""Spec strings -> encoders: a prefix registry filled by decorators, built-ins and entry points."""

from __future__ import annotations

import importlib
import importlib.metadata
from typing import Any, Callable

import torch

from pipeline.errors import ConfigError

from .base import MODALITIES, Encoder
from .weights import env_offline, local_first

ENTRY_POINT_GROUP = "modalrec.encoders"

# Built-in backends import their heavy libraries only when a spec names them.
_BUILTIN = {
    "timm": "encoders.timm_backend",
    "hf": "encoders.hf",
    "hf-audio": "encoders.hf",
    "open_clip": "encoders.open_clip_backend",
    "st": "encoders.sentence_transformers_backend",
}
_ALIASES = {"open-clip": "open_clip", "openclip": "open_clip", "sentence-transformers": "st", "transformers": "hf"}
_FACTORIES: dict[str, Callable[..., Encoder]] = {}

Factory = Callable[..., Encoder]


def register(prefix: str) -> Callable[[Factory], Factory]:
    """Decorator: `@register("mybackend") def make(name, *, modality, offline, random_init, **options)`."""
    if not prefix or ":" in prefix or prefix != prefix.strip():
        raise ValueError(f"encoder prefix must be a non-empty word without ':', got {prefix!r}")

    def deco(factory: Factory) -> Factory:
        _FACTORIES[prefix] = factory
        return factory

    return deco


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def available() -> list[str]:
    """Every prefix a spec may start with: built-ins, registered and installed entry points."""
    return sorted(set(_BUILTIN) | set(_FACTORIES) | set(_entry_points()))


def _factory(prefix: str) -> Factory:
    prefix = _ALIASES.get(prefix, prefix)
    if prefix not in _FACTORIES and prefix in _BUILTIN:
        importlib.import_module(_BUILTIN[prefix])
    if prefix not in _FACTORIES:
        ep = _entry_points().get(prefix)
        if ep is not None:
            loaded = ep.load()  # a module that registers itself, or the factory itself
            if prefix not in _FACTORIES and callable(loaded) and not isinstance(loaded, type(importlib)):
                _FACTORIES[prefix] = loaded
    if prefix not in _FACTORIES:
        raise ConfigError(f"unknown encoder backend {prefix!r}; available: {', '.join(available())} "
                          f"(add one with @encoders.register or the {ENTRY_POINT_GROUP!r} entry point group)")
    return _FACTORIES[prefix]


def parse_spec(spec: str) -> tuple[str, str]:
    if not isinstance(spec, str) or ":" not in spec:
        raise ConfigError(f"encoder spec must look like 'backend:model' (e.g. 'timm:resnet50'), got {spec!r}")
    prefix, name = spec.split(":", 1)
    prefix, name = prefix.strip(), name.strip()
    if not prefix or not name:
        raise ConfigError(f"encoder spec must look like 'backend:model', got {spec!r}")
    return prefix, name


def resolve_dtype(dtype: Any) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {"fp32": "float32", "float": "float32", "fp16": "float16", "half": "float16",
             "bf16": "bfloat16", "fp64": "float64", "double": "float64"}
    name = str(dtype).removeprefix("torch.").lower()
    found = getattr(torch, names.get(name, name), None)
    if not isinstance(found, torch.dtype) or not found.is_floating_point:
        raise ConfigError(f"dtype must be a floating torch dtype (float32, float16, bfloat16), got {dtype!r}")
    return found


def create(spec: str, *, modality: str | None = None, offline: bool | None = None,
           random_init: bool = False, device=None, dtype=None, **options) -> Encoder:
    """Build a frozen encoder (eval mode, no grads) from a spec such as 'timm:resnet50'."""
    prefix, name = parse_spec(spec)
    if modality is not None and modality not in MODALITIES:
        raise ConfigError(f"modality must be one of {MODALITIES}, got {modality!r}")
    factory = _factory(prefix)
    offline = env_offline() if offline is None else bool(offline)
    torch_dtype = resolve_dtype(dtype)
    encoder = local_first(lambda off: factory(name, modality=modality, offline=off, random_init=bool(random_init),
                                              **options), offline)
    if not isinstance(encoder, Encoder):
        raise TypeError(f"backend {prefix!r} returned {type(encoder).__name__}, not an encoders.Encoder")
    if modality is not None and encoder.modality != modality:
        raise ConfigError(f"{spec!r} encodes {encoder.modality}, not {modality}")
    encoder.spec = spec
    if torch_dtype is not None:
        encoder.to(dtype=torch_dtype)
    if device is not None:
        encoder.to(device=device)
    encoder.set_trainable("frozen")
    return encoder


class Options:
    """Backend options with a ConfigError for a wrong value and for any left unread (typos)."""

    def __init__(self, backend: str, options: dict[str, Any]):
        self.backend = backend
        self.options = dict(options)

    def pop(self, key: str, default: Any = None, *, choices: tuple | None = None, kind: type | None = None):
        value = self.options.pop(key, default)
        if value is None:
            return value
        if kind is bool and isinstance(value, str):
            if value.strip().lower() not in {"true", "false", "1", "0", "yes", "no"}:
                raise ConfigError(f"{self.backend}: option {key}={value!r} must be true or false")
            value = value.strip().lower() in {"true", "1", "yes"}
        elif kind is not None:
            try:
                value = kind(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{self.backend}: option {key}={value!r} must be {kind.__name__}") from None
        if choices is not None and value not in choices:
            raise ConfigError(f"{self.backend}: option {key}={value!r} must be one of {choices}")
        return value

    def common(self) -> tuple[int | None, bool, int]:
        """The options every backend takes: ``layer``, ``normalize``, ``seed``."""
        return self.pop("layer", kind=int), self.pop("normalize", False, kind=bool), self.pop("seed", 0, kind=int)

    def hub(self) -> tuple[str | None, bool]:
        """The options of backends that load from a model hub: ``revision``, ``trust_remote_code``."""
        return self.pop("revision", kind=str), self.pop("trust_remote_code", False, kind=bool)

    def done(self) -> None:
        if self.options:
            raise ConfigError(f"{self.backend}: unknown option(s) {sorted(self.options)}")
