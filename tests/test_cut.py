"""encoders/cut.py: cached top-k fine-tuning equals the uncached run, for every backend.

For each tiny checkpoint: the encoder trained with `top-k:k` in modalrec's training
convention (frozen-parameter modules in eval, dropout live elsewhere) gives the same output
and the same gradients on its trained parameters as the encoder whose blocks below the cut
are replayed from `hidden_below`. Random numbers drawn in the top blocks (dropout, drop-path)
match because nothing below the cut draws any.
"""

from __future__ import annotations

import random
from pathlib import Path

import encoder_fixtures as fx
import numpy as np
import pytest
import torch

import encoders
from encoders import cut
from pipeline.errors import ConfigError

TEXTS = ["red hat", "a warm green sock with leather boots", "blue scarf."]
ATOL = 1e-5


def build_wav2vec2(root: Path, seed: int = 0, **config) -> Path:
    """wav2vec2 with a chosen config (the fixture's default draws random numbers before any block)."""
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    torch.manual_seed(seed)
    cfg = Wav2Vec2Config(**fx.TINY_TRANSFORMER, conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8),
                         num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, feat_extract_norm="group",
                         **config)
    Wav2Vec2Model(cfg).save_pretrained(root)
    Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True, return_attention_mask=False).save_pretrained(root)
    return root


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: thread start-up costs more than it saves on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cut_models")
    clip_cfg, clip_weights = fx.build_open_clip(root / "clip")
    paths = {
        "timm_vit": fx.build_timm_vit(root / "timm_vit"),
        "timm_resnet": fx.build_timm_resnet(root / "timm_resnet"),
        "timm_cnx": fx.build_timm_convnext(root / "timm_cnx"),
        "hf_vit": fx.build_hf_vit(root / "hf_vit"),
        "bert": fx.build_hf_bert(root / "bert"),
        "clap": fx.build_hf_clap(root / "clap"),
        "w2v_random": fx.build_hf_wav2vec2(root / "w2v_random"),  # hidden_dropout, layerdrop, SpecAugment
        "w2v": build_wav2vec2(root / "w2v", hidden_dropout=0.0, layerdrop=0.0, mask_time_prob=0.0,
                              activation_dropout=0.1, attention_dropout=0.1),
        "w2v_layerdrop": build_wav2vec2(root / "w2v_layerdrop", hidden_dropout=0.0, layerdrop=0.2,
                                        mask_time_prob=0.0),
        "clip": clip_cfg,
        "clip_weights": clip_weights,
    }
    paths["st"] = fx.build_st(root / "st", paths["bert"])
    return paths


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, list]:
    root = tmp_path_factory.mktemp("cut_media")
    images = [fx.write_image(root / f"img{i}.jpg", size=(40 + 8 * i, 56), seed=i) for i in range(3)]
    waves = [fx.write_wav(root / f"w{i}.wav", s, rate=16000, channels=1, freq=f)
             for i, (s, f) in enumerate([(1.0, 330), (0.5, 550), (0.8, 440)])]
    return {"image": images, "text": TEXTS, "audio": waves}


# name -> (spec, create() options)
FAMILIES = {
    # drop rates that act above the cut only (in the blocks and the head): allowed, and replayed alike
    "timm-vit": (lambda m: f"timm:{m['timm_vit']}",
                 {"model_args": {"proj_drop_rate": 0.1, "drop_path_rate": 0.1, "drop_rate": 0.1}}),
    "timm-resnet": (lambda m: f"timm:{m['timm_resnet']}", {}),
    "timm-convnext": (lambda m: f"timm:{m['timm_cnx']}", {"model_args": {"drop_path_rate": 0.2}}),
    "hf-vit": (lambda m: f"hf:{m['hf_vit']}", {}),
    "hf-bert": (lambda m: f"hf:{m['bert']}", {}),
    "st": (lambda m: f"st:{m['st']}", {}),
    "open_clip-image": (lambda m: f"open_clip:{m['clip']}@{m['clip_weights']}", {"modality": "image"}),
    "open_clip-text": (lambda m: f"open_clip:{m['clip']}@{m['clip_weights']}", {"modality": "text"}),
    "hf-wav2vec2": (lambda m: f"hf-audio:{m['w2v']}", {"max_seconds": 1.0}),
    "hf-clap": (lambda m: f"hf-audio:{m['clap']}", {}),  # Swin stages return (hidden, hidden, dims) tuples
}
# (family, k): k=2 on two-block models cuts at block 0 (its input: the embeddings' output)
CASES = [(f, 1) for f in FAMILIES] + [("timm-vit", 2), ("hf-bert", 2), ("timm-convnext", 3),
                                      ("timm-resnet", 2), ("open_clip-text", 2)]


def make(models, family: str, **extra):
    spec, options = FAMILIES[family]
    return encoders.create(spec(models), offline=True, **{**options, **extra})


def batch_of(enc, media, n: int = 3) -> dict[str, torch.Tensor]:
    return enc.collate([enc.preprocess(v) for v in media[enc.modality][:n]])


def step(enc, batch_or_call, weights: torch.Tensor | None, seed: int = 0):
    """One training forward + backward of a random linear loss: (output, {name: grad})."""
    enc.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    out = batch_or_call() if callable(batch_or_call) else enc(batch_or_call)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)) if weights is None else weights
    (out * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in enc.named_parameters() if p.requires_grad and p.grad is not None}
    return out.detach(), grads


def replay_inputs(enc, batch: dict) -> dict:
    """What a cached run keeps per item: token ids and masks, never pixels or waveforms."""
    return {k: v for k, v in batch.items() if not v.is_floating_point()}


@pytest.mark.parametrize("family,k", CASES, ids=[f"{f}-top{k}" for f, k in CASES])
def test_replay_matches_uncached_forward_and_gradients(models, media, family, k):
    enc = make(models, family)
    enc.set_trainable(f"top-k:{k}")
    cut.train_mode(enc)
    batch = batch_of(enc, media)
    trained = {n for n, p in enc.named_parameters() if p.requires_grad}
    all_keys = set(enc.state_dict())
    out, grads = step(enc, batch, None)
    assert grads, "the top blocks receive gradients"

    modes = [m.training for m in enc.modules()]
    rng = torch.get_rng_state()
    hidden = cut.hidden_below(enc, batch, k)
    assert hidden.shape[0] == 3 and not hidden.requires_grad
    assert [m.training for m in enc.modules()] == modes, "modes restored"
    assert torch.equal(torch.get_rng_state(), rng), "no random numbers drawn"
    assert {n for n, p in enc.named_parameters() if p.requires_grad} == trained, "flags restored"

    j = cut.cut_index(enc, k)
    replay = cut.skip_below(enc, k)
    assert replay.j == j == len(enc.trainable_parts()[0]) - k
    kept = set(enc.state_dict())
    assert kept < all_keys if j else kept == all_keys, "skipped blocks leave the state dict"
    assert trained <= {n for n, _ in enc.named_parameters()}, "every trained parameter is still there"
    cut.train_mode(enc)
    replayed, replay_grads = step(enc, lambda: replay(hidden, replay_inputs(enc, batch)), None)

    torch.testing.assert_close(replayed, out, atol=ATOL, rtol=1e-5)
    assert replay_grads.keys() == grads.keys()
    for name in grads:
        torch.testing.assert_close(replay_grads[name], grads[name], atol=ATOL, rtol=1e-4, msg=name)

    replay.restore()
    assert set(enc.state_dict()) == all_keys
    restored, _ = step(enc, batch, None)
    torch.testing.assert_close(restored, out, atol=ATOL, rtol=1e-5)


def test_hidden_is_batch_first_and_per_item(models, media):
    """Image states do not depend on the batch an item was computed in."""
    enc = make(models, "timm-vit")
    enc.set_trainable("top-k:1")
    batch = batch_of(enc, media)
    together = cut.hidden_below(enc, batch, 1)
    alone = torch.cat([cut.hidden_below(enc, {k: v[i:i + 1] for k, v in batch.items()}, 1) for i in range(3)])
    assert together.shape == (3, 17, 32)
    torch.testing.assert_close(together, alone, atol=ATOL, rtol=1e-5)
    # a policy string works as well as a count
    torch.testing.assert_close(cut.hidden_below(enc, batch, "top-k:1"), together)


@pytest.mark.parametrize("family", ["hf-bert", "st"])
def test_text_states_replay_in_a_batch_with_other_padding(models, media, family):
    enc = make(models, family)
    enc.set_trainable("top-k:1")
    cut.train_mode(enc)
    long_batch = batch_of(enc, media)  # padded to the long middle text
    hidden = cut.hidden_below(enc, long_batch, 1)
    store = cut.fit_length(hidden, 32)  # what a cache keeps: every item at a fixed length
    assert store.shape[:2] == (3, 32) and not store[:, hidden.shape[1]:].any()
    pick = [0, 2]  # the two short texts: a shorter padding
    short_batch = enc.collate([enc.preprocess(TEXTS[i]) for i in pick])
    t_short = short_batch["input_ids"].shape[1]
    assert t_short < long_batch["input_ids"].shape[1]
    direct = cut.hidden_below(enc, short_batch, 1)
    valid = short_batch["attention_mask"].bool()
    torch.testing.assert_close(store[pick, :t_short][valid], direct[valid], atol=ATOL, rtol=1e-5)

    out, grads = step(enc, short_batch, None)
    enc.eval()
    with torch.no_grad():
        out_eval = enc(short_batch)
    replay = cut.skip_below(enc, 1)
    cut.train_mode(enc)
    for cached in (store[pick], hidden[pick]):  # longer than the batch: cut to its length
        replayed, replay_grads = step(enc, lambda cached=cached: replay(cached, short_batch), None)
        torch.testing.assert_close(replayed, out, atol=ATOL, rtol=1e-5)
        for name in grads:
            torch.testing.assert_close(replay_grads[name], grads[name], atol=ATOL, rtol=1e-4, msg=name)
    # shorter than a batch padded further: zero-padded to its length (eval: dropout masks would
    # differ in shape)
    exact = cut.fit_length(store[pick], t_short)
    long_pad = {k: cut.fit_length(v, t_short + 3) for k, v in short_batch.items()}  # pad id and mask 0
    enc.eval()
    with torch.no_grad():
        torch.testing.assert_close(replay(exact, long_pad), out_eval, atol=ATOL, rtol=1e-5)


def test_open_clip_sequence_first_layout(models, media):
    """An open_clip Transformer built with batch_first=False hands blocks [T, B, D]: the
    states come out batch-first anyway and are replayed in the blocks' layout."""
    ref = make(models, "open_clip-text")
    enc = make(models, "open_clip-text")
    enc.model.transformer.batch_first = False
    for block in enc.model.transformer.resblocks:
        block.attn.batch_first = False
    for e in (ref, enc):
        e.set_trainable("top-k:1")
        cut.train_mode(e)
    batch = batch_of(enc, media)
    out, grads = step(enc, batch, None)
    torch.testing.assert_close(out, step(ref, batch, None)[0], atol=ATOL, rtol=1e-5)
    hidden = cut.hidden_below(enc, batch, 1)
    assert hidden.shape == (3, 16, 32)
    torch.testing.assert_close(hidden, cut.hidden_below(ref, batch, 1), atol=ATOL, rtol=1e-5)
    replay = cut.skip_below(enc, 1)
    cut.train_mode(enc)
    replayed, replay_grads = step(enc, lambda: replay(hidden, batch), None)
    torch.testing.assert_close(replayed, out, atol=ATOL, rtol=1e-5)
    for name in grads:
        torch.testing.assert_close(replay_grads[name], grads[name], atol=ATOL, rtol=1e-4, msg=name)


def test_replay_handle(models, media):
    enc = make(models, "hf-vit")
    enc.set_trainable("top-k:1")
    batch = batch_of(enc, media)
    hidden = cut.hidden_below(enc, batch, 1)
    replay = cut.skip_below(enc, 1, keep=False)
    assert "replayed from the cache" in repr(enc.model.layers[0])
    with pytest.raises(RuntimeError, match="load"):
        enc(batch)
    stub = replay.stub(3)
    assert stub["pixel_values"].shape == batch["pixel_values"].shape and not stub["pixel_values"].any()
    with replay.loaded(hidden[:2]), pytest.raises(ValueError, match="2 items"):
        enc(stub)
    with replay.loaded(hidden), torch.no_grad():
        a = enc(stub)
    with pytest.raises(RuntimeError, match="load"):
        enc(stub)  # the context manager cleared it
    with torch.no_grad():
        torch.testing.assert_close(replay(hidden), a)
    with pytest.raises(ConfigError, match="already replaced"):
        cut.skip_below(enc, 1)
    with pytest.raises(RuntimeError, match="keep=False"):
        replay.restore()
    text = make(models, "hf-bert")
    text.set_trainable("top-k:1")
    text_replay = cut.skip_below(text, 1)
    with pytest.raises(ValueError, match="input_ids"):
        text_replay.stub(2)


# --- refusals -----------------------------------------------------------------------------------

def test_only_the_top_k_policy(models, media):
    enc = make(models, "hf-bert")
    batch = batch_of(enc, media)
    for policy in ("full", "bias", "lora:4", "frozen"):
        with pytest.raises(ConfigError, match="top-k"):
            cut.hidden_below(enc, batch, policy)
        with pytest.raises(ConfigError, match="top-k"):
            cut.skip_below(enc, policy)
    for bad in (0, 3, -1, "top-k:9", "top-k:x"):
        with pytest.raises(ConfigError, match="top-k"):
            cut.check_deterministic_below(enc, bad)
    enc.set_trainable("full")  # would silently lose the gradients of the skipped blocks
    with pytest.raises(ConfigError, match="require grad"):
        cut.skip_below(enc, 1)
    enc.set_trainable("top-k:2")
    with pytest.raises(ConfigError, match="top-k:1"):
        cut.skip_below(enc, 1)
    with pytest.raises(ConfigError, match="layer"):
        cut.hidden_below(make(models, "hf-bert", layer=1), batch, 1)


def test_random_module_before_the_cut_is_refused(models, media):
    enc = make(models, "timm-vit", model_args={"pos_drop_rate": 0.1})
    batch = batch_of(enc, media)
    with pytest.raises(ConfigError, match=r"model\.pos_drop \(Dropout, p=0\.1\)"):
        cut.hidden_below(enc, batch, 1)
    with pytest.raises(ConfigError, match="pos_drop"):
        cut.skip_below(enc, 1)
    with pytest.raises(ConfigError, match="pos_drop"):
        cut.check_deterministic_below(enc, "top-k:2")
    # patch dropout keeps a random subset of tokens
    with pytest.raises(ConfigError, match="patch_drop"):
        cut.check_deterministic_below(make(models, "timm-vit", model_args={"patch_drop_rate": 0.25}), 1)
    # wav2vec2 defaults: encoder.dropout (param-free, outside any frozen module) before layer 0
    w2v = encoders.create(f"hf-audio:{models['w2v_random']}", offline=True, max_seconds=1.0)
    with pytest.raises(ConfigError, match=r"model\.encoder\.dropout"):
        cut.check_deterministic_below(w2v, 1)
    # layerdrop draws a number per layer, below the cut too
    layerdrop = encoders.create(f"hf-audio:{models['w2v_layerdrop']}", offline=True, max_seconds=1.0)
    with pytest.raises(ConfigError, match="random numbers are drawn.*layerdrop"):
        cut.check_deterministic_below(layerdrop, 1)
    # dropout inside the frozen blocks/embeddings is off in training (eval mode): allowed
    cut.check_deterministic_below(make(models, "hf-bert"), 1)


def test_batch_statistics_and_trained_parameters_before_the_cut_are_refused(models, media):
    enc = make(models, "timm-vit")
    enc.model.norm_pre = torch.nn.BatchNorm1d(17, affine=False)  # over the 17 tokens, no parameters
    with pytest.raises(ConfigError, match="norm_pre.*batch statistics"):
        cut.check_deterministic_below(enc, 1)
    enc = make(models, "timm-vit")
    blocks, head = enc.trainable_parts()
    enc.trainable_parts = lambda: (blocks, head + [enc.model.pos_embed])  # a head reading the input
    with pytest.raises(ConfigError, match=r"depends on parameters.*model\.pos_embed"):
        cut.hidden_below(enc, batch_of(enc, media), 1)


def test_check_leaves_random_state_alone(models, media):
    enc = make(models, "hf-bert")
    states = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    cut.check_deterministic_below(enc, 1, batch_of(enc, media))
    assert torch.equal(torch.get_rng_state(), states[0]) and np.array_equal(np.random.get_state()[1], states[1])
    assert random.getstate() == states[2]


def test_cast_after_the_cut(models, media):
    """`.to(dtype)` after skip_below reaches the replay (open_clip reads the skipped block's dtype)
    and the blocks `restore` puts back."""
    enc = make(models, "open_clip-text")
    enc.set_trainable("top-k:1")
    batch = batch_of(enc, media)
    hidden = cut.hidden_below(enc, batch, 1)
    replay = cut.skip_below(enc, 1)
    enc.to(dtype=torch.float64)
    assert enc.model.transformer.get_cast_dtype() == torch.float64
    with torch.no_grad():
        replayed = replay(hidden, batch)
        replay.restore()
        whole = enc(batch)
    assert next(enc.model.transformer.resblocks[0].parameters()).dtype == torch.float64
    torch.testing.assert_close(replayed, whole, atol=ATOL, rtol=1e-5)
