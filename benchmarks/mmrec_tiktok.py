"""The frozen two-step track on TikTok (MMRec format) against MMRec's own figures.

Same split (x_label), same features (image_feat.npy in MMRec's vision slot, audio_feat.npy in
its text slot), MMRec's protocol (early stopping on valid Recall@20 with patience 20, test at the
best epoch, train items masked, valid items *not* masked at test time, users without training
data skipped). Our settings are recipes/configs/tiktok.yaml's: MMRec's defaults except where
`modalrec tune` chose otherwise on validation (LightGCN 2 layers, FREEDOM reg_weight 1e-4). The
reference figures were measured with enoche/MMRec (HEAD) on a 2-core CPU machine like this one,
default hyper-parameters, seed 999; they are quoted from the project's issue, since MMRec
cannot be fetched here to run side by side (benchmarks/mmrec_style_epoch.py times an
MMRec-style epoch in the same run instead).

    python benchmarks/mmrec_tiktok.py [--seeds 999] [bpr lightgcn vbpr freedom]
"""

import argparse
import json
from pathlib import Path

import numpy as np

from pipeline.config import load_config
from pipeline.data import PreparedData, prepare
from pipeline.train import run_training

CONFIG = Path(__file__).resolve().parents[1] / "recipes" / "configs" / "tiktok.yaml"
MMREC = {  # test R@10, R@20, N@10, N@20, train s/epoch, valid-eval s/epoch
    "bpr": (0.0309, 0.0483, 0.0169, 0.0212, 0.23, 0.31),
    "lightgcn": (0.0549, 0.0888, 0.0290, 0.0375, 0.59, 0.31),
    "vbpr": (0.0323, 0.0522, 0.0167, 0.0218, 0.49, 0.32),
    "freedom": (0.0545, 0.0883, 0.0302, 0.0387, 1.03, 0.32),
}
METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="*", help=f"any of {', '.join(MMREC)} (default: all)")
    ap.add_argument("--seeds", default="999", help="comma-separated; several give mean ± std (sample std)")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    for name in args.models or list(MMREC):
        if name not in MMREC:
            ap.error(f"unknown model {name!r}; choose from {list(MMREC)}")
        cfg = load_config(CONFIG, [f"model.name={name}", "eval.mask_valid_in_test=false", "train.tensorboard=false",
                                   "train.progress=false", f"train.seeds={seeds}"])
        try:
            data = PreparedData.load(cfg.prepared_dir)
        except Exception:
            data = prepare(cfg, progress=False)
        r = run_training(cfg, data)
        runs = r.get("runs", [r])
        test = np.array([[run["test"][m] for m in METRICS] for run in runs])
        row = {"model": name, "seeds": seeds, "mean": test.mean(0).tolist(),
               "std": (test.std(0, ddof=1) if len(runs) > 1 else np.zeros(4)).tolist(),
               "best_epochs": [run["best_epoch"] for run in runs],
               "per_seed": {run["seed"]: [round(x, 4) for x in t] for run, t in zip(runs, test.tolist())},
               "train_s": float(np.median([run["train_seconds_per_epoch"] for run in runs])),
               "eval_s": float(np.median([run["eval_seconds_per_epoch"] for run in runs]))}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print()
    print(f"seeds {args.seeds}; mean ± std over seeds when there are several")
    print("| model | | test R@10 | test R@20 | test N@10 | test N@20 | train s/epoch | valid-eval s/epoch |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        m = MMREC[row["model"]]
        cells = [f"{a:.4f} ± {s:.4f}" if len(seeds) > 1 else f"{a:.4f}" for a, s in zip(row["mean"], row["std"])]
        print(f"| {row['model']} | modalrec | " + " | ".join(cells) + f" | {row['train_s']:.3f} | {row['eval_s']:.3f} |")
        print("| | MMRec | " + " | ".join(f"{x:.4f}" for x in m[:4]) + f" | {m[4]:.2f} | {m[5]:.2f} |")
        print("| | ratio | " + " | ".join(f"{a / b:.2f}" for a, b in zip(row["mean"], m[:4]))
              + f" | {m[4] / row['train_s']:.1f}x faster | {m[5] / row['eval_s']:.1f}x faster |")


if __name__ == "__main__":
    main()
