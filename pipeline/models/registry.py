"""The recommender registry. A model is one class registered under the name ``model.name``
takes; its fields are its settings (the ``model.<name>`` section of a config, validated by the
class), and its methods say how the recommender is built from the data, an item tower and the
loaded features, which item tower it gets when the config names none, which feature sets it
reads besides its tower's, and whether it can take live encoders::

    @register_model("pop_bias")
    class PopBiasSpec(ModelSpec):
        reg_weight: float = Field(0.01, ge=0)          # model.pop_bias.reg_weight

        def build(self, ctx: BuildContext) -> Recommender:
            return PopBias(ctx.data.n_users, ctx.item_tower("xavier_normal"), self.reg_weight)

A model shipped with the package is one file in ``pipeline/models/`` plus its import line in
``pipeline/models/__init__.py``; a model defined elsewhere registers when its module is imported.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..registry import Registry
from ..section import Section

if TYPE_CHECKING:
    from ..config import TowerConfig
    from ..data import PreparedData
    from .base import Recommender
    from .factory import LoadedFeature
    from .towers import ItemTower


class ModelSpec(Section):
    """One registered recommender: its settings as fields, how it is built as methods."""

    name: ClassVar[str] = ""  # set by register_model
    # why the model cannot train live encoders in its item tower; empty: it can
    no_live_encoders: ClassVar[str] = ""
    # the model card (docs/models.md is checked against these): the family of methods it
    # belongs to, the paper, and what it derives from the data and caches between runs
    family: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    caches: ClassVar[str] = "nothing"

    def default_tower(self, features: list[str]) -> dict[str, Any]:
        """The ``model.item_tower`` keys used when the config gives none; ``features`` are the
        feature sets available. Default: item ids only."""
        return {}

    def extra_features(self, features: list[str]) -> list[str]:
        """Feature sets the model reads besides its item tower's, out of ``features`` (the
        configured ones): loaded before it is built and passed in ``BuildContext.features``."""
        return []

    def check(self, dim: int) -> None:
        """Settings that depend on ``model.dim``: raise ``ValueError`` naming the keys."""

    @abstractmethod
    def build(self, ctx: BuildContext) -> Recommender:
        """The recommender, untrained."""


@dataclass
class BuildContext:
    """What a model is built from."""

    data: PreparedData  # n_users, n_items, pairs(split), ...
    features: dict[str, LoadedFeature]  # the tower's feature sets and the model's extra ones
    tower: TowerConfig  # the item tower's settings: the config's, or the model's default
    cache_dir: Path  # for derived data worth keeping between runs (kNN graphs)
    seed: int
    make_tower: Callable[[str], ItemTower]

    def content(self, model: str, uses: str, key: str, names: list[str] | None = None) -> dict[str, Any]:
        """The feature sets ``names`` (empty: every loaded one) as float tables with each missing
        row set to its set's mean row, so an item without (say) an image starts as a typical item
        of that modality rather than a zero vector that normalisation or a bias would make
        arbitrary. A ``ConfigError`` when no feature set is loaded (``model <model> <uses>``) or
        one of ``names`` is not (``model.<model>.<key>``, the setting that named it)."""
        from ..errors import ConfigError
        from .towers import fill_missing

        if not self.features:
            raise ConfigError(f"model {model} {uses}: add a `features` section")
        names = list(names or self.features)
        unknown = sorted(set(names) - set(self.features))
        if unknown:
            raise ConfigError(f"model.{model}.{key}: {unknown} not in `features` ({sorted(self.features)})")
        return {n: fill_missing(self.features[n].values.float(), self.features[n].mask, "mean") for n in names}

    def item_tower(self, init: str = "xavier_normal") -> ItemTower:
        """The configured item tower; ``init`` names the ``torch.nn.init`` scheme of its id
        embeddings (``xavier_normal`` -> ``xavier_normal_``)."""
        return self.make_tower(init)


MODELS: Registry[type[ModelSpec]] = Registry("model")


def register_model(name: str) -> Callable[[type[ModelSpec]], type[ModelSpec]]:
    """Class decorator: register a ``ModelSpec`` subclass as ``model.name=<name>``."""
    add = MODELS.register(name)

    def deco(cls: type[ModelSpec]) -> type[ModelSpec]:
        if not (isinstance(cls, type) and issubclass(cls, ModelSpec)):
            raise TypeError(f"register_model({name!r}) decorates a ModelSpec subclass, got {cls!r}")
        cls.name = name
        return add(cls)

    return deco
