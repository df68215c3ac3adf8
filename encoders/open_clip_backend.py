"""open_clip: one CLIP checkpoint, two towers; `modality` picks which one an encoder serves.

Specs: `open_clip:ViT-B-32@openai` (pretrained tag), `open_clip:ViT-B-32@/path/w.safetensors`,
`open_clip:/path/arch.json@/path/w.safetensors` (custom architecture), `open_clip:/path/dir`
(open_clip_config.json + weights, the hub layout), `open_clip:hf-hub:org/repo`.
"""

from __future__ import annotations

import hashlib
import atexit
import json
import shutil
import tempfile
from pathlib import Path

import torch

from pipeline.errors import ConfigError
from pipeline.atomic import write_file_atomic

from .backend import Backend, WeightsLocation, flag_checkpointing
from .base import Encoder, canonical_json, jsonable
from .checkpoints import check_pickled_weights, refusing_pickles
from .file_hashes import sha256_tree
from .processing import OpenClipText, PadCollate, TorchvisionImage
from .registry import Options, register_backend
from .trainable import generic_parts
from .weights import WeightsNotFoundError, file_identity, hub_identity, loading, local_path, looks_local, \
    random_identity, state_dict_sha256

_CONFIG_DIR: Path | None = None  # this process's own, private: see _config_dir


def _config_dir() -> Path:
    """A directory only this process writes and reads (``mkdtemp``: mode 0700, a fresh name),
    removed at exit: a shared, predictable temp folder would let another user plant configs
    that open_clip re-reads on every registration."""
    global _CONFIG_DIR
    if _CONFIG_DIR is None:
        _CONFIG_DIR = Path(tempfile.mkdtemp(prefix="modalrec-open-clip-"))
        atexit.register(shutil.rmtree, _CONFIG_DIR, True)
    return _CONFIG_DIR


class OpenClipEncoder(Encoder):
    def __init__(self, model: torch.nn.Module, *, pad_id: int, **kwargs):
        super().__init__(**kwargs)
        self.model = model  # image: the visual tower; text: the CLIP model without `visual`
        self.pad_id = pad_id

    def encode(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.modality == "image":
            x = batch["pixel_values"]
            if self.layer is None:
                return self.model(x)
            out = self.model.forward_intermediates(x, indices=[self.layer], intermediates_only=True,
                                                   output_fmt="NCHW")
            feat = out["image_intermediates"][0]
            return feat.mean(dim=(2, 3)) if feat.dim() == 4 else feat.mean(dim=1)
        tokens = batch["text"]
        if self.layer is None:
            return self.model.encode_text(tokens)
        out = self.model.forward_intermediates(text=tokens, text_indices=[self.layer], intermediates_only=True)
        feat = out["text_intermediates"][0]
        mask = (tokens != self.pad_id).to(feat.dtype).unsqueeze(-1)
        return (feat * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)

    def trainable_parts(self):
        text = getattr(self.model, "text", None)  # CustomTextCLIP keeps its text tower in `.text`
        return generic_parts(text if self.modality == "text" and text is not None else self.model)


def _register_config(path: Path) -> str:
    """Make a custom architecture JSON known to open_clip under a content-derived name,
    so it can never shadow a built-in config (open_clip's registry is global)."""
    raw = json.loads(path.read_text(encoding="utf-8"))
    cfg = raw.get("model_cfg", raw)
    if not all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise ConfigError(f"open_clip: {path} is not a model config (needs embed_dim, vision_cfg, text_cfg)")
    import open_clip

    name = _config_name(cfg)
    if name not in open_clip.list_models():
        target = _config_dir() / f"{name}.json"
        # replaced whole, never rewritten in place: open_clip re-reads all registered files on
        # each registration
        write_file_atomic(target, json.dumps(cfg).encode("utf-8"))
        open_clip.add_model_config(target)
    return name


def _config_name(cfg: dict) -> str:
    return "modalrec-" + hashlib.sha256(canonical_json(cfg).encode()).hexdigest()[:16]


def create_open_clip(name: str, *, modality=None, offline=False, random_init=False, **options) -> OpenClipEncoder:
    import open_clip

    if modality not in ("image", "text"):
        raise ConfigError(f"open_clip:{name} serves an image and a text tower: pass modality='image' or 'text'")
    opts = Options("open_clip", options)
    layer, normalize, seed = opts.common()
    opts.done()

    arch, _, weights_ref = name.partition("@")
    kwargs: dict = {"pretrained": None}
    weights_file = None
    if arch.startswith("hf-hub:"):
        model_name, local, weights_id = arch, False, None
    elif not weights_ref and looks_local(arch) and not arch.endswith(".json"):
        folder = local_path(arch, "open_clip")
        check_pickled_weights(folder, "open_clip")
        model_name, local, weights_id = f"local-dir:{folder}", True, {"sha256": sha256_tree(folder)}
    else:
        local = looks_local(weights_ref)
        if looks_local(arch):
            model_name = _register_config(local_path(arch, "open_clip", "model config"))
        else:
            model_name = arch
        if model_name not in open_clip.list_models():
            raise ConfigError(f"open_clip: unknown architecture {arch!r} (pass a model config .json for custom ones)")
        if not weights_ref and not random_init:
            raise WeightsNotFoundError(
                f"open_clip:{name} names no weights: use '{arch}@<tag>' (tags: "
                f"{', '.join(open_clip.list_pretrained_tags_by_model(model_name)) or 'none'}) or '{arch}@/path/file'")
        if local:
            weights_file = local_path(weights_ref, "open_clip", "weights file")
            if not random_init:
                check_pickled_weights(weights_file, "open_clip")
            weights_id = file_identity(weights_file)
        else:
            weights_id = None
        if weights_ref and not random_init:
            kwargs["pretrained"] = str(weights_file) if local else weights_ref

    with loading("open_clip", name, offline=offline, local=local), refusing_pickles("open_clip", name):
        if random_init:
            if model_name.startswith("local-dir:"):  # local-dir always loads its weights
                raise ConfigError("open_clip: random_init needs an architecture name or config json, not a folder")
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model, _, transform = open_clip.create_model_and_transforms(
                    model_name, pretrained=None, pretrained_text=False, load_weights=False)
        else:
            model, _, transform = open_clip.create_model_and_transforms(model_name, **kwargs)
        tokenizer = open_clip.get_tokenizer(model_name) if modality == "text" else None
        if weights_id is None and not random_init:
            weights_id = _hub_weights_identity(open_clip, model_name, weights_ref, model)
    model.eval()
    if random_init:
        weights_id = random_identity(seed, jsonable(open_clip.get_model_config(model_name)))

    if modality == "image":
        tower = model.visual
        pre = TorchvisionImage(transform)
        pre_identity = jsonable(getattr(tower, "preprocess_cfg", None) or str(transform))
        pad_id = 0
    else:
        model.visual = None
        for attr in ("logit_scale", "logit_bias"):  # contrastive temperature: unused by one tower
            if isinstance(getattr(model, attr, None), torch.nn.Parameter):
                setattr(model, attr, None)
        tower = model
        pre = OpenClipText(tokenizer)
        hf_tok = getattr(tokenizer, "tokenizer", None)
        pad_id = getattr(hf_tok, "pad_token_id", None) or 0
        pre_identity = {"tokenizer": type(tokenizer).__name__,
                        "context_length": getattr(tokenizer, "context_length", None)}
    if model_name.startswith("local-dir:"):
        model_id, architecture = "local", "local-dir"  # the folder digest covers its config
    else:
        model_id = "custom" if looks_local(arch) else arch
        architecture = jsonable(open_clip.get_model_config(model_name))
    enc = OpenClipEncoder(tower, pad_id=pad_id, modality=modality, dim=1, preprocessor=pre,
                          collator=PadCollate({"text": pad_id}), identity={}, layer=layer, normalize=normalize,
                          source=name)
    enc.dim = _probe_dim(enc, tower, modality)
    enc.set_identity({
        "backend": "open_clip",
        "model": model_id,
        "architecture": architecture,
        "weights": weights_id,
        "preprocess": pre_identity,
        "pooling": "clip-projection" if layer is None else "mean",
    })
    return enc


def _hub_weights_identity(open_clip, model_name: str, tag: str, model: torch.nn.Module) -> dict:
    """Revision of the cached file a tag resolved to (downloads happened already: cache hit)."""
    if model_name.startswith("hf-hub:"):
        return hub_identity(model_name[len("hf-hub:"):], None, model,
                            ("open_clip_config.json", "open_clip_model.safetensors", "open_clip_pytorch_model.bin"))
    try:
        from open_clip.pretrained import download_pretrained, get_pretrained_cfg

        path = download_pretrained(get_pretrained_cfg(model_name, tag))
        if path:
            return {"tag": tag, **file_identity(path)}
    except Exception:  # any cache oddity: fall back to the tensors themselves
        pass
    return {"tag": tag, "tensors_sha256": state_dict_sha256(model)}


def _probe_dim(enc: OpenClipEncoder, tower: torch.nn.Module, modality: str) -> int:
    if modality == "image":
        size = getattr(tower, "image_size", None) or 224
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        batch = {"pixel_values": torch.zeros(1, 3, h, w)}
    else:
        batch = enc.collate([enc.preprocess("probe")])
    try:
        with torch.no_grad():
            return int(enc(batch).shape[-1])
    except (IndexError, AssertionError):
        raise ConfigError(f"open_clip: layer={enc.layer} is out of range for this tower") from None


@register_backend
class OpenClipBackend(Backend):
    prefix = "open_clip"
    aliases = ("open-clip", "openclip")
    libraries = {"open_clip": "open_clip_torch"}

    def create(self, name: str, **kwargs) -> OpenClipEncoder:
        return create_open_clip(name, **kwargs)

    def weights(self, name: str, *, random_init: bool) -> WeightsLocation | None:
        """``arch@weights``: a named architecture is open_clip's own code; local parts are files;
        a pretrained tag or a hub repo is only resolved by loading."""
        parts = name.split("@")
        paths, builtin = [], []
        for i, part in enumerate(parts):
            if part.startswith("hf-hub:"):
                return None
            if looks_local(part):
                paths.append(local_path(part, "open_clip"))
            elif i == 0 and (random_init or len(parts) > 1):
                builtin.append(part)
            else:
                return None
        return WeightsLocation(paths=tuple(paths), builtin=tuple(builtin))

    def enable_gradient_checkpointing(self, encoder: OpenClipEncoder) -> bool:
        return flag_checkpointing(encoder.model)  # open_clip's transformers read grad_checkpointing
