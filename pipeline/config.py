"""Configuration: YAML files plus dotted command-line overrides, validated against one schema.

Rules a user can rely on:
- every key is checked: an unknown key or a value of the wrong type fails with an error that
  names the dotted key (``data.split.protocol``) and the file it came from;
- paths written in a YAML file are relative to that file, paths given as command-line overrides
  are relative to the current directory (so neither depends on where you run from by accident);
- strings may use ``${VAR}`` or ``${VAR:-default}`` to read environment variables;
- paths inside the data set (``data.items.path``, ``data.interactions.path``,
  ``data.items.media_root``) are relative to ``data.root``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, ConfigDict, Field, PrivateAttr, ValidationError, field_serializer, \
    field_validator, model_validator

from .errors import ConfigError
from .policy import Policy
from .section import Section, validate_section, validation_errors


class DemoConfig(Section):
    """Parameters of the built-in demo data generator (see ``pipeline.data.demo``)."""

    n_items: int = Field(1000, ge=10)
    n_users: int = Field(800, gt=0)
    seed: int = 0
    image_size: int = Field(64, ge=16)
    audio_seconds: float = Field(1.0, gt=0)
    sample_rate: int = Field(16000, ge=4000)
    mean_interactions: int = Field(20, gt=0)


TableFormat = Literal["auto", "csv", "tsv", "parquet", "jsonl", "hf"]


class ItemsConfig(Section):
    """The item catalog. Each field maps a field name to a column name or a template.

    A template is a Python format string over the row's columns, e.g.
    ``"{prod_name}. {detail_desc}"`` or ``"images/{article_id:.3}/{article_id}.jpg"``.
    Without ``path`` the catalog is the set of items seen in the interactions (no content).
    """

    path: str | None = None
    format: TableFormat = "auto"
    encoding: str = "utf-8"
    id: str = "item_id"
    duplicates: Literal["error", "first"] = "error"  # first: keep each id's first row, drop the later ones
    text: dict[str, str] = {}
    image: dict[str, str] = {}
    audio: dict[str, str] = {}
    media_root: str | None = None

    @model_validator(mode="after")
    def _fields_unique(self) -> "ItemsConfig":
        seen: dict[str, str] = {}
        for modality in ("text", "image", "audio"):
            for name in getattr(self, modality):
                if name == "item_id" or name in seen:
                    other = "item_id" if name == "item_id" else f"{seen[name]}.{name}"
                    raise ValueError(f"field name {name!r} of {modality} is already used by {other}")
                seen[name] = modality
        return self


class InteractionsConfig(Section):
    """The interaction table. ``format: mmrec`` reads an MMRec ``.inter`` file and maps its
    columns (userID, itemID and, when present, rating, timestamp, x_label) itself."""

    path: str
    format: Literal["auto", "csv", "tsv", "parquet", "jsonl", "hf", "mmrec"] = "auto"
    encoding: str = "utf-8"
    user: str | None = "user_id"  # null: no user ids, each row is its own user (one anonymous session)
    item: str = "item_id"
    timestamp: str | None = None
    timestamp_format: str | None = None  # strptime format; default: unix seconds or ISO 8601
    rating: str | None = None
    label: str | None = None  # MMRec's x_label column (0 train, 1 valid, 2 test)
    unknown_items: Literal["error", "drop"] = "error"


class FilterConfig(Section):
    min_rating: float | None = None
    min_user_interactions: int = Field(0, ge=0)
    min_item_interactions: int = Field(0, ge=0)


def _registered_split(name: str) -> str:
    from .data.splits import SPLITS  # lazy: the data package reads tables (pandas, datasets)

    return SPLITS.check(name)


class SplitConfig(Section):
    """``protocol`` names a registered split protocol (``pipeline/data/splits.py``); the other
    keys are the protocols' own parameters, written flat (``data.split.cold_items``) and
    validated by the protocol class that declares them. A key that only another protocol takes
    is validated and kept but not read, so ``data.split.protocol=...`` can switch a config
    written for another protocol; a key no protocol takes is an error."""

    model_config = ConfigDict(extra="allow")
    protocol: Annotated[str, AfterValidator(_registered_split)] = "random"
    seed: int = 999
    _chosen: Any = PrivateAttr(None)

    @model_validator(mode="after")
    def _protocol_keys(self) -> "SplitConfig":
        from .data.splits import SPLITS

        given = dict(self.__pydantic_extra__)
        chosen = SPLITS.get(self.protocol)
        self._chosen = validate_section(chosen, {k: v for k, v in given.items() if k in chosen.model_fields})
        keys = self._chosen.model_dump()
        others = [k for k in given if k not in keys]
        for owner in (SPLITS.get(n) for n in SPLITS):
            mine = {k: given[k] for k in others if k in owner.model_fields}
            if mine:
                checked = validate_section(owner, mine)
                keys.update({k: getattr(checked, k) for k in mine})
                others = [k for k in others if k not in mine]
        if others:
            raise validation_errors([{"type": "extra_forbidden", "loc": (k,), "input": given[k]} for k in others])
        self.__pydantic_extra__.clear()
        self.__pydantic_extra__.update(keys)
        return self

    @property
    def params(self):
        """The chosen protocol with its parameters: ``params.assign(pairs, rng)`` splits."""
        return self._chosen


class DataConfig(Section):
    name: str
    root: Path
    prepared: Path | None = None  # default: <cache_dir>/prepared/<name>
    demo: DemoConfig | None = None  # set: generate the demo data into `root` first
    items: ItemsConfig = ItemsConfig()
    interactions: InteractionsConfig
    filter: FilterConfig = FilterConfig()
    split: SplitConfig = Field(default_factory=SplitConfig)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", v):
            raise ValueError(f"name must be letters, digits, '_', '.', '-' (it names a folder), got {v!r}")
        return v


class EncoderConfig(Section):
    """One pretrained encoder applied to one or more catalog fields of its modality."""

    spec: str  # e.g. timm:resnet50, open_clip:ViT-B-32@openai, st:all-MiniLM-L6-v2, or a local path
    fields: list[str] = Field(min_length=1)
    options: dict[str, Any] = {}  # passed to encoders.create (pooling, layer, max_length, ...)
    random_init: bool = False  # explicit opt-in: no pretrained weights (recorded in the fingerprint)
    on_error: Literal["error", "skip"] = "error"  # bad input: stop naming the item, or mask it and report


class ExtractConfig(Section):
    batch_size: int = Field(32, gt=0)
    num_workers: int = Field(2, ge=0)  # DataLoader workers decoding and preprocessing items
    storage_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU
    offline: bool = False  # never contact a model hub (HF_HUB_OFFLINE=1 does the same)
    flush_every: int = Field(512, gt=0)  # rows per atomic store write: at most this much work lost to a kill


class FeatureSource(Section):
    """Where a named feature set comes from: an encoder of this config, or an MMRec .npy file."""

    encoder: str | None = None  # a key of `encoders` (with `run`: the run's live encoder)
    field: str | None = None  # which of the encoder's fields (default: its only one)
    mmrec: str | None = None  # an MMRec *_feat.npy file, relative to data.root (row i = item i)
    run: Path | None = None  # an end-to-end run directory: the catalog as its best checkpoint encodes it

    @model_validator(mode="after")
    def _one_source(self) -> "FeatureSource":
        if (self.encoder is None) == (self.mmrec is None):
            raise ValueError("give exactly one of encoder (with optional field, or with run) or mmrec")
        if self.mmrec is not None and (self.field is not None or self.run is not None):
            raise ValueError("field and run go with encoder, not with mmrec")
        return self


class LiveEncoderConfig(Section):
    """One encoder trained end to end inside the item tower (a key of `encoders`)."""

    field: str | None = None  # which of the encoder's fields (default: its only one)
    policy: Policy = Policy("full")  # frozen | full | top-k:N | cached-top-k:N | bias | lora[:rank]
    cached: bool = False  # top-k only: cache the hidden states below the trained blocks, train from them
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, more time

    @model_validator(mode="after")
    def _one_cache_flag(self) -> "LiveEncoderConfig":
        """``policy: cached-top-k:N`` and ``{policy: top-k:N, cached: true}`` are one setting: afterwards
        ``policy.cached`` and ``cached`` agree."""
        if self.cached and self.policy.kind != "top-k":
            raise ValueError(f"cached needs policy top-k:N (got {str(self.policy)!r})")
        if self.cached != self.policy.cached:
            self.policy, self.cached = self.policy.with_cache(), True
        return self

    @field_serializer("policy")
    def _policy_spelling(self, policy: Policy) -> str:
        return str(policy.uncached())  # `cached` carries the rest: saved configs read as before


class TowerConfig(Section):
    """The item tower: item ids, cached features, live encoders (end to end), or a mix."""

    ids: bool = True
    features: list[str] = []  # names from the `features` section
    live: dict[str, LiveEncoderConfig] = {}  # encoders fine-tuned with the recommendation loss
    fusion: Literal["concat", "sum", "gate"] = "concat"  # how several feature sets become one vector
    combine: Literal["concat", "sum"] = "concat"  # how the id part and the feature part meet
    fill: Literal["zeros", "mean", "learned"] = "mean"  # rows a feature set lacks (the store's mask)
    trainable_features: bool = False  # fine-tune the cached vectors themselves (MMRec does, silently)
    # ids mixed with content (features or live): items without training interactions get a zero
    # id vector (zero), or keep their untrained one (keep: MMRec); null: zero when mixed, else keep
    unseen_ids: Literal["zero", "keep"] | None = None
    # ids mixed with content: the share of items in a batch trained without their id vector
    # (DropoutNet); null: the models' default for mixed towers (MIXED_ID_DROPOUT), 0 for ids alone
    id_dropout: float | None = Field(None, ge=0, le=1)

    @model_validator(mode="after")
    def _something(self) -> "TowerConfig":
        if not self.ids and not self.features and not self.live:
            raise ValueError("an item tower needs ids, features or live encoders")
        return self


def _registered_model(name: str) -> str:
    from .models.registry import MODELS  # lazy: the model files import torch

    return MODELS.check(name)


ModelName = Annotated[str, AfterValidator(_registered_model)]


class ModelConfig(Section):
    """``name`` picks a registered model (``pipeline/models/registry.py``); each model's own
    settings live in the section of its name, validated by that model's class, so one config can
    hold settings for several models and ``model.name=...`` switches between them."""

    model_config = ConfigDict(extra="allow")  # the sections named after registered models
    name: ModelName
    dim: int = Field(64, gt=0)
    item_tower: TowerConfig | None = None  # default: the model's own (ids; VBPR: ids + all features)

    @model_validator(mode="after")
    def _model_sections(self) -> "ModelConfig":
        from .models.registry import MODELS

        sections = self.__pydantic_extra__
        unknown = [k for k in sections if k not in MODELS]
        if unknown:
            raise validation_errors([{"type": "extra_forbidden", "loc": (k,), "input": sections[k]} for k in unknown])
        for key, value in sections.items():
            sections[key] = validate_section(MODELS.get(key), value, key)
        if self.name not in sections:
            sections[self.name] = MODELS.get(self.name)()
        self.params.check(self.dim)
        return self

    @property
    def params(self):
        """The chosen model's own settings (``model.<name>``), an instance of its registered class."""
        return self.__pydantic_extra__[self.name]

    def tower(self, features: list[str]) -> TowerConfig:
        """The item tower: ``item_tower`` as given, else the model's default over ``features``
        (the names of the feature sets available)."""
        default = self.params.default_tower(features)
        given = self.item_tower
        if given is None:
            return TowerConfig(**default)
        # only how ids behave (e.g. MMRec's `unseen_ids: keep, id_dropout: 0`): the model's own
        # tower with those settings; naming ids, features or live describes the whole tower
        if not given.model_fields_set & {"ids", "features", "live"}:
            return TowerConfig(**{**default, **given.model_dump(include=given.model_fields_set)})
        return given


class TrainConfig(Section):
    epochs: int = Field(1000, gt=0)
    batch_size: int = Field(2048, gt=0)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    optimizer: Literal["adam", "adamw"] = "adam"
    seed: int = 999
    seeds: list[int] | None = None  # several seeds: train each, report mean and std
    valid_metric: str = "recall@20"
    patience: int = Field(20, ge=0)  # epochs without improvement before stopping
    eval_every: int = Field(1, gt=0)
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    grad_accum: int = Field(1, gt=0)
    encoder_lr: float | None = Field(None, gt=0)  # live encoders' learning rate (default: lr)
    encoder_weight_decay: float | None = Field(None, ge=0)  # live encoders' weight decay (default: weight_decay)
    warmup_steps: int = Field(0, ge=0)  # linear learning-rate warm-up over this many optimizer steps
    encode_batch_size: int = Field(256, gt=0)  # live encoders: items per forward when encoding the catalog
    keep_freed_memory: bool = True  # on CPU, freed memory stays in the process between steps (pipeline/train/cpu_memory.py)
    runs_dir: Path | None = None  # default: <cache_dir>/runs
    run_name: str | None = None  # default: <data>-<model>-s<seed>
    tensorboard: bool = True
    progress: bool = True


def _registered_metric(name: str) -> str:
    from .eval.metrics import METRIC_FUNCTIONS  # lazy: the metrics are torch functions

    return METRIC_FUNCTIONS.check(name)


class EvalConfig(Section):
    ks: list[int] = [10, 20, 50]
    metrics: list[Annotated[str, AfterValidator(_registered_metric)]] = ["recall", "ndcg", "precision", "map",
                                                                          "hit", "mrr"]
    batch_users: int = Field(4096, gt=0)
    mask_valid_in_test: bool = True  # False reproduces MMRec (valid items stay rankable at test time)
    skip_cold_users: bool = True  # users with no training pairs are not evaluated (as in MMRec)
    cold_slice: bool = True  # also report metrics on items never seen in training
    long_tail_slice: bool = True  # also report test metrics on the long tail (tail/...): see long_tail_share
    # the least popular trained items holding at most this share of the training interactions
    long_tail_share: float = Field(0.2, gt=0, lt=1)


class CompareConfig(Section):
    """``modalrec compare``: one grid of arms on one data set and split, every arm trained with the
    same recommender, loss, budget (the `train` section) and evaluation, over the same seeds.
    The arms (see ``pipeline/compare/arms.py``): ``id-only``; ``frozen-<feature>`` per feature set
    and ``frozen-fused`` over all of them; ``finetuned-<encoder>-<policy>`` per encoder and
    policy; ``ftfeat-<encoder>-<policy>``, the fine-tuned encoder's features fed back to the
    frozen model; plus any extra arms given as overrides."""

    name: str | None = None  # results go under <cache_dir>/compare/<name>; default data.name
    model: ModelName | None = "two_tower"  # null: model.name
    seeds: list[int] = Field([1, 2, 3], min_length=1)  # every arm trains once per seed
    metric: str | None = None  # ranks the arms and is tested for significance; default train.valid_metric
    features: list[str] | None = None  # feature sets compared frozen; default all of `features`
    finetune: list[str] | None = None  # encoders fine-tuned; default those the compared features read
    # fine-tuning policies compared (frozen, full, bias, top-k:N, cached-top-k:N, lora, lora:R)
    policies: list[Policy] = [Policy.parse(p) for p in ("full", "top-k:2", "cached-top-k:2", "lora:8")]
    id_only: bool = True  # the ID-only arm
    ablation: bool = True  # a frozen arm per feature set (image only, text only, ...) besides the fused one
    finetuned_features: bool | list[Policy] = True  # ftfeat arms: true (every policy), false, or some policies
    baseline: str | None = None  # arm the others are tested against; default frozen-fused
    common: dict[str, Any] = {}  # overrides every arm shares, e.g. the budget: {train.epochs: 30}
    arms: dict[str, dict[str, Any]] = {}  # extra arms: name -> {dotted.key: value}
    skip: list[str] = []  # arm names left out
    html: bool = False  # also write report.html


class StoreConfig(Section):
    # views of a store this user cannot write to; must be this user's own (created 0700).
    # Default $MODALREC_VIEW_DIR; with neither, such reads gather rows into memory.
    view_dir: Path | None = None


class Config(Section):
    cache_dir: Path = Path("cache")
    data: DataConfig
    encoders: dict[str, EncoderConfig] = {}
    extract: ExtractConfig = ExtractConfig()
    features: dict[str, FeatureSource] = {}
    model: ModelConfig | None = None
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    compare: CompareConfig = CompareConfig()
    store: StoreConfig = StoreConfig()

    @model_validator(mode="after")
    def _references(self) -> "Config":
        for name, src in self.features.items():
            if src.encoder is not None and src.run is None:
                self._encoder_field(f"features.{name}.encoder", f"features.{name}.field", src.encoder, src.field)
        if self.model is not None and self.model.item_tower is not None:
            for f in self.model.item_tower.features:
                if f not in self.features:
                    raise ValueError(f"model.item_tower.features: {f!r} is not in `features` ({sorted(self.features)})")
            for name, live in self.model.item_tower.live.items():
                where = f"model.item_tower.live.{name}"
                self._encoder_field(where, f"{where}.field", name, live.field)
        metric = self.train.valid_metric
        name, _, k = metric.partition("@")
        if name not in self.eval.metrics or not k.isdigit() or int(k) not in self.eval.ks:
            raise ValueError(f"train.valid_metric {metric!r} must be one of eval.metrics at one of eval.ks")
        return self

    def _encoder_field(self, encoder_key: str, field_key: str, encoder: str, field: str | None) -> None:
        """``encoder`` is in `encoders` and ``field`` (None: its only one) is among its fields."""
        enc = self.encoders.get(encoder)
        if enc is None:
            raise ValueError(f"{encoder_key}: no encoder {encoder!r} in `encoders` ({sorted(self.encoders)})")
        if field is None and len(enc.fields) != 1:
            raise ValueError(f"{field_key}: encoder {encoder!r} has fields {enc.fields}; pick one")
        if field is not None and field not in enc.fields:
            raise ValueError(f"{field_key}: {field!r} is not among encoders.{encoder}.fields")

    @property
    def runs_dir(self) -> Path:
        return self.train.runs_dir or self.cache_dir / "runs"

    @property
    def features_dir(self) -> Path:
        return self.cache_dir / "features"

    @property
    def prepared_dir(self) -> Path:
        return self.data.prepared or self.cache_dir / "prepared" / self.data.name

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# Keys whose values are filesystem paths resolved against the config file (or cwd for overrides).
_PATH_KEYS = ("cache_dir", "data.root", "data.prepared", "train.runs_dir", "store.view_dir")
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


def _expand_env(value: Any, key: str, source: str) -> Any:
    if isinstance(value, dict):
        return {k: _expand_env(v, f"{key}.{k}" if key else str(k), source) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, f"{key}[{i}]", source) for i, v in enumerate(value)]
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


def _set_dotted(tree: dict, key: str, value: Any) -> None:
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


def _resolve_spec_paths(tree: dict, base: Path) -> None:
    """Encoder specs naming a relative local path (``hf-audio:./models/x``) resolve like other paths."""
    for entry, spec in _section_values(tree, "encoders", "spec"):
        prefix, _, rest = spec.partition(":")
        if rest.startswith(("./", "../")):
            entry["spec"] = f"{prefix}:{os.path.normpath(base / rest)}"


def _resolve_feature_runs(tree: dict, base: Path) -> None:
    """``features.<name>.run`` (a run directory) resolves like other paths."""
    for entry, run in _section_values(tree, "features", "run"):
        if not Path(run).is_absolute():
            entry["run"] = os.path.normpath(base / run)


def _format_validation(err: ValidationError, source: str) -> str:
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


def _read_tree(path: Path, seen: tuple[Path, ...] = ()) -> dict:
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
    tree = _expand_env(tree, "", str(path))

    base = path.resolve().parent
    for key in _PATH_KEYS:
        value = _get_dotted(tree, key)
        if isinstance(value, str) and value and not Path(value).is_absolute():
            _set_dotted(tree, key, os.path.normpath(base / value))
    _resolve_spec_paths(tree, base)
    _resolve_feature_runs(tree, base)
    parent = tree.pop("extends", None)
    if parent is None:
        return tree
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: extends must be the path of another config file, got {parent!r}")
    parent_path = (base / parent).resolve()
    if parent_path in seen or parent_path == path.resolve():
        raise ConfigError(f"{path}: extends {parent} makes a cycle")
    return _merge(_read_tree(parent_path, (*seen, path.resolve())), tree)


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (and the file it ``extends``), apply ``key=value`` overrides, validate,
    resolve paths."""
    path = Path(path)
    tree = _read_tree(path)

    for key, raw in parse_overrides(list(overrides or [])):
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        value = _expand_env(value, key, "command line")
        if key in _PATH_KEYS and isinstance(value, str) and not Path(value).is_absolute():
            value = os.path.normpath(Path.cwd() / value)
        _set_dotted(tree, key, value)
        if key.startswith("encoders."):
            _resolve_spec_paths(tree, Path.cwd())
        if key.startswith("features"):
            _resolve_feature_runs(tree, Path.cwd())

    source = str(path) + (" with overrides" if overrides else "")
    try:
        cfg = Config.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_validation(e, source)) from None
    # The default cache_dir is relative to where the command runs; make it explicit.
    if not cfg.cache_dir.is_absolute():
        cfg.cache_dir = Path.cwd() / cfg.cache_dir
    return cfg


def save_config(cfg: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
