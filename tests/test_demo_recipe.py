"""recipes/demo.py: the closing summary read from a compare report, and what --quick changes."""

from __future__ import annotations

import importlib.util
import json

from conftest import REPO


def _demo():
    spec = importlib.util.spec_from_file_location("demo_recipe", REPO / "recipes" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _arm(name, kind, mean, cold, **extra):
    return {"name": name, "kind": kind, "status": "ok", **extra,
            "test": {"recall@20": {"mean": mean, "std": 0.01}, "cold/recall@20": {"mean": cold, "std": 0.02}}}


def test_summary_shows_ids_frozen_and_the_best_fine_tuned_arm_against_its_frozen_counterpart(tmp_path):
    report = {"seeds": [1, 2], "baseline": "frozen-fused", "arms": [
        _arm("id-only", "id", 0.134, 0.0),
        _arm("frozen-fused", "fused", 0.130, 0.103),
        _arm("frozen-image", "frozen", 0.108, 0.078),
        _arm("frozen-text", "frozen", 0.103, 0.050),
        _arm("finetuned-image-cached-top1", "finetuned", 0.128, 0.068, feature="image", policy="cached-top-k:1",
             counterpart="frozen-image"),
        _arm("finetuned-text-full", "finetuned", 0.111, 0.040, feature="text", policy="full",
             counterpart="frozen-text"),
        {"name": "finetuned-image-full", "kind": "finetuned", "status": "failed", "error": "out of memory"},
    ]}
    (tmp_path / "report.json").write_text(json.dumps(report))
    lines = _demo().summary(tmp_path).splitlines()
    rows = {ln[:36].strip(): ln[36:].split() for ln in lines[3:-1]}
    assert rows == {"ids only": ["0.1340", "±", "0.0100", "0.0000", "±", "0.0200"],
                    "frozen, all features": ["0.1300", "±", "0.0100", "0.1030", "±", "0.0200"],
                    "frozen image": ["0.1080", "±", "0.0100", "0.0780", "±", "0.0200"],
                    "fine-tuned image (cached-top-k:1)": ["0.1280", "±", "0.0100", "0.0680", "±", "0.0200"]}
    assert "over 2 seeds" in lines[1] and lines[-1].startswith(f"report: {tmp_path / 'report.md'}")

    report["seeds"] = [1]
    (tmp_path / "report.json").write_text(json.dumps(report))
    one_seed = _demo().summary(tmp_path)
    assert "±" not in one_seed and "0.1280" in one_seed


def test_summary_names_each_rows_recommender_when_they_differ(tmp_path):
    """compare_demo's frozen arms train joint and its fine-tuned arm a two-tower: the summary says
    which row is which, so the fine-tuned row reads against the frozen two-tower row."""
    report = {"seeds": [1], "baseline": "frozen-fused", "arms": [
        {**_arm("id-only", "id", 0.2, 0.0), "model": "joint"},
        {**_arm("frozen-fused", "fused", 0.27, 0.17), "model": "joint"},
        {**_arm("frozen-image-two_tower", "counterpart", 0.15, 0.15), "model": "two_tower"},
        {**_arm("finetuned-image-cached-top1", "finetuned", 0.13, 0.14, feature="image", policy="cached-top-k:1",
                counterpart="frozen-image-two_tower"), "model": "two_tower"},
    ]}
    (tmp_path / "report.json").write_text(json.dumps(report))
    lines = _demo().summary(tmp_path).splitlines()
    labels = [ln.rsplit(None, 2)[0].strip() for ln in lines[3:-1]]
    assert labels == ["ids only [joint]", "frozen, all features [joint]", "frozen image [two_tower]",
                      "fine-tuned image (cached-top-k:1) [two_tower]"]
    assert lines[5].split()[-2:] == ["0.1500", "0.1500"]


def test_quick_runs_the_same_configs_smaller_under_its_own_cache():
    from pipeline.config import load_config

    demo = _demo()
    quick = demo.quick_overrides()
    full, small = load_config(demo.COMPARE), load_config(demo.COMPARE, quick)
    assert small.cache_dir != full.cache_dir and small.data.root != full.data.root
    assert small.data.demo.n_items < full.data.demo.n_items and len(small.compare.seeds) == 1
    assert small.compare.common["train.epochs"] < full.compare.common["train.epochs"]
    assert {k: v for k, v in small.compare.common.items() if k not in ("train.epochs", "train.patience")} == \
        {k: v for k, v in full.compare.common.items() if k not in ("train.epochs", "train.patience")}
    assert small.encoders == full.encoders and small.compare.policies == full.compare.policies
    assert small.compare.by_model.keys() == full.compare.by_model.keys() and full.compare.by_model
    for model, budget in small.compare.by_model.items():  # no recommender gets its full epochs back
        assert budget["train.epochs"] <= 2 < full.compare.by_model[model]["train.epochs"], model
