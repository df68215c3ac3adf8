"""Item towers: where item vectors come from. Models ask a tower for item vectors and do not
care whether they are id embeddings, frozen cached features, or (end-to-end) live encoders.

- ``IdTower``: one learned vector per item.
- ``FeatureTower``: cached feature sets (frozen unless ``trainable_features``), each possibly
  missing for some items (a mask from the store), filled by policy, projected and fused.
- ``CombinedTower``: ids and features together (``concat`` as in VBPR, or ``sum``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

FILL_POLICIES = ("zeros", "mean", "learned")
FUSIONS = ("concat", "sum", "gate")


class ItemTower(nn.Module, ABC):
    n_items: int
    dim: int

    @abstractmethod
    def forward(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """Vectors ``[len(items), dim]``, or ``[n_items, dim]`` for all items when ``items`` is None."""


class IdTower(ItemTower):
    def __init__(self, n_items: int, dim: int, init: str = "xavier_normal"):
        super().__init__()
        self.n_items, self.dim = n_items, dim
        self.embedding = nn.Embedding(n_items, dim)
        getattr(nn.init, f"{init}_")(self.embedding.weight)

    def forward(self, items=None):
        return self.embedding.weight if items is None else self.embedding(items)


class FeatureTower(ItemTower):
    """Cached features -> fill missing rows -> project -> fuse modalities into one vector.

    ``concat`` concatenates the filled raw features and applies one linear map (VBPR);
    ``sum`` adds per-modality projections; ``gate`` weighs per-modality projections with a
    learned, per-item softmax over the modalities that are present.
    """

    def __init__(self, features: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], dim: int,
                 fusion: str = "concat", fill: str = "mean", trainable_features: bool = False):
        super().__init__()
        if fusion not in FUSIONS or fill not in FILL_POLICIES:
            raise ValueError(f"fusion must be one of {FUSIONS} and fill one of {FILL_POLICIES}")
        self.names = list(features)
        self.n_items = next(iter(features.values())).shape[0]
        self.dim, self.fusion, self.fill = dim, fusion, fill
        self.raw = nn.ParameterDict()
        for name in self.names:
            x = features[name].float().clone()
            m = masks[name].bool()
            if fill == "mean" and m.any():
                x[~m] = x[m].mean(dim=0)
            else:
                x[~m] = 0.0
            # frozen unless asked: a visible choice (MMRec silently trains "frozen" features)
            self.raw[name] = nn.Parameter(x, requires_grad=trainable_features)
            self.register_buffer(f"mask_{name}", m, persistent=False)
        if fill == "learned":
            self.missing = nn.ParameterDict({n: nn.Parameter(torch.zeros(features[n].shape[1])) for n in self.names})
        widths = {n: features[n].shape[1] for n in self.names}
        if fusion == "concat":
            self.proj = nn.Linear(sum(widths.values()), dim)
            nn.init.xavier_normal_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)
        else:
            self.projs = nn.ModuleDict({n: nn.Linear(w, dim) for n, w in widths.items()})
            if fusion == "gate":
                self.gate = nn.Linear(dim, 1, bias=False)

    def _filled(self, name: str, items) -> torch.Tensor:
        x = self.raw[name] if items is None else self.raw[name][items]
        if self.fill == "learned":
            m = getattr(self, f"mask_{name}")
            m = m if items is None else m[items]
            x = torch.where(m.unsqueeze(1), x, self.missing[name].expand_as(x))
        return x

    def forward(self, items=None):
        if self.fusion == "concat":
            return self.proj(torch.cat([self._filled(n, items) for n in self.names], dim=1))
        parts = torch.stack([self.projs[n](self._filled(n, items)) for n in self.names], dim=1)  # [B, M, D]
        if self.fusion == "sum":
            return parts.sum(dim=1)
        present = torch.stack([getattr(self, f"mask_{n}") if items is None else getattr(self, f"mask_{n}")[items]
                               for n in self.names], dim=1)
        logits = self.gate(torch.tanh(parts)).squeeze(-1).masked_fill(~present, -torch.inf)
        weights = torch.nan_to_num(torch.softmax(logits, dim=1))  # an item with no modality gets zeros
        return (weights.unsqueeze(-1) * parts).sum(dim=1)


class CombinedTower(ItemTower):
    def __init__(self, ids: IdTower, features: FeatureTower, combine: str = "concat"):
        super().__init__()
        if combine not in ("concat", "sum"):
            raise ValueError(f"combine must be concat or sum, got {combine!r}")
        if combine == "sum" and ids.dim != features.dim:
            raise ValueError("combine=sum needs id and feature parts of the same dim")
        self.ids, self.features, self.combine = ids, features, combine
        self.n_items = ids.n_items
        self.dim = ids.dim + features.dim if combine == "concat" else ids.dim

    def forward(self, items=None):
        a, b = self.ids(items), self.features(items)
        return torch.cat([a, b], dim=1) if self.combine == "concat" else a + b
