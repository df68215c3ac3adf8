"""The Python API (pipeline.api) called from Python gives what the matching `modalrec` command prints
with --json; the CLI is only its argument parser and printer."""

import json

import pytest

import encoder_fixtures as fx
from conftest import REPO

DEMO = REPO / "recipes" / "configs" / "demo.yaml"


def cli_json(capsys, *args) -> dict:
    from pipeline.cli import main

    capsys.readouterr()
    code = main([*map(str, args), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("api")
    bert = fx.build_hf_bert(tmp / "bert")
    encoders = {"text": {"spec": f"hf:{bert}", "fields": ["text"]}}
    return tmp, [f"cache_dir={tmp}", f"data.root={tmp}/raw", "data.demo.n_items=60", "data.demo.n_users=50",
                 f"encoders={json.dumps(encoders)}", "features={text: {encoder: text}}", "extract.num_workers=0",
                 "model.name=bpr", "train.epochs=2", "train.lr=0.01", "train.batch_size=256", "train.progress=false",
                 "train.tensorboard=false", "eval.ks=[10,20]"]


def test_configure_takes_a_path_or_a_config(small):
    from pipeline import api
    from pipeline.config import load_config

    _, overrides = small
    by_path = api.configure(DEMO, [*overrides, "train.lr=0.5"])
    from_config = api.configure(api.configure(DEMO, overrides), ["train.lr=0.5"])
    assert from_config.to_dict() == by_path.to_dict() == load_config(DEMO, [*overrides, "train.lr=0.5"]).to_dict()
    assert from_config.train.lr == 0.5


def test_prepare_and_prepared(small, capsys):
    from pipeline import api

    _, overrides = small
    data = api.prepare(DEMO, overrides, progress=False)
    assert cli_json(capsys, "data", "prepare", DEMO, *overrides) == {"path": str(data.path), **data.stats()}
    cfg = api.configure(DEMO, overrides)
    assert api.prepared(cfg).path == data.path and api.prepared_on_main(cfg).stats() == data.stats()


def test_extract_train_evaluate_recommend_match_the_cli(small, capsys):
    from accelerate import Accelerator

    from pipeline import api

    tmp, overrides = small
    by_cli = cli_json(capsys, "extract", DEMO, *overrides, f"cache_dir={tmp}/cli")
    results = api.extract(DEMO, overrides)
    keep = ("encoder", "field", "spec", "fingerprint", "dim", "items", "computed", "reused", "failed", "set")
    assert [{k: r.to_dict()[k] for k in keep} for r in results] == [{k: f[k] for k in keep} for f in by_cli["feature_sets"]]
    assert results[0].computed == results[0].items > 0  # each store computed its own vectors

    vbpr = [*overrides, "model.name=vbpr"]
    trained = api.train(DEMO, [*vbpr, f"train.runs_dir={tmp}/api-runs"], accelerator=Accelerator(cpu=True))
    printed = cli_json(capsys, "train", DEMO, *vbpr, f"train.runs_dir={tmp}/cli-runs")
    assert trained["model"] == printed["model"] == "vbpr" and trained["best_epoch"] == printed["best_epoch"]
    for split in ("valid", "test"):
        assert trained[split] == pytest.approx(printed[split], rel=1e-5)
    assert "history" in trained and "history" not in printed

    run_dir = trained["run_dir"]
    evaluated = api.evaluate(run_dir)
    assert evaluated == cli_json(capsys, "evaluate", run_dir)
    assert evaluated["test"] == pytest.approx(trained["test"], rel=1e-5)

    frame = api.recommend(run_dir, users=["u00003", "u00007"], k=3)
    shown = cli_json(capsys, "recommend", run_dir, "--users", "u00003,u00007", "--k", 3)["recommendations"]
    assert frame.to_dict(orient="records") == shown
    assert list(frame["user_id"]) == ["u00003"] * 3 + ["u00007"] * 3


def test_tune_and_compare_dry_run_match_the_cli(small, capsys):
    from pipeline import api

    tmp, overrides = small
    base = [*overrides, "train.epochs=1"]
    tuned = api.tune(DEMO, {"train.lr": ["0.0001", "0.01"]}, [*base, f"train.runs_dir={tmp}/tune-api"])
    printed = cli_json(capsys, "tune", DEMO, *base, f"train.runs_dir={tmp}/tune-cli", "--grid", "train.lr=0.0001,0.01")
    assert [t["overrides"] for t in tuned["trials"]] == [t["overrides"] for t in printed["trials"]]
    assert [t["valid"] for t in tuned["trials"]] == pytest.approx([t["valid"] for t in printed["trials"]], rel=1e-5)
    assert tuned["best"]["valid"] == max(t["valid"] for t in tuned["trials"])
    assert tuned["best"]["trial"] == printed["best"]["trial"]

    listing = api.compare(DEMO, overrides, dry_run=True)
    assert listing == cli_json(capsys, "compare", DEMO, *overrides, "--dry-run")
    assert listing["arms"][0]["name"] == "id-only" and not (tmp / "compare").exists()


def test_bad_input_is_a_modalrec_error(small):
    from pipeline import api
    from pipeline.errors import ConfigError, ModalrecError

    _, overrides = small
    with pytest.raises(ConfigError, match="--grid"):
        api.tune(DEMO, [], overrides)
    with pytest.raises(ModalrecError, match="no trained model here"):
        api.evaluate(REPO / "nowhere")
