"""What verifying checkpoints and best weights costs, per GB, against writing and reading them.

A checkpoint records the sha256 of its files when it is written (one more pass over them, from
the page cache) and checks them when a run resumes (one pass before the load); a best-weights
file records and checks a sha256 of its tensors. This times those passes on float32 tensors of
the given size and prints seconds per GB next to the plain safetensors write and read they are
added to, and the ratio. Best of ``--rounds``.

    python benchmarks/checkpoint_checksums.py            # 512 MB, 3 rounds
    python benchmarks/checkpoint_checksums.py --mb 2048
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from pipeline.train.checkpoint import file_sha256, tensors_sha256


def best_of(rounds: int, fn) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=int, default=512, help="total tensor size in MB (default 512)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    n = args.mb * 2**20 // 4
    # a model-like mix: a few large matrices and many small vectors
    sizes = [n // 4] * 3 + [(n - 3 * (n // 4)) // 64] * 64
    tensors = {f"t{i}": torch.randn(k) for i, k in enumerate(sizes)}
    gb = sum(t.numel() * 4 for t in tensors.values()) / 2**30
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tensors.safetensors"
        rows = [
            ("write (safetensors save_file)", best_of(args.rounds, lambda: save_file(tensors, str(path)))),
            # load_file maps the file; restoring copies every byte, as load_state_dict does
            ("read (load_file + copy)", best_of(args.rounds, lambda: [t.clone() for t in load_file(str(path)).values()])),
            ("sha256 of the file (checkpoints)", best_of(args.rounds, lambda: file_sha256(path))),
            ("sha256 of the tensors (best weights)", best_of(args.rounds, lambda: tensors_sha256(tensors))),
        ]
    write, read = rows[0][1], rows[1][1]
    print(f"{gb:.2f} GB of float32 tensors, best of {args.rounds}, torch threads {torch.get_num_threads()}")
    print("| pass | s | s per GB | GB/s |")
    print("|---|---|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.3f} | {seconds / gb:.3f} | {gb / seconds:.2f} |")
    file_pass, tensor_pass = rows[2][1], rows[3][1]
    print(f"\nsaving a checkpoint: +{file_pass / write:.0%} over the write (one sha256 pass); "
          f"resuming: +{file_pass / read:.0%} over the read")
    print(f"best weights: +{tensor_pass / write:.0%} on save, +{tensor_pass / read:.0%} on load")


if __name__ == "__main__":
    main()
