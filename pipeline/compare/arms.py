"""The arms of a comparison: each one is a list of config overrides applied to the compare config.

Every arm trains with the same `train` and `eval` sections; arms differ in the content the model
reads (and, for ``ftfeat`` arms, in one feature set) and, between frozen and fine-tuned arms, in
the recommender. The arms reading cached features train ``compare.model`` (default ``joint``,
the demo's content model); the arms fine-tuning an encoder end to end train
``compare.finetune_model`` (default ``two_tower``): ``joint`` and the graph models propagate over
the whole catalog each step, so they take no live encoders. When the two differ, each fine-tuned
feature gets one more frozen arm trained with the fine-tuned arms' model, ``frozen-<feature>-<model>``,
and the fine-tuned arms are tested against it: fine-tuning is judged against the same
recommender reading the same encoder frozen (like for like), not against another model.
``compare.finetune_model: null`` trains one model for everything, as before.

A model whose content enters through its item tower (two-tower, VBPR, ...) gets the arm's tower;
a model that reads feature sets on its own (joint, FREEDOM and the graph models of the zoo) keeps
its own tower and gets the arm's feature sets as ``model.features``.

==================================  ========================================================
``id-only``                         item ids, no content (``compare.model``)
``frozen-<feature>``                one cached feature set, the per-modality ablation (``compare.model``)
``frozen-fused``                    every compared feature set, fused (``compare.model``)
``frozen-<feature>-<model>``        the fine-tuned arms' counterpart: one cached feature set,
                                    ``compare.finetune_model``, only when it differs from ``compare.model``
``finetuned-<feature>-<p>``         the feature's encoder trained end to end with policy ``p``
                                    (``compare.finetune_model``)
``ftfeat-<feature>-<p>``            the features that fine-tuned encoder writes, fed back to the
                                    frozen model (``compare.model``, same seed as the fine-tuning
                                    run); tested against ``frozen-<feature>``
extra (``compare.arms``)            any overrides, on top of the common ones (``compare.model``
                                    unless they name ``model.name``)
==================================  ========================================================

Every arm gets ``compare.common``, then ``compare.by_model.<its model>``: a budget per recommender,
so the fine-tuned arms and their counterpart always share theirs.

Policies (``compare.policies``): ``frozen``, ``full``, ``bias``, ``top-k:N``, ``lora`` /
``lora:R``, and ``cached-top-k:N`` (top-k with the hidden states below the trained blocks cached).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Config, TowerConfig
from ..errors import ConfigError
from ..models import MODELS
from ..policy import Policy

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass
class Arm:
    name: str
    kind: str  # id | frozen | fused | counterpart | finetuned | ftfeat | custom
    overrides: list[str]  # this arm's own overrides (the common ones and the seed come on top)
    model: str | None = None  # the recommender it trains (a custom arm's overrides may name another)
    features: list[str] = field(default_factory=list)  # cached feature sets it reads
    feature: str | None = None  # finetuned / ftfeat: the feature set whose encoder is fine-tuned
    encoder: str | None = None
    policy: str | None = None  # the compare.policies entry, spelled canonically
    counterpart: str | None = None  # the frozen arm a fine-tuned arm is also tested against
    depends_on: str | None = None  # ftfeat: the finetuned arm whose run (same seed) writes its features
    ft_feature: str | None = None  # ftfeat: the name of the feature set it adds to `features`
    field: str | None = None  # ftfeat: the encoder's field, when the feature set names one

    def seed_overrides(self, seed: int, run_dir_of) -> list[str]:
        """Overrides that depend on the seed: an ftfeat arm reads its own seed's fine-tuned run."""
        out = []
        if self.kind == "ftfeat":
            source = {"encoder": self.encoder, "run": str(run_dir_of(self.depends_on, seed))}
            if self.field is not None:
                source["field"] = self.field
            out.append(f"features.{self.ft_feature}={json.dumps(source)}")
        return [*out, f"train.seed={seed}"]

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v not in (None, [])}


def policy_slug(policy: Policy | str) -> str:
    """``top-k:2`` -> ``top2``, ``cached-top-k:2`` -> ``cached-top2``, ``lora:8`` -> ``lora8``."""
    policy = Policy.parse(policy)
    if policy.kind == "top-k":
        return f"{'cached-' if policy.cached else ''}top{policy.k}"
    return f"lora{policy.rank}" if policy.kind == "lora" and policy.rank is not None else policy.kind


def _live(policy: Policy, field: str | None) -> dict:
    spec: dict = {"policy": str(policy.uncached())}
    if policy.cached:
        spec["cached"] = True
    if field is not None:
        spec["field"] = field
    return spec


def _content(reads_itself: bool, ids: bool, features: list[str], live: dict | None = None) -> list[str]:
    """The overrides that give an arm its content: ``features`` through the model's own reading
    (``model.features``, its tower as configured) or through the item tower (ids or not, live)."""
    if reads_itself:
        return [f"model.features={json.dumps(features)}"]
    return [f"model.features={json.dumps(features)}", *_tower(ids, features, live)]


def _tower(ids: bool, features: list[str], live: dict | None = None) -> list[str]:
    out = [f"model.item_tower.ids={json.dumps(ids)}", f"model.item_tower.features={json.dumps(features)}"]
    if "live" in TowerConfig.model_fields:  # a user's own live encoders must not leak into other arms
        out.append(f"model.item_tower.live={json.dumps(live or {})}")
    elif live:
        out.append(f"model.item_tower.live={json.dumps(live)}")  # fails validation: reported as a failed arm
    return out


def as_overrides(tree: dict, prefix: str = "") -> list[str]:
    """``{"train.epochs": 5, "model": {"dim": 32}}`` -> ``["train.epochs=5", "model.dim=32"]``: a
    mapping in YAML (dotted keys) and one built by command-line overrides (``compare.common.train.epochs=5``
    nests it) say the same thing. Lists and empty mappings are values."""
    out: list[str] = []
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out += as_overrides(value, name + ".")
        else:
            out.append(f"{name}={json.dumps(value)}")
    return out


def compared_models(cfg: Config) -> tuple[str, str]:
    """The recommender of the arms reading cached features (``compare.model``; null: ``model.name``)
    and of the arms fine-tuning encoders (``compare.finetune_model``; null: the same one). The
    fine-tuned arms' model must take live encoders; with it null, a frozen model that takes none
    leaves the grid without fine-tuned arms (``build_arms``)."""
    c = cfg.compare
    if cfg.model is None and c.model is None:
        raise ConfigError("compare.model is null and the config has no `model` section: name the recommender")
    frozen = c.model or cfg.model.name
    if c.finetune_model is not None and MODELS.get(c.finetune_model).no_live_encoders:
        takers = [n for n in MODELS if not MODELS.get(n).no_live_encoders]
        raise ConfigError(f"compare.finetune_model: model {c.finetune_model} "
                          f"{MODELS.get(c.finetune_model).no_live_encoders}; the fine-tuned arms train their "
                          f"encoders through the model's item tower: pick one of {', '.join(takers)}")
    return frozen, c.finetune_model or frozen


def model_overrides(cfg: Config, model: str) -> list[str]:
    """The recommender ``model`` (an arm's), then ``compare.common`` and ``compare.by_model.<model>``."""
    by_model = cfg.compare.by_model.get(model, {})
    return [f"model.name={model}", *as_overrides(cfg.compare.common), *as_overrides(by_model)]


def common_overrides(cfg: Config, runs_dir: Path, arm: str, model: str) -> list[str]:
    """What the arms of one recommender share (``model_overrides``), one seed per run, and where
    its runs go."""
    out = model_overrides(cfg, model)
    return [*out, "train.seeds=null", f"train.runs_dir={json.dumps(str(runs_dir))}", f"train.run_name={arm}"]


def compared_features(cfg: Config) -> list[str]:
    c = cfg.compare
    names = list(cfg.features) if c.features is None else list(c.features)
    unknown = [n for n in names if n not in cfg.features]
    if unknown:
        raise ConfigError(f"compare.features: {unknown} not in `features` ({sorted(cfg.features)})")
    return names


def _reads_features_itself(model: str) -> bool:
    """Content read by the model itself, not through its tower: joint, FREEDOM's kNN graph, the
    zoo's graph models."""
    return bool(MODELS.get(model)().extra_features(["a", "b"]))


def build_arms(cfg: Config) -> list[Arm]:
    """The grid the `compare` section describes, in the order it runs (a fine-tuned arm before
    the arm that reads its features)."""
    c = cfg.compare
    frozen_model, tuned_model = compared_models(cfg)
    features = compared_features(cfg)
    by_encoder: dict[str, list[str]] = {}
    for n in features:
        if cfg.features[n].encoder is not None and getattr(cfg.features[n], "run", None) is None:
            by_encoder.setdefault(cfg.features[n].encoder, []).append(n)
    reads_itself, tuned_reads_itself = _reads_features_itself(frozen_model), _reads_features_itself(tuned_model)
    tuned_spec = MODELS.get(tuned_model)
    if tuned_spec.no_live_encoders and c.finetune:
        raise ConfigError(f"compare.finetune: model {tuned_model} {tuned_spec.no_live_encoders}; compare its frozen "
                          "arms with compare.finetune: [] or set compare.finetune_model to a model that takes live "
                          "encoders (two_tower)")
    finetune = ([] if tuned_spec.no_live_encoders else list(by_encoder)) if c.finetune is None else list(c.finetune)
    for e in finetune:
        if e not in cfg.encoders:
            raise ConfigError(f"compare.finetune: no encoder {e!r} in `encoders` ({sorted(cfg.encoders)})")
        if e not in by_encoder:
            raise ConfigError(f"compare.finetune: encoder {e!r} is read by none of the compared features "
                              f"(compare.features: {features}); add a `features` entry for it")
    ft_feat = c.finetuned_features
    if isinstance(ft_feat, list):
        unknown = [str(p) for p in ft_feat if p not in c.policies]
        if unknown:
            raise ConfigError(f"compare.finetuned_features: {unknown} not among compare.policies "
                              f"{[str(p) for p in c.policies]}")
    elif ft_feat:
        ft_feat = list(c.policies)
    else:
        ft_feat = []

    arms: list[Arm] = []
    if c.id_only:
        arms.append(Arm("id-only", "id", _content(reads_itself, True, []), frozen_model))
    frozen_alone = len(features) == 1 or c.ablation
    if frozen_alone:
        arms += [Arm(f"frozen-{n}", "frozen", _content(reads_itself, False, [n]), frozen_model, features=[n])
                 for n in features]
    if len(features) > 1:
        arms.append(Arm("frozen-fused", "fused", _content(reads_itself, False, features), frozen_model,
                        features=list(features)))
    for e in finetune:
        for n in by_encoder[e]:
            src = cfg.features[n]
            # a fine-tuned arm is tested against the frozen encoder under its own recommender
            frozen_n = f"frozen-{n}" if frozen_alone else None
            counterpart = frozen_n
            if tuned_model != frozen_model and c.policies:
                counterpart = f"frozen-{n}-{tuned_model}"
                arms.append(Arm(counterpart, "counterpart", _content(tuned_reads_itself, False, [n]), tuned_model,
                                features=[n], feature=n))
            for p in c.policies:
                name = f"finetuned-{n}-{policy_slug(p)}"
                arms.append(Arm(name, "finetuned", _tower(False, [], {e: _live(p, src.field)}), tuned_model, feature=n,
                                encoder=e, policy=str(p), counterpart=counterpart))
                if p in ft_feat:
                    ft_name = f"ft_{n}_{policy_slug(p)}".replace("-", "_").replace(".", "_")
                    arms.append(Arm(f"ftfeat-{n}-{policy_slug(p)}", "ftfeat", _content(reads_itself, False, [ft_name]),
                                    frozen_model, features=[ft_name], feature=n, encoder=e, policy=str(p),
                                    counterpart=frozen_n, depends_on=name, ft_feature=ft_name, field=src.field))
    for name, keys in c.arms.items():
        if not _NAME.fullmatch(name):
            raise ConfigError(f"compare.arms.{name}: an arm name is letters, digits, '_', '.', '-' (it names a folder)")
        if not isinstance(keys, dict):
            raise ConfigError(f"compare.arms.{name}: give a mapping of dotted config keys to values")
        arms.append(Arm(name, "custom", as_overrides(keys), frozen_model))

    names = [a.name for a in arms]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"compare.arms: {dupes} clash with arms the grid already has; rename them")
    unknown = [s for s in c.skip if s not in names]
    if unknown:
        raise ConfigError(f"compare.skip: {unknown} are not arms of this grid ({names})")
    arms = [a for a in arms if a.name not in c.skip]
    kept = {a.name for a in arms}
    for a in arms:
        if a.depends_on and a.depends_on not in kept:
            raise ConfigError(f"compare.skip: arm {a.name} reads the features of {a.depends_on}, which is skipped")
        if a.counterpart not in kept:
            a.counterpart = None
    if not arms:
        raise ConfigError("compare: the grid is empty (check compare.features, compare.skip, compare.id_only)")
    return arms


def baseline_arm(cfg: Config, arms: list[Arm]) -> str:
    """``compare.baseline``, else the fused frozen arm, else the only frozen one, else the first."""
    names = [a.name for a in arms]
    if cfg.compare.baseline is not None:
        if cfg.compare.baseline not in names:
            raise ConfigError(f"compare.baseline: {cfg.compare.baseline!r} is not an arm of this grid ({names})")
        return cfg.compare.baseline
    for kind in ("fused", "frozen"):
        found = [a.name for a in arms if a.kind == kind]
        if found:
            return found[0]
    return names[0]
