"""Which encoder parameters train, as one value: ``Policy.parse("top-k:2")``.

Spellings (case and surrounding spaces ignored): ``frozen``, ``full``, ``bias``, ``top-k:N``,
``cached-top-k:N`` (top-k whose frozen blocks below the cut are computed once per item and
replayed), ``lora`` and ``lora:R``. A `Policy` is also a pydantic type: a config field declared
``policy: Policy`` is parsed when the config is validated, so a typo fails naming its key and
no other code splits policy strings. It serialises back to its canonical spelling. It lives
beside the config rather than in `encoders` so that validating a config imports no torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from .errors import ConfigError

KINDS = ("frozen", "full", "bias", "top-k", "lora")
LORA_DEFAULT_RANK = 8
SPELLINGS = "frozen, full, bias, top-k:N, cached-top-k:N, lora or lora:R"

_COUNT = re.compile(r"-?\d+")


@dataclass(frozen=True)
class Policy:
    kind: str
    k: int | None = None  # top-k: how many of the top blocks train
    rank: int | None = None  # lora: the adapters' rank (None: LORA_DEFAULT_RANK, spelled plain "lora")
    cached: bool = False  # top-k only: replay the frozen blocks' output from a per-item cache

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"unknown trainable policy kind {self.kind!r}: use one of {KINDS}")
        if (self.kind == "top-k") != (self.k is not None):
            raise ConfigError(f"a block count goes with top-k only, got kind={self.kind!r} k={self.k!r}")
        if self.k is not None and self.k < 1:
            raise ConfigError(f"top-k:{self.k}: at least one block must train (top-k:1 or more)")
        if self.rank is not None and (self.kind != "lora" or self.rank < 1):
            raise ConfigError(f"a rank >= 1 goes with lora only, got kind={self.kind!r} rank={self.rank!r}")
        if self.cached and self.kind != "top-k":
            raise ConfigError(f"only top-k:N can be cached (the frozen blocks below the cut are what is "
                              f"cached), not {self.kind}")

    @classmethod
    def parse(cls, value: Any) -> "Policy":
        """A Policy from its spelling; a Policy is returned as is. Bad input -> ConfigError."""
        if isinstance(value, Policy):
            return value
        if not isinstance(value, str):
            raise ConfigError(f"a trainable policy is a string ({SPELLINGS}), got {value!r}")
        text = value.strip().lower()
        cached = text.startswith("cached-")
        body = text.removeprefix("cached-")
        name, sep, arg = body.partition(":")
        if name == "top-k" and sep:
            if not _COUNT.fullmatch(arg):
                raise ConfigError(f"top-k policy needs a block count, e.g. 'top-k:2', got {value!r}")
            return cls("top-k", k=int(arg), cached=cached)
        if name == "top-k":
            raise ConfigError(f"top-k policy needs a block count, e.g. 'top-k:2', got {value!r}")
        if cached:
            raise ConfigError(f"cached fine-tuning only applies to the 'top-k:N' policy (the frozen blocks "
                              f"below the top N are what gets cached), not {value!r}")
        if name == "lora":
            if not sep:
                return cls("lora")
            if not _COUNT.fullmatch(arg):
                raise ConfigError(f"lora policy takes a rank, e.g. 'lora:8', got {value!r}")
            return cls("lora", rank=int(arg))
        if name in ("frozen", "full", "bias") and not sep:
            return cls(name)
        raise ConfigError(f"unknown trainable policy {value!r}: use {SPELLINGS}")

    @property
    def lora_rank(self) -> int:
        return self.rank if self.rank is not None else LORA_DEFAULT_RANK

    def uncached(self) -> "Policy":
        """The same trained parameters, computed without the cache (what the encoder itself applies)."""
        return replace(self, cached=False)

    def with_cache(self) -> "Policy":
        return replace(self, cached=True)

    def __str__(self) -> str:
        if self.kind == "top-k":
            return f"{'cached-' if self.cached else ''}top-k:{self.k}"
        if self.kind == "lora" and self.rank is not None:
            return f"lora:{self.rank}"
        return self.kind

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any):
        from pydantic_core import core_schema

        def validate(value: Any) -> Policy:
            try:
                return cls.parse(value)
            except ConfigError as e:  # pydantic reports ValueErrors with the key they belong to
                raise ValueError(str(e)) from None

        return core_schema.no_info_plain_validator_function(
            validate, json_schema_input_schema=core_schema.str_schema(),
            serialization=core_schema.plain_serializer_function_ser_schema(str))
