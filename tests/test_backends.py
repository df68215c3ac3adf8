"""Encoder backends as registered objects, the trainable `Policy`, weights hashed per file version,
and pickled checkpoints that are refused naming the file instead of a raw traceback."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
import torch

import encoders
import encoder_fixtures as fx
from encoders import Backend, WeightsLocation, WeightsUnreadableError, registry
from encoders import file_hashes
from pipeline.errors import ConfigError, ModalrecError
from pipeline.policy import Policy

# ------------------------------------------------------------------------------ Policy


@pytest.mark.parametrize("spelling, kind, k, rank, cached, canonical", [
    ("frozen", "frozen", None, None, False, "frozen"),
    (" Full ", "full", None, None, False, "full"),
    ("bias", "bias", None, None, False, "bias"),
    ("top-k:2", "top-k", 2, None, False, "top-k:2"),
    ("TOP-K:12", "top-k", 12, None, False, "top-k:12"),
    ("cached-top-k:3", "top-k", 3, None, True, "cached-top-k:3"),
    ("lora", "lora", None, None, False, "lora"),
    ("lora:4", "lora", None, 4, False, "lora:4"),
])
def test_policy_spellings(spelling, kind, k, rank, cached, canonical):
    p = Policy.parse(spelling)
    assert (p.kind, p.k, p.rank, p.cached, str(p)) == (kind, k, rank, cached, canonical)
    assert Policy.parse(str(p)) == p and Policy.parse(p) is p
    assert p.lora_rank == (rank or 8)


@pytest.mark.parametrize("bad, words", [
    ("sideways", "unknown trainable policy 'sideways'"), ("top-k", "needs a block count"),
    ("top-k:x", "needs a block count"), ("top-k:0", "at least one block"), ("lora:r", "takes a rank"),
    ("cached-full", "only applies to the 'top-k:N'"), ("full:2", "unknown trainable policy"),
    (3, "is a string"),
])
def test_bad_policies_are_config_errors(bad, words):
    with pytest.raises(ConfigError, match=words):
        Policy.parse(bad)


def test_policy_is_parsed_once_in_the_config_naming_the_key():
    from pipeline.config import CompareConfig, LiveEncoderConfig, TowerConfig

    new = LiveEncoderConfig.model_validate({"policy": "cached-top-k:2"})
    old = LiveEncoderConfig.model_validate({"policy": "top-k:2", "cached": True})
    assert new == old and new.policy == Policy("top-k", k=2, cached=True) and new.cached
    # saved configs keep the spelling earlier versions wrote, and read back the same
    assert new.model_dump(mode="json")["policy"] == "top-k:2" and new.model_dump(mode="json")["cached"] is True
    assert LiveEncoderConfig.model_validate(new.model_dump(mode="json")) == new
    assert isinstance(LiveEncoderConfig().policy, Policy) and str(LiveEncoderConfig().policy) == "full"

    with pytest.raises(ValueError) as e:
        TowerConfig.model_validate({"ids": False, "live": {"img": {"policy": "top-k"}}})
    assert [err["loc"] for err in e.value.errors()] == [("live", "img", "policy")]
    with pytest.raises(ValueError, match="cached needs policy top-k"):
        LiveEncoderConfig.model_validate({"policy": "lora", "cached": True})

    c = CompareConfig.model_validate({"policies": ["full", "Cached-Top-K:2"], "finetuned_features": ["full"]})
    assert c.policies == [Policy("full"), Policy("top-k", k=2, cached=True)] and c.finetuned_features == [Policy("full")]
    assert c.model_dump(mode="json")["policies"] == ["full", "cached-top-k:2"]
    with pytest.raises(ValueError) as e:
        CompareConfig.model_validate({"policies": ["full", "bogus"]})
    assert [err["loc"] for err in e.value.errors()] == [("policies", 1)]


def test_arms_read_policy_values():
    from pipeline.compare.arms import _live, policy_slug

    assert [policy_slug(p) for p in ("top-k:2", "cached-top-k:2", "lora:8", "lora", "full")] == \
        ["top2", "cached-top2", "lora8", "lora", "full"]
    assert _live(Policy.parse("cached-top-k:2"), "title") == {"policy": "top-k:2", "cached": True, "field": "title"}


# ------------------------------------------------------------------------------ registry


class _Demo(Backend):
    prefix = "demo-test"
    aliases = ("demo-alias-test",)
    libraries = {"torch": "torch"}

    def create(self, name, *, modality=None, offline=False, random_init=False, **options):
        return fx.ToyEncoder(name, **options)

    def weights(self, name, *, random_init):
        return WeightsLocation(builtin=(name,))


@pytest.fixture
def demo_backend():
    encoders.register_backend(_Demo)
    yield registry.get_backend("demo-test")
    for name in ("demo-test", "demo-alias-test"):
        registry._BACKENDS.pop(name, None)


def test_backend_objects_own_their_facts(demo_backend):
    assert registry.get_backend("demo-alias-test") is demo_backend and isinstance(demo_backend, _Demo)
    assert "demo-test" in encoders.available() and "demo-alias-test" not in encoders.available()
    enc = encoders.create("demo-alias-test:5", scale=3.0)
    assert enc.spec == "demo-alias-test:5" and encoders.backend_of(enc) is demo_backend
    assert encoders.spec_versions("demo-test:x") == {"torch": torch.__version__.split("+")[0]}
    # the built-in aliases are the backends' own
    assert registry.get_backend("open-clip") is registry.get_backend("open_clip")
    assert registry.get_backend("transformers") is registry.get_backend("hf")
    assert registry.get_backend("sentence-transformers").prefix == "st"
    with pytest.raises(ConfigError, match="unknown encoder backend 'nope-test'"):
        registry.get_backend("nope-test")
    with pytest.raises(ValueError):
        encoders.register_backend(type("Bad", (Backend,), {"prefix": "a:b", "create": _Demo.create}))


def test_a_backend_without_create_is_refused_when_registered():
    with pytest.raises(TypeError, match="abstract"):
        encoders.register_backend(type("NoCreate", (Backend,), {"prefix": "nocreate-test"}))
    assert "nocreate-test" not in encoders.available()


def test_a_hand_built_encoder_has_a_backend_that_knows_nothing():
    enc = fx.ToyEncoder("toy")   # built by hand: no spec
    backend = encoders.backend_of(enc)
    assert isinstance(backend, registry.HandBuilt)
    assert backend.weights("toy", random_init=False) is None and backend.versions() == {}
    with pytest.raises(ConfigError, match="built by hand"):
        backend.create("toy", modality=None, offline=True, random_init=False)


def test_function_style_registration_is_wrapped():
    @encoders.register("fn-test")
    def make(name, *, modality=None, offline=False, random_init=False, **options):
        return fx.ToyEncoder(name)

    try:
        backend = registry.get_backend("fn-test")
        assert backend.create("1").identity()["model"] == "1"
        assert backend.weights("1", random_init=False) is None  # no warm path unless the backend says
        assert backend.versions() == {}
    finally:
        registry._BACKENDS.pop("fn-test", None)


def test_builtin_library_versions_and_manifests(tmp_path):
    from pipeline.store import FeatureStore, library_versions

    assert "transformers" in library_versions("hf:/x") and "timm" not in library_versions("hf:/x")
    assert "timm" in library_versions("timm:resnet18") and "transformers" not in library_versions("timm:resnet18")
    assert "open_clip" in library_versions("openclip:ViT-B-32@openai")
    assert set(library_versions()) == {"modalrec", "torch", "numpy"}
    assert library_versions("mmrec:x.npy") == library_versions()  # no backend of that name
    fs = FeatureStore(tmp_path).open_set("f00d", "title", dim=2, spec="st:all-MiniLM-L6-v2")
    assert {"sentence_transformers", "transformers", "torch"} <= set(fs.manifest["versions"])


# ------------------------------------------------------------------------------ gradient checkpointing


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("backend_models")
    return {"vit": fx.build_timm_vit(root / "vit"), "bert": fx.build_hf_bert(root / "bert")}


def test_checkpointing_switch_is_the_backends(tiny):
    from pipeline.models.live import enable_gradient_checkpointing

    vit = encoders.create(f"timm:{tiny['vit']}", offline=True)
    enable_gradient_checkpointing(vit, "model.item_tower.live.img")
    assert vit.model.grad_checkpointing is True  # timm's own switch
    bert = encoders.create(f"hf:{tiny['bert']}", offline=True)
    layers = bert.model.encoder.layer
    assert not any(getattr(m, "gradient_checkpointing", False) for m in layers)
    enable_gradient_checkpointing(bert, "model.item_tower.live.txt")
    assert all(m.gradient_checkpointing for m in layers)  # transformers' API
    with pytest.raises(ConfigError, match=r"model\.item_tower\.live\.toy\.gradient_checkpointing"):
        enable_gradient_checkpointing(fx.ToyEncoder("x"), "model.item_tower.live.toy")


# ------------------------------------------------------------------------------ weights hashed per file version


def test_hashes_recorded_once_per_file_version(tmp_path, monkeypatch):
    monkeypatch.setattr(file_hashes, "RACY_NS", -10**15)  # every version counts as settled
    monkeypatch.setattr(file_hashes, "_memory", {})
    reads = []
    real_open = open
    monkeypatch.setattr(file_hashes, "open", lambda p, *a, **k: reads.append(p) or real_open(p, *a, **k),
                        raising=False)
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"a" * 1000)
    record = file_hashes.HashRecord(tmp_path / "record.json")
    first = record.sha256(weights)
    assert record.sha256(weights) == first and len(reads) == 1
    record.save()

    monkeypatch.setattr(file_hashes, "_memory", {})  # a new process: only the record remembers
    again = file_hashes.HashRecord(tmp_path / "record.json")
    assert again.sha256(weights) == first and len(reads) == 1

    st = weights.stat()
    time.sleep(0.05)  # past a coarse filesystem clock tick (what RACY_NS guards against outside tests)
    weights.write_bytes(b"b" * 1000)  # other bytes, same size, mtime put back (cp -p, rsync -a, tar x)
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (weights.stat().st_size, weights.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    changed = again.sha256(weights)
    assert changed != first and len(reads) == 2 and file_hashes.sha256_file(weights) == changed

    replacement = tmp_path / "new.bin"  # replaced by rename: a new inode
    replacement.write_bytes(b"c" * 1000)
    os.utime(replacement, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(replacement, weights)
    assert again.sha256(weights) not in (first, changed)

    (tmp_path / "record.json").write_text("{damaged")  # costs hashing again, never a wrong answer
    assert file_hashes.HashRecord(tmp_path / "record.json").sha256(weights) == again.sha256(weights)


def test_fresh_files_are_hashed_but_not_remembered(tmp_path, monkeypatch):
    monkeypatch.setattr(file_hashes, "_memory", {})
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"x" * 10)
    record = file_hashes.HashRecord(tmp_path / "record.json")
    record.sha256(weights)
    record.save()
    assert not (tmp_path / "record.json").exists() and file_hashes._memory == {}
    t = time.time_ns() - 10 * file_hashes.RACY_NS
    os.utime(weights, ns=(t, t))  # the ctime is still now: a write may follow within one clock tick
    record.sha256(weights)
    assert file_hashes._memory == {}


# ------------------------------------------------------------------------------ pickled checkpoints


class _Evil:
    """Unpickling runs ``Path.touch(marker)``: what weights_only=True must never let happen."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _swap_for_pickle(folder: Path, weights: str, payload) -> Path:
    """The folder with its safetensors weights replaced by a pickled checkpoint (bytes or an object)."""
    (folder / weights).unlink()
    target = folder / ("open_clip_pytorch_model.bin" if weights.startswith("open_clip") else "pytorch_model.bin")
    if isinstance(payload, bytes):
        target.write_bytes(payload)
    else:
        torch.save(payload, target)
    return target


def test_pickled_checkpoint_that_loads_is_used(tmp_path, tiny):
    from safetensors.torch import load_file

    folder = shutil.copytree(tiny["bert"], tmp_path / "bert")
    state = load_file(folder / "model.safetensors")
    _swap_for_pickle(folder, "model.safetensors", state)
    a = encoders.create(f"hf:{tiny['bert']}", offline=True)
    b = encoders.create(f"hf:{folder}", offline=True)
    batch = a.collate([a.preprocess("red hat")])
    torch.testing.assert_close(a(batch), b(batch))


@pytest.mark.parametrize("backend", ["hf", "st", "timm", "open_clip"])
@pytest.mark.parametrize("damage", ["garbage", "code", "truncated"])
def test_unreadable_pickled_checkpoint_names_the_file(tmp_path, tiny, backend, damage):
    marker = tmp_path / "code-ran"
    if backend == "hf":
        folder, weights = shutil.copytree(tiny["bert"], tmp_path / "m"), "model.safetensors"
    elif backend == "st":
        folder, weights = fx.build_st(tmp_path / "m", tiny["bert"]), "model.safetensors"
    elif backend == "timm":
        folder, weights = shutil.copytree(tiny["vit"], tmp_path / "m"), "model.safetensors"
    else:
        fx.build_open_clip(tmp_path / "clip")
        folder, weights = tmp_path / "clip" / "hub", "open_clip_model.safetensors"
    if damage == "garbage":
        payload = b"not a checkpoint at all"
    elif damage == "code":
        payload = {"weight": torch.zeros(2), "x": _Evil(marker)}
    else:  # a real checkpoint's bytes, cut short
        torch.save({"weight": torch.zeros(4096)}, tmp_path / "whole.bin")
        payload = (tmp_path / "whole.bin").read_bytes()[:5000]
    bad = _swap_for_pickle(folder, weights, payload)
    spec = f"{backend}:{folder}"
    kw = {"modality": "text"} if backend == "open_clip" else {}
    with pytest.raises(WeightsUnreadableError) as e:
        encoders.create(spec, offline=True, **kw)
    assert isinstance(e.value, ModalrecError) and str(bad) in str(e.value)
    if damage == "code":
        assert "never runs code" in str(e.value)
    assert not marker.exists()


def test_open_clip_weights_file_given_as_a_pickle(tmp_path, tiny):
    config, _ = fx.build_open_clip(tmp_path / "clip")
    marker = tmp_path / "code-ran"
    weights = tmp_path / "w.pt"
    torch.save({"x": _Evil(marker)}, weights)
    with pytest.raises(WeightsUnreadableError, match=str(weights)):
        encoders.create(f"open_clip:{config}@{weights}", modality="image", offline=True)
    assert not marker.exists()


def test_pickles_a_library_resolves_from_a_hub_cache_name_the_model(tmp_path):
    from encoders.checkpoints import refusing_pickles

    marker = tmp_path / "code-ran"
    cached = tmp_path / "pytorch_model.bin"  # where a library found it: only the library knows the path
    torch.save({"x": _Evil(marker)}, cached)
    with pytest.raises(WeightsUnreadableError, match="'org/model'.*never runs code"):
        with refusing_pickles("hf", "org/model"):
            torch.load(cached, weights_only=True)
    assert not marker.exists()


def test_open_clip_custom_configs_live_in_a_private_directory_of_this_process(monkeypatch):
    """A custom CLIP architecture is registered from a folder only this process can read or
    write (0700, an unpredictable name), never from a shared temp folder another user could fill."""
    import stat
    import tempfile

    from encoders import open_clip_backend as ocb

    monkeypatch.setattr(ocb, "_CONFIG_DIR", None)
    folder = ocb._config_dir()
    assert ocb._config_dir() == folder  # one per process
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and folder.stat().st_uid == os.getuid()
    assert folder.parent == Path(tempfile.gettempdir()) and folder.name != "modalrec-open-clip-configs"
