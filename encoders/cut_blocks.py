"""Where a top-k cut goes: the blocks, the slots that hold them, their layout and training modes.

Helpers shared by `encoders.cut_hidden` (computing the state at the cut) and `encoders.cut_replay`
(replaying it); the conventions they implement are documented in `encoders.cut`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from pipeline.errors import ConfigError

from pipeline.policy import Policy

if TYPE_CHECKING:
    from .base import Encoder

HIDDEN_KWARGS = ("hidden_states", "hidden_state", "x", "q_x", "input", "inputs_embeds")
_RATE_ATTRS = ("p", "prob", "drop_prob", "drop_rate", "rate")


def parse_k(k: int | str | Policy) -> int:
    """``2``, ``"top-k:2"`` or a top-k `Policy` (cached or not) -> 2; any other policy is a ConfigError."""
    if isinstance(k, bool):
        raise ConfigError(f"cached top-k fine-tuning needs a block count, got {k!r}")
    if isinstance(k, int):
        return k
    policy = Policy.parse(k)
    if policy.kind != "top-k":
        raise ConfigError(f"cached fine-tuning only applies to the 'top-k:N' policy (the frozen blocks below "
                          f"the top N are what gets cached), not {k!r}")
    return policy.k


def spec_of(encoder) -> str:
    return getattr(encoder, "spec", "") or type(encoder).__name__


def cut_parts(encoder: Encoder, k: int | str) -> tuple[int, int, list[nn.Module], list[nn.Parameter]]:
    k = parse_k(k)
    if getattr(encoder, "layer", None) is not None:
        raise ConfigError(f"{spec_of(encoder)}: cached top-k replays the final output; it does not support "
                          f"layer={encoder.layer}")
    blocks, head = encoder.trainable_parts()
    if not blocks:
        raise ConfigError(f"{spec_of(encoder)}: no repeated blocks found, so there is no top-k cut to cache below")
    if not 1 <= k <= len(blocks):
        raise ConfigError(f"{spec_of(encoder)}: top-k:{k} is out of range, the model has {len(blocks)} blocks")
    j = len(blocks) - k
    if any(getattr(b, "replays_cache", False) for b in blocks):
        raise ConfigError(f"{spec_of(encoder)}: its blocks were already replaced by skip_below; call "
                          f"Replay.restore() first (or reload the encoder)")
    return k, j, blocks, head


def cut_index(encoder: Encoder, k: int | str) -> int:
    """j = n_blocks - k: the first trained block, whose input is what gets cached."""
    return cut_parts(encoder, k)[1]


def trained_ids(blocks: list[nn.Module], head: list[nn.Parameter], j: int) -> set[int]:
    return {id(p) for b in blocks[j:] for p in b.parameters()} | {id(p) for p in head}


def frozen_module_names(encoder: nn.Module, trained: set[int]) -> set[str]:
    """Modules the training convention puts in eval mode: they have parameters, none trained."""
    out = set()
    for name, module in encoder.named_modules():
        params = list(module.parameters())
        if params and not any(id(p) in trained for p in params):
            out.add(name)
    return out


def is_active(name: str, frozen: set[str]) -> bool:
    parts = name.split(".") if name else []
    return "" not in frozen and not any(".".join(parts[:i]) in frozen for i in range(1, len(parts) + 1))


def train_mode(encoder: nn.Module) -> nn.Module:
    """modalrec's training convention: train mode, except modules whose parameters are all frozen."""
    encoder.train()
    for module in encoder.modules():
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            module.eval()
    return encoder


@contextlib.contextmanager
def convention_modes(encoder: nn.Module, trained: set[int]) -> Iterator[None]:
    saved = [(m, m.training) for m in encoder.modules()]
    try:
        encoder.train()
        for module in encoder.modules():
            params = list(module.parameters())
            if params and not any(id(p) in trained for p in params):
                module.eval()
        yield
    finally:
        for module, mode in saved:
            module.training = mode


def random_reason(module: nn.Module) -> str | None:
    """Why a module draws random numbers (or reads batch statistics) in training mode."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        if not list(module.parameters()):
            return "a batch norm without parameters uses batch statistics in training, so an item's state " \
                   "depends on its batch"
        return None
    name = type(module).__name__.lower()
    if isinstance(module, nn.modules.dropout._DropoutNd) or "drop" in name or "stochasticdepth" in name:
        for attr in _RATE_ATTRS:
            value = getattr(module, attr, None)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
                return f"{attr}={value}"
    return None


def locate(encoder: nn.Module, block: nn.Module) -> list[tuple[nn.Module, str]]:
    """Every (parent, attribute) slot holding `block`: ModuleList/Sequential indices or layerN."""
    return [(parent, key) for parent in encoder.modules() for key, child in parent._modules.items()
            if child is block]


def module_names(encoder: nn.Module) -> dict[int, str]:
    return {id(m): n for n, m in encoder.named_modules()}


def seq_first(encoder: nn.Module, block: nn.Module) -> bool:
    """True when the blocks exchange [T, B, D] (a container or block declaring batch_first=False)."""
    names = module_names(encoder)
    slots = locate(encoder, block)
    if not slots:
        return False
    path = names.get(id(slots[0][0]), "")
    chain = [path.rsplit(".", i)[0] if i else path for i in range(path.count(".") + 1)] + [""]
    for name in dict.fromkeys(chain):
        flag = getattr(encoder.get_submodule(name), "batch_first", None)
        if isinstance(flag, bool):
            return not flag
    flag = getattr(block, "batch_first", None)
    return isinstance(flag, bool) and not flag


def hidden_arg(args: tuple, kwargs: dict) -> tuple[str, Any]:
    if args and torch.is_tensor(args[0]):
        return "arg", 0
    for key in HIDDEN_KWARGS:
        if torch.is_tensor(kwargs.get(key)):
            return "kw", key
    raise ConfigError("cannot find the hidden-state tensor among the block's inputs "
                      f"(positional types {[type(a).__name__ for a in args]}, keywords {sorted(kwargs)})")


def output_template(output: Any) -> tuple | None:
    """None for a plain tensor; else per element ('h',) for the hidden, ('v', value) or ('none',)."""
    if torch.is_tensor(output):
        return None
    if isinstance(output, (tuple, list)) and output and torch.is_tensor(output[0]):
        return tuple(("h",) if i == 0 else ("none",) if torch.is_tensor(v) or v is None else ("v", v)
                     for i, v in enumerate(output))
    raise ConfigError(f"unsupported block output {type(output).__name__}: cached top-k needs blocks returning "
                      f"a tensor or a tuple starting with one")


def rebuild_output(template: tuple | None, hidden: torch.Tensor) -> Any:
    if template is None:
        return hidden
    return tuple(hidden if t[0] == "h" else None if t[0] == "none" else t[1] for t in template)


def leaf_names(tensor: torch.Tensor, names: dict[int, str]) -> list[str]:
    seen, stack, found = set(), [tensor.grad_fn], []
    while stack:
        fn = stack.pop()
        if fn is None or id(fn) in seen:
            continue
        seen.add(id(fn))
        var = getattr(fn, "variable", None)
        if var is not None:
            found.append(names.get(id(var), f"<parameter {tuple(var.shape)}>"))
        stack.extend(f for f, _ in fn.next_functions)
    return sorted(found)
