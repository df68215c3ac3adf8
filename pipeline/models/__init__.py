"""Recommenders over item towers; ``build_model`` turns the `model` config section into one.

Every model follows the two-method contract of ``Recommender`` (``loss`` and ``score``) and
takes whatever item tower the config describes: ids, cached features, or both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from .base import Recommender
from .freedom import FREEDOM
from .graphs import cached_knn_graph
from .lightgcn import LightGCN
from .mf import MF
from .sasrec import SASRec
from .live import LiveEncoders
from .towers import CombinedTower, FeatureTower, IdTower, ItemTower
from .two_tower import TwoTower

MODELS = ("bpr", "vbpr", "lightgcn", "freedom", "two_tower", "sasrec")


@dataclass
class LoadedFeature:
    """A feature set aligned to the catalog: ``values[i]`` is item i, ``mask[i]`` says it exists."""

    values: torch.Tensor
    mask: torch.Tensor
    fingerprint: str


def _make_tower(mcfg, n_items: int, features: dict[str, LoadedFeature], id_init: str, live: dict | None = None,
           encode_batch_size: int = 256) -> ItemTower:
    from ..config import TowerConfig

    tcfg = mcfg.item_tower
    if tcfg is None:  # each model's own default
        tcfg = TowerConfig(features=list(features)) if mcfg.name == "vbpr" else TowerConfig()
    if mcfg.name == "vbpr" and not (tcfg.features or tcfg.live):
        raise ConfigError("model vbpr needs features: add a `features` section (or model.item_tower.features)")
    if tcfg.live and mcfg.name in ("lightgcn", "freedom"):
        raise ConfigError(f"model {mcfg.name} propagates over the whole item graph every step, which live encoders "
                          "cannot afford; use two_tower, sasrec, bpr or vbpr with model.item_tower.live")
    parts: list[ItemTower] = []
    if tcfg.ids:
        parts.append(IdTower(n_items, mcfg.dim, init=id_init))
    if tcfg.features:
        chosen = {n: features[n] for n in tcfg.features}
        parts.append(FeatureTower({n: f.values for n, f in chosen.items()}, {n: f.mask for n, f in chosen.items()},
                                  mcfg.dim, fusion=tcfg.fusion, fill=tcfg.fill,
                                  trainable_features=tcfg.trainable_features))
    if tcfg.live:
        if live is None or set(live) != set(tcfg.live):
            raise ConfigError("model.item_tower.live: the live encoders were not loaded (pipeline.live.load_live)")
        parts.append(LiveEncoders({n: live[n] for n in tcfg.live}, mcfg.dim, fusion=tcfg.fusion,
                                  fill=tcfg.fill,
                                  encode_batch_size=encode_batch_size))
    return parts[0] if len(parts) == 1 else CombinedTower(parts, tcfg.combine)


def build_model(mcfg, data, features: dict[str, LoadedFeature], cache_dir: Path, seed: int,
                live: dict | None = None, encode_batch_size: int = 256) -> Recommender:
    """The recommender named by ``model.name`` with its item tower, for a ``PreparedData``.
    ``live``: the ``LiveSource`` of each live encoder (``pipeline.live.load_live``)."""
    n_users, n_items = data.n_users, data.n_items

    def tower(id_init: str) -> ItemTower:
        return _make_tower(mcfg, n_items, features, id_init, live, encode_batch_size)

    users, items = data.pairs("train")
    p = mcfg.params
    if mcfg.name in ("bpr", "vbpr"):
        init = "xavier_normal" if mcfg.name == "bpr" else "xavier_uniform"
        return MF(n_users, tower(init), reg_weight=p.reg_weight, user_init=init)
    if mcfg.name in ("two_tower", "sasrec"):
        model_cls = TwoTower if mcfg.name == "two_tower" else SASRec
        return model_cls.build(p, data, tower("xavier_normal"))
    if mcfg.name == "lightgcn":
        return LightGCN(n_users, tower("xavier_uniform"), users, items,
                        n_layers=p.n_layers, reg_weight=p.reg_weight)
    if not features:
        raise ConfigError("model freedom builds its item-item graph from features: add a `features` section")
    weights = p.feature_weights or {n: 1.0 / len(features) for n in features}
    unknown = sorted(set(weights) - set(features))
    if unknown:
        raise ConfigError(f"model.freedom.feature_weights: {unknown} not in `features` ({sorted(features)})")
    used = {n: features[n] for n in weights}
    # a missing row has no neighbours to speak of: fill with the mean so it links to typical items
    filled = {}
    for n, f in used.items():
        x = f.values.float().clone()
        if (~f.mask).any() and f.mask.any():
            x[~f.mask] = x[f.mask].mean(dim=0)
        filled[n] = x
    graph = cached_knn_graph(cache_dir, {n: f.fingerprint for n, f in used.items()}, filled, weights, p.knn_k)
    return FREEDOM(n_users, tower("xavier_uniform"), users, items, graph, filled,
                   n_ui_layers=p.n_ui_layers, n_mm_layers=p.n_mm_layers, dropout=p.dropout,
                   reg_weight=p.reg_weight, seed=seed, trainable_features=p.trainable_features)


__all__ = ["MODELS", "LoadedFeature", "Recommender", "build_model"]
