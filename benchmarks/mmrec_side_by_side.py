"""MMRec and modalrec side by side on TikTok: per model, both run in this invocation with the same
hyper-parameters, protocol and epoch cap, each side in its own subprocess.

Protocol (both sides): MMRec's x_label split, image_feat.npy in MMRec's vision slot and
audio_feat.npy in its text slot, learning rate 0.001, batch 2048, early stopping on valid
Recall@20 with patience 20 (MMRec's stopping_step), test at the best valid epoch, train items
masked and valid items *not* masked at test time, users without training data skipped.
MMRec runs seed 999 (its `best_test_upon_valid`); modalrec runs each of `--seeds` (mean ± sample
std). Timings are medians over epochs: train s/epoch and valid-eval s/epoch as each side logs them
(MMRec's "epoch N training [time: ...]" / "epoch N evaluating [time: ...]"; MMRec's extra test
pass after each valid pass is not counted). Peak memory is the side's subprocess peak RSS
(`resource.getrusage(RUSAGE_SELF).ru_maxrss`; all of modalrec's seeds share one process). The
speed ratio is MMRec (train + valid eval) s/epoch over ours.

MMRec is never part of this repository: `--setup` patches a scratch copy of the public snapshot
to run on CPU with today's numpy/scipy/torch (the patch set is PATCHES below, documented in
benchmarks/mmrec_patches.md), adds a tiktok dataset config, symlinks the shared data and builds
DualGNN/DRAGON's user graph with MMRec's own preprocessing script (training interactions only).

    mkdir -p /work/scratch/mmrec && git -C /work/.mirror/enoche+MMRec/repo archive HEAD | tar -x -C /work/scratch/mmrec
    python benchmarks/mmrec_side_by_side.py --mmrec /work/scratch/mmrec --setup --threads 1 --epochs 20 bpr lightgcn
    python benchmarks/mmrec_side_by_side.py --mmrec /work/scratch/mmrec --threads 1 --sides mmrec --epochs 2 mmgcn
    python benchmarks/mmrec_side_by_side.py --table
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "recipes" / "configs" / "tiktok.yaml"
DATA = Path(os.environ.get("MODALREC_DATA", REPO.parent / "shared" / "data")) / "tiktok"  # as tiktok.yaml
METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")
LR, BATCH, PATIENCE = 0.001, 2048, 20

def S(value, ours: str | None, our_value=None, why: str = "") -> dict:
    """One hyper-parameter: MMRec's value, our setting `model.<name>.<ours>` (None: none on our side) and
    its value there when it is spelled differently."""
    return {"mmrec": value, "ours": ours, "our_value": value if our_value is None else our_value, "why": why}


# MMRec's mm_image_weight (its vision slot holds image, its text slot audio) as our per-feature-set weights
FW = S(0.1, "feature_weights", {"image": 0.1, "audio": 0.9}, "ours names a weight per feature set")

# Our model -> (MMRec's name, {MMRec key: S(...)}). The values are MMRec's first value of each grid (src/configs/model/<NAME>.yaml) unless the reason says
# otherwise; our setting is `model.<name>.<key>`; None marks a key with no counterpart on our side.
# learning_rate is a grid in several MMRec configs (first values 1e-4 up to GRCN's 1.0, a grid end
# rather than a default): both sides use overall.yaml's 0.001 instead (train.lr), as the issue asks.
MODELS: dict[str, tuple[str, dict[str, dict]]] = {
    "bpr": ("BPR", {"reg_weight": S(2.0, "reg_weight")}),
    "lightgcn": ("LightGCN", {"n_layers": S(1, "n_layers"), "reg_weight": S(1e-2, "reg_weight")}),
    "vbpr": ("VBPR", {"reg_weight": S(2.0, "reg_weight")}),
    "freedom": ("FREEDOM", {
        "dropout": S(0.8, "dropout"), "reg_weight": S(0.0, "reg_weight"),
        "n_mm_layers": S(1, "n_mm_layers"), "n_ui_layers": S(2, "n_ui_layers"), "knn_k": S(10, "knn_k"),
        "mm_image_weight": FW}),
    "mmgcn": ("MMGCN", {"n_layers": S(2, "n_layers", 3, "MMRec's MMGCN never reads n_layers: its code builds 3"),
                        "reg_weight": S(0.0, "reg_weight")}),
    "grcn": ("GRCN", {"n_layers": S(3, "n_routing", 0, "MMRec's routing rounds, which add zeros (grcn.py): 0 rounds is its behaviour"),
                      "latent_embedding": S(64, "content_dim"), "reg_weight": S(0.1, "reg_weight")}),
    "dualgnn": ("DualGNN", {"n_layers": S(2, "n_layers"), "aggr_mode": S("add", None, why="ours sums the graph messages (MMRec's add), the only mode"),
                            "reg_weight": S(0.1, "reg_weight")}),
    "lattice": ("LATTICE", {"reg_weight": S(0.0, "reg_weight"), "knn_k": S(10, "knn_k"),
                            "lambda_coeff": S(0.9, "lambda_coeff"), "n_layers": S(1, "n_layers"),
                            "feat_embed_dim": S(64, "feat_embed_dim"),
                            "weight_size": S([64, 64], "n_ui_layers", 2, "MMRec's user-item layers: len(weight_size)")}),
    "slmrec": ("SLMRec", {"reg": S(1e-4, None, why="a grid over a key MMRec's SLMRec never reads"),
                          "ssl_temp": S(0.1, "ssl_temp"), "ssl_alpha": S(0.01, "ssl_alpha"),
                          "layer_num": S(3, "n_layers"), "temp": S(0.2, "temp"),
                          "weight_decay": S(1e-4, "weight_decay")}),
    "bm3": ("BM3", {"n_layers": S(1, "n_layers"), "reg_weight": S(0.1, "reg_weight"),
                    "dropout": S(0.3, "dropout"), "cl_weight": S(2.0, "cl_weight")}),
    "mgcn": ("MGCN", {"cl_loss": S(1e-3, "cl_weight"), "n_ui_layers": S(2, "n_ui_layers"),
                      "n_layers": S(1, "n_layers"), "reg_weight": S(1e-4, "reg_weight"),
                      "knn_k": S(10, "knn_k")}),
    "dragon": ("DRAGON", {"aggr_mode": S("add", None, why="ours sums the graph messages (MMRec's add), the only mode"), "reg_weight": S(0.1, "reg_weight"),
                          "n_layers": S(2, "n_layers"), "knn_k": S(10, "knn_k"),
                          "mm_image_weight": FW}),
    "lgmrec": ("LGMRec", {"n_ui_layers": S(2, "n_ui_layers"), "n_mm_layers": S(2, "n_mm_layers"),
                          "n_hyper_layer": S(1, "n_hyper_layer"), "hyper_num": S(4, "hyper_num"),
                          "keep_rate": S(0.5, "keep_rate"), "alpha": S(0.3, "alpha"),
                          "cl_weight": S(1e-6, "cl_weight", why="MMRec's first value 1e-4 degenerates at the epoch cap (valid R@20 "
                                                                "0.0251 against 0.0543 at 1e-6): chosen on validation, tiktok.yaml"),
                          "reg_weight": S(1e-6, "reg_weight")}),
    "itemknncbf": ("ItemKNNCBF", {"knn_k": S(10, "knn_k"), "shrink": S(10, "shrink")}),
}

# The CPU / today's-library patch set for the MMRec snapshot: (files under src/, old text, new text, why).
PATCHES = [
    ("utils/metrics.py", "np.float)", "float)", "numpy>=1.24 removed np.float"),
    ("utils/dataset.py", "from utils.data_utils import (ImageResize, ImagePad, image_to_tensor, "
     "load_decompress_img_from_lmdb_value)\n", "", "lmdb/torchvision: only its raw-image path needs them"),
    ("utils/dataset.py", "import lmdb\n", "", "lmdb is not installed; unused for precomputed features"),
    ("models/*.py", "A._update(data_dict)", "A._dict.update(data_dict)", "scipy>=1.12 dok_matrix has no _update"),
    ("common/encoders.py", "A._update(data_dict)", "A._dict.update(data_dict)", "as above"),
    ("models/*.py", ".cuda()", ".cpu()", "CPU machine (use_gpu False is passed in the run's config)"),
    ("models/*.py", "np.random.randn(num_user + num_item, dim_x)))).to(self.device)\n",
     "np.random.randn(num_user + num_item, dim_x)))).to(self.device).clone()\n",
     "DualGNN/DRAGON's result_embed: on a GPU, .to() copies the Parameter into a plain tensor that forward() "
     "may overwrite; on a CPU it returns the registered Parameter itself and the overwrite raises TypeError"),
    ("utils/utils.py", "    from torch_scatter import scatter_add\n",
     "    from torch_geometric.utils import scatter\n"
     "    scatter_add = lambda src, index, dim, dim_size: scatter(src, index, dim, dim_size, reduce='sum')\n",
     "MGCN's graph normalisation: torch_scatter has no build for today's torch; PyG's scatter sums alike"),
    ("models/slmrec.py", "from torch_scatter import scatter", "from torch_geometric.utils import scatter",
     "torch_scatter has no build for today's torch; PyG's own scatter has the same signature (and SLMRec only "
     "calls it in a comment)"),
]
DATASET_YAML = """\
# tiktok for the modalrec side-by-side benchmark: image in the vision slot, audio in the text slot
USER_ID_FIELD: userID
ITEM_ID_FIELD: itemID
TIME_FIELD: timestamp
filter_out_cod_start_users: True
inter_file_name: 'tiktok.inter'
vision_feature_file: 'image_feat.npy'
text_feature_file: 'audio_feat.npy'
user_graph_dict_file: 'user_graph_dict.npy'
field_separator: "\\t"
"""
NEEDS_USER_GRAPH = {"DualGNN", "DRAGON"}


class SetupError(SystemExit):
    """The MMRec snapshot is missing, unpatched or has no tiktok data (exit code 2, message says how)."""

    def __init__(self, message: str):
        super().__init__(f"error: {message}")
        self.code = 2


def _patch_files(src: Path, pattern: str) -> list[Path]:
    return sorted(src.glob(pattern))


def unpatched(mmrec: Path) -> list[str]:
    """What is not done yet in the MMRec snapshot at `mmrec`: patches, dataset config, data links."""
    src = mmrec / "src"
    if not (src / "utils" / "quick_start.py").is_file():
        raise SetupError(f"{mmrec} is not an MMRec snapshot (no src/utils/quick_start.py)")
    todo = [f"src/{f.relative_to(src)}: {old.strip()!r} -> {new.strip()!r} ({why})"
            for pattern, old, new, why in PATCHES for f in _patch_files(src, pattern) if old in f.read_text()]
    if not (src / "configs" / "dataset" / "tiktok.yaml").is_file():
        todo.append("src/configs/dataset/tiktok.yaml missing")
    for name in ("tiktok.inter", "image_feat.npy", "audio_feat.npy", "user_graph_dict.npy"):
        if not (mmrec / "data" / "tiktok" / name).exists():
            todo.append(f"data/tiktok/{name} missing")
    return todo


def setup_mmrec(mmrec: Path) -> None:
    """Apply PATCHES, write the dataset config, link the shared data and build the user graph; idempotent."""
    src = mmrec / "src"
    for pattern, old, new, _ in PATCHES:
        for f in _patch_files(src, pattern):
            text = f.read_text()
            if old in text:
                f.write_text(text.replace(old, new))
    (src / "configs" / "dataset" / "tiktok.yaml").write_text(DATASET_YAML)
    data = mmrec / "data" / "tiktok"
    data.mkdir(parents=True, exist_ok=True)
    for name in ("tiktok.inter", "image_feat.npy", "audio_feat.npy"):
        if not (data / name).exists():
            (data / name).symlink_to(DATA / name)
    if not (data / "user_graph_dict.npy").exists():
        # MMRec's own script: co-interaction counts between users from x_label == 0 rows, top 200 per user
        print("building MMRec's user_graph_dict.npy (DualGNN, DRAGON) with its preprocessing script", flush=True)
        proc = subprocess.run([sys.executable, "dualgnn-gen-u-u-matrix.py", "-d", "tiktok"],
                              cwd=mmrec / "preprocessing", capture_output=True, text=True)
        if proc.returncode:
            raise SetupError(f"MMRec's preprocessing/dualgnn-gen-u-u-matrix.py failed:\n{proc.stderr[-2000:]}")


def mmrec_config(model: str, epochs: int) -> dict:
    """MMRec's config_dict for one run: seed 999, the epoch cap, our shared protocol and each of the
    model's hyper-parameters as one value (a one-element list for the keys it iterates over)."""
    mmrec_name, params = MODELS[model]
    cfg = {"use_gpu": False, "seed": [999], "epochs": epochs, "stopping_step": PATIENCE, "learning_rate": LR,
           "train_batch_size": BATCH, "valid_metric": "Recall@20", "save_recommended_topk": False}
    cfg.update({key: p["mmrec"] for key, p in params.items()})
    return cfg


# Runs in MMRec's src/ (its modules import each other top-level); prints its peak RSS for the harness.
MMREC_DRIVER = """
import json, resource, sys
spec = json.loads(sys.argv[1])
import yaml
with open('configs/model/%s.yaml' % spec['model']) as f:
    grid = yaml.safe_load(f).get('hyper_parameters') or []
cfg = spec['config']
for key in list(cfg) + ['learning_rate']:
    if key in grid or key == 'seed':
        cfg[key] = cfg[key] if isinstance(cfg[key], list) else [cfg[key]]
from utils.quick_start import quick_start
quick_start(spec['model'], 'tiktok', cfg, save_model=False)
print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)
"""
EPOCH_RE = re.compile(r"epoch (\d+) (training|evaluating) \[time: ([\d.]+)s")
METRIC_RE = re.compile(r"([a-z]+@\d+): ([\d.]+)")


def parse_mmrec_log(text: str) -> dict:
    """MMRec's timings per epoch and its final `best_test_upon_valid` from its log: the test line that
    follows the "BEST" banner ("Test: recall@5: 0.0123    recall@10: ...")."""
    train = [float(t) for _, kind, t in EPOCH_RE.findall(text) if kind == "training"]
    valid = [float(t) for _, kind, t in EPOCH_RE.findall(text) if kind == "evaluating"]
    best = text.rfind("█ BEST █")
    if best < 0:
        raise ValueError("no BEST block in the MMRec log: the run did not finish")
    test_line = next((ln for ln in text[best:].splitlines() if ln.lstrip().startswith("Test:")), None)
    if test_line is None:
        raise ValueError("no Test: line after MMRec's BEST block")
    test = {k: float(v) for k, v in METRIC_RE.findall(test_line)}
    missing = [m for m in METRICS if m not in test]
    if missing:
        raise ValueError(f"MMRec's Test: line lacks {missing}: {test_line.strip()!r}")
    epochs = [int(e) for e, kind, _ in EPOCH_RE.findall(text) if kind == "training"]
    stop = re.search(r"best eval result in epoch (\d+)", text)
    rss = re.search(r"PEAK_RSS_KB (\d+)", text)
    return {"test": {m: test[m] for m in METRICS},
            "train_s": statistics.median(train) if train else None,
            "eval_s": statistics.median(valid) if valid else None,
            "epochs": max(epochs) + 1 if epochs else 0,
            "best_epoch": int(stop.group(1)) if stop else None,
            "peak_rss_mb": int(rss.group(1)) / 1024 if rss else None}


@contextlib.contextmanager
def machine_use():
    """Wall and CPU seconds of the subprocess run inside, and the load average around it: on a shared
    machine per-epoch wall times swing with other jobs, so the table's reader needs the load beside them."""
    use: dict = {"load_before": os.getloadavg()[0]}
    before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    yield use
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    use.update(wall_s=time.perf_counter() - started, load_after=os.getloadavg()[0],
               cpu_s=after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)


def side_env(threads: int | None) -> dict:
    """The sides' environment: `threads` caps torch's intra-op threads (OpenMP/MKL) on both alike. On a
    machine loaded beyond its cores, threads that wait on each other at every op's barrier make both sides
    many times slower than one thread each."""
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def run_mmrec(mmrec: Path, model: str, epochs: int, threads: int | None = None) -> dict:
    spec = {"model": MODELS[model][0], "config": mmrec_config(model, epochs)}
    with machine_use() as use:
        proc = subprocess.run([sys.executable, "-c", MMREC_DRIVER, json.dumps(spec)], cwd=mmrec / "src",
                              capture_output=True, text=True, env=side_env(threads))
    log = proc.stdout + proc.stderr
    if proc.returncode:
        raise RuntimeError(f"MMRec {spec['model']} failed (exit {proc.returncode}):\n{log[-3000:]}")
    return {**parse_mmrec_log(log), **use, "seed": 999}


def our_overrides(model: str, epochs: int, seeds: list[int]) -> list[str]:
    out = [f"model.name={model}", "eval.mask_valid_in_test=false", "train.tensorboard=false", "train.progress=false",
           f"train.seeds={seeds}", f"train.epochs={epochs}", f"train.patience={PATIENCE}", f"train.lr={LR}",
           f"train.batch_size={BATCH}", "train.valid_metric=recall@20", f"train.run_name=side-by-side-{model}"]
    for p in MODELS[model][1].values():
        if p["ours"] is not None:
            out.append(f"model.{model}.{p['ours']}={json.dumps(p['our_value'])}")
    return out


def ours_worker(model: str, epochs: int, seeds: list[int]) -> None:
    """Our side, in its own process: train every seed, print one JSON line with tests, timings, peak RSS."""
    from pipeline import api

    r = api.train(CONFIG, our_overrides(model, epochs, seeds), overwrite=True)
    runs = r.get("runs", [r])
    out = {"per_seed": {str(x["seed"]): {m: x["test"][m] for m in METRICS} for x in runs},
           "best_epochs": [x["best_epoch"] for x in runs], "epochs": [x["epochs"] for x in runs],
           "train_s": statistics.median(x["train_seconds_per_epoch"] for x in runs),
           "eval_s": statistics.median(x["eval_seconds_per_epoch"] for x in runs),
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    print("OURS_RESULT " + json.dumps(out), flush=True)


def run_ours(model: str, epochs: int, seeds: list[int], threads: int | None = None) -> dict:
    cmd = [sys.executable, __file__, "--ours-worker", model, "--epochs", str(epochs),
           "--seeds", ",".join(map(str, seeds))]
    with machine_use() as use:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=side_env(threads))
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("OURS_RESULT ")), None)
    if proc.returncode or line is None:
        raise RuntimeError(f"modalrec {model} failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    out = json.loads(line[len("OURS_RESULT "):])
    out.update(mean_std(list(out["per_seed"].values())), **use, seeds=seeds)
    return out


def mean_std(per_seed: list[dict]) -> dict:
    """Mean and sample std (ddof 1; 0 for one seed) of each metric over seeds."""
    mean = {m: statistics.fmean(r[m] for r in per_seed) for m in METRICS}
    std = {m: statistics.stdev([r[m] for r in per_seed]) if len(per_seed) > 1 else 0.0 for m in METRICS}
    return {"mean": mean, "std": std}


def speed_ratio(mmrec: dict, ours: dict) -> float | None:
    """MMRec's (train + valid eval) s/epoch over ours; None when a side did not train (ItemKNNCBF)."""
    if not mmrec.get("train_s") or not ours.get("train_s"):
        return None
    return (mmrec["train_s"] + (mmrec["eval_s"] or 0.0)) / (ours["train_s"] + ours["eval_s"])


def _num(x, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _use(side: dict) -> str:
    if side.get("wall_s") is None:
        return "-"
    return (f"{side['wall_s']:.0f} ({_num(side.get('cpu_s'), '.0f')}), "
            f"{_num(side.get('load_before'), '.1f')}-{_num(side.get('load_after'), '.1f')}")


def markdown_table(results: dict) -> str:
    """One block per model: modalrec (mean ± std over its seeds), MMRec (seed 999), then the speed ratio."""
    head = ("| model | side | epochs (cap) | test R@10 | test R@20 | test N@10 | test N@20 | train s/epoch "
            "| valid-eval s/epoch | peak RSS MB | speed ratio | run wall s (CPU s), load avg |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for model, row in results.items():
        ours, mm = row.get("ours"), row.get("mmrec")
        ratio = speed_ratio(mm, ours) if ours and mm else None
        if ours:
            cells = [f"{ours['mean'][m]:.4f} ± {ours['std'][m]:.4f}" for m in METRICS]
            seeds = ",".join(map(str, ours["seeds"]))
            lines.append(f"| {model} | modalrec, seeds {seeds} | {'/'.join(map(str, ours['epochs']))} "
                         f"({row['epochs']}) | " + " | ".join(cells)
                         + f" | {_num(ours['train_s'], '.3f')} | {_num(ours['eval_s'], '.3f')} "
                           f"| {_num(ours['peak_rss_mb'], '.0f')} | {_num(ratio, '.2f') + 'x' if ratio else '-'} | {_use(ours)} |")
        if mm:
            lines.append(f"| {'' if ours else model} | MMRec {MODELS[model][0]}, seed 999 | {mm['epochs']} "
                         f"({row['epochs']}) | " + " | ".join(f"{mm['test'][m]:.4f}" for m in METRICS)
                         + f" | {_num(mm['train_s'], '.3f')} | {_num(mm['eval_s'], '.3f')} "
                           f"| {_num(mm['peak_rss_mb'], '.0f')} | | {_use(mm)} |")
    return "\n".join(lines)


def mapping_table() -> str:
    """Every model's hyper-parameters as both sides get them (markdown), for the reader and the README."""
    lines = ["| model | MMRec key = value | ours | note |", "|---|---|---|---|"]
    for model, (name, params) in MODELS.items():
        for i, (key, p) in enumerate(params.items()):
            ours = "-" if p["ours"] is None else f"`model.{model}.{p['ours']}={json.dumps(p['our_value'])}`"
            lines.append(f"| {f'{model} ({name})' if i == 0 else ''} | `{key}: {json.dumps(p['mmrec'])}` | {ours} "
                         f"| {p['why']} |")
    lines.append(f"| all | `learning_rate: {LR}`, `train_batch_size: {BATCH}`, `stopping_step: {PATIENCE}`, "
                 f"`valid_metric: Recall@20` | `train.lr`, `train.batch_size`, `train.patience`, "
                 "`train.valid_metric=recall@20`, `eval.mask_valid_in_test=false` | learning_rate pinned, see MODELS |")
    return "\n".join(lines)


def merge_results(path: Path, model: str, row: dict) -> dict:
    """Add or replace one model's row in the JSON results file (runs for other models stay)."""
    from pipeline.atomic import write_json_atomic

    results = json.loads(path.read_text()) if path.is_file() else {}
    old = results.get(model, {})
    if (old.get("epochs"), old.get("threads")) == (row["epochs"], row.get("threads")):
        # a one-side rerun keeps the other side of the same cap and threads
        row = {**old, **row}
    results[model] = row
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, results)
    return results


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="*", help=f"any of {', '.join(MODELS)} (default: all)")
    ap.add_argument("--mmrec", type=Path, help="the MMRec snapshot (a scratch copy outside this repository)")
    ap.add_argument("--setup", action="store_true", help="patch the snapshot and add tiktok to it first")
    ap.add_argument("--epochs", type=int, default=30, help="epoch cap, both sides (default 30)")
    ap.add_argument("--seeds", default="1,2,3,999", help="our seeds, comma-separated (MMRec runs 999)")
    ap.add_argument("--sides", choices=("both", "mmrec", "ours"), default="both")
    ap.add_argument("--threads", type=int, help="torch threads per side (OMP/MKL_NUM_THREADS); default: torch's")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "side_by_side.json")
    ap.add_argument("--table", action="store_true", help="only print the table of what --out holds")
    ap.add_argument("--mapping", action="store_true", help="only print the per-model hyper-parameter mapping")
    ap.add_argument("--ours-worker", metavar="MODEL", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.ours_worker:
        return ours_worker(args.ours_worker, args.epochs, seeds)
    if args.mapping:
        print(mapping_table())
        return None
    if args.table:
        print(markdown_table(json.loads(args.out.read_text())))
        return None
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        ap.error(f"unknown models {unknown}; choose from {list(MODELS)}")
    if args.sides != "ours":
        if args.mmrec is None:
            ap.error("--mmrec PATH is needed to run MMRec's side")
        if args.setup:
            setup_mmrec(args.mmrec)
        todo = unpatched(args.mmrec)
        if todo:
            raise SetupError(f"{args.mmrec} is not set up for this benchmark (run with --setup; "
                             "benchmarks/mmrec_patches.md lists the edits):\n  " + "\n  ".join(todo))
    results, failed = {}, []
    for model in args.models or list(MODELS):
        row = {"epochs": args.epochs, "threads": args.threads, "mmrec_name": MODELS[model][0], "lr": LR, "batch": BATCH,
               "patience": PATIENCE, "hyper_parameters": MODELS[model][1]}
        # one side failing (a model not merged on our side yet, an MMRec crash) leaves the other's figures
        for side, run in (("mmrec", lambda: run_mmrec(args.mmrec, model, args.epochs, args.threads)),
                          ("ours", lambda: run_ours(model, args.epochs, seeds, args.threads))):
            if args.sides in ("both", side):
                try:
                    row[side] = run()
                    print(f"{model} {side}: {json.dumps(row[side])}", flush=True)
                except RuntimeError as e:
                    failed.append(f"{model} {side}")
                    print(f"{model} {side} FAILED: {e}", file=sys.stderr, flush=True)
        if "mmrec" in row or "ours" in row:
            results = merge_results(args.out, model, row)
    print()
    print(markdown_table(results))
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")
    return None


if __name__ == "__main__":
    main()
