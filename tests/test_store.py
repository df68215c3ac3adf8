"""The feature store: round trips, alignment, resumability under SIGKILL, concurrent writers,
damage detection, maintenance (list/info/gc/compact) and MMRec interop.

Vectors are a deterministic function of their key (``expected``), so any row the store serves
can be checked against what it should hold, whichever process wrote it.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import multiprocessing as mp
import os
import random
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import DataError
from pipeline.store import (FeatureSet, FeatureStore, StoreWarning, content_key_file, content_key_text, mmrec_key,
                            mmrec_keys)
from pipeline.store.files import temp_path

REPO = Path(__file__).resolve().parents[1]
KILL_FP, KILL_FIELD, KILL_DIM, KILL_BATCH, KILL_BATCHES = "fp-kill", "text", 96, 40, 300


def expected(keys: list[str], dim: int) -> np.ndarray:
    """The vector every writer stores for a key: seeded by the key's hash."""
    out = np.empty((len(keys), dim), np.float32)
    for i, k in enumerate(keys):
        seed = int.from_bytes(hashlib.sha256(k.encode()).digest()[:8], "little")
        out[i] = np.random.default_rng(seed).standard_normal(dim, dtype=np.float32)
    return out


def kill_keys(batch: int) -> list[str]:
    return [f"item-{batch}-{i}" for i in range(KILL_BATCH)]


def shard_keys_on_disk(fs: FeatureSet) -> set[str]:
    """Keys of complete shards, read with the safetensors library: an oracle independent of the store."""
    from safetensors.numpy import load_file

    keys: set[str] = set()
    for p in (fs.path / "shards").glob("*.safetensors"):
        if p.name.startswith(".tmp-"):
            continue
        raw = load_file(str(p))["keys"]
        keys.update(bytes(row).rstrip(b"\0").decode() for row in raw)
    return keys


@pytest.fixture
def store(tmp_path: Path) -> FeatureStore:
    return FeatureStore(tmp_path / "features")


# ------------------------------------------------------------------------------------------ keys


def test_content_keys(tmp_path: Path):
    f = tmp_path / "a.bin"
    data = os.urandom(3 << 20)  # several read chunks
    f.write_bytes(data)
    assert content_key_file(f) == hashlib.sha256(data).hexdigest()
    assert content_key_file(tmp_path / "nope.jpg") is None
    assert content_key_text("héllo") == hashlib.sha256("héllo".encode()).hexdigest()
    assert content_key_text(None) is None
    assert mmrec_key("abc", "1") != mmrec_key("abc", "2") != mmrec_key("abd", "1")


# ------------------------------------------------------------------------- round trips, alignment


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_round_trip_each_dtype(store: FeatureStore, dtype: str):
    import torch

    keys = [f"k{i}" for i in range(300)]
    x = expected(keys, 16) * 100
    x[0, :4] = [1.00390625, 1.01171875, -3.0e-39, 65504.0]  # bf16 ties, a subnormal, float16 max
    fs = store.open_set("fp", f"f-{dtype}", dim=16, dtype=dtype)
    fs.write(keys[:150], x[:150])
    fs.write(keys[150:], torch.from_numpy(x[150:]))  # torch input is accepted too
    vec, present = fs.read(keys)
    assert present.all()
    got = fs.as_torch(vec)
    want = torch.from_numpy(x).to(getattr(torch, dtype))
    assert got.dtype == want.dtype and got.shape == (300, 16)
    assert torch.equal(got, want)  # bit-exact, including bf16 rounding to nearest-even
    if dtype == "bfloat16":
        assert vec.dtype == np.uint16  # numpy view of the bit patterns
    else:
        assert vec.dtype == np.dtype(dtype)


def test_read_is_aligned_masked_and_memory_mapped(store: FeatureStore):
    keys = [f"k{i}" for i in range(500)]
    fs = store.open_set("fp", "image", dim=8)
    fs.write(keys[:200], expected(keys[:200], 8))
    fs.write(keys[200:400], expected(keys[200:400], 8))
    order = keys.copy()
    random.Random(0).shuffle(order)
    query = order + [None, "never-written"]
    vec, present = fs.read(query)
    assert vec.shape == (502, 8)
    want_present = np.array([k is not None and k in set(keys[:400]) for k in query])
    np.testing.assert_array_equal(present, want_present)
    np.testing.assert_array_equal(vec[present], expected([k for k, p in zip(query, present) if p], 8))
    # absent rows are masked (and zero), never a silent row of some other item
    assert not present[-2:].any() and not vec[~present].any()
    # a memory map of one view file, not a copy in RAM
    assert isinstance(vec, np.memmap) and isinstance(vec.base, mmap.mmap)
    assert Path(vec.filename).parent == fs.path / "views"
    # the same key list reuses the same view (nothing rebuilt)
    mtime = Path(vec.filename).stat().st_mtime_ns
    vec2, _ = fs.read(query)
    assert vec2.filename == vec.filename and Path(vec.filename).stat().st_mtime_ns == mtime
    # a new shard with requested keys gives a new view, and the stale one is dropped
    fs.write(keys[400:], expected(keys[400:], 8))
    vec3, present3 = fs.read(query)
    assert vec3.filename != vec.filename and present3[:500].all()
    np.testing.assert_array_equal(vec3[:500], expected(order, 8))
    assert len(list((fs.path / "views").glob("*.safetensors"))) == 1
    # writing into the result never changes the store (copy-on-write)
    vec3[0] = 0
    np.testing.assert_array_equal(fs.read(query)[0][0], expected(order[:1], 8)[0])
    empty, mask = fs.read([])
    assert empty.shape == (0, 8) and mask.shape == (0,)


def test_rerun_computes_only_what_changed(store: FeatureStore):
    texts = [f"title {i}" for i in range(50)]
    keys = [content_key_text(t) for t in texts]
    fs = store.open_set("fp", "title", dim=4)
    assert fs.missing(keys) == list(range(50))
    fs.write(keys, expected(keys, 4))
    assert fs.missing(keys) == []
    reopened = store.open_set("fp", "title", dim=4)  # a later run
    assert reopened.missing(keys) == []
    texts[7] = "title 7, edited"
    keys2 = [content_key_text(t) for t in texts] + [None]  # None: item without text, not work
    assert reopened.missing(keys2) == [7]
    # a different encoder (fingerprint) is a different set: everything to compute
    assert store.open_set("fp-other", "title", dim=4).missing(keys) == list(range(50))


def test_failed_items_are_recorded(store: FeatureStore):
    fs = store.open_set("fp", "image", dim=4)
    keys = ["a", "b", "c"]
    fs.write(["a"], expected(["a"], 4))
    fs.write_failed(["b"], ["cannot decode image: truncated JPEG"])
    assert fs.failed() == {"b": "cannot decode image: truncated JPEG"}
    assert fs.missing(keys) == [2]
    assert fs.missing(keys, retry_failed=True) == [1, 2]
    _, present = fs.read(keys)
    assert present.tolist() == [True, False, False]  # failed is a mask too
    assert FeatureStore(store.root).info("image")["failed_examples"] == {"b": "cannot decode image: truncated JPEG"}
    fs.write(["b"], expected(["b"], 4))  # a retry that worked
    assert fs.failed() == {}


def test_errors_name_the_key_and_set(store: FeatureStore):
    fs = store.open_set("fp", "title", dim=4)
    with pytest.raises(DataError, match=r"title-.*dim 4.*dim 5"):
        store.open_set("fp", "title", dim=5)
    # the storage dtype is part of a set's identity (issue 15 item 8): float16 rows of the same
    # encoder and field go to a set of their own instead of being refused
    assert store.open_set("fp", "title", dim=4, dtype="float16").name != fs.name
    with pytest.raises(DataError, match=rf"{fs.name}.*dim 4.*dim 3"):
        fs.write(["a", "b"], np.zeros((2, 3), np.float32))
    bad = np.ones((3, 4), np.float32)
    bad[1, 2] = np.nan
    with pytest.raises(DataError, match=rf"{fs.name}.*'key-b'"):
        fs.write(["key-a", "key-b", "key-c"], bad)
    fs16 = store.open_set("fp", "f16", dim=4, dtype="float16")
    with pytest.raises(DataError, match="'huge'.*float16"):
        fs16.write(["ok", "huge"], np.array([[1, 2, 3, 4], [1e6, 0, 0, 0]], np.float32))
    with pytest.raises(DataError, match="key #1"):
        fs.write(["a", None], np.zeros((2, 4)))
    assert fs.missing(["key-a", "key-b", "ok"]) == [0, 1, 2]  # nothing half-written by the refusals


def test_latest_write_wins_and_compaction_keeps_it(store: FeatureStore):
    fs = store.open_set("fp", "title", dim=2)
    assert fs.read(["a", "b"])[1].tolist() == [False, False]  # an empty set reads as all absent
    fs.write(["a", "b"], [[1, 1], [2, 2]])
    fs.write(["a"], [[3, 3]])
    np.testing.assert_array_equal(fs.read(["a", "b"])[0], [[3, 3], [2, 2]])
    assert fs.compact() == {"shards_before": 2, "shards_after": 1, "rows": 2}
    fs.write(["b"], [[4, 4]])  # written after compaction: still the newest
    other = FeatureSet(fs.path)
    np.testing.assert_array_equal(other.read(["a", "b"])[0], [[3, 3], [4, 4]])
    assert other.compact()["shards_after"] == 1
    np.testing.assert_array_equal(FeatureSet(fs.path).read(["b", "a"])[0], [[4, 4], [3, 3]])


def test_read_only_store_builds_views_elsewhere(store: FeatureStore, monkeypatch, tmp_path: Path):
    import errno
    import tempfile

    import pipeline.store.views as views

    fs = store.open_set("fp", "title", dim=2)
    fs.write(["a"], [[1, 2]])
    real = views.TensorFileWriter

    def refuse_in_store(final, *a, **kw):
        if store.root in Path(final).parents:
            raise PermissionError(errno.EROFS, "Read-only file system", str(final))
        return real(final, *a, **kw)

    monkeypatch.setattr(views, "TensorFileWriter", refuse_in_store)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("MODALREC_VIEW_DIR", str(tmp_path / "tmp" / "views"))  # the fallback is configured, never implied
    vec, present = FeatureSet(fs.path).read(["a", None])
    assert present.tolist() == [True, False] and vec[0].tolist() == [1, 2]
    assert tmp_path / "tmp" in Path(vec.filename).parents and isinstance(vec, np.memmap)


# ------------------------------------------------------------------------------ atomicity, concurrency


def _run_kill_child(root: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, "kill-child", str(root)], stdout=subprocess.PIPE,
                            text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})


def _kill_child(root: str) -> None:
    """Writes batches (one shard each) until done, saying which finished; the test kills it."""
    fs = FeatureStore(root).open_set(KILL_FP, KILL_FIELD, dim=KILL_DIM, dtype="float16")
    print("ready", flush=True)
    for b in range(KILL_BATCHES):
        keys = kill_keys(b)
        todo = fs.missing(keys)
        if todo:
            keys = [keys[i] for i in todo]
            time.sleep(0.004)  # "encoding": keeps the writer busy long enough to be killed mid-run
            fs.write(keys, expected(keys, KILL_DIM))
        print(b, flush=True)


def test_sigkill_at_random_moments_loses_and_corrupts_nothing(store: FeatureStore):
    all_keys = [k for b in range(KILL_BATCHES) for k in kill_keys(b)]
    want = expected(all_keys, KILL_DIM).astype(np.float16)
    rng = random.Random(1234)
    seen_progress = []
    for _ in range(5):
        child = _run_kill_child(store.root)
        assert child.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.3))
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate()
        assert child.returncode == -signal.SIGKILL, "the writer finished before it was killed; make it slower"
        reported = {int(line) for line in out.split()}
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no damaged file may be found: a kill never tears a shard
            fs = FeatureStore(store.root).get(field=KILL_FIELD)  # opened afresh, as a re-run would
            vec, present = fs.read(all_keys)
            todo = fs.missing(all_keys)
        np.testing.assert_array_equal(vec[present], want[present])  # every served row is right
        by_batch = present.reshape(KILL_BATCHES, KILL_BATCH)
        assert (by_batch.all(axis=1) | ~by_batch.any(axis=1)).all(), "a batch was half stored"
        done = set(np.nonzero(by_batch.all(axis=1))[0].tolist())
        assert reported <= done  # nothing finished was lost
        assert len(done - reported) <= 1  # at most the shard renamed just before the kill
        on_disk = shard_keys_on_disk(fs)
        assert todo == [i for i, k in enumerate(all_keys) if k not in on_disk]  # exactly the unfinished work
        seen_progress.append(len(done))
    assert seen_progress[-1] > 0 and seen_progress == sorted(seen_progress)
    assert not list(store.root.rglob("*.damaged"))
    report = store.gc()  # leftovers of killed writers go; nothing else
    assert all(Path(p).name.startswith(".tmp-") for p in report["temp"]) and not report["sets"]
    assert not [p for p in store.root.rglob(".tmp-*")]
    child = _run_kill_child(store.root)  # finish the work
    out, _ = child.communicate(timeout=60)
    assert child.returncode == 0
    fs = store.get(field=KILL_FIELD)
    assert fs.missing(all_keys) == []
    vec, present = fs.read(all_keys)
    assert present.all()
    np.testing.assert_array_equal(vec, want)
    assert store.info(field=KILL_FIELD)["rows"] == len(all_keys)


def _concurrent_writer(root: str, worker: int, start) -> None:
    start.wait()
    fs = FeatureStore(root).open_set("fp-mp", "image", dim=32, identity={"worker": worker})  # racing creators
    keys = [f"k{i}" for i in range(worker * 100, worker * 100 + 150)]  # 50 keys overlap the next worker
    for s in range(0, len(keys), 10):
        part = keys[s:s + 10]
        fs.write(part, expected(part, 32))
        vec, present = fs.read(part)
        assert present.all() and np.array_equal(vec, expected(part, 32))


def test_concurrent_writers(store: FeatureStore):
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    procs = [ctx.Process(target=_concurrent_writer, args=(str(store.root), w, start)) for w in range(3)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    keys = [f"k{i}" for i in range(350)]
    assert len(store.list()) == 1
    fs = store.get("fp-mp/image")
    assert fs.missing(keys) == []
    vec, present = fs.read(keys)
    assert present.all()
    np.testing.assert_array_equal(vec, expected(keys, 32))
    assert json.loads((fs.path / "manifest.json").read_text())["rows"] == 350
    result = fs.compact()
    assert result == {"shards_before": 45, "shards_after": 1, "rows": 350}
    vec, present = fs.read(keys)
    assert present.all() and np.array_equal(vec, expected(keys, 32))


def test_damaged_shards_are_ignored_with_a_warning(store: FeatureStore):
    fs = store.open_set("fp", "audio", dim=8)
    parts = [[f"k{b}-{i}" for i in range(20)] for b in range(3)]
    for keys in parts:
        fs.write(keys, expected(keys, 8))
    shards = sorted((fs.path / "shards").glob("*.safetensors"))
    all_keys = sum(parts, [])
    # 1) truncated: caught as soon as the store lists its shards
    with open(shards[0], "r+b") as f:
        f.truncate(shards[0].stat().st_size - 7)
    fresh = FeatureSet(fs.path)
    with pytest.warns(StoreWarning, match=shards[0].name):
        todo = fresh.missing(all_keys)
    assert todo == list(range(20))
    # 2) a flipped byte in the vectors: headers look fine, the checksum catches it on read
    data = bytearray(shards[1].read_bytes())
    data[-200] ^= 0xFF
    shards[1].write_bytes(bytes(data))
    fresh = FeatureSet(fs.path)
    with pytest.warns(StoreWarning, match="checksum"):
        vec, present = fresh.read(all_keys)
    assert present.tolist() == [False] * 40 + [True] * 20
    np.testing.assert_array_equal(vec[40:], expected(parts[2], 8))
    assert fresh.missing(all_keys) == list(range(40))  # recomputed on the next run
    assert FeatureSet(fs.path).missing(all_keys) == list(range(40))  # by every process
    fs.write(all_keys[:40], expected(all_keys[:40], 8))
    assert FeatureSet(fs.path).read(all_keys)[1].all()
    report = store.gc()
    assert len(report["damaged"]) == 2 and not list(fs.path.rglob("*.damaged"))


# ------------------------------------------------------------------------------------- maintenance


def test_manifest(store: FeatureStore):
    ident = {"spec": "timm:resnet18", "weights": "imagenet", "image_size": 224}
    fs = store.open_set("abc123", "photo", dim=4, dtype="bfloat16", spec="timm:resnet18", identity=ident)
    fs.write(["a", "b"], expected(["a", "b"], 4))
    fs.write_failed(["c"], ["file not found: img/c.jpg"])
    m = json.loads((fs.path / "manifest.json").read_text())
    assert {k: m[k] for k in ("spec", "fingerprint", "field", "dim", "dtype", "rows", "failed", "identity")} == {
        "spec": "timm:resnet18", "fingerprint": "abc123", "field": "photo", "dim": 4, "dtype": "bfloat16",
        "rows": 2, "failed": 1, "identity": ident}
    assert m["created"][:4].isdigit()
    import pipeline
    import torch
    assert m["versions"]["modalrec"] == pipeline.__version__
    assert m["versions"]["torch"] == torch.__version__.split("+")[0]
    assert fs.manifest["rows"] == 2


def test_list_info_gc(store: FeatureStore, tmp_path: Path):
    a = store.open_set("aaaa1111", "title", dim=4, spec="st:minilm")
    b = store.open_set("bbbb2222", "title", dim=4)
    c = store.open_set("aaaa1111", "image", dim=4)
    a.write(["x"], expected(["x"], 4))
    assert sorted(m["name"] for m in store.list()) == sorted([a.name, b.name, c.name])
    assert store.info("aaaa1111/title")["name"] == a.name
    assert store.info(a.name)["rows"] == 1
    assert store.info(fingerprint="bbbb")["name"] == b.name
    assert store.info("aaaa", field="image")["name"] == c.name
    assert store.info(a.name)["storage"]["shards"] == 1
    with pytest.raises(DataError, match="matches 2 feature sets"):
        store.info("aaaa")
    with pytest.raises(DataError, match="no feature set"):
        store.info("zzzz")
    # leftovers: a dead writer's temp file, a remote writer's old and fresh ones, a live one
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_tmp = a.path / "shards" / f".tmp-{int(dead.stdout)}-0000-{temp_path(a.path, 'x').name.split('-')[3]}-s"
    dead_tmp.write_bytes(b"partial")
    old_remote = a.path / "shards" / ".tmp-1-abcd-otherhost-s"
    old_remote.write_bytes(b"partial")
    os.utime(old_remote, (time.time() - 7200, time.time() - 7200))
    fresh_remote = a.path / "views" / ".tmp-1-abcd-otherhost-v"
    fresh_remote.parent.mkdir(exist_ok=True)
    fresh_remote.write_bytes(b"partial")
    live = temp_path(a.path / "failed", "x.json")
    live.parent.mkdir(exist_ok=True)
    live.write_bytes(b"{")
    dry = store.gc(keep=[a, "aaaa1111/image"], dry_run=True)
    assert sorted(dry["temp"]) == sorted([str(dead_tmp), str(old_remote)])
    assert dry["sets"] == [str(b.path)]
    assert dead_tmp.exists() and old_remote.exists() and b.path.exists()  # dry run removes nothing
    assert store.gc(keep=[a, "aaaa1111/image"]) == dry
    assert not dead_tmp.exists() and not old_remote.exists() and not b.path.exists()
    assert fresh_remote.exists() and live.exists()
    assert sorted(m["name"] for m in store.list()) == sorted([a.name, c.name])
    assert store.gc(keep=None)["sets"] == []  # without keep no set is touched
    assert store.gc(keep=[a, c, "typo"], dry_run=True)["keep_unmatched"] == ["typo"]
    assert a.missing(["x"]) == []
    view = Path(a.read(["x", "y"])[0].filename)
    assert store.gc(views=True)["views"] == [str(view)] and not view.exists()
    assert a.read(["x", "y"])[1].tolist() == [True, False]  # rebuilt on demand


def test_default_root_follows_the_config(tmp_path: Path):
    from types import SimpleNamespace

    assert FeatureStore.from_config(SimpleNamespace(cache_dir=tmp_path)).root == tmp_path / "features"
    assert FeatureStore().root == Path.cwd() / "cache" / "features"


# -------------------------------------------------------------------------------------------- MMRec


def _tiktok() -> Path:
    from conftest import shared

    return shared("tiktok")


def test_mmrec_import_export_round_trip(store: FeatureStore, tmp_path: Path):
    src = _tiktok() / "image_feat.npy"
    sets = store.import_mmrec(src)
    fs = sets["image"]
    source = np.load(src, allow_pickle=False)
    sha = content_key_file(src)
    assert fs.fingerprint == f"mmrec:{sha}" and fs.field == "image" and fs.dim == source.shape[1]
    ids = [str(i) for i in range(len(source))]
    assert fs.manifest["rows"] == len(source)
    shards = sorted((fs.path / "shards").iterdir())
    assert store.import_mmrec(src)["image"].path == fs.path  # again: same set, nothing written
    assert sorted((fs.path / "shards").iterdir()) == shards
    # rows are keyed by (file, item): reading by item id in any order
    perm = np.random.default_rng(0).permutation(len(ids))[:100]
    vec, present = fs.read(mmrec_keys(fs, [ids[i] for i in perm]))
    assert present.all() and np.array_equal(vec, source[perm])
    out = store.export_mmrec(fs, ids, tmp_path / "export", "image")
    assert out == tmp_path / "export" / "image_feat.npy"
    assert out.read_bytes() == src.read_bytes()  # byte-equal to the source file
    with pytest.raises(DataError, match=r"1 of 6711 items have no features: 99999"):
        store.export_mmrec(fs, ids + ["99999"], tmp_path / "export2", "image")
    assert not (tmp_path / "export2" / "image_feat.npy").exists()


def test_mmrec_import_marks_bad_rows_and_export_refuses_gaps(store: FeatureStore, tmp_path: Path):
    arr = expected([str(i) for i in range(30)], 6)
    arr[4, 1] = np.inf
    np.save(tmp_path / "text_feat.npy", arr)
    fs = store.import_mmrec(tmp_path, [f"item{i}" for i in range(30)])["text"]
    assert fs.manifest["rows"] == 29
    assert list(fs.failed().values()) == ["text_feat.npy row 4 (item item4): NaN or inf"]
    with pytest.raises(DataError, match=r"item4 \(failed: text_feat.npy row 4"):
        store.export_mmrec(fs, [f"item{i}" for i in range(30)], tmp_path / "out", "text")
    extracted = store.open_set("enc", "text", dim=6)  # a set that was not imported needs the keys
    with pytest.raises(DataError, match="pass the items' content keys"):
        store.export_mmrec(extracted, ["a"], tmp_path / "out", "text")
    extracted.write(["ka", "kb"], arr[:2])
    out = store.export_mmrec(extracted, ["a", "b"], tmp_path / "out", "text", keys=["ka", "kb"])
    np.testing.assert_array_equal(np.load(out, allow_pickle=False), arr[:2])


if __name__ == "__main__" and sys.argv[1:2] == ["kill-child"]:
    _kill_child(sys.argv[2])
