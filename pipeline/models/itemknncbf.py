"""ItemKNNCBF (content-based item kNN; the baseline of Dacrema et al., RecSys 2019, as MMRec runs
it): a user's score for an item is the summed similarity of that item to the items in the
user's training history, where each history item keeps only its ``knn_k`` most similar items.

Similarity is the shrunk cosine ``x_i . x_j / (|x_i| |x_j| + shrink)`` of the concatenation of
every feature set the model reads (MMRec concatenates image and text the same way), rows of a
missing modality filled with that modality's mean. With ``S`` the row-wise top-k similarity and
``R`` the binary training interactions, the scores are ``R S``.

How it trains: it has nothing to learn (MMRec marks it ``req_training: False`` and evaluates
once). Here it has no parameters at all, not even MMRec's dummy one: the trainer's epoch runs
over the usual (user, positive, negative) batches and ``loss`` reports the BPR loss of the
fixed scores on them (how well the kNN scores rank the training positives; flattering, as each
positive is in its user's history and among its own neighbours), which the trainer records
without taking a step (the trainer skips the backward pass when nothing is trainable). Every
epoch gives the same scores, so ``train.epochs=1`` is all it needs; more epochs repeat the same
evaluation (early stopping ends them), and resuming rebuilds the same scores from the cached
similarity graph.

Unlike MMRec, which keeps a dense users x items score table, ``R S`` is kept sparse (at most
``knn_k`` entries per training pair) and scored rows are densified per evaluation batch.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field

from ..errors import ConfigError
from .base import Recommender, bpr_loss
from .derived import cached_tensors
from .registry import BuildContext, ModelSpec, register_model


def shrunk_knn(x: torch.Tensor, k: int, shrink: float, block: int = 2048) -> torch.Tensor:
    """Each row's top-``k`` (itself included) by ``x_i . x_j / (|x_i| |x_j| + shrink)``, as a
    sparse ``[n, n]`` matrix holding those similarities; built block-wise, never ``n x n``."""
    x = x.float()
    n = len(x)
    norms = x.norm(dim=1)
    vals, cols = torch.empty(n, k), torch.empty(n, k, dtype=torch.long)
    for start in range(0, n, block):
        sims = (x[start:start + block] @ x.T) / (norms[start:start + block, None] * norms[None, :] + shrink)
        vals[start:start + block], cols[start:start + block] = sims.topk(k, dim=1)
    rows = torch.arange(n).repeat_interleave(k)
    return torch.sparse_coo_tensor(torch.stack([rows, cols.reshape(-1)]), vals.reshape(-1), (n, n)).coalesce()


def history_scores(users: np.ndarray, items: np.ndarray, n_users: int, sim: torch.Tensor) -> torch.Tensor:
    """``R S`` as a coalesced sparse COO ``[n_users, n_items]``, ``R`` the binary matrix of the
    distinct ``(users, items)`` pairs: each pair adds its item's row of ``S`` to its user's."""
    n_items = sim.shape[0]
    pairs = np.unique(users.astype(np.int64) * n_items + items)
    u, j = torch.from_numpy(pairs // n_items), torch.from_numpy(pairs % n_items)
    sim = sim.to_sparse_csr()
    crow, col, val = sim.crow_indices(), sim.col_indices(), sim.values()
    counts = crow[j + 1] - crow[j]
    first = torch.repeat_interleave(crow[j], counts)
    offsets = torch.arange(int(counts.sum())) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    where = first + offsets
    index = torch.stack([torch.repeat_interleave(u, counts), col[where]])
    return torch.sparse_coo_tensor(index, val[where], (n_users, n_items)).coalesce()


class ItemKNNCBF(Recommender):
    def __init__(self, n_users: int, n_items: int, train_users: np.ndarray, train_items: np.ndarray,
                 sim: torch.Tensor):
        super().__init__()
        self.n_users, self.n_items = n_users, n_items
        scores = history_scores(train_users, train_items, n_users, sim)
        # derived from the data and the cached graph at every build: nothing to save or restore
        self.register_buffer("scores", scores, persistent=False)
        idx = scores.indices()
        # coalesced entries are sorted by (user, item): their flat keys are sorted, for searchsorted
        self.register_buffer("keys", idx[0] * n_items + idx[1], persistent=False)

    def param_groups(self, train) -> list[dict]:
        return [{"params": []}]  # the optimizer wants one group, even with nothing in it

    def pair_scores(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``(R S)[users, items]`` element-wise; zero where no history item links to the item."""
        keys = users * self.n_items + items
        if len(self.keys) == 0:
            return torch.zeros(len(keys), device=keys.device)
        at = torch.searchsorted(self.keys, keys).clamp(max=len(self.keys) - 1)
        return torch.where(self.keys[at] == keys, self.scores.values()[at], 0.0)

    def loss(self, batch):
        u = batch["users"]
        return bpr_loss(self.pair_scores(u, batch["pos"]), self.pair_scores(u, batch["neg"]))

    def score(self, users):
        return self.scores.index_select(0, users).to_dense()


@register_model("itemknncbf")
class ItemKNNCBFSpec(ModelSpec):
    family = "content-based item kNN (no training)"
    paper = "Dacrema et al., RecSys 2019"
    caches = "item-item shrunk-cosine top-k graph over the concatenated features"
    no_live_encoders = "has no item tower to train: it scores from a fixed similarity of cached features"
    knn_k: int = Field(10, ge=1)  # neighbours kept per history item (MMRec knn_k)
    shrink: float = Field(10.0, ge=0)  # added to the cosine's denominator: damps weakly supported pairs
    feature_sets: list[str] = []  # concatenated for the similarity; default: every configured one

    def extra_features(self, features: list[str]) -> list[str]:
        return list(self.feature_sets or features)

    def build(self, ctx: BuildContext) -> ItemKNNCBF:
        filled = ctx.content("itemknncbf", "scores by feature similarity", "feature_sets", self.feature_sets)
        names = list(filled)
        n_items = ctx.data.n_items
        if self.knn_k > n_items:
            raise ConfigError(f"model.itemknncbf.knn_k: {self.knn_k} neighbours asked of {n_items} items")
        used = {n: ctx.features[n] for n in names}

        def build_graph():
            x = torch.cat([filled[n] for n in names], dim=1)
            return {"graph": shrunk_knn(x, self.knn_k, self.shrink)}

        ident = {"k": self.knn_k, "shrink": self.shrink, "features": [[n, f.fingerprint] for n, f in used.items()]}
        sim = cached_tensors(ctx.cache_dir, "knn-cbf", ident, build_graph)["graph"]
        users, items = ctx.data.pairs("train")
        return ItemKNNCBF(ctx.data.n_users, n_items, users, items, sim)
