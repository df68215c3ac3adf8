"""The test users' own metric values of one finished run (``per_user.safetensors`` in its run
directory): what the paired significance tests between arms are computed from.

``run.py`` writes them once a run is finished; ``report_data.py`` reads them. Keeping both ends of
the file here is what lets the report read runs without importing the runner.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..atomic import write_file_atomic

PER_USER = "per_user.safetensors"


def per_user_metrics(run_dir: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The test users' own metric values for a finished run's best weights (same evaluator as
    training, so their means are the run's reported test metrics)."""
    from ..train import load_run
    from ..train.trainer import evaluators

    cfg, data, model = load_run(run_dir)
    _, test_eval = evaluators(cfg, data)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    model.use_history("test")
    return test_eval.per_user(model.score, device=device, cold_slice=cfg.eval.cold_slice)


def save_per_user(path: Path, users: np.ndarray, values: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save

    body = save({"users": users.astype(np.int64), **{k: v.astype(np.float64) for k, v in values.items()}})
    write_file_atomic(path, body)


def load_per_user(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    from safetensors.numpy import load_file

    tensors = load_file(str(path))
    users = tensors.pop("users")
    return users, tensors
