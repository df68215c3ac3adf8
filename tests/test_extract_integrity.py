"""What `extract`, `store` and `load_features` do when the store is damaged or changed under
them (issue 15): flipped bytes in views and shards, a gc during an extract, a set removed while
being written, float16 next to float32, media files that do not exist, NaN rows of an MMRec file,
and `extract --encoder`.

A cheap encoder (the first 16 bytes of the text or file through a fixed linear map) keeps every
test at a few seconds; the store does not care what computed its rows.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import write_config
from test_extract import run_extract, write_catalog

N = 8


class FirstBytes:
    def __init__(self, modality: str):
        self.modality = modality

    def __call__(self, value):
        from encoders import EncoderInputError

        raw = value.encode("utf-8") if self.modality == "text" else Path(value).read_bytes()
        if not raw:
            raise EncoderInputError(f"{value}: empty")
        raw = list(raw[:16])
        return {"bytes": torch.tensor(raw + [0] * (16 - len(raw)), dtype=torch.float32)}


def bytes_factory(name, *, modality=None, offline=False, random_init=False, **options):
    from encoders import Encoder
    from encoders.processing import PadCollate

    class FirstBytesEncoder(Encoder):
        def __init__(self):
            super().__init__(modality=modality, dim=4, preprocessor=FirstBytes(modality), collator=PadCollate(),
                             identity={"backend": "bytes-test", "model": name, "modality": modality})
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                self.proj = torch.nn.Linear(16, 4)

        def encode(self, batch):
            return self.proj(batch["bytes"] / 255)

    return FirstBytesEncoder()


@pytest.fixture(autouse=True)
def _bytes_backend():
    import encoders

    encoders.register("bytes-test")(bytes_factory)


def make(tmp_path: Path, missing: tuple[int, ...] = (), **features) -> Path:
    raw = write_catalog(tmp_path / "raw", n=N)
    for i in missing:
        (raw / "media" / f"i{i:02d}.jpg").unlink()
    return write_config(tmp_path / "c.yaml", {
        "cache_dir": "cache",
        "data": {
            "name": "tiny", "root": "raw",
            "items": {"path": "items.csv", "id": "id", "text": {"text": "{title}"}, "image": {"image": "img"}},
            "interactions": {"path": "events.csv", "user": "user", "item": "item", "timestamp": "day"},
            "split": {"protocol": "leave_one_out"},
        },
        "encoders": {"text": {"spec": "bytes-test:t", "fields": ["text"]},
                     "image": {"spec": "bytes-test:i", "fields": ["image"], "on_error": "skip"}},
        "extract": {"batch_size": 4, "num_workers": 0, "flush_every": 4},
        "features": {"text": {"encoder": "text"}, "image": {"encoder": "image"}, **features},
    })


def ok(capsys, cfg: Path, *args) -> dict[str, dict]:
    code, out, err = run_extract(capsys, cfg, *args)
    assert code == 0, err
    return {f["encoder"]: f for f in out["feature_sets"]}


def load(cfg_path: Path, *names: str, overrides=()):
    from pipeline.config import load_config
    from pipeline.data import PreparedData
    from pipeline.features import load_features

    cfg = load_config(cfg_path, list(overrides))
    return load_features(cfg, PreparedData.load(cfg.prepared_dir), list(names) or None)


def set_dir(cfg: Path, field: str) -> Path:
    """The one feature set of this field in the config's store."""
    (found,) = [p for p in (cfg.parent / "cache" / "features").glob(f"{field}-*") if (p / "manifest.json").exists()]
    return found


def flip_first_value(path: Path) -> None:
    """Flip the exponent byte of the first float of ``vectors``: a huge wrong value, as on a bad disk."""
    from pipeline.store.tensor_file import TensorFile

    f = TensorFile(path)
    at = f.data_start + f.entries["vectors"][2] + 3
    data = bytearray(path.read_bytes())
    data[at] ^= 0x7F
    path.write_bytes(bytes(data))


def test_a_flipped_view_is_reported_rebuilt_and_never_served(tmp_path, capsys):
    from pipeline.cli import main
    from pipeline.store import StoreWarning

    cfg = make(tmp_path)
    sets = ok(capsys, cfg)
    right = load(cfg, "text")["text"].values.clone()
    views = set_dir(cfg, "text") / "views"
    (view,) = views.glob("*.safetensors")
    flip_first_value(view)
    with pytest.warns(StoreWarning, match="checksum mismatch"):  # training reads the right values
        torch.testing.assert_close(load(cfg, "text")["text"].values, right, rtol=0, atol=0)

    (view,) = views.glob("*.safetensors")  # the rebuilt view, damaged again: store info tells
    flip_first_value(view)
    with pytest.warns(StoreWarning, match="checksum mismatch"):
        assert main(["store", "info", f"{sets['text']['fingerprint'][:16]}/text", "--config", str(cfg), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["storage"]["damaged"] == 1
    assert info["verified"]["damaged_views"] == 1 and info["storage"]["damaged_views"] == 1
    assert info["rows"] == N  # the shards are fine: nothing to recompute
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the damaged view was set aside: rebuilt without a word
        torch.testing.assert_close(load(cfg, "text")["text"].values, right, rtol=0, atol=0)

    (view,) = views.glob("*.safetensors")  # damaged again, then extract runs first
    flip_first_value(view)
    with pytest.warns(StoreWarning, match="rebuilt from the shards"):
        again = ok(capsys, cfg)
    assert (again["text"]["computed"], again["text"]["reused"]) == (0, N)
    from pipeline.store.views import view_checksum_ok

    (view,) = views.glob("*.safetensors")
    assert view_checksum_ok(view) is True  # extract rebuilt it from the shards
    torch.testing.assert_close(load(cfg, "text")["text"].values, right, rtol=0, atol=0)


def test_rows_of_a_damaged_shard_are_reported_as_damaged_then_recomputed(tmp_path, capsys):
    from pipeline.errors import DataError
    from pipeline.store import StoreWarning

    cfg = make(tmp_path)
    ok(capsys, cfg)
    right = load(cfg, "text")["text"].values.clone()
    d = set_dir(cfg, "text")
    for v in (d / "views").glob("*"):
        v.unlink()
    shard = sorted((d / "shards").glob("*.safetensors"))[0]
    flip_first_value(shard)
    with pytest.warns(StoreWarning, match="checksum"), pytest.raises(DataError) as e:
        load(cfg, "text")
    assert "4 items had their vectors in damaged store files" in str(e.value)
    assert "never extracted" not in str(e.value) and ".damaged" in str(e.value)
    assert ok(capsys, cfg)["text"]["computed"] == 4  # exactly the rows of the damaged shard
    torch.testing.assert_close(load(cfg, "text")["text"].values, right, rtol=0, atol=0)


def test_gc_during_an_extract_keeps_the_set_it_is_filling(tmp_path, capsys, monkeypatch):
    from pipeline.cli import main
    from pipeline.store import FeatureSet

    cfg = make(tmp_path)
    real = FeatureSet.write
    reports = []

    def write_then_gc(self, keys, vectors):
        real(self, keys, vectors)
        if not reports:  # after the first shard, before the set is linked: the old gc deleted it here
            assert main(["store", "gc", "--prune-unlinked", "--config", str(cfg), "--json"]) == 0
            reports.append(json.loads(capsys.readouterr().out))

    monkeypatch.setattr(FeatureSet, "write", write_then_gc)
    sets = ok(capsys, cfg)
    assert reports[0]["sets"] == [] and len(reports[0]["in_use"]) == 1
    assert reports[0]["in_use"][0] == str(set_dir(cfg, "text"))
    assert sets["text"]["computed"] == N
    monkeypatch.setattr(FeatureSet, "write", real)
    assert load(cfg, "text")["text"].mask.all()
    assert not list((tmp_path / "cache" / "features" / "leases").glob("*/*"))  # released at the end


def test_a_set_removed_while_extracting_is_a_clear_error(tmp_path, capsys, monkeypatch):
    from pipeline.store import FeatureSet
    from pipeline.store.files import remove_tree

    cfg = make(tmp_path)
    real = FeatureSet.write

    def removed_first(self, keys, vectors):
        if self.path.exists():
            remove_tree(self.path)  # by hand, or by a gc that ignores leases
        real(self, keys, vectors)

    monkeypatch.setattr(FeatureSet, "write", removed_first)
    code, _, err = run_extract(capsys, cfg)
    assert code == 2 and "Traceback" not in err and "FileNotFoundError" not in err
    assert "was removed from" in err and "while in use" in err and "4 rows could not be stored" in err


def test_float16_and_float32_sets_of_one_encoder_live_side_by_side(tmp_path, capsys):
    from pipeline.cli import main

    cfg = make(tmp_path)
    f32 = ok(capsys, cfg)["text"]
    f16 = ok(capsys, cfg, "extract.storage_dtype=float16")["text"]
    assert f16["computed"] == N and f16["fingerprint"] == f32["fingerprint"] and f16["set"] != f32["set"]
    assert main(["store", "ls", "--config", str(cfg), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["sets"]
    assert sorted(s["dtype"] for s in listed if s["fingerprint"] == f32["fingerprint"]) == ["float16", "float32"]
    half = load(cfg, "text", overrides=["extract.storage_dtype=float16"])["text"].values
    again = ok(capsys, cfg)["text"]
    assert (again["computed"], again["set"]) == (0, f32["set"])  # the float32 set was left alone
    full = load(cfg, "text")["text"].values
    torch.testing.assert_close(half, full.half().float(), rtol=0, atol=0)


def test_missing_media_are_counted_as_missing_not_failed_on_every_run(tmp_path, capsys):
    from pipeline.cli import main

    cfg = make(tmp_path, missing=(1,))
    for run in range(2):  # the second run computes nothing and says the same
        image = ok(capsys, cfg)["image"]
        assert image["failed"] == 0, run
        assert (image["missing"], image["computed"] + image["reused"]) == (1, N - 1), run
        assert [(f["item_id"], f["kind"]) for f in image["failures"]] == [("i01", "missing")]
    assert main(["store", "info", f"{image['fingerprint'][:16]}/image", "--config", str(cfg), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["failed"] == 0  # nothing about this set failed
    assert main(["extract", str(cfg)]) == 0
    human = capsys.readouterr().out
    assert "skipped i01" not in human and "1 files do not exist" in human and "i01" in human
    assert load(cfg, "image")["image"].mask.tolist() == [i != 1 for i in range(N)]


def test_extract_one_encoder(tmp_path, capsys):
    cfg = make(tmp_path)
    assert list(ok(capsys, cfg, "--encoder", "image")) == ["image"]
    assert sorted(ok(capsys, cfg, "--encoder", "image", "--encoder", "text")) == ["image", "text"]
    code, _, err = run_extract(capsys, cfg, "--encoder", "nope")
    assert code == 2 and "--encoder 'nope'" in err and "text, image" in err


def test_nan_rows_of_an_mmrec_file_are_warned_about_and_its_import_is_linked(tmp_path, capsys):
    from pipeline.cli import main

    cfg = make(tmp_path, mm={"mmrec": "mm_feat.npy"})
    arr = np.arange(N * 3, dtype=np.float32).reshape(N, 3)
    arr[[2, 5], 1] = [np.nan, np.inf]
    np.save(tmp_path / "raw" / "mm_feat.npy", arr)
    assert main(["data", "prepare", str(cfg)]) == 0
    with pytest.warns(UserWarning, match=r"features.mm: 2 rows of .*mm_feat.npy hold NaN or inf .*item 'i02'"):
        mm = load(cfg, "mm")["mm"]
    assert mm.mask.tolist() == [i not in (2, 5) for i in range(N)]
    capsys.readouterr()
    assert main(["store", "gc", "--prune-unlinked", "--config", str(cfg), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["sets"] == []  # the import is linked: kept
    with pytest.warns(UserWarning, match="2 rows"):
        assert load(cfg, "mm")["mm"].mask.sum() == N - 2
