"""The end-to-end item tower: raw item content -> encoders -> fusion -> item vectors.

``LiveEncoders`` sits behind the same ``ItemTower`` interface as cached features, so every model
that takes item vectors trains its encoders with the recommendation loss unchanged. Item inputs
are preprocessed once (tokens, pixels, waveforms: pure functions of the item, no augmentation)
and held in memory; each forward collates the inputs of the items asked for, runs each encoder
on the unique items only, and fuses the modalities with the same ``Fusion`` as cached features.

Ranking needs the whole catalog: in eval mode (no gradients) it is encoded once in batches of
``encode_batch_size`` (bf16 autocast on GPU) and kept until the tower trains again.

Which encoder parameters train is each encoder's policy (frozen / full / top-k / bias / LoRA).
Every module whose parameters are all frozen runs in eval mode even while training, so the
frozen part of an encoder is deterministic (no dropout) and equals what a cache of it holds:
with ``cached`` (top-k only) the hidden states entering the first trained block are computed
once per item and replayed, and only the top blocks run.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn

from ..policy import Policy
from .towers import FILL_POLICIES, Fusion, ItemTower, fill_missing


@dataclass
class LiveSource:
    """One live encoder and the preprocessed content of every catalog item for it.

    ``inputs[i]`` is item i's preprocessed sample (a dict of tensors) or None when the item has
    no value for the field (or its value could not be read and the encoder skips bad input).
    ``hidden`` (cached top-k) holds, per item, the hidden state entering the first trained block.
    """

    encoder: nn.Module
    field: str
    policy: Policy
    inputs: list[dict[str, torch.Tensor] | None]
    keys: list[str | None] = field(default_factory=list)  # the items' content keys (for the store)
    gradient_checkpointing: bool = False
    cached: bool = False
    hidden: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.policy = Policy.parse(self.policy)  # a config's value already is one; a spelling is parsed here
        self.cached = self.cached or self.policy.cached

    @property
    def mask(self) -> torch.Tensor:
        return torch.tensor([x is not None for x in self.inputs], dtype=torch.bool)


def enable_gradient_checkpointing(encoder: nn.Module, where: str) -> None:
    """Turn on the activation checkpointing of the library the encoder's backend runs."""
    from encoders import backend_of

    if not backend_of(encoder).enable_gradient_checkpointing(encoder):
        from ..errors import ConfigError

        raise ConfigError(f"{where}.gradient_checkpointing: {type(encoder).__name__} has no checkpointing support")


class LiveEncoders(ItemTower):
    def __init__(self, sources: dict[str, LiveSource], dim: int, fusion: str = "concat", fill: str = "zeros",
                 encode_batch_size: int = 256):
        super().__init__()
        if fill not in FILL_POLICIES:
            raise ValueError(f"fill must be one of {FILL_POLICIES}")
        self.names = list(sources)
        self.n_items = len(next(iter(sources.values())).inputs)
        self.dim, self.fill, self.encode_batch_size = dim, fill, encode_batch_size
        self.encoders = nn.ModuleDict()
        self.inputs: dict[str, list] = {}
        self.replays: dict[str, object] = {}
        self.hidden: dict[str, torch.Tensor] = {}
        for name, src in sources.items():
            enc = src.encoder
            enc.set_trainable(src.policy)
            if src.gradient_checkpointing:
                enable_gradient_checkpointing(enc, f"model.item_tower.live.{name}")
            if src.cached:
                from encoders.cut import skip_below

                self.replays[name] = skip_below(enc, src.policy)
                self.hidden[name] = src.hidden
            self.encoders[name] = enc
            self.inputs[name] = src.inputs
            self.register_buffer(f"mask_{name}", src.mask, persistent=False)
        if fill == "learned":
            self.missing = nn.ParameterDict({n: nn.Parameter(torch.zeros(e.dim)) for n, e in self.encoders.items()})
        self.fuse = Fusion({n: e.dim for n, e in self.encoders.items()}, dim, fusion)
        self._catalog: torch.Tensor | None = None

    # ------------------------------------------------------------------ modes

    def train(self, mode: bool = True):
        super().train(mode)
        self._catalog = None  # the weights are about to change: re-encode before ranking again
        if mode:  # the frozen part of each encoder is deterministic: what a cache would hold
            from encoders.cut import train_mode

            for enc in self.encoders.values():
                train_mode(enc)
        return self

    def _load_from_state_dict(self, *args, **kwargs):
        self._catalog = None
        super()._load_from_state_dict(*args, **kwargs)

    def param_groups(self, train) -> list[dict]:
        """The encoders train at ``train.encoder_lr`` / ``train.encoder_weight_decay`` (default: the
        recommender's); fusion and fill parameters keep the defaults."""
        decay = train.weight_decay if train.encoder_weight_decay is None else train.encoder_weight_decay
        return [{"params": list(self.encoders.parameters()), "lr": train.encoder_lr or train.lr, "weight_decay": decay}]

    # ------------------------------------------------------------------ encoding

    def encode(self, name: str, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(vectors [len(items), D_name], present [len(items)])`` from one encoder; absent items
        are filled by the tower's policy. ``items`` should be unique (callers de-duplicate)."""
        enc = self.encoders[name]
        present = getattr(self, f"mask_{name}")[items]
        rows = items[present].tolist()
        device = present.device
        out = torch.zeros(len(items), enc.dim, device=device)
        if rows:
            samples = [self.inputs[name][i] for i in rows]
            batch = enc.collate(samples) if samples[0] else {}
            if name in self.replays:  # cached top-k: blocks below the cut replay the stored states
                replay = self.replays[name]
                replay.load(self.hidden[name][rows].to(device, non_blocking=True))
                batch = replay.stub(len(rows), batch)  # zeros for pixels / waveforms: never read
            batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
            vecs = enc(batch)
            out = out.to(vecs.dtype).index_put((present.nonzero().squeeze(1),), vecs)
        if self.fill != "zeros":  # absent rows already hold zeros
            out = fill_missing(out, present, self.fill, self.missing[name] if self.fill == "learned" else None)
        return out, present

    def _vectors(self, items: torch.Tensor) -> torch.Tensor:
        parts, present = {}, {}
        for name in self.names:
            parts[name], present[name] = self.encode(name, items)
        return self.fuse(parts, present)

    def encode_catalog(self, name: str | None = None) -> torch.Tensor:
        """Every item, in batches, without gradients: the fused vectors, or one encoder's output."""
        device = getattr(self, f"mask_{self.names[0]}").device
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                    else contextlib.nullcontext())
        chunks = []
        with torch.no_grad(), autocast:
            for start in range(0, self.n_items, self.encode_batch_size):
                items = torch.arange(start, min(start + self.encode_batch_size, self.n_items), device=device)
                chunks.append((self._vectors(items) if name is None else self.encode(name, items)[0]).float())
        return torch.cat(chunks)

    def forward(self, items=None):
        if items is None:
            if self.training or torch.is_grad_enabled():
                return self._vectors(torch.arange(self.n_items, device=getattr(self, f"mask_{self.names[0]}").device))
            if self._catalog is None:
                self._catalog = self.encode_catalog()
            return self._catalog
        uniq, inv = torch.unique(items, return_inverse=True)
        return self._vectors(uniq)[inv]


def live_towers(model: nn.Module) -> list[LiveEncoders]:
    return [m for m in model.modules() if isinstance(m, LiveEncoders)]
