"""Top-K recommendations for given users, exported as CSV or Parquet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..atomic import atomic_file
from ..data import PreparedData
from ..errors import DataError
from .evaluator import UserItems


def recommend(model, data: PreparedData, user_ids: list[str] | None, k: int, exclude_splits=("train", "valid"),
              batch_users: int = 4096, device="cpu") -> pd.DataFrame:
    """Rows ``user_id, rank, item_id, score`` for each user; already-seen items are excluded."""
    known = {u: i for i, u in enumerate(data.users["user_id"])}
    if user_ids is None:
        users = np.arange(data.n_users)
    else:
        unknown = [u for u in user_ids if u not in known]
        if unknown:
            raise DataError(f"unknown user ids (not in {data.path}/users): {unknown[:5]}"
                            + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""))
        users = np.array([known[u] for u in user_ids], dtype=np.int64)
    seen_u, seen_i = zip(*(data.pairs(s) for s in exclude_splits)) if exclude_splits else ((), ())
    seen = UserItems.build(np.concatenate(seen_u or [np.zeros(0, np.int64)]),
                            np.concatenate(seen_i or [np.zeros(0, np.int64)]), data.n_users)
    item_ids = np.asarray(data.items["item_id"], dtype=object)
    user_names = np.asarray(data.users["user_id"], dtype=object)
    frames = []
    k = min(k, data.n_items)
    for start in range(0, len(users), batch_users):
        batch = users[start : start + batch_users]
        with torch.no_grad():
            scores = model.score(torch.as_tensor(batch, device=device)).to(torch.float32, copy=True)
        rows, items = seen.batch(batch)
        scores[torch.as_tensor(rows), torch.as_tensor(items)] = -torch.inf
        top = scores.topk(k, dim=1)
        idx, val = top.indices.cpu().numpy(), top.values.cpu().numpy()
        frames.append(pd.DataFrame({
            "user_id": np.repeat(user_names[batch], k),
            "rank": np.tile(np.arange(1, k + 1), len(batch)),
            "item_id": item_ids[idx.reshape(-1)],
            "score": val.reshape(-1),
        }))
    out = pd.concat(frames, ignore_index=True)
    return out[np.isfinite(out["score"])]  # a user who has seen nearly everything gets fewer rows


def write_table(frame: pd.DataFrame, path: Path) -> None:
    """CSV or Parquet by suffix, written to a temporary name and renamed."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".pq", ".csv"):
        raise DataError(f"{path}: write .csv or .parquet")
    with atomic_file(path) as tmp:
        if suffix == ".csv":
            frame.to_csv(tmp, index=False)
        else:
            frame.to_parquet(tmp, index=False)
