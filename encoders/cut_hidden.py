"""Computing the hidden state entering the first trained block, and proving it may be cached.

See `encoders.cut` for the conventions (training modes, batch-first layout, variable-length text).
"""

from __future__ import annotations

import contextlib
import random
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from pipeline.errors import ConfigError

from .cut_blocks import convention_modes, cut_index, cut_parts, frozen_module_names, hidden_arg, is_active, \
    leaf_names, output_template, random_reason, seq_first, spec_of, trained_ids

if TYPE_CHECKING:
    from .base import Encoder


class _Stop(Exception):
    """Raised from the hook on block j to end a forward once its input is known."""


def _rng_states(device: torch.device | None) -> tuple:
    cuda = torch.cuda.get_rng_state(device) if device is not None and device.type == "cuda" else None
    return torch.get_rng_state(), cuda, np.random.get_state(), random.getstate()


def _same_rng(a: tuple, b: tuple) -> bool:
    same_np = a[2][0] == b[2][0] and np.array_equal(a[2][1], b[2][1]) and a[2][2:] == b[2][2:]
    same_cuda = (a[1] is None and b[1] is None) or (a[1] is not None and torch.equal(a[1], b[1]))
    return torch.equal(a[0], b[0]) and same_cuda and same_np and a[3] == b[3]


def _restore_rng(states: tuple, device: torch.device | None) -> None:
    torch.set_rng_state(states[0])
    if states[1] is not None:
        torch.cuda.set_rng_state(states[1], device)
    np.random.set_state(states[2])
    random.setstate(states[3])


def run_to_cut(encoder: Encoder, batch: dict, k: int | str, *, check: bool,
                record: list[nn.Module] | None = None) -> tuple[torch.Tensor, dict[int, tuple | None]]:
    """Forward `batch` until the input of block j is known; returns it batch-first and the output
    templates of the blocks below j (in `record`, if given)."""
    k, j, blocks, head = cut_parts(encoder, k)
    trained = trained_ids(blocks, head, j)
    time_major = seq_first(encoder, blocks[j])
    captured: list[torch.Tensor] = []
    templates: dict[int, tuple | None] = {}

    def grab(module, args, kwargs):
        kind, key = hidden_arg(args, kwargs)
        captured.append(args[key] if kind == "arg" else kwargs[key])
        raise _Stop

    handles = [blocks[j].register_forward_pre_hook(grab, with_kwargs=True)]
    for i, block in enumerate(record or []):
        handles.append(block.register_forward_hook(
            lambda m, a, out, i=i: templates.__setitem__(i, output_template(out))))
    ran: list[tuple[str, nn.Module]] = []
    if check:
        for name, module in encoder.named_modules():
            handles.append(module.register_forward_pre_hook(lambda m, a, name=name: ran.append((name, m))))
    ref = next((p for p in encoder.parameters() if p.is_floating_point()), None)
    device = ref.device if ref is not None else None
    saved_flags = [(p, p.requires_grad) for p in encoder.parameters()]
    before = _rng_states(device) if check else None
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(convention_modes(encoder, trained))
            if check:  # trained parameters require grad, so a dependence on one shows as a graph
                for p in encoder.parameters():
                    p.requires_grad_(id(p) in trained)
                stack.enter_context(torch.inference_mode(False))
                stack.enter_context(torch.enable_grad())
            else:
                stack.enter_context(torch.no_grad())
            try:
                encoder(batch)
            except _Stop:
                pass
        if not captured:
            raise ConfigError(f"{spec_of(encoder)}: block {j} never ran in the forward, so its input cannot be cached")
        hidden = captured[0]
        if check:
            _check_run(encoder, j, k, hidden, ran, trained, before, _rng_states(device))
    finally:
        for h in handles:
            h.remove()
        for p, flag in saved_flags:
            p.requires_grad_(flag)
        if before is not None:
            _restore_rng(before, device)
    hidden = hidden.detach()
    return (hidden.transpose(0, 1) if time_major else hidden), templates


def _check_run(encoder, j: int, k: int, hidden: torch.Tensor, ran, trained: set[int], before, after) -> None:
    spec, where = spec_of(encoder), f"below block {j} (the cut of top-k:{k})"
    frozen: set[str] | None = None
    for name, module in ran:
        reason = random_reason(module)
        if reason and frozen is None:
            frozen = frozen_module_names(encoder, trained)
        if reason and is_active(name, frozen):
            raise ConfigError(
                f"{spec}: cannot cache {where}: {name or 'the encoder'} ({type(module).__name__}, {reason}) runs "
                f"before the cut outside any frozen module, so it would be random in training; set its rate to 0 "
                f"or train without the cache")
    if not _same_rng(before, after):
        raise ConfigError(
            f"{spec}: cannot cache {where}: random numbers are drawn before the cut in training mode (e.g. "
            f"wav2vec2-style layerdrop or SpecAugment masking: set layerdrop=0, mask_time_prob=0, "
            f"mask_feature_prob=0), so the state entering block {j} is not a function of the item")
    if hidden.requires_grad:
        leaves = leaf_names(hidden, {id(p): n for n, p in encoder.named_parameters()})
        raise ConfigError(
            f"{spec}: cannot cache {where}: the state entering block {j} depends on parameters that top-k:{k} "
            f"trains ({', '.join(leaves[:4]) or 'unknown'}), so a cache would go stale")


def hidden_below(encoder: Encoder, batch: dict[str, torch.Tensor], k: int | str, *,
                 check: bool = True) -> torch.Tensor:
    """The input of block ``j = n_blocks - k`` (= the output of block j-1) for a collated batch.

    ``batch`` is what ``encoder(batch)`` takes. The forward stops at block j (the top blocks
    and head never run) and runs with the training convention's modes (`train_mode` for the
    policy top-k:k, whatever the encoder's current modes and flags; both are restored). Returns
    one detached tensor, **batch on axis 0**, in the model's dtype and on its device.
    ``k`` may be an int or the policy string ``"top-k:N"``.

    ``check=True`` raises ConfigError when anything before the cut is random in training,
    reads batch statistics, or depends on a parameter top-k:k trains (the forward then runs
    with grad enabled and those parameters requiring grad, which records no graph unless one
    is used). It costs a hook per module; after one checked batch, ``check=False`` runs the
    plain no_grad forward. Random-number states are left as they were.
    """
    return run_to_cut(encoder, batch, k, check=check)[0]


def fit_length(hidden: torch.Tensor, length: int, axis: int = 1) -> torch.Tensor:
    """Cut or zero-pad `hidden` to `length` along `axis` (text: the token axis of [B, T, H])."""
    have = hidden.shape[axis]
    if have >= length:
        return hidden.narrow(axis, 0, length)
    pad = list(hidden.shape)
    pad[axis] = length - have
    return torch.cat([hidden, hidden.new_zeros(pad)], dim=axis)



# --- probing and checks ---------------------------------------------------------------------------

def _probe_batch(encoder: Encoder) -> dict[str, torch.Tensor]:
    """One synthetic item through the encoder's own preprocess and collate."""
    pre = encoder.preprocess
    if encoder.modality == "image":
        from PIL import Image

        image = Image.fromarray(np.full((64, 64, 3), 127, dtype=np.uint8))
        if hasattr(pre, "from_image"):
            sample = pre.from_image(image)
        elif hasattr(pre, "transform"):
            sample = {getattr(pre, "key", "pixel_values"): pre.transform(image)}
        else:
            raise TypeError("unknown image preprocessor")
    elif encoder.modality == "text":
        sample = pre("a probe sentence")
    else:
        rate = int(pre.rate)
        sample = pre.from_wave((0.1 * np.sin(np.linspace(0, 880 * np.pi, rate))).astype(np.float32))
    return encoder.collate([sample])


def example_batch(encoder: Encoder, example: dict | None) -> dict[str, torch.Tensor]:
    if example is not None:
        return example
    try:
        return _probe_batch(encoder)
    except Exception as exc:  # a custom backend's preprocess may not take synthetic values
        raise ConfigError(f"{spec_of(encoder)}: cannot build a probe item for the cut ({exc}); pass example= a "
                          f"collated batch") from None


def check_deterministic_below(encoder: Encoder, k: int | str, batch: dict | None = None) -> int:
    """Raise ConfigError unless caching below the top k blocks reproduces the uncached run.

    Checks the policy/k, then runs `batch` (default: one synthetic item through the encoder's
    preprocess) to the cut in the training convention's modes: no module outside a frozen one
    may be random (dropout, drop-path, patch dropout with a rate > 0) or read batch statistics
    before the cut, no random numbers may be drawn (layerdrop, SpecAugment), and the state at the
    cut may not depend on a parameter the policy trains. Returns j.
    """
    j = cut_index(encoder, k)
    run_to_cut(encoder, example_batch(encoder, batch), k, check=True)
    return j
