"""Recommenders over item towers. Each model file registers its model (``registry.py``);
``build_model`` turns the `model` config section into one.

Every model follows the two-method contract of ``Recommender`` (``loss`` and ``score``) and
takes whatever item tower the config describes: ids, cached features, live encoders, or a mix.
A new model is one file here plus its import line below.
"""

from __future__ import annotations

from . import mf, lightgcn, hybrid, freedom, two_tower, sasrec, mmgcn, grcn  # noqa: F401  (each registers its model)
from .base import Recommender
from .factory import LoadedFeature, build_model
from .registry import MODELS, BuildContext, ModelSpec, register_model

__all__ = ["MODELS", "BuildContext", "LoadedFeature", "ModelSpec", "Recommender", "build_model", "register_model"]
