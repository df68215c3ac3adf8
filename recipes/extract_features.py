"""Encode every item's content with the config's encoders into the feature store: the same as
``modalrec extract CONFIG``. Extra arguments are config overrides; ``--json`` prints one JSON
object. Computes only what the store lacks, so a second run computes nothing.

    python recipes/extract_features.py recipes/configs/hm.yaml
    python recipes/extract_features.py recipes/configs/emotify.yaml extract.batch_size=4 --json
    accelerate launch recipes/extract_features.py recipes/configs/hm.yaml   # items sharded over GPUs

Several CPU processes on one machine (accelerate's --cpu alone wants MPI; this uses gloo):

    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 \
        recipes/extract_features.py recipes/configs/hm.yaml
"""

import sys

from pipeline.cli import main

if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    sys.exit(main(["extract", *sys.argv[1:]]))
