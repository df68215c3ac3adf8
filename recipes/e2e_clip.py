"""End-to-end fine-tuning: encoders trained jointly with the recommender on raw item content.

With no arguments it runs the built-in demo config (a small CLIP's image and text towers with a
two-tower recommender on the demo data; minutes on a CPU) on whatever hardware is present:

    accelerate launch recipes/e2e_clip.py
    python recipes/e2e_clip.py --json train.epochs=2
    accelerate launch recipes/e2e_clip.py --config recipes/configs/e2e_clip_hm.yaml
    python recipes/e2e_clip.py --config recipes/configs/e2e_text_hm.yaml     (MiniLM on H&M)

The other encoders are configs, not scripts: e2e_timm_demo.yaml, e2e_audio_demo.yaml. Extra
arguments are config overrides; ``--json`` prints the result of ``modalrec train --json``
(with ``trainable_params``, ``peak_memory_mb`` and ``samples_per_second``); ``--resume``
continues an interrupted run, ``--overwrite`` replaces a same-named run of another config.
"""

import argparse
import json
import sys
from pathlib import Path

DEMO = Path(__file__).resolve().parent / "configs" / "e2e_clip_demo.yaml"


def training_function(config: str, overrides: list[str], resume: bool = False, overwrite: bool = False) -> dict:
    """Train the configured end-to-end model; the result of ``modalrec train`` on every process."""
    from pipeline import api

    return api.train(config, overrides, resume=resume, overwrite=overwrite)


def main() -> int:
    from accelerate import PartialState

    from pipeline.summaries import print_train
    from pipeline.errors import ModalrecError

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(DEMO), help="a config with model.item_tower.live (default: the demo)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    again = parser.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue the run from its last checkpoint")
    again.add_argument("--overwrite", action="store_true", help="replace a same-named run of another config")
    args, overrides = parser.parse_known_args()
    try:
        result = training_function(args.config, overrides, resume=args.resume, overwrite=args.overwrite)
    except ModalrecError as e:
        print(f"e2e_clip: error: {e}", file=sys.stderr)
        return 2
    if not PartialState().is_main_process:
        return 0
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "history"}))
        return 0
    print_train(result)
    if Path(args.config).resolve() == DEMO:
        print("\nThat was a small CLIP with random weights. For pretrained weights set the encoder specs to a "
              "tag or a file (open_clip:ViT-B-32@openai, open_clip:ViT-B-32@/path/to.safetensors) and drop "
              "random_init; recipes/configs/e2e_clip_hm.yaml does this for H&M.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
