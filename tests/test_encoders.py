"""encoders/: every backend on tiny checkpoints saved locally and loaded back like real ones."""

from __future__ import annotations

import hashlib
import importlib.metadata
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import encoders
from encoders import Encoder, EncoderInputError, WeightsNotFoundError
from encoders.media import load_audio
from encoders.weights import sha256_tree
from pipeline.errors import ConfigError, ModalrecError

import encoder_fixtures as fx

TEXTS = ["red hat", "a warm green sock with leather boots", "blue scarf."]


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("encoder_models")
    clip_cfg, clip_weights = fx.build_open_clip(root / "clip")
    paths = {
        "timm_vit": fx.build_timm_vit(root / "timm_vit"),
        "timm_vit_seed1": fx.build_timm_vit(root / "timm_vit_seed1", seed=1),
        "timm_cnx": fx.build_timm_convnext(root / "timm_cnx"),
        "hf_vit": fx.build_hf_vit(root / "hf_vit"),
        "bert": fx.build_hf_bert(root / "bert"),
        "w2v": fx.build_hf_wav2vec2(root / "w2v"),
        "hubert": fx.build_hf_hubert(root / "hubert"),
        "ast": fx.build_hf_ast(root / "ast"),
        "clap": fx.build_hf_clap(root / "clap"),
        "hf_clip": fx.build_hf_clip(root / "hf_clip"),
        "clip_cfg": clip_cfg,
        "clip_weights": clip_weights,
        "clip_dir": root / "clip" / "hub",
    }
    paths["st"] = fx.build_st(root / "st", paths["bert"])
    return paths


@pytest.fixture(scope="session")
def media(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("encoder_media")
    out = {f"img{i}": fx.write_image(root / f"img{i}.jpg", size=(40 + 8 * i, 56), seed=i) for i in range(3)}
    out.update({
        "wav_long": fx.write_wav(root / "long.wav", 1.5, rate=22050, channels=2, freq=330),
        "wav_short": fx.write_wav(root / "short.wav", 0.6, rate=8000, channels=1, freq=550),
        "wav_mid": fx.write_wav(root / "mid.wav", 1.0, rate=16000, channels=2, freq=440),
    })
    return out


# name -> (spec from the model paths, create() options, the catalog values to encode, expected dim)
FAMILIES = {
    "timm-vit": (lambda m: f"timm:{m['timm_vit']}", {}, "image", 32),
    "timm-convnext": (lambda m: f"timm:{m['timm_cnx']}", {}, "image", 32),
    "hf-vit": (lambda m: f"hf:{m['hf_vit']}", {}, "image", 32),
    "hf-bert": (lambda m: f"hf:{m['bert']}", {}, "text", 32),
    "hf-wav2vec2": (lambda m: f"hf-audio:{m['w2v']}", {"max_seconds": 1.0}, "audio", 32),
    "hf-hubert": (lambda m: f"hf-audio:{m['hubert']}", {"max_seconds": 1.0}, "audio", 32),
    "hf-ast": (lambda m: f"hf-audio:{m['ast']}", {}, "audio", 32),
    "hf-clap": (lambda m: f"hf-audio:{m['clap']}", {}, "audio", 16),
    "hf-clip-image": (lambda m: f"hf:{m['hf_clip']}", {"modality": "image"}, "image", 16),
    "hf-clip-text": (lambda m: f"hf:{m['hf_clip']}", {"modality": "text"}, "text", 16),
    "open_clip-image": (lambda m: f"open_clip:{m['clip_cfg']}@{m['clip_weights']}", {"modality": "image"}, "image", 16),
    "open_clip-text": (lambda m: f"open_clip:{m['clip_cfg']}@{m['clip_weights']}", {"modality": "text"}, "text", 16),
    "st": (lambda m: f"st:{m['st']}", {}, "text", 32),
}
# Parameters a `top-k:1` policy must train: the last block and what follows it.
TOP1 = {
    "timm-vit": ("model.blocks.1.", "model.norm."),
    "timm-convnext": ("model.stages.3.", "model.head.norm."),
    "hf-vit": ("model.layers.1.", "model.layernorm."),
    "hf-bert": ("model.encoder.layer.1.",),
    "hf-wav2vec2": ("model.encoder.layers.1.",),
    "hf-hubert": ("model.encoder.layers.1.", "model.encoder.layer_norm."),
    "hf-ast": ("model.layers.1.", "model.layernorm."),
    "hf-clap": ("model.audio_model.audio_encoder.layers.1.", "model.audio_model.audio_encoder.norm.",
                "model.audio_projection."),
    "hf-clip-image": ("model.vision_model.encoder.layers.1.", "model.vision_model.post_layernorm.",
                      "model.visual_projection."),
    "hf-clip-text": ("model.text_model.encoder.layers.1.", "model.text_model.final_layer_norm.",
                     "model.text_projection."),
    "open_clip-image": ("model.transformer.resblocks.1.", "model.ln_post.", "model.proj"),
    "open_clip-text": ("model.transformer.resblocks.1.", "model.ln_final.", "model.text_projection"),
    "st": ("model.0.model.encoder.layer.1.", "model.0.model.pooler."),
}

_cache: dict = {}


def make(models, family: str, **extra) -> Encoder:
    spec_of, options, _, _ = FAMILIES[family]
    key = (family, tuple(sorted(extra.items())))
    if key not in _cache:
        _cache[key] = encoders.create(spec_of(models), offline=True, **{**options, **extra})
    return _cache[key]


def values(media, modality: str) -> list:
    return {"image": [media["img0"], media["img1"], media["img2"]], "text": TEXTS,
            "audio": [media["wav_long"], media["wav_short"], media["wav_mid"]]}[modality]


def run(enc: Encoder, items) -> torch.Tensor:
    with torch.inference_mode():
        return enc(enc.collate([enc.preprocess(v) for v in items]))


# --- every backend family --------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_family_dims_determinism_and_batching(models, media, family):
    enc = make(models, family)
    _, _, modality, dim = FAMILIES[family]
    items = values(media, modality)
    assert enc.modality == modality and enc.dim == dim and not enc.training
    batch = run(enc, items)
    assert batch.shape == (3, dim) and batch.dtype == torch.float32 and torch.isfinite(batch).all()
    assert torch.equal(batch, run(enc, items)), "same input, same output"
    single = torch.cat([run(enc, [v]) for v in items])
    torch.testing.assert_close(batch, single, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(batch[0], batch[1]), "different items must differ"
    # A second load of the same files: same fingerprint, same vectors.
    again = encoders.create(FAMILIES[family][0](models), offline=True, **FAMILIES[family][1])
    assert again.fingerprint == enc.fingerprint
    torch.testing.assert_close(run(again, items), batch, atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_family_preprocess_is_picklable(models, media, family):
    enc = make(models, family)
    value = values(media, FAMILIES[family][2])[0]
    pre = pickle.loads(pickle.dumps(enc.preprocess))
    col = pickle.loads(pickle.dumps(enc.collate))
    assert len(pickle.dumps(enc.preprocess)) < 5_000_000, "the model must not travel to workers"
    a, b = enc.preprocess(value), pre(value)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with torch.inference_mode():
        torch.testing.assert_close(enc(col([b])), enc(enc.collate([a])))


@pytest.mark.parametrize("family", FAMILIES)
def test_family_layer_option(models, media, family):
    final = make(models, family)
    hidden = make(models, family, layer=1)
    items = values(media, FAMILIES[family][2])[:2]
    out = run(hidden, items)
    assert out.shape == (2, hidden.dim)
    assert out.shape != run(final, items).shape or not torch.allclose(out, run(final, items))
    assert hidden.fingerprint != final.fingerprint and hidden.identity()["layer"] == 1
    first = run(make(models, family, layer=0), items)
    assert first.shape != out.shape or not torch.allclose(out, first)


@pytest.mark.parametrize("family", FAMILIES)
def test_family_trainable_policies(models, family):
    enc = encoders.create(FAMILIES[family][0](models), offline=True, **FAMILIES[family][1])
    fingerprint = enc.fingerprint
    names = [n for n, _ in enc.named_parameters()]

    def trainable():
        return {n for n, p in enc.named_parameters() if p.requires_grad}

    assert trainable() == set() and not enc.training, "created frozen"
    enc.set_trainable("full")
    assert trainable() == set(names)
    enc.set_trainable("bias")
    assert trainable() == {n for n in names if n.endswith("bias")} and trainable()
    enc.set_trainable("top-k:1")
    assert trainable() == {n for n in names if n.startswith(TOP1[family])}
    enc.set_trainable("top-k:2")
    assert len(trainable()) > len({n for n in names if n.startswith(TOP1[family])})
    for bad in ("top-k:0", "top-k:99", "top-k:x", "half"):
        with pytest.raises(ConfigError):
            enc.set_trainable(bad)
    enc.set_trainable("frozen")
    assert trainable() == set() and not enc.training
    assert enc.fingerprint == fingerprint, "trainability is not part of the identity"


@pytest.mark.parametrize("family", ["timm-vit", "hf-bert", "open_clip-text", "hf-wav2vec2"])
def test_lora_policy_adds_only_adapters(models, media, family):
    pytest.importorskip("peft")
    enc = encoders.create(FAMILIES[family][0](models), offline=True, **FAMILIES[family][1])
    items = values(media, enc.modality)[:2]
    before, fingerprint = run(enc, items), enc.fingerprint
    enc.set_trainable("lora:4")
    trainable = [n for n, p in enc.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    torch.testing.assert_close(run(enc, items), before)  # LoRA B starts at zero
    assert enc.fingerprint == fingerprint


# --- identity / fingerprint ------------------------------------------------------------------

def test_fingerprint_is_content_addressed(models, tmp_path):
    base = encoders.create(f"timm:{models['timm_vit']}", offline=True)
    moved = tmp_path / "elsewhere"
    shutil.copytree(models["timm_vit"], moved)
    assert encoders.create(f"timm:{moved}", offline=True).fingerprint == base.fingerprint
    other = encoders.create(f"timm:{models['timm_vit_seed1']}", offline=True)
    assert other.fingerprint != base.fingerprint, "other weights"
    assert len(base.fingerprint) == 64 and int(base.fingerprint, 16) >= 0
    ident = base.identity()
    assert ident["backend"] == "timm" and ident["weights"] == {"sha256": sha256_tree(models["timm_vit"])}
    assert str(models["timm_vit"]) not in str(ident), "paths never enter the identity"
    weights = models["timm_vit"] / "model.safetensors"
    assert encoders.sha256_file(weights) == hashlib.sha256(weights.read_bytes()).hexdigest()


def test_fingerprint_follows_preprocessing_pooling_dtype(models, media):
    bert = f"hf:{models['bert']}"
    base = make(models, "hf-bert")
    assert base.identity()["pooling"] == "mean"
    cls = encoders.create(bert, offline=True, pooling="cls")
    short = encoders.create(bert, offline=True, max_length=4)
    half = encoders.create(bert, offline=True, dtype="bfloat16")
    normed = encoders.create(bert, offline=True, normalize=True)
    prints = {e.fingerprint for e in (base, cls, short, half, normed)}
    assert len(prints) == 5
    assert half.identity()["dtype"] == "bfloat16" and run(half, TEXTS).dtype == torch.float32
    torch.testing.assert_close(run(half, TEXTS), run(base, TEXTS), atol=0.1, rtol=0.1)
    assert short.preprocess("a warm green sock with leather boots")["input_ids"].shape[0] == 4
    assert not torch.allclose(run(cls, TEXTS), run(base, TEXTS))
    torch.testing.assert_close(run(normed, TEXTS).norm(dim=-1), torch.ones(3))
    w2v = f"hf-audio:{models['w2v']}"
    a = encoders.create(w2v, offline=True, max_seconds=1.0)
    b = encoders.create(w2v, offline=True, max_seconds=2.0)
    assert a.fingerprint != b.fingerprint and a.identity()["preprocess"]["sample_rate"] == 16000


def test_random_init_is_explicit_seeded_and_fingerprinted(models):
    bert = f"hf:{models['bert']}"
    loaded = make(models, "hf-bert")
    r0 = encoders.create(bert, offline=True, random_init=True)
    r0b = encoders.create(bert, offline=True, random_init=True)
    r1 = encoders.create(bert, offline=True, random_init=True, seed=1)
    assert r0.identity()["weights"]["random-init"] is True and r0.identity()["weights"]["seed"] == 0
    assert r0.fingerprint == r0b.fingerprint and len({loaded.fingerprint, r0.fingerprint, r1.fingerprint}) == 3
    torch.testing.assert_close(run(r0, TEXTS), run(r0b, TEXTS))
    assert not torch.allclose(run(r0, TEXTS), run(loaded, TEXTS))
    timm_random = encoders.create(f"timm:{models['timm_vit']}", offline=True, random_init=True)
    assert timm_random.identity()["weights"]["random-init"] is True
    clip = [encoders.create(f"open_clip:{models['clip_cfg']}", modality="text", random_init=True, offline=True)
            for _ in range(2)]
    assert clip[0].fingerprint == clip[1].fingerprint != make(models, "open_clip-text").fingerprint
    torch.testing.assert_close(run(clip[0], TEXTS), run(clip[1], TEXTS))


def test_open_clip_folder_layout_and_modality_required(models, media):
    from_folder = encoders.create(f"open_clip:{models['clip_dir']}", modality="image", offline=True)
    from_file = make(models, "open_clip-image")
    torch.testing.assert_close(run(from_folder, [media["img0"]]), run(from_file, [media["img0"]]))
    with pytest.raises(ConfigError, match="modality"):
        encoders.create(f"open_clip:{models['clip_cfg']}@{models['clip_weights']}", offline=True)
    with pytest.raises(WeightsNotFoundError, match="names no weights"):
        encoders.create(f"open_clip:{models['clip_cfg']}", modality="text", offline=True)
    image, text = make(models, "open_clip-image"), make(models, "open_clip-text")
    assert image.fingerprint != text.fingerprint


def test_open_clip_config_is_replaced_whole_for_concurrent_readers(tmp_path, monkeypatch):
    """Every process of a launch registers the same custom config, and open_clip re-reads every
    registered file each time: a process that opened the file must never see it truncated."""
    import json

    import open_clip

    from encoders import open_clip_backend as ocb

    monkeypatch.setattr(ocb, "_CONFIG_DIR", tmp_path / "registered")
    cfg = {**fx.OPEN_CLIP_CONFIG, "embed_dim": 24 + int.from_bytes(tmp_path.name.encode()[-2:], "big") % 97}
    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps(cfg))
    name = ocb._config_name(cfg)
    assert name not in open_clip.list_models()
    (tmp_path / "registered").mkdir()
    theirs = json.dumps(cfg, indent=2)  # another process's copy, which it is reading now
    (tmp_path / "registered" / f"{name}.json").write_text(theirs)
    with open(tmp_path / "registered" / f"{name}.json") as reader:
        assert ocb._register_config(arch) == name
        assert reader.read() == theirs  # not truncated and rewritten under the reader
    assert open_clip.get_model_config(name) == cfg


def test_sentence_transformer_matches_library_encode(models):
    from sentence_transformers import SentenceTransformer

    enc = make(models, "st")
    expected = SentenceTransformer(str(models["st"]), device="cpu").encode(TEXTS, convert_to_numpy=True)
    np.testing.assert_allclose(run(enc, TEXTS).numpy(), expected, atol=1e-5)


def test_dataloader_workers_run_preprocess(models):
    """Workers get a pickled copy (spawn): the tokenizer travels, the model does not."""
    enc = make(models, "hf-bert")
    loader = torch.utils.data.DataLoader(TEXTS, batch_size=2, num_workers=1, collate_fn=_Batcher(enc),
                                         multiprocessing_context="spawn")
    with torch.inference_mode():
        got = torch.cat([enc(batch) for batch in loader])
    torch.testing.assert_close(got, run(enc, TEXTS), atol=1e-5, rtol=1e-5)


class _Batcher:
    """collate_fn for the worker: preprocess each raw value, then the encoder's collate."""

    def __init__(self, enc: Encoder):
        self.preprocess, self.collate = enc.preprocess, enc.collate

    def __call__(self, raw):
        return self.collate([self.preprocess(v) for v in raw])


# --- audio decoding --------------------------------------------------------------------------

def test_audio_mono_resample_crop_pad(models, media):
    wave = load_audio(media["wav_long"], 16000, 10.0)  # 1.5 s stereo at 22.05 kHz
    assert wave.ndim == 1 and wave.dtype == np.float32 and len(wave) == 24000
    assert abs(float(np.abs(wave).max()) - 0.3 * 0.85) < 0.02, "mono = mean of the two channels"
    assert len(load_audio(media["wav_short"], 16000, 10.0)) == 9600  # 0.6 s at 8 kHz, upsampled
    assert len(load_audio(media["wav_long"], 16000, 1.0)) == 16000  # cropped to max_seconds
    enc = make(models, "hf-wav2vec2")  # max_seconds=1: every item padded to exactly 1 s
    short = enc.preprocess(media["wav_short"])
    assert short["input_values"].shape == (16000,) and int(short["attention_mask"].sum()) == 9600
    assert enc.preprocess(media["wav_long"])["attention_mask"].all()


# --- errors ----------------------------------------------------------------------------------

def test_unknown_backend_and_bad_specs():
    with pytest.raises(ConfigError, match="unknown encoder backend 'nope'.*timm"):
        encoders.create("nope:thing")
    for bad in ("resnet50", "timm:", ":x"):
        with pytest.raises(ConfigError):
            encoders.create(bad)
    assert {"timm", "hf", "hf-audio", "open_clip", "st"} <= set(encoders.available())


def test_modality_mismatch_is_refused(models):
    with pytest.raises(ConfigError, match="image"):
        encoders.create(f"timm:{models['timm_vit']}", modality="text", offline=True)
    with pytest.raises(ConfigError, match="text"):
        encoders.create(f"hf-audio:{models['bert']}", offline=True)
    with pytest.raises(ConfigError, match="modality"):
        encoders.create(f"hf:{models['bert']}", modality="video", offline=True)


def test_unknown_option_is_refused(models):
    with pytest.raises(ConfigError, match="poolng"):
        encoders.create(f"hf:{models['bert']}", offline=True, poolng="cls")
    with pytest.raises(ConfigError, match="pooling"):
        encoders.create(f"hf:{models['bert']}", offline=True, pooling="max")
    with pytest.raises(ConfigError, match="layer"):
        encoders.create(f"hf:{models['bert']}", offline=True, layer=7)


@pytest.mark.parametrize("spec", ["hf:{missing}", "hf-audio:{missing}", "st:{missing}", "timm:{missing}",
                                  "open_clip:ViT-B-32@{missing}/w.safetensors", "hf:{empty}"])
def test_missing_local_weights(tmp_path, spec):
    empty = tmp_path / "empty"
    empty.mkdir()
    spec = spec.format(missing=tmp_path / "no-such-model", empty=empty)
    with pytest.raises(WeightsNotFoundError) as info:
        encoders.create(spec, modality="image" if spec.startswith("open_clip") else None, offline=True)
    assert str(tmp_path) in str(info.value) and isinstance(info.value, ModalrecError)
    assert "Traceback" not in str(info.value) and info.value.__suppress_context__ or info.value.__cause__ is None


@pytest.mark.parametrize("spec", ["hf:modalrec-tests/no-such-bert", "hf-audio:modalrec-tests/no-such-w2v",
                                  "st:modalrec-tests/no-such-st", "timm:hf-hub:modalrec-tests/no-such-vit",
                                  "open_clip:hf-hub:modalrec-tests/no-such-clip"])
def test_offline_hub_name_is_one_clear_error(monkeypatch, spec):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError) as info:
        encoders.create(spec, modality="text" if spec.startswith("open_clip") else None)
    message = str(info.value)
    assert "no-such" in message and "offline" in message and "HF_HOME" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


@pytest.mark.parametrize("family", ["timm-vit", "hf-vit", "open_clip-image"])
def test_bad_images(models, tmp_path, family):
    enc = make(models, family)
    good = fx.write_image(tmp_path / "good.jpg", size=(64, 64))
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("not a picture")
    for path in (tmp_path / "missing.jpg", truncated, not_image):
        with pytest.raises(EncoderInputError, match=str(path.name)):
            enc.preprocess(str(path))
    assert enc.preprocess(str(good))["pixel_values"].dim() == 3


@pytest.mark.parametrize("family", ["hf-bert", "st", "open_clip-text"])
def test_bad_texts(models, family):
    enc = make(models, family)
    for bad in ("", "   \n\t", None):
        with pytest.raises(EncoderInputError):
            enc.preprocess(bad)


@pytest.mark.parametrize("family", ["hf-wav2vec2", "hf-ast"])
def test_bad_audio(models, tmp_path, family):
    enc = make(models, family)
    zero = fx.write_wav(tmp_path / "zero.wav", 0.0)
    silent = fx.write_wav(tmp_path / "silent.wav", 0.5, amplitude=0.0)
    corrupt = tmp_path / "corrupt.mp3"
    corrupt.write_bytes(bytes(range(256)) * 8)
    cases = {zero: "zero length", silent: "silent", corrupt: "cannot decode", tmp_path / "gone.wav": "not found"}
    for path, why in cases.items():
        with pytest.raises(EncoderInputError, match=why) as info:
            enc.preprocess(str(path))
        assert path.name in str(info.value)


# --- registry extension points ----------------------------------------------------------------

def test_register_decorator_adds_a_backend(media):
    @encoders.register("toy-test")
    def make_toy(name, *, modality=None, offline=False, random_init=False, **options):
        return fx.ToyEncoder(name, **options)

    try:
        enc = encoders.create("toy-test:7", scale=2.0)
        assert "toy-test" in encoders.available() and enc.spec == "toy-test:7" and enc.dim == 2
        assert run(enc, ["ab", "abc"]).tolist() == [[4.0, 14.0], [6.0, 14.0]]
    finally:
        from encoders import registry
        registry._FACTORIES.pop("toy-test", None)


def test_entry_point_backend_loads_lazily(monkeypatch):
    from encoders import registry

    ep = importlib.metadata.EntryPoint(name="toy-ep", value="encoder_fixtures:toy_factory",
                                       group=registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry.importlib.metadata, "entry_points",
                        lambda group=None: [ep] if group == registry.ENTRY_POINT_GROUP else [])
    try:
        assert "toy-ep" in encoders.available()
        enc = encoders.create("toy-ep:3")
        assert enc.identity()["model"] == "3" and enc.modality == "text"
    finally:
        registry._FACTORIES.pop("toy-ep", None)
