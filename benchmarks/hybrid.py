"""Warm and cold items: an id-only model, a content-only one and the hybrid, over seeds.

Each arm trains at its defaults on the config's data and features (prepared and extracted
first: `modalrec data prepare` and `modalrec extract` on the same config), once per seed; the
table gives overall / warm / cold / long-tail R@20 and N@20 (mean ± sample std over seeds) on
test, and the same slices on validation, which is what the defaults were chosen on:

    python benchmarks/hybrid.py recipes/configs/demo.yaml --seeds 1,2,3
    python benchmarks/hybrid.py recipes/configs/hm.yaml --seeds 1,2,3 train.epochs=60
    # a setting tried on validation: one arm, an override
    python benchmarks/hybrid.py recipes/configs/demo.yaml --arms hybrid model.item_tower.id_dropout=0.5

Arms: `bpr` and `lightgcn` (ids), `content` (two-tower over every feature set, no ids), `hybrid`
(LightGCN over ids + features), `freedom` and `hybrid_knn` (FREEDOM, unseen items ranked by their
warm content neighbours), `joint` (ids, content taste and item bias in one softmax). Trailing
`key=value` overrides apply to every arm (a training budget, say). `--cold-weights 1,1.5,2`
re-scores each trained `hybrid_knn` run's best model at those values of
`model.hybrid_knn.cold_weight` (a ranking-time setting: training is FREEDOM's either way, though
early stopping saw the configured weight) and prints the slices on validation and test:

    python benchmarks/hybrid.py recipes/configs/demo.yaml --arms hybrid_knn --seeds 1 --cold-weights 1,1.5,2
"""

import argparse
import json

import numpy as np
import torch

from pipeline.config import load_config
from pipeline.data import PreparedData
from pipeline.eval import Evaluator
from pipeline.train import load_run, run_training

QUIET = ["train.tensorboard=false", "train.progress=false"]
ARMS = {
    "bpr": ["model.name=bpr"],
    "lightgcn": ["model.name=lightgcn"],
    "content": ["model.name=two_tower", "model.item_tower={{ids: false, features: {features}}}"],
    "hybrid": ["model.name=hybrid"],
    "freedom": ["model.name=freedom"],
    "hybrid_knn": ["model.name=hybrid_knn"],
    "joint": ["model.name=joint"],
}
SLICES = ("", "warm/", "cold/", "tail/")
METRICS = ("recall@20", "ndcg@20")


def evaluators(cfg, data) -> dict[str, Evaluator]:
    """Validation and test evaluators with every slice (training only tracks the overall metric
    on validation), test as the trainer builds it."""
    kw = dict(ks=tuple(cfg.eval.ks), batch_users=cfg.eval.batch_users, skip_cold_users=cfg.eval.skip_cold_users,
              long_tail_share=cfg.eval.long_tail_share)
    train, valid = data.pairs("train"), data.pairs("valid")
    return {"valid": Evaluator(data.n_users, data.n_items, train, valid, **kw),
            "test": Evaluator(data.n_users, data.n_items, train, data.pairs("test"),
                              also_mask=valid if cfg.eval.mask_valid_in_test else None, **kw)}


def slices(model, evs: dict[str, Evaluator], splits=("valid", "test")) -> dict[str, dict[str, float]]:
    out = {}
    for split in splits:
        model.use_history(split)
        with torch.no_grad():
            out[split] = evs[split].evaluate(model.score)
    return out


def valid_slices(run_dir: str) -> dict[str, float]:
    """The run's best model on validation with every slice."""
    cfg, data, model = load_run(run_dir)
    return slices(model, evaluators(cfg, data), ("valid",))["valid"]


def rescore_cold_weights(run_dir: str, weights: list[float]) -> None:
    """The run's best model ranked at each cold weight: R@20 overall / warm / cold / tail."""
    cfg, data, model = load_run(run_dir)
    evs = evaluators(cfg, data)
    for w in weights:
        model.cold_weight = w
        got = slices(model, evs)
        print(f"{run_dir} cold_weight={w}: " + "; ".join(
            f"{split} " + " ".join(f"{s or 'all/'}R@20 {r.get(s + 'recall@20', float('nan')):.4f}" for s in SLICES)
            for split, r in got.items()), flush=True)


def cell(values: list[float]) -> str:
    if not values or any(v != v for v in values):
        return "–"
    std = np.std(values, ddof=1) if len(values) > 1 else 0.0
    return f"{np.mean(values):.4f} ± {std:.4f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*", help="dotted key=value for every arm")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--tag", default="", help="run-name suffix, so tried settings keep their own runs")
    ap.add_argument("--cold-weights", default="", help="hybrid_knn: re-score each run at these cold weights")
    args = ap.parse_intermixed_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    for arm in args.arms.split(","):
        base = load_config(args.config, args.overrides)
        extra = [o.format(features=json.dumps(list(base.features))) for o in ARMS[arm]]
        cfg = load_config(args.config, [*extra, *args.overrides, *QUIET, f"train.seeds={seeds}",
                                        f"train.run_name=hybrid-bench-{base.data.name}-{arm}{args.tag}"])
        data = PreparedData.load(cfg.prepared_dir)
        r = run_training(cfg, data)
        runs = r.get("runs", [r])
        valid = [valid_slices(run["run_dir"]) for run in runs]
        if args.cold_weights and cfg.model.name == "hybrid_knn":
            for run in runs:
                rescore_cold_weights(run["run_dir"], [float(w) for w in args.cold_weights.split(",")])
        row = {"arm": arm, "overrides": args.overrides, "seeds": seeds,
               "best_epochs": [run["best_epoch"] for run in runs],
               "test": {f"{s}{m}": [run["test"].get(f"{s}{m}", float("nan")) for run in runs]
                        for s in SLICES for m in METRICS},
               "valid": {f"{s}{m}": [v.get(f"{s}{m}", float("nan")) for v in valid] for s in SLICES for m in METRICS}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n{args.config} {' '.join(args.overrides)}; seeds {args.seeds}; mean ± std over seeds")
    heads = [f"{s or 'all/'}{m.replace('recall', 'R').replace('ndcg', 'N')}" for s in SLICES for m in METRICS]
    for split in ("test", "valid"):
        print(f"\n{split}\n| arm | best epochs | " + " | ".join(heads) + " |")
        print("|---" * (len(heads) + 2) + "|")
        for row in rows:
            print(f"| {row['arm']} | {','.join(map(str, row['best_epochs']))} | "
                  + " | ".join(cell(row[split][k]) for k in row[split]) + " |")


if __name__ == "__main__":
    main()
