"""Pluggable pretrained encoders: `encoders.create("timm:resnet50")` -> Encoder.

Backends (timm, hf, hf-audio, open_clip, st) load lazily; add your own with
`@encoders.register("prefix")` or the `modalrec.encoders` entry point group.
`hidden_below` / `skip_below` (encoders.cut) cache the input of the top-k trained blocks.
"""

from .base import Encoder, EncoderInputError, WeightsNotFoundError
from .cut import hidden_below, skip_below
from .registry import available, create, register
from .weights import sha256_file

__all__ = ["create", "register", "available", "Encoder", "EncoderInputError", "WeightsNotFoundError",
           "sha256_file", "hidden_below", "skip_below"]
