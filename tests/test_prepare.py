import json

import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.data import PreparedData, prepare


def test_tiny_end_to_end(tiny_config, tiny_data, tmp_path):
    p = prepare(load_config(tiny_config), progress=False)
    assert p.path == tmp_path / "cache" / "prepared" / "tiny"
    s = p.stats()
    assert (s["users"], s["items"], s["rows"], s["interactions"], s["repeats"]) == (3, 4, 13, 12, 1)
    # ids keep their leading zeros, catalog order is the file's order
    assert p.items["item_id"] == ["007", "008", "009", "010"]
    assert p.users["user_id"] == ["ann", "bob", "cid"]
    # templates skip missing parts for text; media paths resolve against the items file's folder
    assert p.items["text"] == ["Red hat. A red hat", "Blue scarf.", "Green sock. Warm", "Black boot. Leather"]
    photos = p.items["photo"]
    assert photos[0] == str(tiny_data / "img" / "007.png") and photos[2] is None
    assert s["fields"] == {"text": ["text"], "image": ["photo"], "audio": []}
    assert s["missing"] == {"text": 0, "photo": 2}  # 009 has no path, 010's file does not exist

    inter = p.interactions.to_pandas()
    ann_007 = inter[(inter.user == 0) & (inter.item == 0)].iloc[0]
    assert ann_007["count"] == 2
    assert ann_007["rating"] == 1.0  # the latest rating (2024-02-01) wins
    assert ann_007["timestamp"] == 1704067200  # first purchase, 2024-01-01 UTC
    # leave-one-out: each user's last pair to test, second last to valid
    for u in range(3):
        rows = inter[inter.user == u].sort_values("timestamp")
        assert rows["split"].tolist() == [0, 0, 1, 2]
    saved = json.loads((p.path / "stats.json").read_text())
    assert saved == json.loads(json.dumps(s))
    assert "data:" in (p.path / "config.yaml").read_text()


def test_pairs_by_split(tiny_config):
    p = prepare(load_config(tiny_config), progress=False)
    u, i = p.pairs("test")
    assert u.tolist() == [0, 1, 2] and i.tolist() == [3, 3, 3]
    with pytest.raises(ValueError, match="split must be one of"):
        p.pairs("dev")


def test_k_core_iterates_to_a_fixed_point(tmp_path):
    from conftest import write_config

    root = tmp_path / "raw"
    root.mkdir()
    # c has 2 pairs (< 3) and goes; then x is left with 1 pair (< 2) and goes, which drops a
    # to 4 pairs (still >= 3): the fixed point is users {u, v, w, y} x items {a, b, d}
    rows = ["user_id,item_id"] + [f"{u},a" for u in "uvwxy"] + ["u,b", "v,b", "y,b", "x,c", "y,c"]
    rows += [f"{u},d" for u in "uvw"]
    (root / "i.csv").write_text("\n".join(rows) + "\n")
    cfg = write_config(tmp_path / "c.yaml", {"cache_dir": "cache", "data": {
        "name": "k", "root": "raw", "interactions": {"path": "i.csv"},
        "filter": {"min_user_interactions": 2, "min_item_interactions": 3},
        "split": {"protocol": "random"}}})
    p = prepare(load_config(cfg), progress=False)
    inter = p.interactions.to_pandas()
    assert (np.bincount(inter["item"]) >= 3).all() and (np.bincount(inter["user"]) >= 2).all()
    assert p.items["item_id"] == ["a", "b", "d"]  # ids renumbered in catalog order
    assert p.users["user_id"] == ["u", "v", "w", "y"]
    s = p.stats()
    assert s["interactions"] == 10 and s["rows"] == 13
    assert (s["dropped"]["k_core_items"], s["dropped"]["k_core_users"], s["dropped"]["k_core_pairs"]) == (1, 1, 3)


def test_rerun_replaces_atomically_and_failure_keeps_previous(tiny_config, tiny_data):
    cfg = load_config(tiny_config)
    first = prepare(cfg, progress=False)
    before = (first.path / "stats.json").read_text()
    (tiny_data / "events.csv").write_text("customer,sku,day,stars\nann,999,2024-01-01,1\n")
    with pytest.raises(Exception, match="not in the catalog"):
        prepare(cfg, progress=False)
    assert (first.path / "stats.json").read_text() == before  # the earlier result is intact
    leftovers = [p.name for p in first.path.parent.iterdir() if p.name != "tiny"]
    assert leftovers == []  # no temporary directories left behind
    assert PreparedData.load(first.path).stats()["interactions"] == 12


def test_refuses_to_overwrite_foreign_directory(tiny_config, tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "precious.txt").write_text("keep me")
    with pytest.raises(Exception, match="refusing to overwrite"):
        prepare(load_config(tiny_config, [f"data.prepared={target}"]), progress=False)
    assert (target / "precious.txt").read_text() == "keep me"


def test_load_rejects_non_prepared_dir(tmp_path):
    with pytest.raises(Exception, match="not a prepared data set"):
        PreparedData.load(tmp_path)


def test_catalog_free_data_orders_numeric_ids_numerically(tmp_path):
    from conftest import write_config

    root = tmp_path / "raw"
    root.mkdir()
    lines = ["userID\titemID\tx_label"] + [f"{u}\t{i}\t{0 if i < 8 else (1 if i == 8 else 2)}"
                                           for u in (10, 2) for i in (0, 2, 8, 10, 9, 1)]
    (root / "d.inter").write_text("\n".join(lines) + "\n")
    cfg = write_config(tmp_path / "c.yaml", {"cache_dir": "cache", "data": {
        "name": "m", "root": "raw", "interactions": {"path": "d.inter", "format": "mmrec"},
        "split": {"protocol": "label"}}})
    p = prepare(load_config(cfg), progress=False)
    assert p.items["item_id"] == ["0", "1", "2", "8", "9", "10"]
    assert p.users["user_id"] == ["2", "10"]
    assert p.stats()["splits"] == {"train": 6, "valid": 2, "test": 4}
