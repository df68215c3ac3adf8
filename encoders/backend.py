"""An encoder backend: everything modalrec needs to know about one library, in one object.

A backend is registered under the prefix of the specs it builds (``timm`` for ``timm:resnet50``)
and answers, besides building the encoder:

- ``weights(name, random_init=...)``: where the weights of a spec live, found without loading
  anything. Local files and folders are stamped by content for warm re-runs (an unchanged
  extraction then never builds the encoder); None when only loading can tell (hub weights).
- ``libraries``: the import name -> distribution name of the libraries that compute its vectors,
  recorded in feature-set manifests and in the warm-run stamp.
- ``enable_gradient_checkpointing(encoder)``: the library's own activation checkpointing switch.
- ``aliases``: other prefixes that name the same backend.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from pipeline.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from .base import Encoder


@dataclass(frozen=True)
class WeightsLocation:
    """What decides a spec's weights, as far as can be told without loading them.

    ``paths``: local weights files or model folders (their bytes decide). ``builtin``: names of
    architectures a library builds from its own code (its version decides), e.g. a randomly
    initialised ``timm:resnet18``. Both may be given (an open_clip architecture with local weights).
    """

    paths: tuple[Path, ...] = ()
    builtin: tuple[str, ...] = ()



def installed_versions(libraries: dict[str, str]) -> dict[str, str]:
    """``{import name: version}`` of those of ``libraries`` (import name -> distribution name)
    that are installed, read from package metadata without importing them."""
    out = {}
    for module, dist in libraries.items():
        if importlib.util.find_spec(module) is None:
            continue
        try:
            out[module] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out

class Backend(ABC):
    """Subclass, set ``prefix`` (and ``libraries``, ``aliases``), implement `create`; decorate the
    class with ``@encoders.register_backend`` or name it in the ``modalrec.encoders`` entry points."""

    prefix: str = ""
    aliases: tuple[str, ...] = ()
    libraries: dict[str, str] = {}  # read only; set a new dict to change it

    @abstractmethod
    def create(self, name: str, *, modality: str | None, offline: bool, random_init: bool,
               **options: Any) -> "Encoder":
        """The encoder the spec ``<prefix>:<name>`` names."""

    def weights(self, name: str, *, random_init: bool) -> WeightsLocation | None:
        """None: the weights cannot be located without building the encoder (the safe default)."""
        return None

    def versions(self) -> dict[str, str]:
        """Installed versions of ``libraries`` (read from package metadata; nothing is imported)."""
        return installed_versions(self.libraries)

    def enable_gradient_checkpointing(self, encoder: "Encoder") -> bool:
        """Turn the library's checkpointing on; False when the encoder has none.

        The default serves backends wrapping a transformers model (its own API) or timm/open_clip
        block stacks (the ``grad_checkpointing`` flag their forwards read)."""
        return hf_checkpointing(encoder) or flag_checkpointing(encoder)

    def __repr__(self) -> str:
        return f"<encoder backend {self.prefix!r} ({type(self).__name__})>"


def hf_checkpointing(module: "nn.Module") -> bool:
    """transformers models: the first submodule with the API turns it on for everything below."""
    for sub in module.modules():
        if hasattr(sub, "gradient_checkpointing_enable") and hasattr(sub, "config"):
            if not getattr(sub, "supports_gradient_checkpointing", True):
                return False
            kwargs = {"use_reentrant": False}
            if hasattr(sub, "activation_checkpointing_enable"):  # transformers >= 5 renamed it
                sub.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                sub.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
            return True
    return False


def flag_checkpointing(module: "nn.Module") -> bool:
    """Block stacks whose forward reads a boolean ``grad_checkpointing`` attribute (timm, open_clip)."""
    switches = [m for m in module.modules() if isinstance(getattr(m, "grad_checkpointing", None), bool)]
    for sub in switches:
        sub.grad_checkpointing = True
    return bool(switches)


class HandBuilt(Backend):
    """The backend of an encoder built by hand, not from a spec: no weights to locate, no library
    versions to record, and nothing to build it again from."""

    def create(self, name: str, *, modality: str | None, offline: bool, random_init: bool,
               **options: Any) -> "Encoder":
        raise ConfigError(f"encoder {name!r} was built by hand, not from a spec: build it again the same way")


class FunctionBackend(Backend):
    """A backend given as a factory function (``@encoders.register("prefix")``): it builds encoders;
    the rest keeps the safe defaults (no warm path without building, no extra libraries)."""

    def __init__(self, prefix: str, factory: Callable[..., "Encoder"], libraries: dict[str, str] | None = None):
        self.prefix = prefix
        self.factory = factory
        self.libraries = dict(libraries or {})

    def create(self, name: str, **kwargs: Any) -> "Encoder":
        return self.factory(name, **kwargs)
