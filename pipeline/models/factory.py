"""``build_model``: the recommender a `model` config section names, with its item tower. The
factory only looks the name up; everything about a model is in its registered class."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from .base import Recommender
from .live import LiveEncoders
from .registry import MODELS, BuildContext
from .towers import CombinedTower, FeatureTower, IdTower, ItemTower


@dataclass
class LoadedFeature:
    """A feature set aligned to the catalog: ``values[i]`` is item i, ``mask[i]`` says it exists."""

    values: torch.Tensor
    mask: torch.Tensor
    fingerprint: str


# the share of items trained without their id vector in a tower that mixes ids with content,
# unless the model says otherwise (the hybrid: 0.2). Off: at 0.2, VBPR's warm R@20 on the demo
# fell from about 0.38 to 0.34 (tests/test_models.py)
MIXED_ID_DROPOUT = 0.0


def id_settings(tcfg) -> tuple[str, float]:
    """``(unseen_ids, id_dropout)`` of a ``TowerConfig``, defaults resolved: unseen ids zeroed and
    ids dropped at ``MIXED_ID_DROPOUT`` when ids are mixed with content; ids alone keep both off."""
    mixed = bool(tcfg.ids and (tcfg.features or tcfg.live))
    unseen = tcfg.unseen_ids or ("zero" if mixed else "keep")
    dropout = tcfg.id_dropout if tcfg.id_dropout is not None else (MIXED_ID_DROPOUT if mixed else 0.0)
    return unseen, dropout


def make_item_tower(tcfg, n_items: int, dim: int, features: dict[str, LoadedFeature], id_init: str,
                    live: dict | None = None, encode_batch_size: int = 256,
                    train_items: np.ndarray | None = None) -> ItemTower:
    """The item tower ``tcfg`` (a ``TowerConfig``) describes: id embeddings initialised by
    ``id_init``, cached feature sets, live encoders, or several of these combined.
    ``train_items`` (the item of every training pair) says which items are unseen."""
    parts: list[ItemTower] = []
    if tcfg.ids:
        unseen, dropout = id_settings(tcfg)
        known = None
        if unseen == "zero":
            if train_items is None:
                raise ValueError("unseen_ids=zero needs the training items")
            known = torch.from_numpy(np.bincount(train_items, minlength=n_items) > 0)
        parts.append(IdTower(n_items, dim, init=id_init, known=known, dropout=dropout))
    if tcfg.features:
        chosen = {n: features[n] for n in tcfg.features}
        parts.append(FeatureTower({n: f.values for n, f in chosen.items()}, {n: f.mask for n, f in chosen.items()},
                                  dim, fusion=tcfg.fusion, fill=tcfg.fill, trainable_features=tcfg.trainable_features))
    if tcfg.live:
        if live is None or set(live) != set(tcfg.live):
            raise ConfigError("model.item_tower.live: the live encoders were not loaded (pipeline.live.load_live)")
        parts.append(LiveEncoders({n: live[n] for n in tcfg.live}, dim, fusion=tcfg.fusion, fill=tcfg.fill,
                                  encode_batch_size=encode_batch_size))
    return parts[0] if len(parts) == 1 else CombinedTower(parts, tcfg.combine)


def build_model(mcfg, data, features: dict[str, LoadedFeature], cache_dir: Path, seed: int,
                live: dict | None = None, encode_batch_size: int = 256) -> Recommender:
    """The recommender named by ``model.name`` (``mcfg``, a ``ModelConfig``) with its item tower,
    for a ``PreparedData``. ``live``: the ``LiveSource`` of each live encoder
    (``pipeline.live.load_live``)."""
    spec = mcfg.params
    tcfg = mcfg.tower(list(features))
    for name, f in features.items():
        if f.values.dim() != 2 or len(f.values) != data.n_items or f.mask.shape != (data.n_items,):
            raise ConfigError(f"features.{name}: expected {data.n_items} rows (one per catalog item) of a 2-d "
                              f"table and a mask of {data.n_items}, got values {tuple(f.values.shape)} and mask "
                              f"{tuple(f.mask.shape)}; re-run `modalrec extract` for this data")
    if tcfg.live and spec.no_live_encoders:
        takers = [n for n in MODELS if not MODELS.get(n).no_live_encoders]
        raise ConfigError(f"model {mcfg.name} {spec.no_live_encoders}; use {', '.join(takers)} with "
                          "model.item_tower.live")

    def tower(id_init: str) -> ItemTower:
        return make_item_tower(tcfg, data.n_items, mcfg.dim, features, id_init, live, encode_batch_size,
                               train_items=data.pairs("train")[1])

    return spec.build(BuildContext(data, features, tcfg, Path(cache_dir), seed, tower))
