"""Item towers: where item vectors come from. Models ask a tower for item vectors and do not
care whether they are id embeddings, frozen cached features, or (end-to-end) live encoders.

- ``IdTower``: one learned vector per item; in a tower that mixes ids with content, items with
  no training interaction read a zero id vector and ids can be dropped per item while training
  (``unseen`` / ``dropout``, below).
- ``FeatureTower``: cached feature sets (frozen unless ``trainable_features``), each possibly
  missing for some items (a mask from the store), filled by policy, projected and fused.
- ``LiveEncoders`` (``live.py``): raw item content through encoders trained end to end.
- ``CombinedTower``: several of these together (``concat`` as in VBPR, or ``sum``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

FILL_POLICIES = ("zeros", "mean", "learned")
FUSIONS = ("concat", "sum", "gate")


def fill_missing(x: torch.Tensor, present: torch.Tensor, policy: str,
                 learned: torch.Tensor | None = None) -> torch.Tensor:
    """``x`` ``[N, D]`` with the rows where ``present`` is False replaced by policy: ``zeros``;
    ``mean``, the mean of the present rows (zeros when there are none), held constant for
    gradients; ``learned``, the vector ``learned`` (a parameter, so it trains)."""
    if policy not in FILL_POLICIES:
        raise ValueError(f"fill must be one of {FILL_POLICIES}, got {policy!r}")
    if policy == "learned":  # no shortcut when all rows are present: it would wait for the device
        return torch.where(present.unsqueeze(1), x, learned.to(x.dtype))
    if bool(present.all()):
        return x
    fill = x[present].mean(dim=0).detach() if policy == "mean" and bool(present.any()) else x.new_zeros(())
    return torch.where(present.unsqueeze(1), x, fill)


class ItemTower(nn.Module, ABC):
    n_items: int
    dim: int

    @abstractmethod
    def forward(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """Vectors ``[len(items), dim]``, or ``[n_items, dim]`` for all items when ``items`` is None."""


UNSEEN_IDS = ("zero", "keep")


class IdTower(ItemTower):
    """One learned vector per item.

    ``known`` (a bool per item: has training interactions) zeroes the id vector of every other
    item, in training and in ranking. An untrained id row is noise, and in training it is
    worse: those items are sampled as negatives, so their ids learn to score low for everyone,
    which swamps whatever content says about them. Zeroed, they get no gradient and score from
    the content part alone. ``None`` keeps every row (MMRec's behaviour, and right for an
    id-only tower, where a zero row would only tie the unseen items).

    ``dropout``: in training, each item row of a batch loses its id vector with this
    probability (DropoutNet, Volkovs et al. 2017), so the content part learns to carry an item
    alone, as it must for unseen items. Not rescaled: ranking sees whole id vectors, and the
    rows that train without them are meant to look like unseen items, not like scaled ones.
    """

    def __init__(self, n_items: int, dim: int, init: str = "xavier_normal", known: torch.Tensor | None = None,
                 dropout: float = 0.0):
        super().__init__()
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"id dropout must be in [0, 1], got {dropout}")
        self.n_items, self.dim, self.dropout = n_items, dim, dropout
        self.embedding = nn.Embedding(n_items, dim)
        getattr(nn.init, f"{init}_")(self.embedding.weight)
        self.register_buffer("known", None if known is None else known.bool(), persistent=False)

    def forward(self, items=None):
        # index_select: its backward is an index_add, cheaper on CPU than the embedding's (a sort first)
        x = self.embedding.weight if items is None else self.embedding.weight.index_select(0, items)
        keep = None
        if self.known is not None:
            keep = self.known if items is None else self.known[items]
        if self.training and self.dropout > 0:  # no draw at rate 0: seeded runs stay as they were
            kept = torch.rand(x.shape[0], device=x.device) >= self.dropout
            keep = kept if keep is None else keep & kept
        # where, not a product: a zeroed row passes no gradient and no NaN from its parameters
        return x if keep is None else torch.where(keep.unsqueeze(1), x, x.new_zeros(()))


class Fusion(nn.Module):
    """Per-modality vectors ``{name: [B, width]}`` -> one ``[B, dim]`` vector.

    ``concat`` concatenates them and applies one linear map (VBPR); ``sum`` adds per-modality
    projections; ``gate`` weighs per-modality projections with a learned, per-item softmax over
    the modalities that are present. Cached features and live encoders share this module.
    """

    def __init__(self, widths: dict[str, int], dim: int, fusion: str = "concat"):
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}")
        self.names, self.fusion = list(widths), fusion
        if fusion == "concat":
            self.proj = nn.Linear(sum(widths.values()), dim)
            nn.init.xavier_normal_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)
        else:
            self.projs = nn.ModuleDict({n: nn.Linear(w, dim) for n, w in widths.items()})
            if fusion == "gate":
                self.gate = nn.Linear(dim, 1, bias=False)

    def forward(self, parts: dict[str, torch.Tensor], present: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.fusion == "concat":
            return self.proj(torch.cat([parts[n] for n in self.names], dim=1))
        stacked = torch.stack([self.projs[n](parts[n]) for n in self.names], dim=1)  # [B, M, D]
        if self.fusion == "sum":
            return stacked.sum(dim=1)
        here = torch.stack([present[n] for n in self.names], dim=1)
        logits = self.gate(torch.tanh(stacked)).squeeze(-1).masked_fill(~here, -torch.inf)
        weights = torch.nan_to_num(torch.softmax(logits, dim=1))  # an item with no modality gets zeros
        return (weights.unsqueeze(-1) * stacked).sum(dim=1)


class FeatureTower(ItemTower):
    """Cached features -> fill missing rows -> project -> fuse modalities into one vector."""

    def __init__(self, features: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], dim: int,
                 fusion: str = "concat", fill: str = "mean", trainable_features: bool = False):
        super().__init__()
        if fill not in FILL_POLICIES:
            raise ValueError(f"fill must be one of {FILL_POLICIES}")
        self.names = list(features)
        self.n_items = next(iter(features.values())).shape[0]
        self.dim, self.fill = dim, fill
        self.raw = nn.ParameterDict()
        for name in self.names:
            m = masks[name].bool()
            # "learned" replaces missing rows on the fly; until then they hold zeros
            x = fill_missing(features[name].float(), m, "mean" if fill == "mean" else "zeros")
            if x is features[name]:  # a copy of its own: it may train, the caller's must not change
                x = x.clone()
            # frozen unless asked: a visible choice (MMRec silently trains "frozen" features)
            self.raw[name] = nn.Parameter(x, requires_grad=trainable_features)
            self.register_buffer(f"mask_{name}", m, persistent=False)
        if fill == "learned":
            self.missing = nn.ParameterDict({n: nn.Parameter(torch.zeros(features[n].shape[1])) for n in self.names})
        self.fuse = Fusion({n: features[n].shape[1] for n in self.names}, dim, fusion)

    def _mask(self, name: str, items) -> torch.Tensor:
        m = getattr(self, f"mask_{name}")
        return m if items is None else m[items]

    def _filled(self, name: str, items) -> torch.Tensor:
        x = self.raw[name] if items is None else self.raw[name].index_select(0, items)
        if self.fill == "learned":
            x = fill_missing(x, self._mask(name, items), "learned", self.missing[name])
        return x

    def forward(self, items=None):
        if items is not None and len(items) > 1:
            # each distinct item once (batches repeat popular items): fewer rows gathered and
            # projected, the same vectors
            distinct, where = torch.unique(items, return_inverse=True)
            if len(distinct) < len(items):
                return self._fused(distinct).index_select(0, where)
        return self._fused(items)

    def _fused(self, items) -> torch.Tensor:
        # only the gate reads which modalities are present (a missing row is already filled)
        present = {n: self._mask(n, items) for n in self.names} if self.fuse.fusion == "gate" else {}
        return self.fuse({n: self._filled(n, items) for n in self.names}, present)


class CombinedTower(ItemTower):
    """Several towers side by side (ids, cached features, live encoders): concatenated or summed."""

    def __init__(self, parts: list[ItemTower], combine: str = "concat"):
        super().__init__()
        if combine not in ("concat", "sum"):
            raise ValueError(f"combine must be concat or sum, got {combine!r}")
        if combine == "sum" and len({p.dim for p in parts}) != 1:
            raise ValueError("combine=sum needs id, feature and live parts of the same dim")
        self.parts, self.combine = nn.ModuleList(parts), combine
        self.n_items = parts[0].n_items
        self.dim = sum(p.dim for p in parts) if combine == "concat" else parts[0].dim

    def forward(self, items=None):
        out = [p(items) for p in self.parts]
        return torch.cat(out, dim=1) if self.combine == "concat" else torch.stack(out).sum(0)
