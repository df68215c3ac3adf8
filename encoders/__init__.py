"""Pluggable pretrained encoders: `encoders.create("timm:resnet50")` -> Encoder.

Backends (timm, hf, hf-audio, open_clip, st) are `Backend` objects registered under their spec
prefix; add your own with ``@encoders.register_backend`` (a `Backend` subclass: it can also say
where its weights live, for warm re-runs, and which libraries it runs, for manifests),
``@encoders.register("prefix")`` (a factory function) or the ``modalrec.encoders`` entry point group.
`Policy` says which parameters train; `hidden_below` / `skip_below` (encoders.cut) cache the
input of the top-k trained blocks.
"""

from .backend import Backend, WeightsLocation
from .base import Encoder, EncoderInputError, WeightsNotFoundError, WeightsUnreadableError
from .cut import hidden_below, skip_below
from .file_hashes import HashRecord, sha256_file
from pipeline.policy import Policy
from .registry import available, backend_of, create, get_backend, parse_spec, register, register_backend, \
    spec_versions

__all__ = ["create", "register", "register_backend", "available", "get_backend", "backend_of", "parse_spec",
           "spec_versions", "Backend", "WeightsLocation", "Encoder", "EncoderInputError", "WeightsNotFoundError",
           "WeightsUnreadableError", "Policy", "HashRecord", "sha256_file", "hidden_below", "skip_below"]
