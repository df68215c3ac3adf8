"""benchmarks/mmrec_side_by_side.py without MMRec: log parsing, statistics, table, results file, setup check."""

import importlib.util
import json
import statistics
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("mmrec_side_by_side", REPO / "benchmarks" / "mmrec_side_by_side.py")
sbs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sbs)

# Trimmed from a real run (MMRec BPR on tiktok, 2 epochs, seed 999, 2026-11-29): the per-epoch lines,
# the per-trial "Current BEST" block and the final BEST block, then the driver's peak-RSS line. The
# "Current BEST" test line was edited to other values so the test shows the final block wins.
MMREC_LOG = """\
Sun 29 Nov 2026 19:31:37 INFO epoch 0 training [time: 18.07s, train loss: 21.1807]
Sun 29 Nov 2026 19:31:42 INFO epoch 0 evaluating [time: 1.89s, valid_score: 0.002300]
Sun 29 Nov 2026 19:31:42 INFO valid result: 
recall@5: 0.0007    recall@10: 0.0013    recall@20: 0.0023    recall@50: 0.0066    ndcg@5: 0.0003    
Sun 29 Nov 2026 19:31:42 INFO test result: 
recall@5: 0.0011    recall@10: 0.0019    recall@20: 0.0030    recall@50: 0.0081    ndcg@5: 0.0007    
Sun 29 Nov 2026 19:31:42 INFO \u2588\u2588 BPR--Best validation results updated!!!
Sun 29 Nov 2026 19:32:04 INFO epoch 1 training [time: 21.36s, train loss: 20.9504]
Sun 29 Nov 2026 19:32:09 INFO epoch 1 evaluating [time: 1.66s, valid_score: 0.002600]
Sun 29 Nov 2026 19:32:09 INFO \u2588\u2588\u2588\u2588Current BEST\u2588\u2588\u2588\u2588:
Parameters: ['seed', 'reg_weight']=(999, 2.0),
Valid: recall@5: 0.0007    recall@10: 0.0020    recall@20: 0.0026    recall@50: 0.0062    ndcg@5: 0.0003    ,
Test: recall@5: 0.0099    recall@10: 0.0099    recall@20: 0.0099    recall@50: 0.0099    ndcg@5: 0.0099    ndcg@10: 0.0099    ndcg@20: 0.0099    

\u2588\u2588\u2588\u2588\u2588\u2588\u2588\u2588\u2588\u2588\u2588\u2588\u2588 BEST \u2588\u2588\u2588\u2588\u2588\u2588\u2588\u2588\u2588\u2588\u2588\u2588\u2588\u2588\u2588\u2588
Sun 29 Nov 2026 19:32:09 INFO 	Parameters: ['seed', 'reg_weight']=(999, 2.0),
Valid: recall@5: 0.0007    recall@10: 0.0020    recall@20: 0.0026    recall@50: 0.0062    ndcg@5: 0.0003    ndcg@10: 0.0007    ndcg@20: 0.0009    ndcg@50: 0.0015    precision@5: 0.0001    ,
Test: recall@5: 0.0015    recall@10: 0.0020    recall@20: 0.0038    recall@50: 0.0098    ndcg@5: 0.0010    ndcg@10: 0.0012    ndcg@20: 0.0016    ndcg@50: 0.0028    precision@5: 0.0003    map@50: 0.0012    

PEAK_RSS_KB 1193452
"""


def test_parse_mmrec_log_reads_final_test_timings_and_memory():
    got = sbs.parse_mmrec_log(MMREC_LOG)
    assert got["test"] == {"recall@10": 0.0020, "recall@20": 0.0038, "ndcg@10": 0.0012, "ndcg@20": 0.0016}
    assert got["train_s"] == pytest.approx(statistics.median([18.07, 21.36]))
    assert got["eval_s"] == pytest.approx(statistics.median([1.89, 1.66]))
    assert got["epochs"] == 2
    assert got["best_epoch"] is None  # no early stop within the cap
    assert got["peak_rss_mb"] == pytest.approx(1193452 / 1024)


def test_parse_mmrec_log_early_stop_and_failures():
    stopped = MMREC_LOG.replace("PEAK_RSS_KB", "+++++Finished training, best eval result in epoch 1\nPEAK_RSS_KB")
    assert sbs.parse_mmrec_log(stopped)["best_epoch"] == 1
    unfinished = MMREC_LOG.split("\u2588\u2588\u2588\u2588\u2588\u2588\u2588\u2588\u2588\u2588\u2588\u2588\u2588 BEST")[0]
    with pytest.raises(ValueError, match="did not finish"):
        sbs.parse_mmrec_log(unfinished)
    with pytest.raises(ValueError, match="ndcg@20"):
        sbs.parse_mmrec_log(MMREC_LOG.replace("ndcg@20: 0.0016", ""))


def test_mean_std_is_the_sample_std_over_seeds():
    rows = [{m: v + i for i, m in enumerate(sbs.METRICS)} for v in (0.01, 0.03, 0.02, 0.05)]
    got = sbs.mean_std(rows)
    for m in sbs.METRICS:
        values = np.array([r[m] for r in rows])
        assert got["mean"][m] == pytest.approx(values.mean())
        assert got["std"][m] == pytest.approx(values.std(ddof=1))
    assert sbs.mean_std(rows[:1])["std"] == {m: 0.0 for m in sbs.METRICS}


def test_speed_ratio_is_mmrec_train_plus_eval_over_ours():
    assert sbs.speed_ratio({"train_s": 3.0, "eval_s": 1.0}, {"train_s": 0.5, "eval_s": 0.3}) == pytest.approx(5.0)
    assert sbs.speed_ratio({"train_s": None, "eval_s": None}, {"train_s": 0.0, "eval_s": 0.2}) is None


def _row():
    ours = {"per_seed": {}, "seeds": [1, 999], "epochs": [12, 30], "train_s": 0.25, "eval_s": 0.05,
            "peak_rss_mb": 812.4, "mean": dict(zip(sbs.METRICS, (0.05, 0.08, 0.03, 0.04))),
            "std": dict(zip(sbs.METRICS, (0.001, 0.002, 0.0005, 0.0))),}
    mmrec = {"test": dict(zip(sbs.METRICS, (0.0549, 0.0888, 0.029, 0.0375))), "train_s": 0.6, "eval_s": 0.3,
             "epochs": 25, "peak_rss_mb": 1165.5, "wall_s": 300.2, "cpu_s": 119.6,
             "load_before": 3.21, "load_after": 4.96}
    return {"epochs": 30, "ours": ours, "mmrec": mmrec}


def test_markdown_table_rows():
    lines = sbs.markdown_table({"lightgcn": _row()}).splitlines()
    assert lines[0].count("|") == lines[1].count("|") == lines[2].count("|") == lines[3].count("|")
    assert lines[2] == ("| lightgcn | modalrec, seeds 1,999 | 12/30 (30) | 0.0500 ± 0.0010 | 0.0800 ± 0.0020 "
                        "| 0.0300 ± 0.0005 | 0.0400 ± 0.0000 | 0.250 | 0.050 | 812 | 3.00x | - |")
    assert lines[3] == "|  | MMRec LightGCN, seed 999 | 25 (30) | 0.0549 | 0.0888 | 0.0290 | 0.0375 | 0.600 | 0.300 | 1166 | | 300 (120), 3.2-5.0 |"


def test_merge_results_accumulates_models_and_keeps_the_other_side(tmp_path):
    out = tmp_path / "results" / "sbs.json"
    row = _row()
    sbs.merge_results(out, "lightgcn", row)
    sbs.merge_results(out, "bpr", {"epochs": 30, "mmrec": row["mmrec"]})
    # rerunning only our side at the same cap keeps MMRec's side; another cap replaces the row
    sbs.merge_results(out, "lightgcn", {"epochs": 30, "ours": {**row["ours"], "train_s": 0.2}})
    saved = json.loads(out.read_text())
    assert sorted(saved) == ["bpr", "lightgcn"]
    assert saved["lightgcn"]["ours"]["train_s"] == 0.2 and saved["lightgcn"]["mmrec"] == row["mmrec"]
    sbs.merge_results(out, "lightgcn", {"epochs": 50, "ours": row["ours"]})
    assert "mmrec" not in json.loads(out.read_text())["lightgcn"]


@pytest.mark.parametrize("model", ["bpr", "lightgcn", "vbpr", "freedom", "mmgcn", "grcn"])
def test_both_sides_get_the_same_hyper_parameters(model):
    from pipeline.config import load_config

    cfg = load_config(sbs.CONFIG, sbs.our_overrides(model, 7, [1, 999]))
    mm = sbs.mmrec_config(model, 7)
    assert (cfg.train.lr, cfg.train.batch_size, cfg.train.epochs, cfg.train.patience) == (
        mm["learning_rate"], mm["train_batch_size"], mm["epochs"], mm["stopping_step"])
    assert cfg.eval.mask_valid_in_test is False and cfg.train.seeds == [1, 999] and mm["seed"] == [999]
    params = cfg.model.params.model_dump()
    for key, p in sbs.MODELS[model][1].items():
        assert mm[key] == p["mmrec"]
        if key == "mm_image_weight":
            assert params["feature_weights"] == {"image": mm[key], "audio": 1 - mm[key]}
        elif p["our_value"] == p["mmrec"]:
            assert params[p["ours"]] == mm[key], key
        else:  # a deliberate difference carries its reason
            assert params[p["ours"]] == p["our_value"] and p["why"], key


def test_setup_check_lists_and_applies_the_patches(tmp_path, monkeypatch):
    mmrec, shared = tmp_path / "mmrec", tmp_path / "shared"
    src = mmrec / "src"
    for rel, text in {"utils/quick_start.py": "", "utils/metrics.py": "x = np.zeros(3, dtype=np.float)\n",
                      "utils/dataset.py": "import os\nimport lmdb\n", "common/encoders.py": "A._update(data_dict)\n",
                      "models/mgcn.py": "adj = image_adj.cuda()\n", "configs/dataset/baby.yaml": ""}.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(text)
    shared.mkdir()
    for name in ("tiktok.inter", "image_feat.npy", "audio_feat.npy"):
        (shared / name).write_text(name)
    todo = sbs.unpatched(mmrec)
    assert any("metrics.py" in t for t in todo) and any("models/mgcn.py" in t and ".cuda()" in t for t in todo)
    assert "data/tiktok/user_graph_dict.npy missing" in todo
    (mmrec / "data" / "tiktok").mkdir(parents=True)
    (mmrec / "data" / "tiktok" / "user_graph_dict.npy").write_text("made by MMRec's script")
    monkeypatch.setattr(sbs, "DATA", shared)
    sbs.setup_mmrec(mmrec)
    assert sbs.unpatched(mmrec) == []
    assert (src / "utils/metrics.py").read_text() == "x = np.zeros(3, dtype=float)\n"
    assert (src / "utils/dataset.py").read_text() == "import os\n"
    assert (src / "models/mgcn.py").read_text() == "adj = image_adj.cpu()\n"
    assert (mmrec / "data" / "tiktok" / "audio_feat.npy").resolve() == shared / "audio_feat.npy"
    assert "text_feature_file: 'audio_feat.npy'" in (src / "configs/dataset/tiktok.yaml").read_text()
    with pytest.raises(sbs.SetupError, match="not an MMRec snapshot"):
        sbs.unpatched(tmp_path)


def test_mapping_table_names_both_sides():
    table = sbs.mapping_table()
    assert "| freedom (FREEDOM) | `dropout: 0.8` | `model.freedom.dropout=0.8` |" in table
    assert '`model.freedom.feature_weights={"image": 0.1, "audio": 0.9}`' in table
    assert "| slmrec (SLMRec) | `reg: 0.0001` | - | a grid over a key MMRec's SLMRec never reads |" in table
