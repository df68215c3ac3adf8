"""The main job on the built-in demo data, end to end on CPU in a few minutes:

1. generate the demo data (first run only) and prepare it with a cold-start split;
2. extract text / image / audio features into the feature store (only what is missing);
3. train an id-only recommender (BPR) and a content-aware one (VBPR on the cached features)
   with the same trainer and evaluation, and print their metrics side by side;
4. a short end-to-end run: a small CLIP's image and text towers fine-tuned with a two-tower
   recommender (recipes/configs/e2e_clip_demo.yaml, two epochs);
5. ``modalrec compare``: frozen vs fine-tuned arms (ids only, each modality frozen and fused, the
   small CLIP image tower fine-tuned fully and with cached top-k, its fine-tuned features fed back
   frozen), two seeds each, and the report under cache/compare/demo/report/
   (recipes/configs/compare_demo.yaml).

Extra arguments are config overrides, e.g. ``data.demo.n_items=300``.

    python recipes/demo.py
"""

import sys
from pathlib import Path

from pipeline.cli import main

CONFIGS = Path(__file__).resolve().parent / "configs"
CONFIG = str(CONFIGS / "demo.yaml")
E2E = str(CONFIGS / "e2e_clip_demo.yaml")
COMPARE = str(CONFIGS / "compare_demo.yaml")


def run(*command: str, overrides: tuple[str, ...] = (), config: str = CONFIG) -> None:
    code = main([*command, config, *overrides, *sys.argv[1:]])
    if code:
        sys.exit(code)


if __name__ == "__main__":
    run("data", "prepare")
    run("extract")
    for model in ("bpr", "vbpr"):
        print(f"\n== {model} ==")
        run("train", overrides=(f"model.name={model}",))
    print("\n== end to end: small CLIP, image + text towers fine-tuned (2 epochs) ==")
    run("train", overrides=("train.epochs=2",), config=E2E)
    print("\n== compare: frozen vs fine-tuned, two seeds per arm ==")
    run("compare", config=COMPARE)
