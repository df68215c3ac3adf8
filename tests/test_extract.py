"""`modalrec extract`: only what changed is computed, a warm re-run loads no model, bad input
stops naming the item or is masked, a killed run resumes, two processes share the work.

Tiny local checkpoints (encoder_fixtures) on a tiny catalog of generated texts, JPEGs and WAVs.
The file doubles as the script the kill test runs (``python test_extract.py kill-child ...``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import encoder_fixtures as fx
from conftest import REPO, write_config

N = 10  # items in the tiny catalog
PAST = 1_000_000_000_000  # ns: backdated mtimes are older than the racy-stat window


# ---------------------------------------------------------------- a slow encoder for the kill test


class SlowText:
    """Picklable preprocess: the first 16 UTF-8 bytes of the text."""

    def __call__(self, value):
        from encoders.media import check_text

        raw = list(check_text(value).encode("utf-8")[:16])
        return {"bytes": torch.tensor(raw + [0] * (16 - len(raw)), dtype=torch.float32)}


def slow_factory(name, *, modality=None, offline=False, random_init=False, delay=0.0, **options):
    from encoders import Encoder
    from encoders.processing import PadCollate

    class Slow(Encoder):
        def __init__(self):
            super().__init__(modality="text", dim=4, preprocessor=SlowText(), collator=PadCollate(),
                             identity={"backend": "slow-test", "model": name})
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                self.proj = torch.nn.Linear(16, 4)

        def encode(self, batch):
            time.sleep(float(delay))  # "a big model": keeps the run alive long enough to be killed
            return self.proj(batch["bytes"])

    return Slow()


def _register_slow():
    import encoders

    encoders.register("slow-test")(slow_factory)


# ---------------------------------------------------------------- fixtures


def _backdate(path: Path) -> None:
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        if p.is_file():
            t = time.time_ns() - PAST
            os.utime(p, ns=(t, t))


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("extract_models")
    out = {"bert": fx.build_hf_bert(root / "bert"), "cnx": fx.build_timm_convnext(root / "cnx"),
           "w2v": fx.build_hf_wav2vec2(root / "w2v")}
    for p in out.values():
        _backdate(p)
    return out


def write_catalog(root: Path, n: int = N, texts: list[str] | None = None) -> Path:
    """items.csv (id, title, img, wav) with a JPEG and a WAV per item, and events.csv."""
    (root / "media").mkdir(parents=True, exist_ok=True)
    texts = texts or [f"red hat {i} with a warm green sock" if i % 2 else f"blue scarf {i}" for i in range(n)]
    rows = ["id,title,img,wav"]
    for i in range(n):
        fx.write_image(root / "media" / f"i{i:02d}.jpg", size=(40, 48), seed=i)
        fx.write_wav(root / "media" / f"i{i:02d}.wav", 0.3, rate=8000, channels=1, freq=200 + 40 * i)
        rows.append(f"i{i:02d},{texts[i]},media/i{i:02d}.jpg,media/i{i:02d}.wav")
    (root / "items.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    events = ["user,item,day"]
    for u in range(4):
        for j in range(5):
            events.append(f"u{u},i{(3 * u + j) % n:02d},2024-01-{j + 1:02d}")
    (root / "events.csv").write_text("\n".join(events) + "\n", encoding="utf-8")
    _backdate(root / "media")
    return root


def make_config(tmp_path: Path, models: dict[str, Path], encoders=("text", "image", "audio"), **extract) -> Path:
    specs = {
        "text": {"spec": f"hf:{models['bert']}", "fields": ["text"]},
        "image": {"spec": f"timm:{models['cnx']}", "fields": ["image"]},
        "audio": {"spec": f"hf-audio:{models['w2v']}", "fields": ["audio"], "options": {"max_seconds": 0.5}},
    }
    return write_config(tmp_path / "tiny.yaml", {
        "cache_dir": "cache",
        "data": {
            "name": "tiny", "root": "raw",
            "items": {"path": "items.csv", "id": "id", "text": {"text": "{title}"}, "image": {"image": "img"},
                      "audio": {"audio": "wav"}},
            "interactions": {"path": "events.csv", "user": "user", "item": "item", "timestamp": "day"},
            "split": {"protocol": "leave_one_out"},
        },
        "encoders": {k: specs[k] for k in encoders},
        "extract": {"batch_size": 4, "num_workers": 0, "flush_every": 4, **extract},
        "features": {k: {"encoder": k} for k in encoders},
    })


@pytest.fixture
def setup(tmp_path, models):
    write_catalog(tmp_path / "raw")
    return make_config(tmp_path, models)


def run_extract(capsys, cfg: Path, *overrides) -> tuple[int, dict | None, str]:
    """`modalrec extract CFG --json` in this process: (exit code, JSON or None, stderr)."""
    from pipeline.cli import main

    code = main(["extract", str(cfg), "--json", *map(str, overrides)])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else None), err


def ok(capsys, cfg: Path, *overrides) -> dict:
    """`modalrec extract CFG --json` that must succeed: its JSON."""
    code, out, err = run_extract(capsys, cfg, *overrides)
    assert code == 0, err
    return out


def by_encoder(out: dict) -> dict[str, dict]:
    sets = {f["encoder"]: f for f in out["feature_sets"]}
    for f in sets.values():  # every catalog row is counted exactly once
        assert f["computed"] + f["reused"] + f["failed"] + f["absent"] == f["items"], f
    return sets


def cli(*args, cwd=REPO, timeout=300, env=None):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env=env, check=False)


def stored(cfg_path: Path, encoder: str, field: str | None = None):
    """(vectors, present) of the feature set the link of ``encoder`` names, in catalog order."""
    from pipeline.config import load_config
    from pipeline.data import PreparedData
    from pipeline.content import field_values as _values
    from pipeline.features import link_path
    from pipeline.store import ContentKeys, FeatureStore

    cfg = load_config(cfg_path)
    field = field or cfg.encoders[encoder].fields[0]
    link = json.loads(link_path(cfg, encoder, field).read_text())
    fs = FeatureStore(cfg.features_dir).get(fingerprint=link["fingerprint"], field=field)
    data = PreparedData.load(cfg.prepared_dir)
    modality = next(m for m, names in data.fields.items() if field in names)
    values, present = fs.read(ContentKeys.for_config(cfg).keys(_values(data, field), modality))
    return np.array(values, dtype=np.float32), present


# ---------------------------------------------------------------- computed once, then reused


def test_first_run_computes_all_second_run_computes_nothing(setup, capsys, monkeypatch):
    code, out, err = run_extract(capsys, setup, "extract.num_workers=1")  # DataLoader workers for real
    assert code == 0, err
    first = by_encoder(out)
    for name, dim in (("text", 32), ("image", 32), ("audio", 32)):
        f = first[name]
        assert (f["computed"], f["reused"], f["failed"], f["absent"]) == (N, 0, 0, 0), f
        assert f["dim"] == dim and f["encoder_built"] and f["items_per_second"] > 0
    assert "item/s" in err  # the progress bar reports throughput

    # The warm run proves everything is stored from links, weight stamps and file stats alone.
    import encoders

    def no_model(*a, **k):
        raise AssertionError("the warm path must not build an encoder")

    monkeypatch.setattr(encoders, "create", no_model)
    code, out, err = run_extract(capsys, setup)
    assert code == 0, err
    for name, f in by_encoder(out).items():
        assert (f["computed"], f["reused"], f["encoder_built"]) == (0, N, False), f
        assert f["fingerprint"] == first[name]["fingerprint"]

    from pipeline.config import load_config
    from pipeline.data import PreparedData
    from pipeline.features import load_features

    cfg = load_config(setup)
    loaded = load_features(cfg, PreparedData.load(cfg.prepared_dir))
    assert sorted(loaded) == ["audio", "image", "text"]
    for name, feat in loaded.items():
        assert feat.values.shape == (N, 32) and bool(feat.mask.all()) and torch.isfinite(feat.values).all()
        assert feat.fingerprint == first[name]["fingerprint"]
    assert len({tuple(v.tolist()) for v in loaded["image"].values}) == N  # distinct images, distinct rows


def test_second_identical_run_through_the_command_line(setup, capsys):
    code, _, err = run_extract(capsys, setup)
    assert code == 0, err
    r = cli("extract", setup, "--json", cwd=setup.parent)
    assert r.returncode == 0, r.stderr
    again = json.loads(r.stdout)  # stdout is exactly one JSON object
    assert [(f["computed"], f["reused"], f["failed"], f["encoder_built"]) for f in again["feature_sets"]] == \
        [(0, N, 0, False)] * 3
    from pipeline.cli import main

    assert main(["extract", str(setup)]) == 0  # the human summary
    human = capsys.readouterr().out
    assert "computed" in human and "reused" in human and "store" in human


def test_changed_item_recomputes_exactly_that_item(setup, capsys):
    from pipeline.cli import main

    assert run_extract(capsys, setup)[0] == 0
    before = {k: stored(setup, k)[0] for k in ("text", "image", "audio")}
    items = setup.parent / "raw" / "items.csv"
    items.write_text(items.read_text().replace("blue scarf 4", "black leather boot 4"))
    assert main(["data", "prepare", str(setup)]) == 0  # a changed catalog is prepared again
    fx.write_image(setup.parent / "raw" / "media" / "i07.jpg", size=(40, 48), seed=99)  # same path, new photo
    os.utime(setup.parent / "raw" / "media" / "i02.wav")  # touched only: same content, new stat
    capsys.readouterr()

    code, out, err = run_extract(capsys, setup)
    assert code == 0, err
    sets = by_encoder(out)
    assert (sets["text"]["computed"], sets["text"]["reused"]) == (1, N - 1)
    assert (sets["image"]["computed"], sets["image"]["reused"]) == (1, N - 1)
    assert (sets["audio"]["computed"], sets["audio"]["reused"], sets["audio"]["encoder_built"]) == (0, N, False)
    after = {k: stored(setup, k)[0] for k in ("text", "image", "audio")}
    changed = {"text": 4, "image": 7}
    for name in ("text", "image"):
        same = [i for i in range(N) if i != changed[name]]
        np.testing.assert_array_equal(after[name][same], before[name][same])
        assert not np.allclose(after[name][changed[name]], before[name][changed[name]])
    np.testing.assert_array_equal(after["audio"], before["audio"])


def test_changed_encoder_option_makes_a_new_feature_set(setup, capsys):
    out = ok(capsys, setup)
    old = by_encoder(out)["text"]["fingerprint"]
    code, out, err = run_extract(capsys, setup, "encoders.text.options.max_length=4")
    assert code == 0, err
    sets = by_encoder(out)
    assert sets["text"]["fingerprint"] != old and (sets["text"]["computed"], sets["text"]["reused"]) == (N, 0)
    assert sets["image"]["computed"] == sets["audio"]["computed"] == 0
    out = ok(capsys, setup, "encoders.text.options.max_length=4")  # now warm
    assert (by_encoder(out)["text"]["computed"], by_encoder(out)["text"]["encoder_built"]) == (0, False)
    out = ok(capsys, setup)  # back to the first config: its set is still there
    assert by_encoder(out)["text"]["fingerprint"] == old and by_encoder(out)["text"]["computed"] == 0


def test_changed_weights_at_the_same_path_are_noticed(tmp_path, models, capsys):
    write_catalog(tmp_path / "raw")
    weights = tmp_path / "bert"
    shutil.copytree(models["bert"], weights)
    _backdate(weights)
    cfg = make_config(tmp_path, {**models, "bert": weights}, encoders=("text",))
    first = by_encoder(ok(capsys, cfg))["text"]

    # Same bytes, new mtime: the stamp differs, so the encoder is built; its fingerprint does not.
    for p in weights.rglob("*"):
        os.utime(p, ns=(time.time_ns() - PAST // 2,) * 2)
    f = by_encoder(ok(capsys, cfg))["text"]
    assert (f["computed"], f["encoder_built"], f["fingerprint"]) == (0, True, first["fingerprint"])

    # Other weights in the same files: everything is computed again, into a new set.
    shutil.rmtree(weights)
    fx.build_hf_bert(weights, seed=1)
    _backdate(weights)
    code, out, err = run_extract(capsys, cfg)
    assert code == 0, err
    f = by_encoder(out)["text"]
    assert f["computed"] == N and f["encoder_built"] and f["fingerprint"] != first["fingerprint"]


def test_content_keys_remembered_by_stat(tmp_path, monkeypatch):
    import hashlib

    import pipeline.store.content_keys
    from pipeline.store import ContentKeys, content_key_file

    raw = write_catalog(tmp_path / "raw", n=3)
    # Files changed less than RACY_NS ago are never remembered (their ctime was just set, too):
    # pretend these were written long ago, then restore the rule for the file changed below.
    monkeypatch.setattr(pipeline.store.content_keys, "RACY_NS", -10**12)
    files = [str(raw / "media" / f"i{i:02d}.jpg") for i in range(3)]
    sidecar = tmp_path / "keys" / "tiny.json"
    ck = ContentKeys(sidecar)
    keys = ck.keys([*files, None, str(raw / "nope.jpg")], "image")
    assert keys == [content_key_file(f) for f in files] + [None, None]  # the store's own keys
    ck.save()
    monkeypatch.setattr(pipeline.store.content_keys, "RACY_NS", 2_000_000_000)

    fx.write_image(Path(files[1]), size=(40, 48), seed=50)  # changed just now: hashed, not remembered
    real = hashlib.file_digest
    calls = []
    monkeypatch.setattr(hashlib, "file_digest", lambda *a: calls.append(1) or real(*a))
    again = ContentKeys(sidecar).keys(files, "image")
    assert len(calls) == 1 and again[1] == content_key_file(files[1]) != keys[1]
    assert (again[0], again[2]) == (keys[0], keys[2])
    assert ContentKeys(sidecar).keys(files, "image") == again and len(calls) == 2  # still too fresh to trust

    sidecar.write_text("{not json")  # a damaged sidecar only costs hashing again
    assert ContentKeys(sidecar).keys(files, "image") == again


def test_weights_stamp_kinds(tmp_path, models):
    from pipeline.config import EncoderConfig
    from pipeline.content import weights_stamp

    def stamp(spec, **kw):
        return weights_stamp(EncoderConfig(spec=spec, fields=["x"], **kw))

    assert stamp(f"hf:{models['bert']}") == stamp(f"hf:{models['bert']}")
    assert stamp("st:all-MiniLM-L6-v2") is not None  # weights shipped by an installed package
    assert stamp("timm:resnet18", random_init=True) != stamp("timm:resnet34", random_init=True)
    assert stamp("timm:resnet18") is None  # hub weights: no cheap proof, the encoder is built
    assert stamp("hf:bert-base-uncased") is None and stamp("slow-test:x") is None
    assert stamp(f"hf:{tmp_path / 'nowhere'}") is None
    assert stamp(f"hf:{models['bert']}", random_init=True) != stamp(f"hf:{models['bert']}")


def test_weights_replaced_with_same_size_and_mtime_are_noticed(tmp_path, models, capsys, monkeypatch):
    """cp -p / rsync -a / tar x of a same-architecture checkpoint keeps size and mtime: the file's
    version (ctime, inode) still changes, so its bytes are hashed again and the vectors recomputed."""
    from encoders import file_hashes

    monkeypatch.setattr(file_hashes, "RACY_NS", -10**15)  # hashes of just-written files are remembered too
    write_catalog(tmp_path / "raw")
    weights = tmp_path / "bert"
    shutil.copytree(models["bert"], weights)
    _backdate(weights)
    cfg = make_config(tmp_path, {**models, "bert": weights}, encoders=("text",))
    first = by_encoder(ok(capsys, cfg))["text"]
    assert (tmp_path / "cache" / "features" / "weights-sha256.json").is_file()  # hashed once per version

    target = weights / "model.safetensors"
    other = fx.build_hf_bert(tmp_path / "other", seed=1) / "model.safetensors"
    st = target.stat()
    assert other.stat().st_size == st.st_size and other.read_bytes() != target.read_bytes()
    time.sleep(0.05)  # past a coarse filesystem clock tick (what RACY_NS guards against outside tests)
    target.write_bytes(other.read_bytes())
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (target.stat().st_size, target.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)

    f = by_encoder(ok(capsys, cfg))["text"]
    assert (f["computed"], f["encoder_built"]) == (N, True) and f["fingerprint"] != first["fingerprint"]
    f = by_encoder(ok(capsys, cfg))["text"]  # and that version is now known: warm again
    assert (f["computed"], f["encoder_built"]) == (0, False)


THIRD_PARTY = '''
import json
from pathlib import Path

import torch

from encoders import Backend, Encoder, WeightsLocation, sha256_file
from encoders.processing import PadCollate


class Letters:
    def __call__(self, value):
        return {"counts": torch.tensor([value.count(c) for c in "aeiou"], dtype=torch.float32)}


class LetterEncoder(Encoder):
    def __init__(self, weights, identity):
        super().__init__(modality="text", dim=2, preprocessor=Letters(), collator=PadCollate(), identity=identity)
        self.proj = torch.nn.Parameter(torch.tensor(weights, dtype=torch.float32))

    def encode(self, batch):
        return batch["counts"] @ self.proj


class LetterBackend(Backend):
    """A third party's backend: its weights are a JSON file named by the spec."""

    prefix = "letters"

    def create(self, name, *, modality=None, offline=False, random_init=False, **options):
        return LetterEncoder(json.loads(Path(name).read_text()), {"backend": "letters", "sha256": sha256_file(name)})

    def weights(self, name, *, random_init):
        return WeightsLocation(paths=(Path(name),))
'''


def test_third_party_backend_from_an_entry_point(tmp_path, capsys, monkeypatch):
    """Installed by someone else (a distribution with a `modalrec.encoders` entry point): warm
    re-runs and manifests naming its version, with no edit to modalrec."""
    import importlib

    import yaml

    site = tmp_path / "site"
    (site / "letters_backend").mkdir(parents=True)
    (site / "letters_backend" / "__init__.py").write_text(THIRD_PARTY)
    info = site / "letters_backend-0.3.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: letters-backend\nVersion: 0.3.1\n")
    (info / "entry_points.txt").write_text("[modalrec.encoders]\nletters = letters_backend:LetterBackend\n")
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()

    weights = tmp_path / "letters.json"
    weights.write_text(json.dumps([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.0], [0.0, 2.0]]))
    _backdate(weights)
    write_catalog(tmp_path / "raw")
    cfg = make_config(tmp_path, {"bert": weights, "cnx": weights, "w2v": weights}, encoders=("text",))
    tree = yaml.safe_load(cfg.read_text())
    tree["encoders"]["text"]["spec"] = f"letters:{weights}"
    write_config(cfg, tree)

    import encoders
    from encoders import registry

    try:
        first = by_encoder(ok(capsys, cfg))["text"]
        assert (first["computed"], first["encoder_built"]) == (N, True)
        from pipeline.store import FeatureStore

        (fs,) = FeatureStore(tmp_path / "cache" / "features").sets()
        assert fs.manifest["versions"]["letters_backend"] == "0.3.1"

        def no_model(*a, **k):
            raise AssertionError("the warm path must not build an encoder")

        monkeypatch.setattr(encoders, "create", no_model)
        again = by_encoder(ok(capsys, cfg))["text"]
        assert (again["computed"], again["reused"], again["encoder_built"]) == (0, N, False)
    finally:
        registry._BACKENDS.pop("letters", None)
        sys.modules.pop("letters_backend", None)


def test_unloadable_pytorch_model_bin_exits_2_naming_the_file(tmp_path, models, capsys):
    write_catalog(tmp_path / "raw")
    weights = shutil.copytree(models["bert"], tmp_path / "bert")
    (weights / "model.safetensors").unlink()
    (weights / "pytorch_model.bin").write_bytes(b"\x80\x02 not really a pickle")
    cfg = make_config(tmp_path, {**models, "bert": weights}, encoders=("text",))
    code, _, err = run_extract(capsys, cfg)
    assert code == 2 and str(weights / "pytorch_model.bin") in err and "Traceback" not in err, err


# ---------------------------------------------------------------- bad input


def _missing(raw):
    (raw / "media" / "i06.jpg").unlink()
    return "image", "i06.jpg"


def _truncated_jpeg(raw):
    p = raw / "media" / "i06.jpg"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    return "image", "i06.jpg"


def _zero_length_wav(raw):
    fx.write_wav(raw / "media" / "i06.wav", 0.0, rate=8000, channels=1)
    return "audio", "i06.wav"


def _silent_wav(raw):
    fx.write_wav(raw / "media" / "i06.wav", 0.3, rate=8000, channels=1, amplitude=0.0)
    return "audio", "i06.wav"


def _corrupt_audio(raw):
    (raw / "media" / "i06.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEnot really audio" * 3)
    return "audio", "i06.wav"


@pytest.mark.parametrize("damage", [_missing, _truncated_jpeg, _zero_length_wav, _silent_wav, _corrupt_audio],
                         ids=["missing-file", "truncated-jpeg", "zero-length-wav", "silent-wav", "corrupt-audio"])
def test_bad_input_stops_naming_item_and_file(tmp_path, models, capsys, damage):
    raw = write_catalog(tmp_path / "raw")
    encoder, filename = damage(raw)
    cfg = make_config(tmp_path, models, encoders=(encoder,), batch_size=2, flush_every=2)
    code, _, err = run_extract(capsys, cfg)
    assert code == 2
    assert "item 'i06'" in err and filename in err and "on_error=skip" in err and "Traceback" not in err
    from pipeline.store import FeatureStore

    (fs,) = FeatureStore(tmp_path / "cache" / "features").sets()
    kept = int(err.split(" items computed before it")[0].rsplit(" ", 1)[-1])
    assert fs.manifest["rows"] == kept  # the work finished before the bad item is in the store
    if damage is not _missing:  # a vanished file is found before any work starts
        assert kept >= 6


def test_bad_input_skipped_is_masked_and_reported(tmp_path, models, capsys):
    texts = [f"green sock {i}" for i in range(N)]
    texts[8] = " "  # empty text: no value, a mask like any missing modality
    raw = write_catalog(tmp_path / "raw", texts=texts)
    (raw / "media" / "i01.jpg").unlink()
    _truncated_jpeg(raw)  # i06
    fx.write_wav(raw / "media" / "i03.wav", 0.0, rate=8000, channels=1)
    fx.write_wav(raw / "media" / "i04.wav", 0.3, rate=8000, channels=1, amplitude=0.0)
    items = raw / "items.csv"
    items.write_text(items.read_text().replace("media/i09.jpg", "media"))  # a folder: unreadable as a file
    cfg = make_config(tmp_path, models)
    skip = [f"encoders.{e}.on_error=skip" for e in ("text", "image", "audio")]
    code, out, err = run_extract(capsys, cfg, *skip)
    assert code == 0, err
    sets = by_encoder(out)
    assert (sets["text"]["computed"], sets["text"]["absent"], sets["text"]["failed"]) == (N - 1, 1, 0)
    reasons = {f["item_id"]: f["reason"] for f in sets["image"]["failures"]}
    assert sorted(reasons) == ["i01", "i06", "i09"]
    assert "not found" in reasons["i01"] and "decode" in reasons["i06"] and "cannot read" in reasons["i09"]
    assert [f["item_id"] for f in sets["audio"]["failures"]] == ["i03", "i04"]
    assert "zero length" in sets["audio"]["failures"][0]["reason"]
    assert "silent" in sets["audio"]["failures"][1]["reason"]
    assert (sets["image"]["computed"], sets["audio"]["computed"]) == (N - 3, N - 2)

    for name, bad in (("text", [8]), ("image", [1, 6, 9]), ("audio", [3, 4])):
        _, present = stored(cfg, name)  # the store's mask
        assert [i for i in range(N) if not present[i]] == bad

    from pipeline.config import load_config
    from pipeline.data import PreparedData
    from pipeline.features import load_features

    c = load_config(cfg, skip)
    loaded = load_features(c, PreparedData.load(c.prepared_dir))
    for name, bad in (("text", [8]), ("image", [1, 6, 9]), ("audio", [3, 4])):
        assert [i for i in range(N) if not loaded[name].mask[i]] == bad

    from pipeline.cli import main

    assert main(["store", "info", sets["audio"]["fingerprint"][:16] + "/audio", "--config", str(cfg), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["failed"] == 2 and len(info["failed_examples"]) == 2

    code, out, err = run_extract(capsys, cfg, *skip)  # the same bad items again: reported, not retried
    assert code == 0, err
    again = by_encoder(out)
    for name in ("text", "image", "audio"):
        assert again[name]["computed"] == 0 and again[name]["failed"] == sets[name]["failed"]
        assert again[name]["failures"] == sets[name]["failures"]


# ---------------------------------------------------------------- kill and resume


def _kill_child(config: str, *overrides: str) -> None:
    _register_slow()
    from pipeline.cli import main

    sys.exit(main(["extract", config, "--json", *overrides]))


def test_killed_run_resumes_without_recomputing(tmp_path, models, capsys):
    n = 40
    texts = [f"item number {i} in a long catalog" for i in range(n)]
    write_catalog(tmp_path / "raw", n=n, texts=texts)
    cfg = make_config(tmp_path, models, encoders=("text",))
    slow = ["encoders.text.spec=slow-test:tiny", "encoders.text.options.delay=0.25"]
    child = [sys.executable, __file__, "kill-child", str(cfg), *slow]
    proc = subprocess.Popen(child, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    shards = tmp_path / "cache" / "features"
    deadline = time.time() + 120
    try:
        while len(list(shards.glob("*/shards/*.safetensors"))) < 2:
            assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
            assert time.time() < deadline, "no shards appeared"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it was killed; make it slower"

    from pipeline.store import FeatureStore

    (fs,) = FeatureStore(shards).sets()
    done = fs.manifest["rows"]
    assert 0 < done < n

    resumed = subprocess.run(child, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    f = json.loads(resumed.stdout)["feature_sets"][0]
    assert f["computed"] == n - done and f["reused"] == done  # nothing finished was computed twice

    _register_slow()
    clean = tmp_path / "clean"
    clean.mkdir()
    clean_cfg = make_config(clean, models, encoders=("text",))
    shutil.copytree(tmp_path / "raw", clean / "raw")
    code, _, err = run_extract(capsys, clean_cfg, "encoders.text.spec=slow-test:tiny")
    assert code == 0, err
    np.testing.assert_allclose(stored(cfg, "text")[0], stored(clean_cfg, "text")[0], rtol=0, atol=1e-6)


# ---------------------------------------------------------------- two processes, one store


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_under_accelerate_launch_share_the_work(tmp_path, models, capsys):
    raw = write_catalog(tmp_path / "raw", n=16)
    _truncated_jpeg(raw)  # one bad item: its failure comes back from whichever rank met it
    cfg = make_config(tmp_path, models, encoders=("image",))
    skip = ["encoders.image.on_error=skip"]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true"}  # CPU processes (gloo); --cpu alone needs MPI
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(_free_port()), "-m", "pipeline.cli", "extract", str(cfg), "--json", *skip]
    r = subprocess.run(launch, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    (line,) = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]  # only the main process reports
    sets = by_encoder(json.loads(line))
    assert (sets["image"]["computed"], sets["image"]["reused"], sets["image"]["failed"]) == (15, 0, 1)
    assert sets["image"]["failures"][0]["item_id"] == "i06"
    pids = {p.name.split("-")[1] for p in (tmp_path / "cache" / "features").glob("*/shards/*.safetensors")}
    assert len(pids) == 2, pids  # both ranks wrote shards

    single = tmp_path / "single"
    single.mkdir()
    shutil.copytree(raw, single / "raw")
    single_cfg = make_config(single, models, encoders=("image",))
    code, out, err = run_extract(capsys, single_cfg, *skip)
    assert code == 0, err
    (a, pa), (b, pb) = stored(cfg, "image"), stored(single_cfg, "image")
    np.testing.assert_array_equal(pa, pb)
    assert pa.sum() == 15
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    assert by_encoder(out)["image"]["fingerprint"] == sets["image"]["fingerprint"]


# ---------------------------------------------------------------- data without user ids (emotify.yaml)


def test_interactions_without_user_ids_are_one_session_per_row(tmp_path, models):
    from pipeline.config import load_config
    from pipeline.data import prepare

    raw = write_catalog(tmp_path / "raw")
    rows = ["item,liked"] + [f"i{i % N:02d},{i % 3 != 0:d}" for i in range(30)]
    (raw / "ratings.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    cfg = load_config(make_config(tmp_path, models), [
        "data.interactions.path=ratings.csv", "data.interactions.user=null", "data.interactions.item=item",
        "data.interactions.timestamp=null", "data.interactions.rating=liked", "data.filter.min_rating=1",
        "data.split.protocol=cold_start", "data.split.cold_items=0.3"])
    data = prepare(cfg, progress=False)
    assert data.n_users == data.stats()["interactions"] == 20  # one user per kept row: rows 2, 3, 5, 6, ...
    assert data.users["user_id"][:3] == ["2", "3", "5"]  # named by their row in the file


# ---------------------------------------------------------------- store CLI


def test_store_ls_info_gc(setup, capsys):
    from pipeline.cli import main

    first = by_encoder(ok(capsys, setup))
    assert main(["store", "ls", "--config", str(setup), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["sets"]
    assert sorted((s["field"], s["rows"], s["failed"]) for s in listed) == [("audio", N, 0), ("image", N, 0),
                                                                            ("text", N, 0)]
    assert main(["store", "ls", "--config", str(setup)]) == 0
    assert "hf:" in capsys.readouterr().out

    fp = first["text"]["fingerprint"]
    assert main(["store", "info", f"{fp[:12]}/text", "--config", str(setup), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["fingerprint"], info["rows"], info["dim"]) == (fp, N, 32)
    assert info["storage"]["shards"] >= 1 and info["spec"].startswith("hf:")

    ok(capsys, setup, "encoders.text.options.max_length=4")  # links now name another text set
    assert main(["store", "gc", "--prune-unlinked", "--dry-run", "--config", str(setup), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["sets"]) == 1 and report["sets"][0].endswith(info["name"])
    assert main(["store", "gc", "--prune-unlinked", "--config", str(setup)]) == 0
    assert "removed 1 sets" in capsys.readouterr().out
    assert main(["store", "ls", "--config", str(setup), "--json"]) == 0
    left = json.loads(capsys.readouterr().out)["sets"]
    assert len(left) == 3 and fp not in {s["fingerprint"] for s in left}
    out = ok(capsys, setup, "encoders.text.options.max_length=4")
    assert all(f["computed"] == 0 for f in out["feature_sets"])


def test_warm_run_rebuilds_a_damaged_view_without_building_the_encoder(setup, capsys, monkeypatch):
    import encoders
    from pipeline.store import StoreWarning
    from pipeline.store.tensor_file import TensorFile
    from pipeline.store.views import view_checksum_ok

    first = by_encoder(ok(capsys, setup, "--encoder", "text"))["text"]
    right, _ = stored(setup, "text")  # reading builds the catalog's view
    (view,) = (setup.parent / "cache" / "features" / first["set"] / "views").glob("*.safetensors")
    f = TensorFile(view)
    data = bytearray(view.read_bytes())
    data[f.data_start + f.entries["vectors"][2] + 3] ^= 0x7F
    view.write_bytes(bytes(data))

    monkeypatch.setattr(encoders, "create", lambda *a, **k: pytest.fail("the warm path must not build an encoder"))
    with pytest.warns(StoreWarning, match="checksum mismatch.*rebuilt from the shards"):
        again = by_encoder(ok(capsys, setup, "--encoder", "text"))["text"]
    assert (again["computed"], again["reused"], again["encoder_built"]) == (0, N, False)
    assert view_checksum_ok(view) is True
    np.testing.assert_array_equal(stored(setup, "text")[0], right)


if __name__ == "__main__" and sys.argv[1:2] == ["kill-child"]:
    _kill_child(*sys.argv[2:])
