"""The recommender contract (the two methods MMRec made popular) and shared loss pieces."""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .towers import ItemTower

# The graph models build sparse COO / CSR tensors from indices they computed themselves, and the
# CSR products are what the sparse BLAS runs: torch's notes that CSR support is "beta" and that
# invariant checks are off (as they are by default) say nothing actionable to a user, once per run.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")


class Recommender(nn.Module, ABC):
    """``loss(batch) -> scalar`` for training, ``score(users) -> [len(users), n_items]`` for ranking.

    ``train_batches`` says what one epoch of training data looks like; the default is shuffled
    (user, positive, negative) triples, which pairwise models (BPR, LightGCN, ...) use as is.
    """

    item_tower: ItemTower

    def train_batches(self, data, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        """An ``IterableDataset`` with ``set_epoch(epoch)`` yielding dicts of tensors for ``loss``."""
        from ..train.sampling import PairBatches

        users, items = data.pairs("train")
        return PairBatches(users, items, data.n_items, batch_size, seed, rank=rank, world=world)

    @abstractmethod
    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...

    @abstractmethod
    def score(self, users: torch.Tensor) -> torch.Tensor: ...

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        # DDP synchronises gradients of what runs through forward(): training calls model(batch)
        return self.loss(batch)

    def pre_epoch(self, epoch: int) -> None:
        """Called before every training epoch (graph re-sampling and the like)."""

    def use_history(self, split: str) -> None:
        """Which interactions count as the user's known history when scoring (``"valid"`` scoring
        sees train; ``"test"`` sees train + valid). Only history-based models care."""

    def fit_ranking(self, evaluate: Callable[[], dict[str, float]], metric: str) -> None:
        """Called by the trainer before each validation evaluation. A model with a ranking-time
        setting chosen on validation (``joint``'s lift for unseen items) sets it here from
        ``evaluate()``: the current weights' validation metrics with their warm and cold slices
        (``"warm/recall@20"``, ...); ``metric`` is the one training selects on. Most models have none."""

    def param_groups(self, train) -> list[dict]:
        """The optimizer's parameter groups for ``train`` (the config's `train` section): every
        trainable parameter once. A submodule with a ``param_groups(train)`` of its own (live
        encoders: their own learning rate and weight decay) supplies groups for the parameters
        it names; all others form the first group, with the optimizer's defaults."""
        special: list[dict] = []
        claimed: set[int] = set()
        owners: list[str] = []
        for name, module in self.named_modules():
            if module is self or any(name.startswith(o + ".") for o in owners):
                continue
            if callable(getattr(module, "param_groups", None)):
                owners.append(name)
                for group in module.param_groups(train):
                    params = [p for p in group["params"] if p.requires_grad and id(p) not in claimed]
                    claimed.update(id(p) for p in params)
                    special.append({**group, "params": params})
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in claimed]
        return [g for g in ({"params": rest}, *special) if g["params"]]


def bpr_loss(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """-mean log sigmoid(pos - neg), with MMRec's 1e-10 guard inside the log."""
    return -torch.log(1e-10 + torch.sigmoid(pos - neg)).mean()


def batch_bpr(users: torch.Tensor, items: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``bpr_loss`` of the batch's users against its positives and negatives, their rows gathered
    from whole user and item tables (``index_select``: a cheap backward)."""
    n = len(batch["pos"])
    u = users.index_select(0, batch["users"])
    its = items.index_select(0, torch.cat([batch["pos"], batch["neg"]]))
    return bpr_loss((u * its[:n]).sum(-1), (u * its[n:]).sum(-1))


def id_square_reg(user_ids: torch.Tensor, item_ids: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """MMRec's regulariser of MMGCN and GRCN: the mean over the batch's ``[2B, D]`` rows of
    (user id)^2 + (item id)^2, each user counted twice (with its positive and its negative)."""
    n = len(batch["pos"])
    ego_u = user_ids.index_select(0, batch["users"])
    ego_i = item_ids.index_select(0, torch.cat([batch["pos"], batch["neg"]]))
    return (2 * ego_u.pow(2).sum() + ego_i.pow(2).sum()) / (2 * n * ego_u.shape[1])


def emb_loss(*tensors: torch.Tensor) -> torch.Tensor:
    """MMRec's regulariser: sum of (un-squared) Frobenius norms over the batch size."""
    return sum(t.norm(p=2) for t in tensors) / tensors[-1].shape[0]


class _BPRWithReg(torch.autograd.Function):
    """``bpr_loss(u.pos, u.neg) + reg_weight * emb_loss(u, pos, neg)`` as one autograd node, with
    ``items = [pos; neg]`` (``2B`` rows) as one input.

    Autograd of that expression records about 25 small operations forward and as many back,
    each a full pass over ``[B, D]`` tensors, and slicing ``pos`` and ``neg`` out of one tensor
    costs two zero-filled gradients in backward; the gradient written out is three fused
    multiply-adds into one buffer. Half-precision inputs are computed in float32 (as autocast
    would); gradients come back in the inputs' dtypes.
    """

    @staticmethod
    def forward(ctx, u, items, reg_weight):
        dtypes = (u.dtype, items.dtype)
        work = torch.float64 if torch.float64 in dtypes else torch.float32
        u, items = u.to(work), items.to(work)
        b = u.shape[0]
        pos, neg = items[:b], items[b:]
        sig = torch.sigmoid((u * (pos - neg)).sum(-1))
        loss = -torch.log(1e-10 + sig).mean()
        norms = torch.stack([u.norm(), pos.norm(), neg.norm()]) if reg_weight else u.new_zeros(3)
        ctx.save_for_backward(u, items, sig, norms)
        ctx.reg_weight, ctx.dtypes = reg_weight, dtypes
        return loss + reg_weight * norms.sum() / b

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        u, items, sig, norms = ctx.saved_tensors
        b = u.shape[0]
        pos, neg = items[:b], items[b:]
        # d/dx of -log(1e-10 + sigmoid(x)), per row, times the incoming gradient over the batch size
        dx = (-(sig * (1 - sig)) / (1e-10 + sig) * (grad / b)).unsqueeze(1)
        # reg * ||t|| / b has gradient reg * t / (||t|| b); zero where the norm is (as torch.norm's)
        scale = torch.where(norms > 0, grad * ctx.reg_weight / (b * norms), 0.0)
        du = torch.addcmul(u * scale[0], dx, pos - neg)
        ditems = torch.empty_like(items)
        torch.addcmul(pos * scale[1], dx, u, out=ditems[:b])
        torch.addcmul(neg * scale[2], dx, u, value=-1, out=ditems[b:])
        return du.to(ctx.dtypes[0]), ditems.to(ctx.dtypes[1]), None


def bpr_with_reg(u: torch.Tensor, items: torch.Tensor, reg_weight: float) -> torch.Tensor:
    """Matrix factorisation's BPR loss on ``u . pos - u . neg`` plus MMRec's regulariser on the
    same rows, where ``u`` is ``[B, D]`` and ``items`` the ``B`` positives' rows followed by the
    ``B`` negatives': ``bpr_loss`` and ``emb_loss`` in one node (see ``_BPRWithReg``)."""
    if items.shape[0] != 2 * u.shape[0]:
        raise ValueError(f"bpr_with_reg: {u.shape[0]} users need 2 x {u.shape[0]} item rows, got {items.shape[0]}")
    return _BPRWithReg.apply(u, items, float(reg_weight))


def gather_batches(*tensors: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], int]:
    """Every process's rows of each tensor, concatenated in rank order, and where this process's
    rows start. Gradients flow back to each process's own rows, summed over every process's loss
    (as open_clip gathers features); one process (or no process group) returns the tensors
    unchanged. Batches may differ in size: each is padded to the largest for the collective."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensors, 0
    n = torch.tensor([len(tensors[0])], device=tensors[0].device)
    sizes = [int(k) for k in _all_gather(n)]
    most = max(sizes)
    out = []
    for t in tensors:
        whole = _all_gather(F.pad(t, [0, 0] * (t.dim() - 1) + [0, most - len(t)]))
        out.append(torch.cat([whole[r * most: r * most + k] for r, k in enumerate(sizes)]))
    return tuple(out), sum(sizes[: dist.get_rank()])


def _all_gather(t: torch.Tensor) -> torch.Tensor:
    """Every process's ``t`` concatenated along dim 0, differentiable: the backward pass
    reduce-scatters the gradient (torch's functional collectives, which replace the deprecated
    ``torch.distributed.nn.functional.all_gather``; the function's name changed in torch 2.15)."""
    import torch.distributed as dist
    from torch.distributed import _functional_collectives as fc

    gather = getattr(fc, "all_gather_single_autograd", None) or fc.all_gather_tensor_autograd
    return gather(t.contiguous(), 0, dist.group.WORLD)  # waits on first use


def in_batch_softmax(user_vecs: torch.Tensor, item_vecs: torch.Tensor, log_q: torch.Tensor | None,
                     temperature: float = 1.0, item_ids: torch.Tensor | None = None, offset: int = 0) -> torch.Tensor:
    """Softmax over the batch's positives as negatives, with the logQ correction for the
    popularity bias of in-batch sampling (Yi et al. 2019). Repeated items in the batch are not
    counted as negatives of each other. ``item_vecs`` may hold more rows than ``user_vecs`` (the
    positives of every process): user row r's positive is item row ``offset + r``."""
    logits = user_vecs @ item_vecs.T
    if temperature != 1.0:  # callers that scale their queries pass 1: no pass over the [B, B] logits
        logits = logits / temperature
    if log_q is not None:
        logits = logits - log_q.unsqueeze(0)
    target = torch.arange(len(user_vecs), device=logits.device) + offset
    if item_ids is not None:
        same = item_ids[target].unsqueeze(1) == item_ids.unsqueeze(0)
        same[torch.arange(len(target), device=logits.device), target] = False
        logits = logits.masked_fill(same, -torch.inf)
    return F.cross_entropy(logits, target)


class RankingCache:
    """A model's full ranking vectors, built once per evaluation: ranking scores users in chunks
    with the same weights, and a model whose vectors take a whole-graph pass (or a kNN search)
    should not redo it per chunk. Kept until ``clear()`` (a training step), the mode changes,
    weights are loaded, or a parameter changes in place (the version counter; fused optimizers
    do not bump it, hence the other three)."""

    def __init__(self, model: nn.Module):
        self.model, self.entry = model, None
        model.register_load_state_dict_post_hook(clear_ranking_caches)

    def clear(self) -> None:
        self.entry = None

    def get(self, build) -> tuple[torch.Tensor, ...]:
        """``build()``'s vectors (users, items, ...), from the cache while the weights and mode
        are unchanged."""
        key = (self.model.training, tuple((id(p), p._version) for p in self.model.parameters()))
        if self.entry is None or self.entry[0] != key:
            with torch.no_grad():
                self.entry = (key, build())
        return self.entry[1]


def clear_ranking_caches(module: nn.Module, incompatible_keys=None) -> None:
    """Every ``RankingCache`` the module holds, cleared (a load-state-dict hook: a copied module
    clears its own caches, not the original's)."""
    for value in vars(module).values():
        if isinstance(value, RankingCache):
            value.clear()


class CountedSoftmax(torch.autograd.Function):
    """``sum_k w_k (logsumexp_m(l_km + log c_m) - l_kk)`` for ``l = a @ b.T``, as one node.

    Autograd of that expression makes about a dozen passes over the ``[rows, rows]`` logits
    (two of them exponentials) and keeps several copies; here the forward pass turns the
    logits into exponentials in place (one exponential pass) and the backward pass scales those
    into the logits' gradient, before the two products that every formulation needs.
    Half-precision inputs are computed in float32 (as autocast would); gradients come back in
    the inputs' dtypes."""

    @staticmethod
    def forward(ctx, a, b, log_counts, weights):
        ctx.dtypes = (a.dtype, b.dtype)
        work = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
        a, b, log_counts, weights = a.to(work), b.to(work), log_counts.to(work), weights.to(work)
        with torch.autocast(a.device.type, enabled=False):
            logits = a @ b.T
            diag = logits.diagonal().clone()
            logits.add_(log_counts)
            top = logits.amax(dim=1, keepdim=True)
            total = logits.sub_(top).exp_().sum(dim=1, keepdim=True)
            ctx.save_for_backward(a, b, logits, total, weights)
            return ((total.log() + top).squeeze(1) - diag).mul(weights).sum()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        a, b, exps, total, weights = ctx.saved_tensors
        scale = weights * grad.to(weights.dtype)
        with torch.autocast(a.device.type, enabled=False):
            # d/dl_km = w_k (softmax_km - [k == m])
            g = exps * (scale / total.squeeze(1)).unsqueeze(1)
            g.diagonal().sub_(scale)
            return (g @ b).to(ctx.dtypes[0]), (g.T @ a).to(ctx.dtypes[1]), None, None


def counted_in_batch_softmax(queries: torch.Tensor, keys: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """In-batch softmax over distinct rows that stand for repeated ones: row k of ``queries`` /
    ``keys`` occurs ``counts[k]`` times in the batch. Equals the mean cross-entropy of
    ``queries @ keys.T`` (row r against column r) over the rows repeated, each copy a negative of
    every row, on a ``[distinct, distinct]`` logit matrix instead of ``[batch, batch]``."""
    c = counts.to(torch.promote_types(queries.dtype, torch.float32))
    return CountedSoftmax.apply(queries, keys, c.log(), c / c.sum())


def sampled_softmax(user_vecs: torch.Tensor, pos_vecs: torch.Tensor, neg_vecs: torch.Tensor,
                    temperature: float = 1.0) -> torch.Tensor:
    """Softmax of the positive against ``[B, n_neg, D]`` sampled negatives."""
    pos = (user_vecs * pos_vecs).sum(-1, keepdim=True)
    neg = torch.einsum("bd,bnd->bn", user_vecs, neg_vecs)
    logits = torch.cat([pos, neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(user_vecs), dtype=torch.long, device=logits.device))


class _SpMM(torch.autograd.Function):
    """``a @ x`` whose backward uses a precomputed ``a_t`` (torch would transpose ``a`` per call)."""

    @staticmethod
    def forward(ctx, a, a_t, x):
        ctx.a_t = a_t
        return torch.sparse.mm(a, x)

    @staticmethod
    def backward(ctx, grad):
        return None, None, torch.sparse.mm(ctx.a_t, grad)


def spmm(a: torch.Tensor, a_t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Sparse ``a`` times dense ``x``, differentiable in ``x``; ``a_t`` is ``a`` transposed."""
    return _SpMM.apply(a, a_t, x)


def compact_csr(a: torch.Tensor) -> torch.Tensor:
    """A sparse matrix as CSR with int32 indices where they fit. The sparse BLAS (MKL, cuSPARSE)
    takes those as they are; int64 indices are converted to int32 on every product."""
    a = a.to_sparse_csr()
    if a._nnz() >= 2**31 or max(a.shape) >= 2**31:
        return a
    return torch.sparse_csr_tensor(a.crow_indices().to(torch.int32), a.col_indices().to(torch.int32), a.values(),
                                   a.shape)


def sparse_transpose(a: torch.Tensor) -> torch.Tensor:
    return compact_csr(a.to_sparse_coo().t().coalesce())


def normalized_bipartite(users: np.ndarray, items: np.ndarray, n_users: int,
                         n_items: int) -> tuple[torch.Tensor, torch.Tensor]:
    """D^-1/2 A D^-1/2 of the user-item graph, as two CSR blocks (users x items and its transpose).

    The symmetric (n_users + n_items) square matrix of LightGCN only ever multiplies these two
    off-diagonal blocks, so keeping them apart halves the sparse work.
    """
    key = np.unique(users.astype(np.int64) * n_items + items)
    u, i = key // n_items, key % n_items
    du = np.bincount(u, minlength=n_users).astype(np.float64) + 1e-7
    di = np.bincount(i, minlength=n_items).astype(np.float64) + 1e-7
    values = (du[u] ** -0.5 * di[i] ** -0.5).astype(np.float32)
    r = torch.sparse_coo_tensor(torch.from_numpy(np.vstack([u, i])), torch.from_numpy(values), (n_users, n_items))
    return compact_csr(r.coalesce()), compact_csr(r.t().coalesce())
