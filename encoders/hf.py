"""transformers encoders through the Auto classes.

`hf:` vision (ViT, DINOv2, ConvNeXt...) and text (BERT-like) models, plus dual-tower
checkpoints (CLIP, SigLIP: `modality` picks the tower); `hf-audio:` wav2vec2, HuBERT,
WavLM, AST and the CLAP audio tower.
"""

from __future__ import annotations

import contextlib
import inspect
import logging

import numpy as np
import torch

from pipeline.errors import ConfigError

from .backend import Backend, WeightsLocation, hf_checkpointing
from .base import Encoder, jsonable
from .checkpoints import check_pickled_weights, refusing_pickles
from .file_hashes import sha256_tree
from .processing import HFAudio, HFImage, HFText, PadCollate
from .registry import Options, register_backend
from .trainable import generic_parts
from .weights import hub_identity, loading, local_path, looks_local, random_identity

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _quiet_load_report():
    """transformers prints a table for every key it did not use; the heads and poolers we drop
    on purpose would fill logs with it. Missing keys, the ones that matter, are logged by us."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


# tower module, projection module, feature method of dual-tower models, per modality
_TOWERS = {
    "image": ("vision_model", "visual_projection", "get_image_features"),
    "text": ("text_model", "text_projection", "get_text_features"),
    "audio": ("audio_model", "audio_projection", "get_audio_features"),
}
_SUBCONFIG = {"image": "vision_config", "text": "text_config", "audio": "audio_config"}


class HFEncoder(Encoder):
    def __init__(self, model: torch.nn.Module, *, pooling: str, dual: bool, drop_keys: tuple[str, ...] = (),
                 **kwargs):
        super().__init__(**kwargs)
        self.model = model
        self.pooling = pooling
        self.dual = dual
        self.drop_keys = drop_keys

    def tower(self) -> torch.nn.Module:
        return getattr(self.model, _TOWERS[self.modality][0]) if self.dual else self.model

    def encode(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k not in self.drop_keys}
        if self.dual and self.layer is None:
            out = getattr(self.model, _TOWERS[self.modality][2])(**inputs)
            return out if torch.is_tensor(out) else out.pooler_output
        out = self.tower()(**inputs, output_hidden_states=self.layer is not None, return_dict=True)
        if self.pooling == "pooler":
            return out.pooler_output
        hidden = out.hidden_states[self.layer] if self.layer is not None else out.last_hidden_state
        return self._pool(hidden, batch)

    def _pool(self, hidden: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if hidden.dim() == 4:  # CNN feature map [B, C, H, W]
            return hidden.mean(dim=(2, 3))
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = self._token_mask(hidden, batch)
        if mask is None:
            return hidden.mean(dim=1)
        mask = mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)

    def _token_mask(self, hidden: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        mask = batch.get("attention_mask")
        if mask is None or mask.shape[1] == hidden.shape[1]:
            return mask
        # Audio: the mask is per sample; map valid samples to valid frames.
        lengths_fn = getattr(self.tower(), "_get_feat_extract_output_lengths", None)
        if lengths_fn is None:
            return None
        frames = lengths_fn(mask.sum(dim=-1)).to(hidden.device)
        return torch.arange(hidden.shape[1], device=hidden.device)[None, :] < frames[:, None]

    def trainable_parts(self):
        blocks, head = generic_parts(self.tower())
        norm = getattr(getattr(self.tower(), "encoder", None), "layer_norm", None)
        if getattr(self.model.config, "do_stable_layer_norm", False) and norm is not None:
            head += list(norm.parameters())  # pre-LN wav2vec2/HuBERT: applied after the last layer
        if self.dual:
            proj = getattr(self.model, _TOWERS[self.modality][1], None)
            head += list(proj.parameters()) if proj is not None else []
        return blocks, head

    def lora_root(self) -> torch.nn.Module:
        return self.tower()


def _infer_modality(config, prefix: str, modality: str | None) -> tuple[str, bool]:
    from transformers.models.auto import modeling_auto as ma

    dual_towers = [m for m, sub in _SUBCONFIG.items() if hasattr(config, sub)]
    dual = len(dual_towers) >= 2
    if dual:
        if modality is None:
            raise ConfigError(f"{config.model_type} has {' and '.join(dual_towers)} towers: pass modality= one of them")
        if modality not in dual_towers:
            raise ConfigError(f"{config.model_type} has no {modality} tower (it has {dual_towers})")
        return modality, True
    audio_types = set(ma.MODEL_FOR_CTC_MAPPING_NAMES) | set(ma.MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES)
    if config.model_type in audio_types:
        found = "audio"
    elif config.model_type in ma.MODEL_FOR_IMAGE_MAPPING_NAMES:
        found = "image"
    else:
        found = "text"
    if prefix == "hf-audio" and found != "audio":
        raise ConfigError(f"hf-audio: {config.model_type} is not an audio model (it looks like {found}); use hf:")
    return modality or found, False


def _model_kwargs(config) -> dict:
    """Skip BERT/ViT-style dense+tanh poolers: unused here and often missing from checkpoints
    (then randomly initialised on every load, which would break determinism)."""
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    try:
        cls = MODEL_MAPPING[type(config)]
    except KeyError:
        return {}
    return {"add_pooling_layer": False} if "add_pooling_layer" in inspect.signature(cls.__init__).parameters else {}


def _drop_other_towers(model: torch.nn.Module, modality: str) -> None:
    """A dual model keeps only the tower it serves (memory, and no untrained params in policies)."""
    for other, names in _TOWERS.items():
        if other != modality:
            for attr in names[:2]:
                if isinstance(getattr(model, attr, None), torch.nn.Module):
                    setattr(model, attr, None)
    for name in list(model._parameters):
        if name.startswith("logit_"):
            setattr(model, name, None)


def _build(prefix: str, name: str, modality, offline: bool, random_init: bool, options: dict) -> HFEncoder:
    from transformers import AutoConfig, AutoModel

    opts = Options(prefix, options)
    layer, normalize, seed = opts.common()
    revision, trust = opts.hub()
    pooling_opt = opts.pop("pooling", kind=str)
    max_length = opts.pop("max_length", kind=int)
    max_seconds = opts.pop("max_seconds", 10.0, kind=float)
    opts.done()
    if max_seconds <= 0 or (max_length is not None and max_length < 2):
        raise ConfigError(f"{prefix}: max_seconds must be > 0 and max_length >= 2")

    local = looks_local(name)
    source = str(local_path(name, prefix)) if local else name
    if local and not random_init:
        check_pickled_weights(source, prefix)
    hub_kw = {"trust_remote_code": trust, "local_files_only": offline or local}
    if revision and not local:
        hub_kw["revision"] = revision
    with loading(prefix, name, offline=offline, local=local), refusing_pickles(prefix, name):
        config = AutoConfig.from_pretrained(source, **hub_kw)
        modality, dual = _infer_modality(config, prefix, modality)
        extra = {} if dual else _model_kwargs(config)
        missing: list[str] = []
        # Seeded even when loading: weights a checkpoint lacks get initialised, and must come
        # out the same on every load or one fingerprint would name different vectors.
        with torch.random.fork_rng(devices=[]), _quiet_load_report():
            torch.manual_seed(seed)
            if random_init:
                model = AutoModel.from_config(config, trust_remote_code=trust, **extra)
            else:
                model, info = AutoModel.from_pretrained(source, **hub_kw, **extra, output_loading_info=True)
                missing = sorted(info.get("missing_keys") or [])
        pre, pre_identity = _preprocessor(source, modality, config, hub_kw, max_length, max_seconds)
    model.eval()
    if dual:
        _drop_other_towers(model, modality)
        if getattr(model, _TOWERS[modality][0], None) is None:
            raise ConfigError(f"{prefix}:{name}: cannot find the {modality} tower")

    choices = {"text": ("mean", "cls"), "image": ("auto", "cls", "mean"), "audio": ("mean",)}[modality]
    pooling = pooling_opt or choices[0]
    if pooling not in choices:
        raise ConfigError(f"{prefix}: pooling={pooling!r} for {modality} must be one of {choices}")
    drop = ("attention_mask",) if getattr(model.config, "feat_extract_norm", None) == "group" else ()
    enc = HFEncoder(model, pooling=pooling, dual=dual, drop_keys=drop, modality=modality, dim=1,
                    preprocessor=pre, collator=_collator(pre), identity={}, layer=layer, normalize=normalize,
                    source=source)
    probe_out = _probe(enc, modality, name)
    if dual and layer is None:
        enc.pooling = "projection"
    config_id = {"sha256": sha256_tree(source)} if local else hub_identity(source, revision, model)
    weights = random_identity(seed, config_id) if random_init else config_id
    enc.dim = int(probe_out.shape[-1])
    identity = {
        "backend": prefix,
        "model": "local" if local else name,
        "architecture": model.config.model_type,
        "weights": weights,
        "preprocess": pre_identity,
        "pooling": enc.pooling,
    }
    if missing:
        identity["initialised_missing"] = {"keys": len(missing), "seed": seed}
        log.warning("%s:%s: %d weights are not in the checkpoint and were initialised with seed %d (%s...)",
                    prefix, name, len(missing), seed, ", ".join(missing[:3]))
    enc.set_identity(identity)
    return enc


def _preprocessor(source, modality, config, hub_kw, max_length, max_seconds):
    if modality == "image":
        from transformers import AutoImageProcessor

        processor = AutoImageProcessor.from_pretrained(source, **hub_kw)
        return HFImage(processor), {"processor": jsonable(processor.to_dict())}
    if modality == "text":
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(source, **hub_kw)
        sub = getattr(config, "text_config", None) or config
        limit = getattr(sub, "max_position_embeddings", None) or 512
        model_max = tokenizer.model_max_length if tokenizer.model_max_length < 1_000_000 else limit
        length = max_length or min(model_max, limit)
        ident = {"tokenizer": type(tokenizer).__name__, "max_length": length,
                 "lowercase": getattr(tokenizer, "do_lower_case", None)}
        return HFText(tokenizer, length), ident
    from transformers import AutoFeatureExtractor, Wav2Vec2FeatureExtractor

    extractor = AutoFeatureExtractor.from_pretrained(source, **hub_kw)
    rate = int(extractor.sampling_rate)
    cap = getattr(extractor, "nb_max_samples", None)  # CLAP crops longer clips at random: never let it
    if cap:
        max_seconds = min(max_seconds, cap / rate)
    waveform = isinstance(extractor, Wav2Vec2FeatureExtractor)
    ident = {"extractor": jsonable(extractor.to_dict()), "sample_rate": rate, "max_seconds": max_seconds}
    return HFAudio(extractor, rate, max_seconds, waveform), ident


def _collator(pre) -> PadCollate:
    if isinstance(pre, HFText):
        pad = pre.tokenizer.pad_token_id
        return PadCollate({"input_ids": 0 if pad is None else pad})
    return PadCollate()


def _probe(enc: HFEncoder, modality: str, name: str) -> torch.Tensor:
    """One forward on a synthetic item: checks the model runs and yields dim and pooling."""
    pre = enc.preprocess
    if modality == "image":
        from PIL import Image

        sample = pre.from_image(Image.fromarray(np.full((64, 64, 3), 127, dtype=np.uint8)))
    elif modality == "text":
        sample = pre("probe")
    else:
        sample = pre.from_wave(np.sin(np.linspace(0, 880 * np.pi, pre.rate)).astype(np.float32) * 0.1)
    batch = enc.collate([sample])
    if enc.pooling == "auto":
        if enc.layer is None and not enc.dual:
            with torch.no_grad():
                out = enc.tower()(**batch, return_dict=True)
            has_pooler = getattr(out, "pooler_output", None) is not None
            enc.pooling = "pooler" if has_pooler else ("mean" if out.last_hidden_state.dim() == 4 else "cls")
        else:
            enc.pooling = "mean"
    try:
        with torch.no_grad():
            return enc(batch)
    except IndexError:
        raise ConfigError(f"{name}: layer={enc.layer} is out of range for this model") from None


@register_backend
class HFBackend(Backend):
    """``hf:`` vision, text and dual-tower checkpoints through the transformers Auto classes."""

    prefix = "hf"
    aliases = ("transformers",)
    libraries = {"transformers": "transformers"}

    def create(self, name: str, *, modality=None, offline=False, random_init=False, **options) -> HFEncoder:
        return _build(self.prefix, name, modality, offline, random_init, options)

    def weights(self, name: str, *, random_init: bool) -> WeightsLocation | None:
        # a hub checkpoint is only known once transformers resolved it; a local folder by its files
        return WeightsLocation(paths=(local_path(name, self.prefix),)) if looks_local(name) else None

    def enable_gradient_checkpointing(self, encoder: HFEncoder) -> bool:
        return hf_checkpointing(encoder.model)


@register_backend
class HFAudioBackend(HFBackend):
    """``hf-audio:`` wav2vec2, HuBERT, WavLM, AST and the CLAP audio tower."""

    prefix = "hf-audio"
    aliases = ()

    def create(self, name: str, *, modality=None, offline=False, random_init=False, **options) -> HFEncoder:
        if modality not in (None, "audio"):
            raise ConfigError(f"hf-audio:{name} is an audio encoder, not {modality}")
        return _build(self.prefix, name, "audio", offline, random_init, options)

