"""Shared fixtures: small hand-written data sets on disk and the real data under ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MODALREC_DATA", REPO.parent / "shared" / "data"))


def shared(name: str) -> Path:
    """A real data set folder, or skip the test saying where it was looked for."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real data set {name!r} not found at {path} (set MODALREC_DATA to the folder holding it)")
    return path


def write_config(path: Path, tree: dict) -> Path:
    path.write_text(yaml.safe_dump(tree, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    """Items with text + an image path column, interactions with dates, ratings and a repeat."""
    root = tmp_path / "raw"
    (root / "img").mkdir(parents=True)
    (root / "items.csv").write_text(
        "sku,name,desc,img\n"
        "007,Red hat,A red hat,img/007.png\n"
        "008,Blue scarf,,img/008.png\n"
        "009,Green sock,Warm,\n"
        "010,Black boot,Leather,img/010.png\n",
        encoding="utf-8",
    )
    for sku in ("007", "008"):  # 010's image is missing on disk on purpose
        (root / "img" / f"{sku}.png").write_bytes(b"png")
    rows = ["customer,sku,day,stars"]
    day = 1
    for user in ("ann", "bob", "cid"):
        for sku in ("007", "008", "009", "010"):
            rows.append(f"{user},{sku},2024-01-{day:02d},{(day % 5) + 1}")
            day += 1
    rows.append("ann,007,2024-02-01,1")  # a repeat purchase: kept as a count, latest rating wins
    (root / "events.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


@pytest.fixture
def tiny_config(tmp_path: Path, tiny_data: Path) -> Path:
    return write_config(tmp_path / "tiny.yaml", {
        "cache_dir": "cache",
        "data": {
            "name": "tiny",
            "root": "raw",
            "items": {
                "path": "items.csv",
                "id": "sku",
                "text": {"text": "{name}. {desc}"},
                "image": {"photo": "img"},
            },
            "interactions": {"path": "events.csv", "user": "customer", "item": "sku",
                             "timestamp": "day", "rating": "stars"},
            "split": {"protocol": "leave_one_out"},
        },
    })
