"""`modalrec extract` with the shipped hm and emotify configs on real files: H&M product photos
and texts (the ImageNet EfficientNet-Lite0 + the real all-MiniLM-L6-v2) and Emotify mp3 clips
(wav2vec2-demo random-init), each on a slice of the data set so the test stays short.

Skipped, saying where they looked, when ../shared/data (or $MODALREC_DATA) is absent.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from conftest import REPO, shared

CONFIGS = REPO / "recipes" / "configs"


def extract(capsys, config, overrides) -> dict:
    from pipeline.cli import main

    code = main(["extract", str(config), "--json", *overrides])
    out, err = capsys.readouterr()
    assert code == 0, err
    return {f["encoder"]: f for f in json.loads(out)["feature_sets"]}


def loaded(config, overrides):
    from pipeline.config import load_config
    from pipeline.data import PreparedData
    from pipeline.features import load_features

    cfg = load_config(config, overrides)
    return load_features(cfg, PreparedData.load(cfg.prepared_dir))


def warm_run_builds_nothing(capsys, monkeypatch, config, overrides) -> dict:
    import encoders

    def no_model(*a, **k):
        raise AssertionError("a second identical run must not load a model")

    with monkeypatch.context() as m:
        m.setattr(encoders, "create", no_model)
        return extract(capsys, config, overrides)


def test_hm_photos_and_texts(tmp_path, capsys, monkeypatch):
    hm = shared("hm")
    articles = pd.read_csv(hm / "articles.csv", dtype=str, keep_default_na=False).head(40)
    articles.to_csv(tmp_path / "articles.csv", index=False)
    tx = pd.read_csv(hm / "transactions.csv", dtype=str)
    tx[tx["article_id"].isin(set(articles["article_id"]))].to_csv(tmp_path / "transactions.csv", index=False)
    overrides = [f"cache_dir={tmp_path / 'cache'}", f"data.items.path={tmp_path / 'articles.csv'}",
                 f"data.items.media_root={hm}", f"data.interactions.path={tmp_path / 'transactions.csv'}",
                 "data.split.protocol=cold_start", "data.split.cold_items=0.3", "extract.batch_size=8"]

    first = extract(capsys, CONFIGS / "hm.yaml", overrides)
    assert (first["image"]["computed"], first["image"]["dim"], first["image"]["failed"]) == (40, 1280, 0)
    assert (first["text"]["computed"], first["text"]["dim"], first["text"]["failed"]) == (40, 384, 0)

    again = warm_run_builds_nothing(capsys, monkeypatch, CONFIGS / "hm.yaml", overrides)
    assert {k: (f["computed"], f["reused"]) for k, f in again.items()} == {"image": (0, 40), "text": (0, 40)}

    feats = loaded(CONFIGS / "hm.yaml", overrides)
    for name in ("image", "text"):
        assert bool(feats[name].mask.all()) and np.isfinite(feats[name].values.numpy()).all()
    text = feats["text"].values.numpy()
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1.0, atol=1e-4)  # MiniLM's Normalize module
    sim = text @ text.T
    names = articles["prod_name"].tolist()
    same = [(i, j) for i in range(40) for j in range(i + 1, 40) if names[i] == names[j]]
    assert same, "the slice should hold colour variants of one product"
    other = [(i, j) for i in range(40) for j in range(i + 1, 40) if names[i] != names[j]]
    # the real text model, not noise: variants of one product read alike
    assert np.mean([sim[p] for p in same]) > np.mean([sim[p] for p in other]) + 0.1
    assert len({tuple(np.round(v, 5)) for v in feats["image"].values.numpy()}) == 40


def test_emotify_mp3_clips(tmp_path, capsys, monkeypatch):
    emotify = shared("emotify")
    tracks = pd.read_csv(emotify / "tracks.csv", dtype=str)
    tracks = tracks.groupby("genre").head(1)  # one clip of each genre: 4 mp3s
    tracks.to_csv(tmp_path / "tracks.csv", index=False)
    overrides = [f"cache_dir={tmp_path / 'cache'}", f"data.items.path={tmp_path / 'tracks.csv'}",
                 f"data.items.media_root={emotify}", "data.interactions.unknown_items=drop",
                 "data.split.cold_items=0.5"]

    first = extract(capsys, CONFIGS / "emotify.yaml", overrides)["audio"]
    assert (first["items"], first["computed"], first["failed"], first["dim"]) == (4, 4, 0, 64)
    again = warm_run_builds_nothing(capsys, monkeypatch, CONFIGS / "emotify.yaml", overrides)["audio"]
    assert (again["computed"], again["reused"]) == (0, 4)

    audio = loaded(CONFIGS / "emotify.yaml", overrides)["audio"]
    vectors = audio.values.numpy()
    assert bool(audio.mask.all()) and np.isfinite(vectors).all()
    assert min(np.linalg.norm(vectors[i] - vectors[j]) for i in range(4) for j in range(i + 1, 4)) > 1e-3


def test_emotify_config_reads_sessions_as_users(tmp_path):
    """The whole annotation file: each liked annotation row is one session of its own."""
    shared("emotify")
    from pipeline.config import load_config
    from pipeline.data import prepare

    cfg = load_config(CONFIGS / "emotify.yaml", [f"cache_dir={tmp_path}"])
    stats = prepare(cfg, progress=False).stats()
    assert stats["items"] == 40 and stats["missing"] == {"audio": 0}
    assert stats["users"] == stats["interactions"] == stats["rows"] - stats["dropped"]["min_rating"]
