"""Recommenders over item towers. Each model file registers its model (``registry.py``);
``build_model`` turns the `model` config section into one.

Every model follows the two-method contract of ``Recommender`` (``loss`` and ``score``) and
takes whatever item tower the config describes: ids, cached features, live encoders, or a mix.
A new model is one file here plus its import line below.
"""

from __future__ import annotations

# each module registers its model when imported
from . import mf  # noqa: F401
from . import lightgcn  # noqa: F401
from . import hybrid  # noqa: F401
from . import hybrid_knn  # noqa: F401
from . import freedom  # noqa: F401
from . import two_tower  # noqa: F401
from . import sasrec  # noqa: F401
from . import lattice  # noqa: F401
from . import dualgnn  # noqa: F401
from . import mgcn  # noqa: F401
from . import dragon  # noqa: F401
from . import itemknncbf  # noqa: F401
from . import lgmrec  # noqa: F401
from . import bm3  # noqa: F401
from . import slmrec  # noqa: F401
from . import mmgcn  # noqa: F401
from . import grcn  # noqa: F401
from . import joint  # noqa: F401
from .base import Recommender
from .factory import LoadedFeature, build_model
from .registry import MODELS, BuildContext, ModelSpec, register_model

__all__ = ["MODELS", "BuildContext", "LoadedFeature", "ModelSpec", "Recommender", "build_model", "register_model"]
