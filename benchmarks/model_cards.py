"""The model card table (docs/models.md): every registered model's family, paper, the feature
sets it reads at its defaults, what it caches between runs, whether it accepts live encoders,
its trainable parameters at its defaults on tiktok, and its cost per epoch on tiktok (train +
valid evaluation, from `benchmarks/mmrec_side_by_side.py`'s results where it has run).

    python benchmarks/model_cards.py [--results benchmarks/results/side_by_side.json] [--write]

``--write`` replaces the table between the markers in docs/models.md; without it the table is
printed. Parameters are counted by building each model on tiktok (``recipes/configs/tiktok.yaml``,
data prepared and MMRec features imported on first use), so every figure is measured here.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIKTOK = ROOT / "recipes" / "configs" / "tiktok.yaml"
DOC = ROOT / "docs" / "models.md"
BEGIN, END = "<!-- model cards: begin -->", "<!-- model cards: end -->"
COLUMNS = ("model", "family", "paper", "reads at defaults", "caches", "live encoders", "parameters (tiktok)",
           "s/epoch on tiktok (train + valid)")


def card_rows(results: dict) -> list[list[str]]:
    from pipeline.api import configure, prepared
    from pipeline.features import load_features
    from pipeline.models import MODELS, build_model
    from pipeline.train import needed_features

    rows = []
    for name in MODELS:
        spec = MODELS.get(name)
        if not spec.__module__.startswith("pipeline.models."):
            continue  # registered by a user's module, not shipped
        cfg = configure(TIKTOK, [f"model.name={name}"])
        data = prepared(cfg)
        used = needed_features(cfg)
        model = build_model(cfg.model, data, load_features(cfg, data, used), cfg.cache_dir, seed=0)
        params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        ours = results.get(name, {}).get("ours", {})
        cost = (f"{ours['train_s'] + ours['eval_s']:.2f}" if {"train_s", "eval_s"} <= set(ours) else "not measured")
        rows.append([f"`{name}`", spec.family, spec.paper, ", ".join(used) or "ids only", spec.caches,
                     "no" if spec.no_live_encoders else "yes", f"{params:,}", cost])
    return rows


def table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "side_by_side.json")
    ap.add_argument("--write", action="store_true", help=f"replace the table in {DOC.relative_to(ROOT)}")
    args = ap.parse_args()
    results = json.loads(args.results.read_text()) if args.results.is_file() else {}
    text = table(card_rows(results))
    if not args.write:
        print(text)
        return
    doc = DOC.read_text()
    head, rest = doc.split(BEGIN, 1)
    DOC.write_text(head + BEGIN + "\n" + text + "\n" + END + rest.split(END, 1)[1])
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
