"""Spec strings -> encoders: backends registered under their prefix, looked up by `create`.

Built-in backends register themselves when their module is imported (on the first lookup; a
module imports its heavy library only when it builds an encoder). Others come from
``@register_backend`` (a `Backend` subclass), ``@register("prefix")`` (a factory function) or
the ``modalrec.encoders`` entry point group (a module that registers itself, a `Backend`
subclass or instance, or a factory function), loaded when a spec first names them.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from types import ModuleType
from typing import Any, Callable

import torch

from pipeline.errors import ConfigError, ModalrecError

from .backend import Backend, FunctionBackend, HandBuilt
from .base import MODALITIES, Encoder
from .weights import env_offline, local_first

ENTRY_POINT_GROUP = "modalrec.encoders"

_BUILTIN_MODULES = ("encoders.timm_backend", "encoders.hf", "encoders.open_clip_backend",
                    "encoders.sentence_transformers_backend")
_BACKENDS: dict[str, Backend] = {}  # prefix or alias -> backend
_FACTORIES = _BACKENDS  # the registry's earlier name: code that unregisters a backend pops it here
_builtins_loaded = False

Factory = Callable[..., Encoder]


def _check_prefix(prefix: str) -> None:
    if not isinstance(prefix, str) or not prefix or ":" in prefix or prefix != prefix.strip():
        raise ValueError(f"encoder prefix must be a non-empty word without ':', got {prefix!r}")


def register_backend(backend):
    """Class decorator (or call with an instance): register a `Backend` under its prefix and aliases."""
    obj = backend() if isinstance(backend, type) else backend
    if not isinstance(obj, Backend):
        raise TypeError(f"register_backend takes an encoders.Backend subclass or instance, got {backend!r}")
    for name in (obj.prefix, *obj.aliases):
        _check_prefix(name)
    for name in (obj.prefix, *obj.aliases):
        _BACKENDS[name] = obj
    return backend


def register(prefix: str) -> Callable[[Factory], Factory]:
    """Decorator: `@register("mybackend") def make(name, *, modality, offline, random_init, **options)`."""
    _check_prefix(prefix)

    def deco(factory: Factory) -> Factory:
        _BACKENDS[prefix] = FunctionBackend(prefix, factory)
        return factory

    return deco


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        for module in _BUILTIN_MODULES:
            importlib.import_module(module)
        _builtins_loaded = True


def _load_entry_point(prefix: str) -> None:
    ep = _entry_points().get(prefix)
    if ep is None:
        return
    loaded = ep.load()
    if prefix not in _BACKENDS:
        if isinstance(loaded, Backend) or (isinstance(loaded, type) and issubclass(loaded, Backend)):
            obj = loaded() if isinstance(loaded, type) else loaded
            register_backend(obj)
            _BACKENDS[prefix] = obj
        elif callable(loaded) and not isinstance(loaded, (type, ModuleType)):
            _BACKENDS[prefix] = FunctionBackend(prefix, loaded)
    backend = _BACKENDS.get(prefix)
    dist = getattr(ep, "dist", None)
    if backend is not None and not backend.libraries and dist is not None:
        # the distribution that provides the entry point computes the vectors: record its version
        backend.libraries = {ep.module.split(".", 1)[0]: dist.name}


def available() -> list[str]:
    """Every prefix a spec may start with: built-ins, registered and installed entry points."""
    _load_builtins()
    return sorted({k for k, b in _BACKENDS.items() if k not in b.aliases} | set(_entry_points()))


def get_backend(prefix: str) -> Backend:
    """The backend registered under ``prefix`` (or an alias of it); ConfigError when none is."""
    if prefix not in _BACKENDS:
        _load_builtins()
    if prefix not in _BACKENDS:
        _load_entry_point(prefix)
    if prefix not in _BACKENDS:
        raise ConfigError(f"unknown encoder backend {prefix!r}; available: {', '.join(available())} "
                          f"(add one with @encoders.register_backend, @encoders.register or the "
                          f"{ENTRY_POINT_GROUP!r} entry point group)")
    return _BACKENDS[prefix]


def backend_of(encoder: Encoder) -> Backend:
    """The backend that built ``encoder`` (by its spec); `HandBuilt` for hand-built encoders."""
    try:
        return get_backend(parse_spec(getattr(encoder, "spec", ""))[0])
    except ModalrecError:
        return HandBuilt()


def spec_versions(spec: str | None) -> dict[str, str]:
    """Versions of the libraries of the backend a spec names; {} when it names none."""
    try:
        return get_backend(parse_spec(spec)[0]).versions()
    except ModalrecError:
        return {}


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
    backend = get_backend(prefix)
    offline = env_offline() if offline is None else bool(offline)
    torch_dtype = resolve_dtype(dtype)
    encoder = local_first(lambda off: backend.create(name, modality=modality, offline=off,
                                                      random_init=bool(random_init), **options), offline)
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
