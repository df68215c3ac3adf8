"""The frozen two-step track on TikTok (MMRec format) against MMRec's own figures.

Same split (x_label), same features (image_feat.npy in MMRec's vision slot, audio_feat.npy in
its text slot), MMRec's protocol (early stopping on valid Recall@20 with patience 20, test at
the best epoch, train items masked, valid items *not* masked at test time, users without
training data skipped). The reference figures were measured with enoche/MMRec (HEAD) on a
2-core CPU machine like this one, default hyper-parameters, seed 999; they are quoted from the
project's issue, since MMRec cannot be fetched here to run side by side.

    python benchmarks/mmrec_tiktok.py [bpr lightgcn vbpr freedom]
"""

import json
import sys
from pathlib import Path

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


def main(models):
    rows = []
    for name in models:
        cfg = load_config(CONFIG, [f"model.name={name}", "eval.mask_valid_in_test=false", "train.tensorboard=false",
                                   "train.progress=false", "train.seed=999"])
        try:
            data = PreparedData.load(cfg.prepared_dir)
        except Exception:
            data = prepare(cfg, progress=False)
        r = run_training(cfg, data)
        t = r["test"]
        ours = (t["recall@10"], t["recall@20"], t["ndcg@10"], t["ndcg@20"], r["train_seconds_per_epoch"],
                r["eval_seconds_per_epoch"])
        rows.append({"model": name, "ours": ours, "mmrec": MMREC[name], "best_epoch": r["best_epoch"], "epochs": r["epochs"]})
        print(json.dumps(rows[-1]), flush=True)
    print()
    print("| model | | test R@10 | test R@20 | test N@10 | test N@20 | train s/epoch | valid-eval s/epoch |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        o, m = row["ours"], row["mmrec"]
        print(f"| {row['model']} | modalrec | " + " | ".join(f"{x:.4f}" for x in o[:4]) + f" | {o[4]:.3f} | {o[5]:.3f} |")
        print(f"| | MMRec | " + " | ".join(f"{x:.4f}" for x in m[:4]) + f" | {m[4]:.2f} | {m[5]:.2f} |")
        print(f"| | ratio | " + " | ".join(f"{a / b:.2f}x" for a, b in zip(o[:4], m[:4]))
              + f" | {m[4] / o[4]:.1f}x faster | {m[5] / o[5]:.1f}x faster |")


if __name__ == "__main__":
    main(sys.argv[1:] or list(MMREC))
