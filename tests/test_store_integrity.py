"""The feature store's own defences (issue 15): where views may come from, leases that keep gc
away from sets being written, the store as the only reader of its records, and float16 sets
made before the dtype was part of a set's identity."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import ConfigError
from pipeline.store import FeatureSet, FeatureStore, StoreWarning

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(tmp_path: Path) -> FeatureStore:
    return FeatureStore(tmp_path / "features")


def read_only_views(monkeypatch, store: FeatureStore) -> None:
    """Make writing views inside the store fail as on a read-only mount."""
    import errno

    import pipeline.store.views as views

    real = views.TensorFileWriter

    def refuse_in_store(final, *a, **kw):
        if store.root in Path(final).parents:
            raise PermissionError(errno.EROFS, "Read-only file system", str(final))
        return real(final, *a, **kw)

    monkeypatch.setattr(views, "TensorFileWriter", refuse_in_store)


def wait_until(condition, seconds: float = 5.0) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if condition():
                return True
        except FileNotFoundError:
            pass
        time.sleep(0.01)
    return False


def plant_old_temp_view(fs: FeatureSet, keys: list, tmp: Path) -> Path:
    """A well-formed, checksummed view with wrong values where the old code looked for views of
    a set (``<tmp>/modalrec-views/<set>-<store digest>/<view name>``)."""
    import hashlib

    shutil.rmtree(fs.path / "views", ignore_errors=True)
    vec, _ = FeatureSet(fs.path).read(keys)
    (view,) = (fs.path / "views").glob("*.safetensors")
    digest = hashlib.sha256(str(fs.path.resolve()).encode()).hexdigest()[:8]
    planted = tmp / "modalrec-views" / f"{fs.name}-{digest}" / view.name
    planted.parent.mkdir(parents=True)
    from pipeline.store.tensor_file import TensorFile, TensorFileWriter

    f = TensorFile(view)
    with TensorFileWriter(planted, [("vectors", "F32", vec.shape), ("present", "BOOL", (len(keys),))],
                          {k: v for k, v in f.metadata.items() if k != "sha256"}, checksums={"sha256": None}) as w:
        w.put("vectors", np.full(vec.shape, -2.98e37, np.float32))
        w.put("present", np.ones(len(keys), bool))
        w.commit()
    shutil.rmtree(fs.path / "views")
    return planted


def test_a_view_planted_in_the_old_temp_location_is_never_read(store, monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    monkeypatch.delenv("MODALREC_VIEW_DIR", raising=False)
    fs = store.open_set("fp", "title", dim=2)
    fs.write(["a", "b"], [[1, 2], [3, 4]])
    planted = plant_old_temp_view(fs, ["a", "b"], tmp_path / "tmp")
    before = planted.read_bytes()

    vec, present = FeatureSet(fs.path).read(["a", "b"])  # a writable store: its own view
    assert vec.tolist() == [[1, 2], [3, 4]] and present.all()
    assert fs.path / "views" in Path(vec.filename).parents

    shutil.rmtree(fs.path / "views")
    read_only_views(monkeypatch, store)  # a read-only store and no view directory configured
    with pytest.warns(StoreWarning, match="read-only and no view directory is configured"):
        vec, present = FeatureSet(fs.path).read(["a", "b"])
    assert vec.tolist() == [[1, 2], [3, 4]] and not isinstance(vec, np.memmap)  # gathered in memory
    assert planted.read_bytes() == before  # neither read nor replaced


def test_the_view_directory_of_a_read_only_store_must_be_private(store, monkeypatch, tmp_path):
    fs = store.open_set("fp", "title", dim=2)
    fs.write(["a"], [[1, 2]])
    read_only_views(monkeypatch, store)

    views = tmp_path / "mine" / "views"
    vec, _ = FeatureSet(fs.path, view_dir=views).read(["a"])  # created for us, 0700
    assert views in Path(vec.filename).parents and vec.tolist() == [[1, 2]]
    assert (views.stat().st_mode & 0o777) == 0o700 and (Path(vec.filename).parent.stat().st_mode & 0o777) == 0o700

    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    with pytest.raises(ConfigError, match=r"shared .*writable by other users .*store.view_dir"):
        FeatureSet(fs.path, view_dir=shared).read(["a"])

    if os.geteuid() == 0:  # only root can hand a directory to someone else
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o700)
        os.chown(theirs, 12345, 12345)
        monkeypatch.setenv("MODALREC_VIEW_DIR", str(theirs))
        with pytest.raises(ConfigError, match="belongs to uid 12345"):
            FeatureSet(fs.path).read(["a"])


def test_a_lease_keeps_gc_away_until_it_is_released_or_stale(store, monkeypatch):
    import pipeline.store.leases as leases

    with store.lease("fp", "title", purpose="test") as lease:
        fs = store.open_set("fp", "title", dim=2)
        fs.write(["a"], [[1, 2]])
        report = store.gc(prune_unlinked=True)
        assert report["sets"] == [] and report["in_use"] == [str(fs.path)] and fs.path.is_dir()
        assert store.info("fp/title")["leases"] == 1
    assert not lease.path.exists() and store.gc(prune_unlinked=True)["sets"] == [str(fs.path)]

    monkeypatch.setattr(leases, "REFRESH", 0.02)
    with store.lease("fp", "other") as lease:  # refreshed while held, and written again if removed
        old = time.time() - 3600
        os.utime(lease.path, (old, old))
        assert wait_until(lambda: lease.path.stat().st_mtime > time.time() - 60)
        lease.path.unlink()
        assert wait_until(lease.path.exists)
    assert not lease.path.exists()

    # a writer that died (a pid that is gone) or went quiet on another host: stale, removed
    fs = store.open_set("fp", "dead", dim=2)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = leases.process_tag().split("-")[2]
    ghost = store.root / "leases" / fs.name / f"{int(dead.stdout)}-0000-{host}.lease"
    ghost.parent.mkdir(parents=True)
    ghost.write_text("{}")
    far = store.open_set("fp", "far", dim=2)
    quiet = store.root / "leases" / far.name / "1-abcd-otherhost.lease"
    quiet.parent.mkdir(parents=True)
    quiet.write_text("{}")
    report = store.gc(prune_unlinked=True, dry_run=True)
    assert report["in_use"] == [str(far.path)] and report["sets"] == [str(fs.path)]  # another host: not yet
    os.utime(quiet, (time.time() - leases.LEASE_AGE - 5,) * 2)
    report = store.gc(prune_unlinked=True)
    assert sorted(report["leases"]) == sorted([str(ghost), str(quiet)])
    assert sorted(report["sets"]) == sorted([str(fs.path), str(far.path)]) and not report["in_use"]


def test_gc_puts_back_a_set_leased_while_it_was_being_removed(store, monkeypatch):
    import pipeline.store.store as store_module

    fs = store.open_set("fp", "title", dim=2)
    fs.write(["a"], [[1, 2]])
    real = store_module.rename_away
    held = []

    def rename_then_writer_arrives(path):
        trash = real(path)
        held.append(store.lease("fp", "title").__enter__())  # a writer leases the set meanwhile
        return trash

    monkeypatch.setattr(store_module, "rename_away", rename_then_writer_arrives)
    report = store.gc(prune_unlinked=True)
    held[0].__exit__(None, None, None)
    assert report["sets"] == [] and report["in_use"] == [str(fs.path)]
    assert FeatureSet(fs.path).read(["a"])[0].tolist() == [[1, 2]]


def test_links_of_every_kind_keep_their_sets(store):
    extracted = store.open_set("enc", "title", dim=2)
    imported = store.open_set("mmrec:abc", "image", dim=2)
    tuned = store.open_set("tuned", "title", dim=2)
    orphan = store.open_set("old", "title", dim=2)
    for fs, kind, source in ((extracted, "extract", "text.title"), (imported, "mmrec", "image"),
                             (tuned, "finetuned", "0123.clip_text")):
        store.write_link("shop", source, kind=kind, fingerprint=fs.fingerprint, field=fs.field, set_name=fs.name)
    assert store.read_link("shop", "image", kind="mmrec")["set"] == imported.name
    assert store.read_link("shop", "nothing") is None
    assert sorted(link["kind"] for link in store.links()) == ["extract", "finetuned", "mmrec"]
    assert store.gc(prune_unlinked=True)["sets"] == [str(orphan.path)]
    broken = store.link_path("shop", "bad")
    broken.write_text("{not json")
    from pipeline.errors import DataError

    with pytest.raises(DataError, match=r"bad.json: unreadable link"):
        store.gc(prune_unlinked=True)  # a link that cannot be read protects nothing: no guessing


def test_only_the_store_reads_and_writes_its_records():
    """links/, leases/, content-keys/ and timings/ are laid out by pipeline/store alone."""
    names = re.compile(r"""["'/](links|leases|content-keys|timings)["'/]""")
    offenders = []
    for path in [*REPO.glob("pipeline/**/*.py"), *REPO.glob("benchmarks/*.py"), *REPO.glob("recipes/**/*.py")]:
        if "store" in path.relative_to(REPO).parts[:2]:
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if names.search(line.split("#")[0]):
                offenders.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert offenders == []


def test_a_float16_set_from_before_the_dtype_was_in_its_identity_moves_aside(store):
    from pipeline.store.keys import set_name

    legacy = store.open_set("fp", "title", dim=2, dtype="float16")
    legacy.write(["a"], [[1, 2]])
    old_path = store.root / set_name("fp", "title")  # where it used to live: the float32 name
    os.rename(legacy.path, old_path)
    manifest = json.loads((old_path / "manifest.json").read_text())
    (old_path / "manifest.json").write_text(json.dumps({**manifest, "name": old_path.name}))

    f32 = store.open_set("fp", "title", dim=2)  # float32 may have its name back
    assert f32.path == old_path and f32.dtype == "float32" and f32.missing(["a"]) == [0]
    f16 = store.open_set("fp", "title", dim=2, dtype="float16")
    assert f16.name == legacy.name and f16.read(["a"])[0].tolist() == [[1, 2]]


def test_reading_a_set_that_vanished_is_a_clear_error(store):
    from pipeline.errors import DataError
    from pipeline.store.files import remove_tree

    fs = store.open_set("fp", "title", dim=2)
    fs.write(["a"], [[1, 2]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        remove_tree(fs.path)
        with pytest.raises(DataError, match="was removed from .* while in use"):
            fs.read(["a", "b"])
    assert not fs.path.exists()  # not brought back half-made by the read


def test_the_view_directory_is_a_config_key(tmp_path, monkeypatch):
    from conftest import write_config

    from pipeline.config import load_config

    cfg_path = write_config(tmp_path / "c.yaml", {
        "cache_dir": "cache", "store": {"view_dir": "private-views"},
        "data": {"name": "x", "root": "raw", "interactions": {"path": "events.csv"}}})
    store = FeatureStore.from_config(load_config(cfg_path))
    assert store.view_dir == tmp_path / "private-views"  # relative to the config file, like every path
    monkeypatch.chdir(tmp_path / "..")
    other = FeatureStore.from_config(load_config(cfg_path, ["store.view_dir=elsewhere"]))
    assert other.view_dir == tmp_path.parent / "elsewhere"  # overrides: relative to where you run
    fs = store.open_set("fp", "title", dim=2)
    assert fs.view_dir == store.view_dir and store.sets()[0].view_dir == store.view_dir
