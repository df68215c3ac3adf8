"""Encode every item's content with the config's encoders into the feature store: the same as
``modalrec extract CONFIG``. Extra arguments are config overrides; ``--json`` prints one JSON
object. Computes only what the store lacks, so a second run computes nothing.

    python recipes/extract_features.py recipes/configs/hm.yaml
    python recipes/extract_features.py recipes/configs/emotify.yaml extract.batch_size=4 --json
    accelerate launch recipes/extract_features.py recipes/configs/hm.yaml   # items sharded over GPUs

Several CPU processes on one machine (accelerate's --cpu alone wants MPI; this uses gloo):

    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 \\
        recipes/extract_features.py recipes/configs/hm.yaml
"""

import argparse
import json
import sys


def extract_features(config: str, overrides: list[str], only: list[str] | None = None) -> dict:
    """What ``modalrec extract --json`` prints: the store and one record per feature set."""
    from pipeline import api

    cfg = api.configure(config, overrides)
    results = api.extract(cfg, only=only)
    return {"store": str(cfg.features_dir), "feature_sets": [r.to_dict() for r in results]}


def main() -> int:
    from accelerate import PartialState

    from pipeline import summaries
    from pipeline.errors import ModalrecError

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="YAML config file")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--encoder", action="append", metavar="NAME", help="only this encoder (repeat for several)")
    args, overrides = parser.parse_known_args()
    try:
        out = extract_features(args.config, overrides, args.encoder)
    except ModalrecError as e:
        print(f"extract_features: error: {e}", file=sys.stderr)
        return 2
    if PartialState().is_main_process:
        print(json.dumps(out)) if args.json else summaries.print_extract(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
