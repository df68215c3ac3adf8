import os
from pathlib import Path

import pytest

from pipeline.config import load_config, parse_overrides
from pipeline.errors import ConfigError

from conftest import write_config

BASE = {"data": {"name": "x", "root": "raw", "interactions": {"path": "i.csv"}}}


@pytest.fixture
def cfg_file(tmp_path):
    return write_config(tmp_path / "c.yaml", BASE)


def test_paths_relative_to_config_file_not_cwd(cfg_file, tmp_path, monkeypatch):
    monkeypatch.chdir("/")
    cfg = load_config(cfg_file)
    assert cfg.data.root == tmp_path / "raw"
    assert cfg.prepared_dir == Path("/cache/prepared/x")  # default cache_dir is the cwd's cache/


def test_override_paths_relative_to_cwd(cfg_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(cfg_file, ["data.prepared=out/p"])
    assert cfg.prepared_dir == tmp_path / "out" / "p"


def test_both_override_syntaxes_and_types(cfg_file):
    cfg = load_config(cfg_file, ["data.split.seed=7", "--data.split.ratios", "[0.6, 0.2, 0.2]",
                                 "--data.filter.min_rating=3.5", "data.split.valid_start=2020-01-01",
                                 "data.split.test_start=2020-02-01"])
    assert cfg.data.split.seed == 7
    assert cfg.data.split.ratios == (0.6, 0.2, 0.2)
    assert cfg.data.filter.min_rating == 3.5
    assert str(cfg.data.split.test_start) == "2020-02-01"


def test_scientific_notation_override_is_a_float(tmp_path):
    cfg = load_config(write_config(tmp_path / "c.yaml", BASE), ["data.filter.min_rating=1e-3"])
    assert cfg.data.filter.min_rating == pytest.approx(1e-3)


@pytest.mark.parametrize("override, key, words", [
    (["data.split.protocl=random"], "data.split.protocl", "unknown key"),
    (["trian.lr=1"], "trian", "unknown key"),
    (["data.split.seed=abc"], "data.split.seed", "integer"),
    (["data.split.protocol=bogus"], "data.split.protocol", "'random'"),
    (["data.split.ratios=[0.5,0.5,0.5]"], "data.split.ratios", "summing to 1"),
    (["data.filter.min_user_interactions=-1"], "data.filter.min_user_interactions", "greater than or equal"),
    (["data.name=a/b"], "data.name", "folder"),
])
def test_bad_keys_and_types_name_the_key(cfg_file, override, key, words):
    with pytest.raises(ConfigError) as e:
        load_config(cfg_file, override)
    msg = str(e.value)
    assert key in msg and words in msg and str(cfg_file) in msg


def test_missing_required_key_named(tmp_path):
    path = write_config(tmp_path / "c.yaml", {"data": {"name": "x", "root": "r"}})
    with pytest.raises(ConfigError, match=r"data\.interactions: required key is missing"):
        load_config(path)


def test_only_one_date_given(cfg_file):
    with pytest.raises(ConfigError, match="data.split.*both valid_start and test_start"):
        load_config(cfg_file, ["data.split.valid_start=2020-01-01"])


def test_env_vars_with_default(tmp_path, monkeypatch):
    tree = {"data": {**BASE["data"], "root": "${MY_DATA:-fallback}/hm"}}
    path = write_config(tmp_path / "c.yaml", tree)
    monkeypatch.delenv("MY_DATA", raising=False)
    assert load_config(path).data.root == tmp_path / "fallback" / "hm"
    monkeypatch.setenv("MY_DATA", "/srv/data")
    assert load_config(path).data.root == Path("/srv/data/hm")


def test_env_var_without_default_must_exist(tmp_path, monkeypatch):
    monkeypatch.delenv("NOPE_NOT_SET", raising=False)
    path = write_config(tmp_path / "c.yaml", {"data": {**BASE["data"], "root": "${NOPE_NOT_SET}"}})
    with pytest.raises(ConfigError, match=r"data\.root uses \$\{NOPE_NOT_SET\}"):
        load_config(path)


@pytest.mark.parametrize("text, words", [("", "empty"), ("- a\n- b\n", "mapping"), ("a: [1,\n", "YAML")])
def test_unreadable_config_files(tmp_path, text, words):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=words):
        load_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("tokens, words", [(["--a.b"], "has no value"), (["ab"], "key=value"), (["a..b=1"], "dotted")])
def test_malformed_overrides(tokens, words):
    with pytest.raises(ConfigError, match=words):
        parse_overrides(tokens)


def test_duplicate_field_names_rejected(tmp_path):
    tree = {"data": {**BASE["data"], "items": {"path": "x.csv", "text": {"a": "t"}, "image": {"a": "p"}}}}
    with pytest.raises(ConfigError, match="data.items: .*field name 'a'"):
        load_config(write_config(tmp_path / "c.yaml", tree))


def test_shipped_configs_load():
    repo = Path(__file__).resolve().parents[1]
    for name in ("demo", "hm", "tiktok"):
        cfg = load_config(repo / "recipes" / "configs" / f"{name}.yaml")
        assert cfg.data.name == name
        assert cfg.cache_dir == repo / "cache"
    assert os.path.normpath(load_config(repo / "recipes/configs/hm.yaml").data.root).endswith("/hm")
