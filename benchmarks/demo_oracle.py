"""How good a ranking can be on the demo: the generator's own reasons, ranked as a model would.

The demo is drawn from a known model (``pipeline.data.demo``): a user picks items with log-weight
``taste + log popularity + log exposure``. Ranking every user's items by that, with parts of it
withheld the way they are from any real model, bounds what a recommender can reach on the demo's
warm and cold slices in the same top 20, and shows which part a model is missing:

- ``everything``: taste, popularity and exposure, for every item (cold items' popularity too,
  which no model can know: nothing about it is in their content);
- ``cold popularity unknown``: unseen items at the warm items' mean log popularity;
- ``no exposure``: that, without the exposure term (when each item was on offer to each user);
- ``taste only``: content's part alone, for every item (no popularity, no exposure).

Each ranker puts unseen items ``+c`` up (``--offsets``): a test pair is far likelier to be on an
unseen item than on a warm one the user has not bought, since a warm item's pairs mostly went to
training. Valid and test R@20 overall / warm / cold through the evaluator the trainer uses:

    python benchmarks/demo_oracle.py recipes/configs/demo.yaml
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hybrid import evaluators  # noqa: E402

from pipeline.api import configure, prepared  # noqa: E402
from pipeline.data.demo import Taste, demo_truth  # noqa: E402

K = 20


def aligned(item_ids: list[str], user_ids: list[str], taste: Taste, data) -> Taste:
    """``taste`` with rows and columns in the prepared data's user and item order."""
    col = {x: j for j, x in enumerate(item_ids)}
    row = {x: j for j, x in enumerate(user_ids)}
    items = np.array([col[x] for x in data.items["item_id"]])
    users = np.array([row[x] for x in data.users["user_id"]])
    pick = np.ix_(users, items)
    return Taste(taste.affinity[pick], taste.log_popularity[items], taste.log_exposure[pick],
                 taste.offered[pick], taste.span[pick])


def rankers(taste: Taste, cold: np.ndarray) -> dict[str, np.ndarray]:
    """Score matrices ``[n_users, n_items]`` for each amount of withheld knowledge."""
    pop = np.where(cold, taste.log_popularity[~cold].mean(), taste.log_popularity)[None, :]
    return {
        "everything": taste.log_weight,
        "cold popularity unknown": taste.affinity + pop + taste.log_exposure,
        "no exposure": taste.affinity + pop,
        "taste only": taste.affinity,
    }


def recall(ev, scores: np.ndarray) -> tuple[float, float, float]:
    got = ev.evaluate(lambda users: torch.as_tensor(scores[users.cpu().numpy()], dtype=torch.float32))
    return tuple(got.get(f"{s}recall@{K}", float("nan")) for s in ("", "warm/", "cold/"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", nargs="?", default="recipes/configs/demo.yaml")
    ap.add_argument("overrides", nargs="*", help="dotted key=value")
    ap.add_argument("--offsets", default="0,0.5,1,1.5,2")
    args = ap.parse_args()
    cfg = configure(args.config, args.overrides)
    if cfg.data.demo is None:
        ap.error(f"{args.config}: data.demo is not set; only the built-in demo has a known generator")
    data = prepared(cfg)
    gen = cfg.data.demo
    taste = aligned(*demo_truth(n_items=gen.n_items, n_users=gen.n_users, seed=gen.seed), data)
    evs = evaluators(cfg, data)
    cold = evs["valid"].cold_items
    print(f"| ranker | unseen +c | valid all R@{K} | valid warm | valid cold | test all R@{K} | test warm | test cold |")
    print("|---|---|---|---|---|---|---|---|")
    for name, scores in rankers(taste, cold).items():
        for c in (float(x) for x in args.offsets.split(",")):
            cells = [f"{v:.4f}" for split in ("valid", "test") for v in recall(evs[split], scores + c * cold[None, :])]
            print(f"| {name} | {c:g} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
