"""The frozen two-step track in one script: prepare the data, extract features with the
configured encoders (only what the store lacks), train the configured recommender on them and
report valid/test metrics. Extra arguments are config overrides; ``--json`` prints one JSON
object (the data set's statistics, the feature sets and the training result).

    python recipes/two_step.py recipes/configs/hm.yaml model.name=vbpr
    accelerate launch recipes/two_step.py recipes/configs/tiktok.yaml model.name=freedom
"""

import argparse
import json
import sys


def two_step(config: str, overrides: list[str]) -> dict:
    """Prepared data (reused while its inputs are unchanged), extracted features, a trained model."""
    from pipeline import api

    cfg = api.configure(config, overrides)
    data = api.prepared_on_main(cfg)
    out = {"data": {"path": str(data.path), **data.stats()}, "store": str(cfg.features_dir), "feature_sets": []}
    if cfg.encoders:  # else features come from elsewhere (e.g. MMRec .npy files)
        out["feature_sets"] = [r.to_dict() for r in api.extract(cfg)]
    out["train"] = api.train(config, overrides)
    return out


def main() -> int:
    from accelerate import PartialState

    from pipeline import summaries
    from pipeline.errors import ModalrecError

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="YAML config file")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    args, overrides = parser.parse_known_args()
    try:
        out = two_step(args.config, overrides)
    except ModalrecError as e:
        print(f"two_step: error: {e}", file=sys.stderr)
        return 2
    if not PartialState().is_main_process:
        return 0
    if args.json:
        out["train"] = {k: v for k, v in out["train"].items() if k != "history"}
        print(json.dumps(out))
        return 0
    summaries.print_stats(out["data"])
    if out["feature_sets"]:
        summaries.print_extract(out)
    summaries.print_train(out["train"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
