"""The feature store: content-addressed, memory-mapped item vectors, one set per (encoder, field).

Typical use (an extraction runner)::

    from pipeline.store import FeatureStore, content_key_text

    store = FeatureStore.from_config(cfg)                    # <cache_dir>/features
    fs = store.open_set(encoder.fingerprint, "title", dim=encoder.dim, spec="st:all-MiniLM-L6-v2")
    keys = [content_key_text(t) for t in titles]             # None: the item has no title
    todo = fs.missing(keys)                                  # only what changed since last time
    fs.write([keys[i] for i in todo], vectors)               # one atomic shard per call
    vectors, present = fs.read(keys)                         # [n_items, dim] memory map + mask

See ``feature_set.py`` for the on-disk layout and why writes need no locks.
"""

from .dtypes import STORAGE_DTYPES, as_torch
from .feature_set import FeatureSet, StoreWarning
from .keys import content_key_file, content_key_text, mmrec_key
from .mmrec_io import export_mmrec, import_mmrec, mmrec_keys
from .manifest import library_versions
from .store import FeatureStore, default_root

__all__ = ["STORAGE_DTYPES", "FeatureSet", "FeatureStore", "StoreWarning", "as_torch", "content_key_file",
           "content_key_text", "default_root", "export_mmrec", "import_mmrec", "library_versions", "mmrec_key",
           "mmrec_keys"]
