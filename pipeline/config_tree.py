"""Config files as plain trees, before validation: YAML reading with ``extends``, ``${VAR}``
expansion, dotted keys, command-line overrides, and paths resolved against the file that wrote
them (or the current directory, for overrides)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .errors import ConfigError


# Keys whose values are filesystem paths resolved against the config file (or cwd for overrides).
PATH_KEYS = ("cache_dir", "data.root", "data.prepared", "train.runs_dir", "store.view_dir")
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def parse_overrides(tokens: list[str]) -> list[tuple[str, str]]:
    """``["a.b=1", "--c.d", "2", "--e=3"]`` -> ``[("a.b", "1"), ("c.d", "2"), ("e", "3")]``."""
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.startswith("--"):
            tok = tok[2:]
            if "=" not in tok:
                if i + 1 >= len(tokens):
                    raise ConfigError(f"override --{tok} has no value")
                tok = f"{tok}={tokens[i + 1]}"
                i += 1
        if "=" not in tok:
            raise ConfigError(f"cannot read override {tokens[i]!r}: write key=value or --key value")
        key, value = tok.split("=", 1)
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*", key):
            raise ConfigError(f"override key {key!r} is not a dotted key like train.lr")
        out.append((key, value))
        i += 1
    return out


def expand_env(value: Any, key: str, source: str) -> Any:
    if isinstance(value, dict):
        return {k: expand_env(v, f"{key}.{k}" if key else str(k), source) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def repl(m: re.Match) -> str:
        name, default = m.group(1), m.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is None:
            raise ConfigError(f"{source}: {key} uses ${{{name}}} but the environment variable is not set")
        return default

    return _ENV.sub(repl, value)


def set_dotted(tree: dict, key: str, value: Any) -> None:
    node = tree
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"override {key}: {'.'.join(parts[: i + 1])} is a value, not a section")
        node = child
    node[parts[-1]] = value


def _get_dotted(tree: dict, key: str) -> Any:
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _section_values(tree: dict, section: str, key: str):
    """(entry, value) for every entry of a name -> mapping section (``encoders``, ``features``)
    whose ``key`` holds a string."""
    entries = tree.get(section)
    for entry in entries.values() if isinstance(entries, dict) else ():
        value = entry.get(key) if isinstance(entry, dict) else None
        if isinstance(value, str) and value:
            yield entry, value


def resolve_spec_paths(tree: dict, base: Path) -> None:
    """Encoder specs naming a relative local path (``hf-audio:./models/x``) resolve like other paths."""
    for entry, spec in _section_values(tree, "encoders", "spec"):
        prefix, _, rest = spec.partition(":")
        if rest.startswith(("./", "../")):
            entry["spec"] = f"{prefix}:{os.path.normpath(base / rest)}"


def resolve_feature_runs(tree: dict, base: Path) -> None:
    """``features.<name>.run`` (a run directory) resolves like other paths."""
    for entry, run in _section_values(tree, "features", "run"):
        if not Path(run).is_absolute():
            entry["run"] = os.path.normpath(base / run)


def format_validation(err: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing":
            msg = "required key is missing"
        elif "input" in e and not isinstance(e["input"], dict):
            msg = f"{msg} (got {e['input']!r})"
        lines.append(f"  {key or '<top level>'}: {msg}")
    return "\n".join(lines)


def _merge(base: dict, child: dict) -> dict:
    """``child`` over ``base``: sections merge key by key, any other value replaces."""
    out = dict(base)
    for key, value in child.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_tree(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """One YAML file as a dict with its paths resolved against its own folder; a top-level
    ``extends: other.yaml`` reads that file first and merges this one over it."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        where = f" (extended by {seen[-1]})" if seen else ""
        raise ConfigError(f"config file not found: {path}{where}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from None
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if tree is None:
        raise ConfigError(f"{path}: config file is empty")
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(tree).__name__}")
    tree = expand_env(tree, "", str(path))

    base = path.resolve().parent
    for key in PATH_KEYS:
        value = _get_dotted(tree, key)
        if isinstance(value, str) and value and not Path(value).is_absolute():
            set_dotted(tree, key, os.path.normpath(base / value))
    resolve_spec_paths(tree, base)
    resolve_feature_runs(tree, base)
    parent = tree.pop("extends", None)
    if parent is None:
        return tree
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: extends must be the path of another config file, got {parent!r}")
    parent_path = (base / parent).resolve()
    if parent_path in seen or parent_path == path.resolve():
        raise ConfigError(f"{path}: extends {parent} makes a cycle")
    return _merge(read_tree(parent_path, (*seen, path.resolve())), tree)
