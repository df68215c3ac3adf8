"""Checks every model of the zoo must pass, written once: a model's test file calls them with
its name and the settings it trains with on the demo data (``tests/test_models.py``'s fixture:
400 users, 300 items, the demo's ground-truth attributes as the one feature set ``attrs``)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.models import LoadedFeature
from pipeline.train import train

from test_models import DEMO, QUICK, popularity, run


def check_learns(demo, model: str, *overrides: str, epochs: int = 60, cold: bool = True,
                 warm_factor: float = 1.1) -> dict:
    """Beats popularity on warm items by ``warm_factor``; with ``cold``, also recommends
    cold-start items clearly better than ids alone (BPR) can."""
    r = run(demo, f"model.name={model}", *overrides, epochs=epochs)
    pop = popularity(demo[1])
    assert r["test"]["warm/recall@20"] > warm_factor * pop["warm/recall@20"], (model, r["test"], pop)
    if cold:
        ids = run(demo, "model.name=bpr", epochs=epochs)
        assert r["test"]["cold/recall@20"] > ids["test"]["cold/recall@20"] + 0.02, (
            model, r["test"]["cold/recall@20"], ids["test"]["cold/recall@20"])
    return r


def check_resume(demo, tmp_path, model: str, *overrides: str, seed: int = 3) -> None:
    """Two epochs, stop, resume to four == four epochs straight: losses, test metrics, weights."""
    settings, data, feats = demo
    base = [*settings, *QUICK, f"model.name={model}", *overrides, f"train.runs_dir={tmp_path}", "train.patience=100"]
    straight = train(load_config(DEMO, [*base, "train.epochs=4", "train.run_name=a"]), data, feats, seed=seed)
    train(load_config(DEMO, [*base, "train.epochs=2", "train.run_name=b"]), data, feats, seed=seed)
    resumed = train(load_config(DEMO, [*base, "train.epochs=4", "train.run_name=b"]), data, feats, seed=seed,
                    resume=True)
    assert resumed["epochs"] == 4
    assert [h["loss"] for h in resumed["history"]] == pytest.approx([h["loss"] for h in straight["history"]],
                                                                    rel=1e-5)
    assert resumed["test"] == pytest.approx(straight["test"], rel=1e-4, abs=1e-6)
    a = load_file(str(tmp_path / f"a-s{seed}" / "best.safetensors"))
    b = load_file(str(tmp_path / f"b-s{seed}" / "best.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)


def check_bad_features(demo, model: str, *overrides: str, needs_features: bool = True) -> None:
    """No feature set (when the model needs one) and a table of the wrong shape fail with a
    ``ConfigError`` that names the model or the feature set, before any training."""
    _, data, feats = demo
    if needs_features:
        with pytest.raises(ConfigError, match=model):
            run(demo, f"model.name={model}", *overrides, features={}, epochs=1)
    good = next(iter(feats.values()))
    short = LoadedFeature(good.values[:-1], good.mask[:-1], "short")
    with pytest.raises(ConfigError, match=rf"features\.attrs: expected {data.n_items} rows"):
        run(demo, f"model.name={model}", *overrides, features={"attrs": short}, epochs=1)
