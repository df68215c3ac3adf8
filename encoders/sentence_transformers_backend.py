"""sentence-transformers text encoders: `st:all-MiniLM-L6-v2`, `st:org/name`, `st:/path/dir`."""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.errors import ConfigError

from .backend import Backend, WeightsLocation, hf_checkpointing
from .base import Encoder
from .checkpoints import check_pickled_weights, refusing_pickles
from .file_hashes import sha256_tree
from .processing import HFText, PadCollate
from .registry import Options, register_backend
from .trainable import generic_parts
from .weights import packaged_weights, hub_identity, loading, local_path, looks_local, random_identity


class SentenceTransformerEncoder(Encoder):
    def __init__(self, model: torch.nn.Module, **kwargs):
        super().__init__(**kwargs)
        self.model = model  # the SentenceTransformer (a Sequential of modules)

    def encode(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        features = dict(batch)
        if self.layer is None:
            return self.model(features)["sentence_embedding"]
        first = self.model[0]
        auto = first.auto_model
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        hidden = auto(**inputs, output_hidden_states=True, return_dict=True).hidden_states[self.layer]
        features["token_embeddings"] = hidden
        # Only the pooling step applies to a hidden layer; Dense/Normalize belong to the final output.
        for module in list(self.model)[1:]:
            if type(module).__name__ == "Pooling":
                return module(features)["sentence_embedding"]
        raise ConfigError(f"{self.spec}: layer= needs a Pooling module in the sentence-transformers pipeline")

    def trainable_parts(self):
        blocks, head = generic_parts(self.model[0].auto_model)
        for module in list(self.model)[1:]:  # Dense projections after pooling
            head += list(module.parameters())
        return blocks, head

    def lora_root(self) -> torch.nn.Module:
        return self.model[0].auto_model


def _source(name: str) -> tuple[str, bool]:
    """(where the model loads from, whether that is a local folder) for a spec's name."""
    if looks_local(name):
        return str(local_path(name, "st")), True
    source = name if "/" in name else f"sentence-transformers/{name}"  # the library's short names
    packaged = packaged_weights(source)
    if packaged is not None:  # an installed weights package: no hub needed
        return str(packaged), True
    return source, False


def create_st(name: str, *, modality=None, offline=False, random_init=False, **options) -> SentenceTransformerEncoder:
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    if modality not in (None, "text"):
        raise ConfigError(f"st:{name}: only text sentence-transformers models are supported, not {modality}")
    opts = Options("st", options)
    layer, normalize, seed = opts.common()
    revision, trust = opts.hub()
    max_length = opts.pop("max_length", kind=int)
    opts.done()

    source, local = _source(name)
    if local:
        check_pickled_weights(source, "st")
    with loading("st", name, offline=offline, local=local), refusing_pickles("st", name):
        model = SentenceTransformer(source, device="cpu", trust_remote_code=trust, revision=revision,
                                    local_files_only=offline or local)
    first = model[0]
    tokenizer = getattr(first, "tokenizer", None)
    if tokenizer is None or not hasattr(first, "auto_model"):
        raise ConfigError(f"st:{name}: only transformer text models are supported (first module is "
                          f"{type(first).__name__})")
    config_id = {"sha256": sha256_tree(source)} if local else hub_identity(source, revision, model)
    if random_init:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            fresh = AutoModel.from_config(first.auto_model.config)
        first.auto_model.load_state_dict(fresh.state_dict(), strict=False)
        weights = random_identity(seed, config_id)
    else:
        weights = config_id
    model.eval()
    length = max_length or model.max_seq_length or 512
    pad = tokenizer.pad_token_id
    enc = SentenceTransformerEncoder(
        model, modality="text", dim=1, preprocessor=HFText(tokenizer, length),
        collator=PadCollate({"input_ids": 0 if pad is None else pad}), identity={}, layer=layer,
        normalize=normalize, source=source)
    try:
        with torch.no_grad():
            enc.dim = int(enc(enc.collate([enc.preprocess("probe")])).shape[-1])
    except IndexError:
        raise ConfigError(f"st:{name}: layer={layer} is out of range for this model") from None
    enc.set_identity({
        "backend": "st",
        "model": "local" if local else source,
        "architecture": [type(m).__name__ for m in model],
        "weights": weights,
        "preprocess": {"tokenizer": type(tokenizer).__name__, "max_length": length,
                       "lowercase": getattr(tokenizer, "do_lower_case", None)},
        "pooling": "st-pipeline" if layer is None else "st-pooling",
    })
    return enc


@register_backend
class SentenceTransformersBackend(Backend):
    prefix = "st"
    aliases = ("sentence-transformers",)
    libraries = {"sentence_transformers": "sentence-transformers", "transformers": "transformers"}

    def create(self, name: str, **kwargs) -> SentenceTransformerEncoder:
        return create_st(name, **kwargs)

    def weights(self, name: str, *, random_init: bool) -> WeightsLocation | None:
        source, local = _source(name)
        return WeightsLocation(paths=(Path(source),)) if local else None

    def enable_gradient_checkpointing(self, encoder: SentenceTransformerEncoder) -> bool:
        return hf_checkpointing(encoder.model[0].auto_model)
