"""The feature store: content-addressed, memory-mapped item vectors, one set per (encoder, field).

Typical use (an extraction runner)::

    from pipeline.store import FeatureStore, content_key_text

    store = FeatureStore.from_config(cfg)                    # <cache_dir>/features
    fs = store.open_set(encoder.fingerprint, "title", dim=encoder.dim, spec="st:all-MiniLM-L6-v2")
    keys = [content_key_text(t) for t in titles]             # None: the item has no title
    todo = fs.missing(keys)                                  # only what changed since last time
    fs.write([keys[i] for i in todo], vectors)               # one atomic shard per call
    vectors, present = fs.read(keys)                         # [n_items, dim] memory map + mask

See ``feature_set.py`` for the on-disk layout and why writes need no locks, ``store.py`` for the
store's own records (links, leases, content keys, timings), and ``views.py`` for what is
checked before a row is served.
"""

from .content_keys import ContentKeys
from .dtypes import STORAGE_DTYPES, as_torch
from .feature_set import FeatureSet
from .keys import content_key_file, content_key_text, mmrec_key
from .leases import LEASE_AGE
from .manifest import library_versions
from .mmrec_io import export_mmrec, import_mmrec, mmrec_keys
from .set_files import StoreWarning
from .root import default_root
from .store import FeatureStore
from .views import VIEW_DIR_ENV

__all__ = ["LEASE_AGE", "STORAGE_DTYPES", "VIEW_DIR_ENV", "ContentKeys", "FeatureSet", "FeatureStore", "StoreWarning",
           "as_torch", "content_key_file", "content_key_text", "default_root", "export_mmrec", "import_mmrec",
           "library_versions", "mmrec_key", "mmrec_keys"]
