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
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, ConfigDict, Field, ValidationError, field_serializer, \
    model_validator

from .atomic import write_text_atomic
from .config_tree import (  # noqa: F401  (parse_overrides re-exported for callers)
    PATH_KEYS, expand_env, format_validation, parse_overrides, read_tree, resolve_feature_runs, resolve_spec_paths,
    set_dotted,
)
from .errors import ConfigError
from .policy import Policy
from .section import Section, validate_section, validation_errors
from .data_config import (  # noqa: F401  (the data section; re-exported for callers)
    DataConfig, DemoConfig, FilterConfig, InteractionsConfig, ItemsConfig, SplitConfig, TableFormat,
)


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
    # the feature sets the model may read, through its default tower or on its own (FREEDOM's and
    # the graph models' item-item graphs); default: every one in `features`. `compare` sets it per arm
    features: list[str] | None = None

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

    def readable(self, configured: list[str]) -> list[str]:
        """The feature sets out of ``configured`` (the `features` section's) the model may read."""
        return list(configured) if self.features is None else [f for f in configured if f in self.features]

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
    run_name: str | None = None  # default: <data>-<model>-<hash of the result-affecting keys>-s<seed>
    tensorboard: bool = True
    progress: bool = True


def _registered_metric(name: str) -> str:
    from .eval.metrics import METRIC_FUNCTIONS  # lazy: the metrics are torch functions

    return METRIC_FUNCTIONS.check(name)


class EvalConfig(Section):
    ks: list[Annotated[int, Field(gt=0)]] = Field([10, 20, 50], min_length=1)
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
    same budget (the `train` section) and evaluation, over the same seeds. The arms (see
    ``pipeline/compare/arms.py``): ``id-only``; ``frozen-<feature>`` per feature set and
    ``frozen-fused`` over all of them; ``finetuned-<encoder>-<policy>`` per encoder and policy;
    ``ftfeat-<encoder>-<policy>``, the fine-tuned encoder's features fed back to the frozen
    model; plus any extra arms given as overrides. The arms reading cached features train
    ``model``, the fine-tuned ones ``finetune_model`` (it must take live encoders), each against
    a frozen arm of its own model."""

    name: str | None = None  # results go under <cache_dir>/compare/<name>; default data.name
    model: ModelName | None = "joint"  # the arms reading cached features; null: model.name
    # the arms fine-tuning encoders (a model taking live encoders); null: `model` for every arm
    finetune_model: ModelName | None = "two_tower"
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
    # overrides of the arms training one recommender, on top of `common`: a budget fit for that
    # model (joint's cheap full-softmax epochs against a fine-tuned two-tower's), e.g. {joint: {train.epochs: 100}}
    by_model: dict[ModelName, dict[str, Any]] = {}
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
        if self.model is not None and self.model.features is not None:
            unknown = [f for f in self.model.features if f not in self.features]
            if unknown:
                raise ValueError(f"model.features: {unknown} not in `features` ({sorted(self.features)})")
        if self.model is not None and self.model.item_tower is not None:
            for f in self.model.item_tower.features:
                if f not in self.features:
                    raise ValueError(f"model.item_tower.features: {f!r} is not in `features` ({sorted(self.features)})")
                if self.model.features is not None and f not in self.model.features:
                    raise ValueError(f"model.item_tower.features: {f!r} is not in model.features "
                                     f"({self.model.features})")
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


def load_config(path: str | Path | Config, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (and the file it ``extends``), apply ``key=value`` overrides, validate,
    resolve paths. A ``Config`` given instead of a file is the base the overrides apply to."""
    if isinstance(path, Config):
        tree, path = path.to_dict(), Path("<config>")
    else:
        path = Path(path)
        tree = read_tree(path)

    for key, raw in parse_overrides(list(overrides or [])):
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        value = expand_env(value, key, "command line")
        if key in PATH_KEYS and isinstance(value, str) and not Path(value).is_absolute():
            value = os.path.normpath(Path.cwd() / value)
        set_dotted(tree, key, value)
        if key.startswith("encoders."):
            resolve_spec_paths(tree, Path.cwd())
        if key.startswith("features"):
            resolve_feature_runs(tree, Path.cwd())

    source = str(path) + (" with overrides" if overrides else "")
    try:
        cfg = Config.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(format_validation(e, source)) from None
    # The default cache_dir is relative to where the command runs; make it explicit.
    if not cfg.cache_dir.is_absolute():
        cfg.cache_dir = Path.cwd() / cfg.cache_dir
    return cfg


def save_config(cfg: Config, path: Path) -> None:
    write_text_atomic(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
