"""The frozen two-step track in one script: prepare the data, extract features with the
configured encoders (only what the store lacks), train the configured recommender on them and
report valid/test metrics. Extra arguments are config overrides.

    python recipes/two_step.py recipes/configs/hm.yaml model.name=vbpr
    accelerate launch recipes/two_step.py recipes/configs/tiktok.yaml model.name=freedom
"""

import sys

from pipeline.cli import main

if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python recipes/two_step.py CONFIG [key=value ...]")
    config, overrides = sys.argv[1], sys.argv[2:]
    for step in (["data", "prepare"], ["extract"], ["train"]):
        if step == ["extract"]:
            from pipeline.config import load_config

            if not load_config(config, overrides).encoders:
                continue  # features come from elsewhere (e.g. MMRec .npy files)
        code = main([*step, config, *overrides])
        if code:
            sys.exit(code)
