"""Where a config's feature store lives: one answer, for the store and for the records it keeps."""

from __future__ import annotations

from pathlib import Path


def default_root(cfg=None) -> Path:
    """The config's features directory (``<cache_dir>/features``), or ``./cache/features``."""
    if cfg is None:
        return Path.cwd() / "cache" / "features"
    return Path(getattr(cfg, "features_dir", None) or Path(cfg.cache_dir) / "features")
