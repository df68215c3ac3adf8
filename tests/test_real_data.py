"""The loaders on the real data sets in ../shared/data (skipped when it is absent)."""

import numpy as np
import pandas as pd
import pytest

from pipeline.config import load_config
from pipeline.data import prepare
from pipeline.data.mmrec import find_feature_files, read_feature_file
from pipeline.errors import DataError

from conftest import REPO, shared, write_config

CONFIGS = REPO / "recipes" / "configs"


def prepared(name, tmp_path, *overrides):
    shared(name)
    return prepare(load_config(CONFIGS / f"{name}.yaml", [f"cache_dir={tmp_path}", *overrides]), progress=False)


def test_hm_counts_and_temporal_split(tmp_path):
    p = prepared("hm", tmp_path)
    s = p.stats()
    assert (s["users"], s["items"], s["rows"], s["interactions"]) == (1145, 5499, 12698, 10834)
    assert s["repeats"] == 12698 - 10834
    assert sum(s["splits"].values()) == 10834
    inter = p.interactions.to_pandas()
    cut_valid, cut_test = pd.Timestamp("2020-08-01", tz="UTC").timestamp(), pd.Timestamp("2020-09-01", tz="UTC").timestamp()
    assert (inter.loc[inter.split == 0, "timestamp"] < cut_valid).all()
    assert (inter.loc[inter.split == 2, "timestamp"] >= cut_test).all()
    # articles first sold after the cut exist: cold-start items
    assert s["cold_items"]["test"] > 0
    # ids keep their leading zero, text and image fields are filled from the templates
    first = p.items[0]
    assert first["item_id"] == "0108775015"
    assert first["text"].startswith("Strap top. Vest top, Black.")
    assert first["image"].endswith("hm/images/010/0108775015.jpg")
    assert s["missing"] == {"text": 0, "image": 0}


def test_hm_random_split_by_override(tmp_path):
    p = prepared("hm", tmp_path, "data.split.protocol=random")
    s = p.stats()
    assert s["protocol"] == "random" and s["interactions"] == 10834
    inter = p.interactions.to_pandas()
    n = inter.groupby("user").size()
    # users with 10+ pairs: 20% held out, split evenly; 3..9: exactly one valid and one test
    per_user = inter.groupby("user")["split"].apply(lambda x: tuple(np.bincount(x, minlength=3)))
    for u, counts in per_user.items():
        k = n[u]
        expected = (k, 0, 0) if k < 3 else (k - 2, 1, 1) if k < 10 else (k - int(k * 0.2), int(k * 0.2) // 2, int(k * 0.2) - int(k * 0.2) // 2)
        assert counts == expected


def test_tiktok_mmrec_format(tmp_path):
    p = prepared("tiktok", tmp_path)
    s = p.stats()
    assert (s["users"], s["items"], s["rows"], s["interactions"]) == (9308, 6710, 68722, 68722)
    assert s["splits"] == {"train": 59541, "valid": 3051, "test": 6130}
    # MMRec ids are 0..n-1 and keep their positions: row i of the catalog is itemID i
    assert p.items["item_id"][:3] == ["0", "1", "2"] and p.items["item_id"][-1] == "6709"
    raw = pd.read_csv(shared("tiktok") / "tiktok.inter", sep="\t")
    inter = p.interactions.to_pandas()
    assert np.array_equal(np.sort(inter["user"] * 10_000 + inter["item"]), np.sort(raw.userID * 10_000 + raw.itemID))


def test_tiktok_feature_files():
    root = shared("tiktok")
    files = find_feature_files(root)
    assert set(files) == {"image", "audio"}
    arr = read_feature_file(files["image"], n_items=6710)
    assert arr.shape == (6710, 128) and isinstance(arr, np.memmap)
    with pytest.raises(DataError, match="has 6710 rows but the catalog has 10 items"):
        read_feature_file(files["audio"], n_items=10)


def test_mmrec_feature_file_rejects_pickles_and_bad_shapes(tmp_path):
    np.save(tmp_path / "obj_feat.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="not a plain numeric"):
        read_feature_file(tmp_path / "obj_feat.npy")
    np.save(tmp_path / "v_feat.npy", np.zeros(5, dtype=np.float32))
    with pytest.raises(DataError, match="expected a 2-D float array"):
        read_feature_file(tmp_path / "v_feat.npy")


def test_mmrec_inter_with_rating_and_timestamp(tmp_path):
    """MMRec's own files carry rating and timestamp columns; they are read when present."""
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "baby.inter").write_text(
        "userID\titemID\trating\ttimestamp\tx_label\n0\t1\t5.0\t1390694400\t0\n0\t2\t4.0\t1390694500\t1\n"
        "1\t1\t3.0\t1390694600\t2\n1\t0\t2.0\t1390694700\t0\n")
    cfg = write_config(tmp_path / "c.yaml", {"cache_dir": "cache", "data": {
        "name": "baby", "root": "raw", "interactions": {"path": "baby.inter", "format": "mmrec"},
        "split": {"protocol": "label"}}})
    p = prepare(load_config(cfg), progress=False)
    inter = p.interactions.to_pandas()
    assert {"rating", "timestamp"} <= set(inter.columns)
    assert inter.sort_values(["user", "item"])["rating"].tolist() == [5.0, 4.0, 2.0, 3.0]


def test_emotify_audio_catalog(tmp_path):
    """Emotify has no listener ids: its tracks still load as an audio catalog."""
    root = shared("emotify")
    from pipeline.config import ItemsConfig
    from pipeline.data.catalog import load_catalog, missing_media

    table = load_catalog(ItemsConfig(path="tracks.csv", id="track_id", audio={"clip": "audio_path"},
                                     text={"genre": "genre"}), root)
    assert len(table.frame) == 40 and table.fields["audio"] == ["clip"]
    assert missing_media(table) == {"genre": 0, "clip": 0}
    assert table.frame["clip"][0].endswith("emotify/clips/classical_001.mp3")
