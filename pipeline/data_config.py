"""The ``data`` section of the config: where the items and interactions are, how they are read,
filtered and split (the split protocols themselves are registered in ``pipeline/data/splits.py``).
Paths inside the data set are relative to ``data.root``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from .section import Section, validate_section, validation_errors


class DemoConfig(Section):
    """Parameters of the built-in demo data generator (see ``pipeline.data.demo``)."""

    n_items: int = Field(1000, ge=10)
    n_users: int = Field(800, gt=0)
    seed: int = 0
    image_size: int = Field(64, ge=16)
    audio_seconds: float = Field(1.0, gt=0)
    sample_rate: int = Field(16000, ge=4000)
    mean_interactions: int = Field(20, gt=0)


TableFormat = Literal["auto", "csv", "tsv", "parquet", "jsonl", "hf"]


class ItemsConfig(Section):
    """The item catalog. Each field maps a field name to a column name or a template.

    A template is a Python format string over the row's columns, e.g.
    ``"{prod_name}. {detail_desc}"`` or ``"images/{article_id:.3}/{article_id}.jpg"``.
    Without ``path`` the catalog is the set of items seen in the interactions (no content).
    """

    path: str | None = None
    format: TableFormat = "auto"
    encoding: str = "utf-8"
    id: str = "item_id"
    duplicates: Literal["error", "first"] = "error"  # first: keep each id's first row, drop the later ones
    text: dict[str, str] = {}
    image: dict[str, str] = {}
    audio: dict[str, str] = {}
    media_root: str | None = None

    @model_validator(mode="after")
    def _fields_unique(self) -> "ItemsConfig":
        seen: dict[str, str] = {}
        for modality in ("text", "image", "audio"):
            for name in getattr(self, modality):
                if name == "item_id" or name in seen:
                    other = "item_id" if name == "item_id" else f"{seen[name]}.{name}"
                    raise ValueError(f"field name {name!r} of {modality} is already used by {other}")
                seen[name] = modality
        return self


class InteractionsConfig(Section):
    """The interaction table. ``format: mmrec`` reads an MMRec ``.inter`` file and maps its
    columns (userID, itemID and, when present, rating, timestamp, x_label) itself."""

    path: str
    format: Literal["auto", "csv", "tsv", "parquet", "jsonl", "hf", "mmrec"] = "auto"
    encoding: str = "utf-8"
    user: str | None = "user_id"  # null: no user ids, each row is its own user (one anonymous session)
    item: str = "item_id"
    timestamp: str | None = None
    timestamp_format: str | None = None  # strptime format; default: unix seconds or ISO 8601
    rating: str | None = None
    label: str | None = None  # MMRec's x_label column (0 train, 1 valid, 2 test)
    unknown_items: Literal["error", "drop"] = "error"


class FilterConfig(Section):
    min_rating: float | None = None
    min_user_interactions: int = Field(0, ge=0)
    min_item_interactions: int = Field(0, ge=0)


def _registered_split(name: str) -> str:
    from .data.splits import SPLITS  # lazy: the data package reads tables (pandas, datasets)

    return SPLITS.check(name)


class SplitConfig(Section):
    """``protocol`` names a registered split protocol (``pipeline/data/splits.py``); the other
    keys are the protocols' own parameters, written flat (``data.split.cold_items``) and
    validated by the protocol class that declares them. A key that only another protocol takes
    is validated and kept but not read, so ``data.split.protocol=...`` can switch a config
    written for another protocol; a key no protocol takes is an error."""

    model_config = ConfigDict(extra="allow")
    protocol: Annotated[str, AfterValidator(_registered_split)] = "random"
    seed: int = 999
    _chosen: Any = PrivateAttr(None)

    @model_validator(mode="after")
    def _protocol_keys(self) -> "SplitConfig":
        from .data.splits import SPLITS

        given = dict(self.__pydantic_extra__)
        chosen = SPLITS.get(self.protocol)
        self._chosen = validate_section(chosen, {k: v for k, v in given.items() if k in chosen.model_fields})
        keys = self._chosen.model_dump()
        others = [k for k in given if k not in keys]
        for owner in (SPLITS.get(n) for n in SPLITS):
            mine = {k: given[k] for k in others if k in owner.model_fields}
            if mine:
                checked = validate_section(owner, mine)
                keys.update({k: getattr(checked, k) for k in mine})
                others = [k for k in others if k not in mine]
        if others:
            raise validation_errors([{"type": "extra_forbidden", "loc": (k,), "input": given[k]} for k in others])
        self.__pydantic_extra__.clear()
        self.__pydantic_extra__.update(keys)
        return self

    @property
    def params(self):
        """The chosen protocol with its parameters: ``params.assign(pairs, rng)`` splits."""
        return self._chosen


class DataConfig(Section):
    name: str
    root: Path
    prepared: Path | None = None  # default: <cache_dir>/prepared/<name>
    demo: DemoConfig | None = None  # set: generate the demo data into `root` first
    items: ItemsConfig = ItemsConfig()
    interactions: InteractionsConfig
    filter: FilterConfig = FilterConfig()
    split: SplitConfig = Field(default_factory=SplitConfig)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", v):
            raise ValueError(f"name must be letters, digits, '_', '.', '-' (it names a folder), got {v!r}")
        return v
