"""`modalrec compare`: a tiny grid (ids, frozen, fused, fine-tuned, fine-tuned features fed back,
two arms that fail) on a small demo with tiny encoders; its report, significance, resume, and
reproduction of single arms with `modalrec train`. The frozen arms train the demo's `joint`, the
fine-tuned ones a two-tower, tested against a frozen arm of the same two-tower."""

import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

import encoder_fixtures as fx
from conftest import REPO

DEMO = REPO / "recipes" / "configs" / "demo.yaml"


def modalrec(*args):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """Run the grid once: (overrides, report, report_dir)."""
    from pipeline.api import compare as run_compare

    tmp = tmp_path_factory.mktemp("compare")
    vit, bert = fx.build_timm_vit(tmp / "vit"), fx.build_hf_bert(tmp / "bert")
    encoders = {"text": {"spec": f"hf:{bert}", "fields": ["text"]}, "image": {"spec": f"timm:{vit}", "fields": ["image"]}}
    overrides = [
        f"cache_dir={tmp}", f"data.root={tmp}/raw", "data.demo.n_items=120", "data.demo.n_users=100",
        f"encoders={json.dumps(encoders)}", "features={text: {encoder: text}, image: {encoder: image}}",
        "extract.num_workers=0", "train.epochs=2", "train.lr=0.01", "train.batch_size=256", "train.progress=false",
        "train.tensorboard=false", "train.encode_batch_size=64", "eval.ks=[10,20]",
        "compare.seeds=[1,2]", "compare.finetune=[image]", "compare.policies=[top-k:9, top-k:1]",
        "compare.finetuned_features=[top-k:1]", "compare.html=true",
        "compare.arms={bad-key: {model.two_tower.nope: 1}}",
    ]
    report = run_compare(DEMO, overrides)
    return overrides, report, tmp / "compare" / "demo" / "report"


def _arms(report):
    return {a["name"]: a for a in report["arms"]}


def test_report_has_every_section(grid):
    from pipeline.compare.report import SECTIONS

    _, report, out = grid
    md = (out / "report.md").read_text(encoding="utf-8")
    for section in SECTIONS:
        assert f"\n## {section}\n" in md, section
    html = (out / "report.html").read_text(encoding="utf-8")
    assert all(f"<h2>{s}</h2>" in html for s in SECTIONS)
    for png in ("metrics.png", "learning_curves.png", "cost.png", "cold_start.png", "ablation.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
        assert f"]({png})" in md
    assert json.loads((out / "report.json").read_text(encoding="utf-8")) == json.loads(json.dumps(report, default=str))

    arms = _arms(report)
    assert list(arms) == ["id-only", "frozen-text", "frozen-image", "frozen-fused", "frozen-image-two_tower",
                          "finetuned-image-top9", "finetuned-image-top1", "ftfeat-image-top1", "bad-key"]
    assert report["baseline"] == "frozen-fused" and report["metric"] == "recall@20"
    for name, a in arms.items():
        if name in ("finetuned-image-top9", "bad-key"):
            continue
        assert a["status"] == "ok", (name, a.get("error"))
        assert [r["seed"] for r in a["runs"]] == [1, 2]
        seeds = [json.loads(open(f"{r['run_dir']}/result.json").read())["test"]["recall@20"] for r in a["runs"]]
        assert a["test"]["recall@20"] == pytest.approx({"mean": np.mean(seeds), "std": np.std(seeds, ddof=1)})
        assert "cold/recall@20" in a["test"] and "warm/recall@20" in a["test"]
        c = a["cost"]
        assert c["run_seconds"] > 0 and c["total_seconds"] >= c["run_seconds"] and c["epochs"] == 2
        assert c["trainable_params"] > 0 and c["peak_memory_mb"] > 0
        assert len(a["curves"]["valid"]) == 2 and all(v is not None for v in a["curves"]["valid"])
        assert a["reeval_max_abs_diff"] < 1e-6  # re-scored best weights give the training-time test metric
    # extraction is charged to the frozen arms that read the features, not to the others
    assert arms["frozen-text"]["cost"]["extraction_seconds"] > 0
    assert arms["frozen-fused"]["cost"]["extraction_seconds"] == pytest.approx(
        arms["frozen-text"]["cost"]["extraction_seconds"] + arms["frozen-image"]["cost"]["extraction_seconds"])
    assert arms["id-only"]["cost"]["extraction_seconds"] == 0
    # fine-tuned features cost their fine-tuning run too; the fine-tuned arm trains fewer params than full
    assert arms["ftfeat-image-top1"]["cost"]["finetune_run_seconds"] == arms["finetuned-image-top1"]["cost"]["run_seconds"]
    assert arms["finetuned-image-top1"]["counterpart"] == "frozen-image-two_tower"  # its own model, frozen
    assert arms["ftfeat-image-top1"]["counterpart"] == "frozen-image"
    assert arms["finetuned-image-top1"]["vs_counterpart"]["n"] == report["users"] > 0

    # the failing arms are reported with their errors; every other arm completed
    top9, bad = arms["finetuned-image-top9"], arms["bad-key"]
    assert top9["status"] == "failed" and "top-k:9" in top9["error"] and "out of range" in top9["error"]
    assert bad["status"] == "failed" and "model.two_tower.nope" in bad["error"] and "unknown key" in bad["error"]
    assert [r["seed"] for r in top9["runs"]] == [1]  # a failed arm's other seeds are not tried
    assert "finetuned-image-top9" in md.split("## Failed arms")[1] and "out of range" in md

    v = report["verdict"]
    assert v["accuracy"] in arms and v["cost"] in arms
    assert any(line.startswith("Most accurate: **") for line in v["lines"])
    assert any(line.startswith("Best accuracy per unit of cost: **") for line in v["lines"])
    assert any(line.startswith("Fine-tuning: ") for line in v["lines"])
    best = max((a["test"]["recall@20"]["mean"], n) for n, a in arms.items() if a["status"] == "ok")[1]
    assert v["accuracy"] == best

    ablation = {r["modality"]: r for r in report["ablation"]}
    assert set(ablation) == {"none (ids)", "text only", "image only", "fused: text + image"}
    assert ablation["image only"]["finetuned_arm"] == "finetuned-image-top1"
    assert ablation["image only"]["ftfeat_arm"] == "ftfeat-image-top1"
    assert ablation["text only"].get("finetuned_arm") is None


def test_significance_matches_scipy(grid):
    """Paired tests over test users, each user's value averaged over seeds, against scipy."""
    from safetensors.numpy import load_file

    _, report, _ = grid
    arms = _arms(report)

    def per_user(name):
        files = [load_file(f"{r['run_dir']}/per_user.safetensors") for r in arms[name]["runs"]]
        for f, r in zip(files, arms[name]["runs"]):  # each seed's per-user values average to its test metric
            result = json.loads(open(f"{r['run_dir']}/result.json").read())
            assert f["recall@20"].mean() == pytest.approx(result["test"]["recall@20"], abs=1e-7)  # float32 sums
        return np.mean([f["recall@20"] for f in files], axis=0), np.mean([f["cold/recall@20"] for f in files], axis=0)

    base, base_cold = per_user("frozen-fused")
    checked = 0
    for name, a in arms.items():
        if a["status"] != "ok" or name == "frozen-fused":
            continue
        ours, ours_cold = per_user(name)
        vs = a["vs_baseline"]
        assert vs["n"] == len(base) == report["users"]
        assert vs["diff"] == pytest.approx(float(np.mean(ours - base)), abs=1e-12)
        if np.any(ours != base):
            assert vs["p_ttest"] == pytest.approx(stats.ttest_rel(ours, base).pvalue, rel=1e-9)
            assert vs["p_wilcoxon"] == pytest.approx(stats.wilcoxon(ours, base).pvalue, rel=1e-9)
            checked += 1
        keep = ~np.isnan(ours_cold) & ~np.isnan(base_cold)
        cold = a["cold_vs_baseline"]
        assert cold["n"] == int(keep.sum()) > 0
        if np.any(ours_cold[keep] != base_cold[keep]):
            assert cold["p_ttest"] == pytest.approx(stats.ttest_rel(ours_cold[keep], base_cold[keep]).pvalue, rel=1e-9)
    assert checked >= 3
    # Holm: the smallest p times the number of tests, then never decreasing
    family = sorted((a["vs_baseline"]["p_ttest"], a["vs_baseline"]["p_holm"]) for a in arms.values()
                    if a.get("vs_baseline"))
    m = len(family)
    assert family[0][1] == pytest.approx(min(1.0, m * family[0][0]))
    assert all(h2 >= h1 for (_, h1), (_, h2) in zip(family, family[1:]))


def test_item_slices_per_arm(grid, capsys):
    """Overall, warm, cold-start and long-tail R@20 / N@20 and coverage@20 per arm: in the JSON
    (mean ± std of the seeds' results), in report.md's table, paired on the tail slice like the
    cold one, and as cold and tail columns of the CLI summary."""
    from safetensors.numpy import load_file

    from pipeline.summaries import print_compare as _print_compare
    from pipeline.compare.formats import mean_pm

    _, report, out = grid
    arms = _arms(report)
    assert report["slice_metrics"] == ["recall@20", "ndcg@20"] and report["long_tail_share"] == 0.2
    md = (out / "report.md").read_text(encoding="utf-8")
    section = md.split("\n## Item slices\n")[1].split("\n## ")[0]
    keys = [f"{p}{m}" for p in ("", "warm/", "cold/", "tail/") for m in ("recall@20", "ndcg@20")] + ["coverage@20"]
    base_tail = np.mean([load_file(f"{r['run_dir']}/per_user.safetensors")["tail/recall@20"]
                         for r in arms["frozen-fused"]["runs"]], axis=0)
    for name, a in arms.items():
        if a["status"] != "ok":
            assert f"| {name} |" not in section
            continue
        results = [json.loads(open(f"{r['run_dir']}/result.json").read())["test"] for r in a["runs"]]
        for key in keys:
            seeds = [r[key] for r in results]
            assert a["test"][key] == pytest.approx({"mean": np.mean(seeds), "std": np.std(seeds, ddof=1)}), key
        assert 0 < a["test"]["coverage@20"]["mean"] <= 1
        assert f"| {name} | " + " | ".join(mean_pm(a["test"][key]) for key in keys) + " |" in section
        if name == "frozen-fused":
            continue
        ours = np.mean([load_file(f"{r['run_dir']}/per_user.safetensors")["tail/recall@20"] for r in a["runs"]], axis=0)
        keep = ~np.isnan(ours) & ~np.isnan(base_tail)
        tail = a["tail_vs_baseline"]
        assert tail["n"] == int(keep.sum()) > 0
        assert tail["diff"] == pytest.approx(float(np.mean(ours[keep] - base_tail[keep])), abs=1e-12)
        if np.any(ours[keep] != base_tail[keep]):
            assert tail["p_ttest"] == pytest.approx(stats.ttest_rel(ours[keep], base_tail[keep]).pvalue, rel=1e-9)
    v = report["verdict"]
    assert {v["cold"], v["tail"], v["coverage"]} <= set(arms)
    assert v["tail"] == max((a["test"]["tail/recall@20"]["mean"], n) for n, a in arms.items() if a["status"] == "ok")[1]

    _print_compare(report)
    lines = capsys.readouterr().out.splitlines()
    header = lines[0].split()
    assert header[:5] == ["arm", "test", "recall@20", "cold", "tail"]
    for name, a in arms.items():
        row = next(line for line in lines if line.startswith(name + " "))
        if a["status"] == "ok":
            assert row.split()[4:6] == [f"{a['test'][f'{p}/recall@20']['mean']:.4f}" for p in ("cold", "tail")]


def test_paired_test_edge_cases():
    from pipeline.compare.stats import holm, paired_test

    rng = np.random.default_rng(0)
    a, b = rng.random(50), rng.random(50)
    a[[3, 7]] = np.nan  # users outside a slice drop out pairwise
    r = paired_test(a, b)
    keep = ~np.isnan(a)
    assert r["n"] == 48
    assert r["p_ttest"] == pytest.approx(stats.ttest_rel(a[keep], b[keep]).pvalue)
    assert r["p_wilcoxon"] == pytest.approx(stats.wilcoxon(a[keep], b[keep]).pvalue)
    lo, hi = r["ci95"]
    assert lo < r["diff"] < hi
    same = paired_test(b, b)
    assert same["p_ttest"] == 1.0 and same["p_wilcoxon"] == 1.0 and same["diff"] == 0.0
    assert holm({"x": 0.01, "y": 0.04, "z": None, "w": 0.03}) == pytest.approx(
        {"x": 0.03, "y": 0.06, "z": None, "w": 0.06})


def test_resume_skips_finished_arms(grid, monkeypatch):
    import pipeline.train as train_module
    from pipeline.api import compare as run_compare

    overrides, first, _ = grid
    calls = []
    real = train_module.run_training

    def spy(cfg, data, resume=False, **kw):
        calls.append((cfg.train.run_name, cfg.train.seed, resume))
        return real(cfg, data, resume=resume, **kw)

    monkeypatch.setattr(train_module, "run_training", spy)
    again = run_compare(DEMO, overrides)
    # finished arms are reused; only the failed ones are tried again (and fail again)
    assert calls == [("finetuned-image-top9", 1, False)]
    assert all(r["status"] == "reused" for a in again["arms"] if a["status"] == "ok" for r in a["runs"])
    for a, b in zip(first["arms"], again["arms"]):
        assert a.get("test") == b.get("test") and a.get("vs_baseline") == b.get("vs_baseline")

    # a run killed before it finished (its stamp still says started) continues from its checkpoint;
    # a run whose config or data changed (its stamp's hash no longer matches) trains again from scratch
    stamps = Path(first["compare_dir"]) / "stamps"
    killed = stamps / "frozen-text-s2.json"
    killed.write_text(killed.read_text().replace('"state": "finished"', '"state": "started"'))
    changed = stamps / "id-only-s1.json"
    changed.write_text(changed.read_text().replace('"hash": "', '"hash": "0'))
    calls.clear()
    third = run_compare(DEMO, overrides)
    assert sorted(calls) == [("finetuned-image-top9", 1, False), ("frozen-text", 2, True), ("id-only", 1, False)]
    for a, b in zip(first["arms"], third["arms"]):
        if a["status"] == "ok":  # the same seed and config give the same numbers
            flat = {f"{k}/{s}": v[s] for k, v in a["test"].items() for s in ("mean", "std")}
            assert {f"{k}/{s}": v[s] for k, v in b["test"].items() for s in ("mean", "std")} == pytest.approx(flat)


def test_single_arms_reproduce_with_modalrec_train(grid):
    """The report's commands retrain one (arm, seed) with `modalrec train`: same numbers."""
    _, report, _ = grid
    arms = _arms(report)
    for name, seed in (("frozen-fused", 1), ("ftfeat-image-top1", 2), ("frozen-image-two_tower", 1)):
        run = next(r for r in arms[name]["runs"] if r["seed"] == seed)
        words = shlex.split(run["command"])
        assert words[:2] == ["modalrec", "train"] and not any(w.startswith("compare.") for w in words)
        r = modalrec(*words[1:], "--json")
        assert r.returncode == 0, r.stderr
        again = json.loads(r.stdout)["test"]
        original = json.loads(open(f"{run['run_dir']}/result.json").read())["test"]
        assert again == pytest.approx(original, rel=1e-6), name


def test_cli_dry_run_and_config_errors(tmp_path):
    from pipeline.api import compare as run_compare
    from pipeline.errors import ConfigError

    base = [f"cache_dir={tmp_path}", f"data.root={tmp_path}/raw"]
    r = modalrec("compare", DEMO, "--dry-run", "--json", *base, "compare.policies=[full, cached-top-k:2]",
                 "compare.common={train.epochs: 9, model: {dim: 16}}", "compare.common.train.lr=0.5")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    names = [a["name"] for a in out["arms"]]
    assert names[:5] == ["id-only", "frozen-text", "frozen-image", "frozen-audio", "frozen-fused"]
    assert {"finetuned-audio-cached-top2", "ftfeat-text-full"} <= set(names) and out["baseline"] == "frozen-fused"
    cached = next(a for a in out["arms"] if a["name"] == "finetuned-image-cached-top2")
    assert 'model.item_tower.live={"image": {"policy": "top-k:2", "cached": true}}' in cached["run_overrides"]
    # the budget every arm shares: dotted keys in YAML and nested ones from overrides alike
    assert {"train.epochs=9", "model.dim=16", "train.lr=0.5"} <= set(cached["run_overrides"])
    assert not (tmp_path / "compare").exists()  # a dry run trains nothing

    r = modalrec("compare", DEMO, "--dry-run", *base, "compare.features=[nope]")
    assert r.returncode == 2 and "compare.features" in r.stderr and "Traceback" not in r.stderr, r.stderr
    for bad, words in (("compare.policies=[top-k]", ("compare.policies", "top-k")),
                       ("compare.baseline=nope", ("compare.baseline", "nope")),
                       ("compare.metric=recall@7", ("compare.metric", "eval.ks")),
                       ("compare.finetune=[nope]", ("compare.finetune", "nope")),
                       ("compare.skip=[finetuned-text-full]", ("compare.skip", "ftfeat-text-full")),
                       ("compare.arms={frozen-text: {train.lr: 0.1}}", ("compare.arms", "frozen-text")),
                       ("compare.seedz=[1]", ("compare.seedz", "unknown key"))):
        with pytest.raises(ConfigError) as e:
            run_compare(DEMO, [*base, bad], dry_run=True)
        assert all(w in str(e.value) for w in words), (bad, str(e.value))


def test_models_that_read_features_themselves_compare_frozen_arms(grid, tmp_path):
    """A model that reads feature sets on its own (item-item graphs: FREEDOM, the zoo's graph
    models) gets each arm's content as `model.features`, not a tower: the frozen-text arm scores
    exactly as the model trained on a config whose only feature set is text. Such models take no
    live encoders: fine-tuned arms are left out by default and refused when asked for."""
    from pipeline.api import compare as run_compare
    from pipeline.api import train as run_train
    from pipeline.errors import ConfigError

    overrides = [o for o in grid[0] if not o.startswith(("compare.", "features="))]
    both = "features={text: {encoder: text}, image: {encoder: image}}"
    base = [*overrides, both, "compare.model=itemknncbf", "compare.finetune_model=null", "compare.seeds=[1]",
            "compare.name=zoo"]
    with pytest.raises(ConfigError, match=r"compare.finetune: model itemknncbf"):
        run_compare(DEMO, [*base, "compare.finetune=[image]"])
    report = run_compare(DEMO, base)
    assert report["model"] == "itemknncbf"  # the frozen arms' model
    arms = _arms(report)
    assert set(arms) == {"id-only", "frozen-text", "frozen-image", "frozen-fused"}
    assert arms["id-only"]["status"] == "failed" and "itemknncbf" in arms["id-only"]["error"]

    def arm_test(name):
        return json.loads((Path(arms[name]["runs"][0]["run_dir"]) / "result.json").read_text())["test"]

    text_only = run_train(DEMO, [*overrides, "features={text: {encoder: text}}", "model.name=itemknncbf",
                                 "train.seed=1", f"train.runs_dir={tmp_path}"])
    assert arm_test("frozen-text") == pytest.approx(text_only["test"], abs=1e-7)
    assert arm_test("frozen-image") != pytest.approx(arm_test("frozen-text"), abs=1e-6)
    assert arm_test("frozen-fused") != pytest.approx(arm_test("frozen-text"), abs=1e-6)


def test_each_arm_trains_its_own_recommender(grid):
    """The arms reading cached features train `compare.model` (joint), the fine-tuned ones and
    their frozen counterpart `compare.finetune_model` (two_tower): in each run's saved config, in
    the report's entries, its header, its tables and the fine-tuning verdict."""
    import yaml

    _, report, out = grid
    arms = _arms(report)
    expected = {"id-only": "joint", "frozen-text": "joint", "frozen-image": "joint", "frozen-fused": "joint",
                "frozen-image-two_tower": "two_tower", "finetuned-image-top9": "two_tower",
                "finetuned-image-top1": "two_tower", "ftfeat-image-top1": "joint", "bad-key": "joint"}
    assert {n: a["model"] for n, a in arms.items()} == expected
    assert report["model"] == "joint" and report["finetune_model"] == "two_tower"
    for name, a in arms.items():
        if a["status"] != "ok":
            continue
        for run in a["runs"]:
            saved = yaml.safe_load((Path(run["run_dir"]) / "config.yaml").read_text(encoding="utf-8"))
            assert saved["model"]["name"] == expected[name], (name, run["seed"])
            assert f"model.name={expected[name]}" in shlex.split(run["command"])
    # the counterpart is the fine-tuned arm's own tower over the frozen image features
    saved = yaml.safe_load((Path(arms["frozen-image-two_tower"]["runs"][0]["run_dir"]) / "config.yaml").read_text())
    assert saved["model"]["item_tower"]["features"] == ["image"] and saved["model"]["item_tower"]["ids"] is False
    assert saved["model"]["two_tower"]["loss"] == "in_batch"

    md = (out / "report.md").read_text(encoding="utf-8")
    assert ("recommenders **joint** (id-only, frozen-text, frozen-image, frozen-fused, ftfeat-image-top1, bad-key); "
            "**two_tower** (frozen-image-two_tower, finetuned-image-top9, finetuned-image-top1)") in md
    metrics = md.split("\n## Test metrics\n")[1].split("\n## ")[0]
    assert "| arm | kind | model |" in metrics
    for name in ("frozen-fused", "frozen-image-two_tower", "finetuned-image-top1", "ftfeat-image-top1"):
        assert f"| {name} | {arms[name]['label']} | {expected[name]} |" in metrics
    image = next(r for r in report["ablation"] if r["modality"] == "image only")
    assert image["counterpart_arm"] == "frozen-image-two_tower"
    assert image["counterpart_frozen"] == arms["frozen-image-two_tower"]["test"]["recall@20"]["mean"]
    assert "| frozen, two_tower |" in md.split("\n## Per-modality ablation\n")[1]
    ft = report["verdict"]["finetuning"]
    assert ft["counterpart"] == "frozen-image-two_tower"
    assert any("against frozen frozen-image-two_tower (both two_tower;" in line for line in report["verdict"]["lines"])


def _listing(*overrides, tmp_path):
    from pipeline.api import compare as run_compare

    base = [f"cache_dir={tmp_path}", f"data.root={tmp_path}/raw", "compare.policies=[full]"]
    return {a["name"]: a for a in run_compare(DEMO, [*base, *overrides], dry_run=True)["arms"]}


def test_frozen_and_finetuned_arms_get_their_own_models(tmp_path):
    """Frozen arms: joint (model.features only: it reads the features itself); fine-tuned arms and
    one frozen counterpart per fine-tuned feature: two_tower, with exactly the overrides a one-model
    two-tower grid gives its fine-tuned and frozen arms; ftfeat arms: joint, against frozen-<f>."""
    from pipeline.errors import ConfigError

    two = _listing(tmp_path=tmp_path)
    one = _listing("compare.model=two_tower", "compare.finetune_model=null", tmp_path=tmp_path)
    feats = ["text", "image", "audio"]
    frozen = ["id-only", *[f"frozen-{f}" for f in feats], "frozen-fused"]
    assert list(one) == [*frozen, *[a for f in feats for a in (f"finetuned-{f}-full", f"ftfeat-{f}-full")]]
    assert list(two) == [*frozen, *[a for f in feats for a in (f"frozen-{f}-two_tower", f"finetuned-{f}-full",
                                                                f"ftfeat-{f}-full")]]
    for name in [*frozen, *[f"ftfeat-{f}-full" for f in feats]]:
        assert two[name]["model"] == "joint" and "model.name=joint" in two[name]["run_overrides"], name
        assert not any(o.startswith("model.item_tower") for o in two[name]["overrides"]), name
    for f in feats:
        tuned, counterpart = two[f"finetuned-{f}-full"], two[f"frozen-{f}-two_tower"]
        assert tuned["model"] == counterpart["model"] == "two_tower"
        assert tuned["counterpart"] == f"frozen-{f}-two_tower" and counterpart["kind"] == "counterpart"
        assert two[f"ftfeat-{f}-full"]["counterpart"] == f"frozen-{f}"
        # like for like: the same overrides as in the one-model grid, where frozen-<f> is the two-tower's
        assert tuned["overrides"] == one[f"finetuned-{f}-full"]["overrides"]
        assert counterpart["overrides"] == one[f"frozen-{f}"]["overrides"]
        assert "model.name=two_tower" in tuned["run_overrides"]
        assert "model.name=two_tower" in counterpart["run_overrides"]
        assert one[f"finetuned-{f}-full"]["counterpart"] == f"frozen-{f}"
    assert all(a["model"] == "two_tower" for a in one.values())
    # the same model named twice is one model: the one-model grid
    same = _listing("compare.model=two_tower", "compare.finetune_model=two_tower", tmp_path=tmp_path)
    assert list(same) == list(one)
    for name, a in same.items():
        assert {**a, "run_overrides": [o for o in a["run_overrides"] if not o.startswith("compare.")]} == \
            {**one[name], "run_overrides": [o for o in one[name]["run_overrides"] if not o.startswith("compare.")]}
    # compare.model null: the config's model.name for the frozen arms
    vbpr = _listing("model.name=vbpr", "compare.model=null", tmp_path=tmp_path)
    assert {a["model"] for n, a in vbpr.items() if n in frozen} == {"vbpr"}
    assert vbpr["finetuned-image-full"]["counterpart"] == "frozen-image-two_tower"

    # without per-feature frozen arms the counterpart is still there; skipped, no counterpart is tested
    lean = _listing("compare.ablation=false", "compare.finetune=[image]", tmp_path=tmp_path)
    assert list(lean) == ["id-only", "frozen-fused", "frozen-image-two_tower", "finetuned-image-full",
                          "ftfeat-image-full"]
    assert lean["finetuned-image-full"]["counterpart"] == "frozen-image-two_tower"
    assert "counterpart" not in lean["ftfeat-image-full"]
    skipped = _listing("compare.finetune=[image]", "compare.skip=[frozen-image-two_tower]", tmp_path=tmp_path)
    assert "counterpart" not in skipped["finetuned-image-full"]
    assert skipped["ftfeat-image-full"]["counterpart"] == "frozen-image"

    # a budget per recommender: compare.by_model.<model> after compare.common, only on that model's arms
    budget = _listing("compare.common={train.epochs: 5, train.lr: 0.5}", "compare.by_model={joint: {train.epochs: 70}}",
                      "compare.finetune=[image]", tmp_path=tmp_path)
    for name, a in budget.items():
        run = a["run_overrides"]
        assert run.index(f"model.name={a['model']}") < run.index("train.epochs=5") < run.index("train.lr=0.5")
        assert ("train.epochs=70" in run) == (a["model"] == "joint"), name
        if a["model"] == "joint":
            assert run.index("train.epochs=5") < run.index("train.epochs=70")
    with pytest.raises(ConfigError, match=r"compare\.by_model\.nope"):
        _listing("compare.by_model={nope: {train.epochs: 1}}", tmp_path=tmp_path)

    # the fine-tuned arms' model must take live encoders; null with joint: frozen arms only, as before
    with pytest.raises(ConfigError, match=r"compare\.finetune_model: model joint .*two_tower"):
        _listing("compare.finetune_model=joint", tmp_path=tmp_path)
    assert list(_listing("compare.finetune_model=null", tmp_path=tmp_path)) == frozen
    with pytest.raises(ConfigError, match=r"compare\.finetune: model joint .*compare\.finetune_model"):
        _listing("compare.finetune_model=null", "compare.finetune=[image]", tmp_path=tmp_path)


def test_an_extra_arm_reports_the_model_it_names(grid):
    """An extra arm trains the frozen arms' model unless its overrides name another: the report
    and the reproduce command say which, and the header each recommender's budget."""
    import yaml

    from pipeline.api import compare as run_compare

    overrides = [o for o in grid[0] if not o.startswith("compare.")]
    report = run_compare(DEMO, [*overrides, "compare.features=[text]", "compare.finetune=[]", "compare.seeds=[1]",
                                "compare.name=extra", "compare.by_model={joint: {train.epochs: 3}}",
                                "compare.arms={bpr-ids: {model.name: bpr, train.epochs: 1}}"])
    arms = _arms(report)
    assert {n: (a["status"], a["model"]) for n, a in arms.items()} == {
        "id-only": ("ok", "joint"), "frozen-text": ("ok", "joint"), "bpr-ids": ("ok", "bpr")}
    run = arms["bpr-ids"]["runs"][0]
    assert yaml.safe_load((Path(run["run_dir"]) / "config.yaml").read_text())["model"]["name"] == "bpr"
    words = shlex.split(run["command"])
    assert words.index("model.name=joint") < words.index('model.name="bpr"')  # its own override wins
    assert {n: (a["budget"]["epochs"], a["cost"]["epochs"]) for n, a in arms.items()} == {
        "id-only": (3, 3), "frozen-text": (3, 3), "bpr-ids": (1, 1)}
    assert "train.epochs=3" in shlex.split(arms["frozen-text"]["runs"][0]["command"])
    md = (Path(report["report_dir"]) / "report.md").read_text(encoding="utf-8")
    assert "Budget per recommender: **joint**: up to 3 epochs" in md and "; **bpr**: up to 1 epochs" in md
