"""Bad input: a clear error naming the file / column / row / key, and nothing half-written."""

import pytest

from pipeline.config import load_config
from pipeline.data import prepare
from pipeline.errors import DataError


def run(cfg_path, *overrides):
    return prepare(load_config(cfg_path, list(overrides)), progress=False)


def no_output(tmp_path):
    prepared = tmp_path / "cache" / "prepared"
    return not prepared.exists() or not any(prepared.iterdir())


@pytest.mark.parametrize("override, words", [
    ("data.items.id=article", r"items\.csv: missing column 'article' \(config key data\.items\.id\)"),
    ("data.interactions.user=client", r"events\.csv: missing column 'client' \(config key data\.interactions\.user\)"),
    ("data.items.text.text={name} {colour}", r"missing column 'colour' \(config key data\.items\.text\.text\)"),
    ("data.interactions.path=nope.csv", r"data\.interactions\.path: file not found: .*nope\.csv"),
])
def test_missing_columns_and_files(tiny_config, tmp_path, override, words):
    with pytest.raises(DataError, match=words):
        run(tiny_config, override)
    assert no_output(tmp_path)


def test_duplicate_item_ids(tiny_config, tiny_data, tmp_path):
    with (tiny_data / "items.csv").open("a") as f:
        f.write("008,Blue scarf again,,\n")
    with pytest.raises(DataError, match=r"items\.csv: duplicate item id '008' in column 'sku' at rows 2 and 5"):
        run(tiny_config)
    assert no_output(tmp_path)


def test_unknown_items_error_or_drop(tiny_config, tiny_data):
    with (tiny_data / "events.csv").open("a") as f:
        f.write("dan,404,2024-03-01,5\nann,405,2024-03-02,5\n")
    with pytest.raises(DataError, match=r"2 interaction rows name items not in the catalog, e\.g\. '404' \(row 14\)"):
        run(tiny_config)
    p = run(tiny_config, "data.interactions.unknown_items=drop")
    s = p.stats()
    assert s["dropped"]["unknown_items"] == 2 and s["rows"] == 15 and s["users"] == 3


@pytest.mark.parametrize("name, content, words", [
    ("events.csv", "", "file is empty"),
    ("events.csv", "customer,sku,day,stars\n", "no rows"),
    ("items.csv", "", "file is empty"),
])
def test_empty_files(tiny_config, tiny_data, tmp_path, name, content, words):
    (tiny_data / name).write_text(content)
    with pytest.raises(DataError, match=f"{name}.*{words}|{words}.*{name}"):
        run(tiny_config)
    assert no_output(tmp_path)


def test_unreadable_encoding_names_byte_and_key(tiny_config, tiny_data):
    (tiny_data / "items.csv").write_bytes("sku,name,desc,img\n007,Caf\u00e9,x,\n".encode("utf-16"))
    with pytest.raises(DataError, match=r"items\.csv: not valid utf-8 text at byte \d+.*data\.items\.encoding"):
        run(tiny_config)


def test_other_encoding_when_configured(tiny_config, tiny_data):
    (tiny_data / "items.csv").write_bytes(
        "sku,name,desc,img\n007,Caf\u00e9,x,\n008,b,,\n009,c,,\n010,d,,\n".encode("latin-1"))
    p = run(tiny_config, "data.items.encoding=latin-1")
    assert p.items["text"][0] == "Caf\u00e9. x"


@pytest.mark.parametrize("line, words", [
    ("eve,007,not-a-date,3", r"events\.csv: row 13: timestamp column 'day' has 'not-a-date', not a time"),
    ("eve,007,2024-03-01,five", r"events\.csv: row 13: rating column 'stars' has 'five', not a number"),
    (",007,2024-03-01,5", r"events\.csv: row 13: empty value in column 'customer'"),
])
def test_bad_cells_name_the_row(tiny_config, tiny_data, line, words):
    lines = (tiny_data / "events.csv").read_text().splitlines()
    lines.insert(13, line)  # becomes data row 13
    (tiny_data / "events.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=words):
        run(tiny_config)


def test_empty_split_leaves_nothing_behind(tiny_config, tmp_path):
    with pytest.raises(DataError, match=r"leaves the valid and test set empty"):
        run(tiny_config, "data.split.protocol=temporal_global", "data.split.valid_start=2030-01-01",
            "data.split.test_start=2030-02-01")
    assert no_output(tmp_path)


def test_timestamp_format_option(tiny_config, tiny_data):
    text = (tiny_data / "events.csv").read_text()
    import re
    text = re.sub(r"(\d{4})-(\d{2})-(\d{2})", r"\3/\2/\1", text)
    (tiny_data / "events.csv").write_text(text)
    with pytest.raises(DataError, match="timestamp_format"):
        run(tiny_config)
    p = run(tiny_config, "data.interactions.timestamp_format=%d/%m/%Y")
    assert p.stats()["interactions"] == 12


def test_min_rating_needs_a_rating_column(tiny_config):
    with pytest.raises(DataError, match="min_rating is set but data.interactions.rating names no column"):
        run(tiny_config, "data.interactions.rating=null", "data.filter.min_rating=3")


def test_conflicting_labels_for_a_repeated_pair(tmp_path):
    from conftest import write_config

    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "d.inter").write_text("userID\titemID\tx_label\n0\t0\t0\n0\t1\t1\n0\t0\t2\n0\t2\t2\n")
    cfg = write_config(tmp_path / "c.yaml", {"cache_dir": "cache", "data": {
        "name": "m", "root": "raw", "interactions": {"path": "d.inter", "format": "mmrec"},
        "split": {"protocol": "label"}}})
    with pytest.raises(DataError, match=r"row 1: the pair \(user '0', item '0'\) repeats with different labels"):
        prepare(load_config(cfg), progress=False)
