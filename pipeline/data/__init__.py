"""Data layer: item catalog, interactions, split protocols, MMRec formats, the demo generator.

Typical use::

    from pipeline.config import load_config
    from pipeline.data import prepare, PreparedData

    prepared = prepare(load_config("recipes/configs/hm.yaml"))
    users, items = prepared.pairs("train")
"""

from .prepare import prepare
from .prepared import PreparedData

__all__ = ["PreparedData", "prepare"]
