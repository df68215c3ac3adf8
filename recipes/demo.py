"""The main job on the built-in demo data, end to end on CPU in a few minutes:

1. generate the demo data (first run only) and prepare it with a cold-start split;
2. extract text (all-MiniLM-L6-v2), image (ImageNet EfficientNet-Lite0) and audio features into
   the feature store (only what is missing);
3. train an id-only recommender (BPR) and a content-aware one (``joint``: LightGCN over ids, a
   taste over the cached features' shared directions and an item bias, in one softmax) with the
   same trainer and evaluation, and print their metrics side by side;
4. a short end-to-end run: a small CLIP's image and text towers fine-tuned with a two-tower
   recommender (recipes/configs/e2e_clip_demo.yaml, two epochs);
5. ``modalrec compare``: frozen vs fine-tuned arms (ids only, each modality frozen and fused,
   EfficientNet-Lite0 fine-tuned with cached top-k, its fine-tuned features fed back frozen),
   two seeds each, and the report under cache/compare/demo/report/
   (recipes/configs/compare_demo.yaml);
6. a summary: test recall@20 of ids only, frozen content and fine-tuned content, on all test
   items and on the cold-start ones, and where the report is.

``--quick`` runs the same steps on a smaller demo (300 items, 300 users) with fewer epochs and
one seed, under cache/quick/ (CI runs it in a fresh environment). Other extra arguments are
config overrides, e.g. ``data.demo.n_items=300``.

    python recipes/demo.py
"""

import argparse
import json
import sys
from pathlib import Path

from pipeline import api, summaries
from pipeline.compare import compare_dir
from pipeline.config import load_config
from pipeline.errors import ModalrecError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "recipes" / "configs"
CONFIG = str(CONFIGS / "demo.yaml")
E2E = str(CONFIGS / "e2e_clip_demo.yaml")
COMPARE = str(CONFIGS / "compare_demo.yaml")
METRIC = "recall@20"


def quick_overrides() -> list[str]:
    """A smaller demo through the same steps: its own cache, fewer items, epochs and seeds."""
    quick = REPO / "cache" / "quick"
    compare = load_config(COMPARE).compare
    budget = {**compare.common, "train.epochs": 1, "train.patience": 1}
    # a recommender's own budget (compare.by_model) would otherwise restore its full epochs
    by_model = {m: {**b, "train.epochs": 2, "train.patience": 1} for m, b in compare.by_model.items()}
    return [f"cache_dir={quick}", f"data.root={quick / 'demo-raw'}", "data.demo.n_items=300",
            "data.demo.n_users=300", "train.epochs=2", "compare.seeds=[1]", f"compare.common={json.dumps(budget)}",
            f"compare.by_model={json.dumps(by_model)}"]


def _value(arm: dict, key: str, seeds: int) -> str:
    stat = arm.get("test", {}).get(key)
    if not stat:
        return "n/a"
    return f"{stat['mean']:.4f}" + (f" ± {stat['std']:.4f}" if seeds > 1 else "")


def summary(report_dir: Path) -> str:
    """The numbers the demo is for, from the compare report: ids only, frozen content (all
    features, and the one feature set fine-tuned) and the best fine-tuned arm."""
    report = json.loads((report_dir / "report.json").read_text(encoding="utf-8"))
    arms = {a["name"]: a for a in report["arms"] if a["status"] == "ok"}
    tuned = max((a for a in arms.values() if a["kind"] == "finetuned" and METRIC in a.get("test", {})),
                key=lambda a: a["test"][METRIC]["mean"], default=None)
    rows = [("ids only", arms.get("id-only")), ("frozen, all features", arms.get(report["baseline"]))]
    if tuned is not None:
        rows += [(f"frozen {tuned['feature']}", arms.get(tuned.get("counterpart", ""))),
                 (f"fine-tuned {tuned['feature']} ({tuned['policy']})", tuned)]
    models = {arm.get("model") for _, arm in rows if arm is not None}
    if len(models) > 1:  # frozen arms and fine-tuned ones train different recommenders: say which
        rows = [(f"{label} [{arm.get('model')}]" if arm is not None else label, arm) for label, arm in rows]
    seeds, width = len(report["seeds"]), max(36, *(len(label) for label, _ in rows))
    lines = [f"\n== summary: test {METRIC}" + (f", mean ± std over {seeds} seeds" if seeds > 1 else "") + " ==",
             f"{'':<{width}} {'all test items':>17} {'cold-start items':>17}"]
    for label, arm in rows:
        if arm is not None:
            lines.append(f"{label:<{width}} {_value(arm, METRIC, seeds):>17} {_value(arm, 'cold/' + METRIC, seeds):>17}")
    lines.append(f"report: {report_dir / 'report.md'} (and report.json, report.html, plots)")
    return "\n".join(lines)


def demo(extra: list[str]) -> Path:
    """Every step of the demo with the same overrides; returns the compare report's folder."""
    summaries.print_stats(api.prepare(CONFIG, extra).stats())
    cfg = api.configure(CONFIG, extra)
    summaries.print_extract({"store": str(cfg.features_dir),
                             "feature_sets": [r.to_dict() for r in api.extract(cfg)]})
    for model in ("bpr", "joint"):
        print(f"\n== {model} ==")
        summaries.print_train(api.train(CONFIG, [f"model.name={model}", *extra]))
    print("\n== end to end: small CLIP, image + text towers fine-tuned (2 epochs) ==")
    summaries.print_train(api.train(E2E, ["train.epochs=2", *extra]))
    print("\n== compare: frozen vs fine-tuned, every arm on the same budget ==")
    summaries.print_compare(api.compare(COMPARE, extra))
    return compare_dir(load_config(COMPARE, extra)) / "report"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller demo (CI runs it), under cache/quick/")
    args, overrides = parser.parse_known_args()
    extra = [*quick_overrides(), *overrides] if args.quick else overrides
    try:
        report_dir = demo(extra)
    except ModalrecError as e:
        print(f"demo: error: {e}", file=sys.stderr)
        return 2
    print(summary(report_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
