"""Replaying cached hidden states: the blocks below the cut leave the encoder, a stand-in returns
the loaded state, and the top blocks train from it. See `encoders.cut` for the conventions."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from pipeline.errors import ConfigError

from .cut_blocks import cut_parts, hidden_arg, locate, rebuild_output, seq_first, spec_of, trained_ids
from .cut_hidden import example_batch, fit_length, run_to_cut

if TYPE_CHECKING:
    from .base import Encoder


class _State:
    def __init__(self, seq_first: bool, text: bool):
        self.seq_first = seq_first
        self.text = text
        self.loaded: torch.Tensor | None = None
        self.current: torch.Tensor | None = None

    def prepare(self, live: torch.Tensor | None) -> torch.Tensor:
        """The loaded state in the blocks' layout, fitted to the live batch (first module of a forward)."""
        if self.loaded is None:
            raise RuntimeError("no cached hidden state loaded: call replay.load(hidden) before encoder(batch)")
        hidden = self.loaded
        if live is not None and live.is_floating_point():
            hidden = hidden.to(live.device, live.dtype)
        elif live is not None:
            hidden = hidden.to(live.device)
        batch_axis = 1 if self.seq_first else 0
        if live is not None and live.dim() > batch_axis and live.shape[batch_axis] != hidden.shape[0]:
            raise ValueError(f"loaded hidden states are for {hidden.shape[0]} items, the batch has "
                             f"{live.shape[batch_axis]}")
        if self.text and live is not None and live.dim() == hidden.dim() == 3:
            hidden = fit_length(hidden, live.shape[0 if self.seq_first else 1], axis=1)
        self.current = hidden.transpose(0, 1) if self.seq_first else hidden
        return self.current


class _Skipped(nn.Module):
    """Stands in for a block below the cut: ignores its input, returns the cached state.

    Attribute lookups it cannot answer go to a parameter-free ("meta" device) copy of the
    original block, so code reading e.g. ``resblocks[0].get_weight_dtype()`` (open_clip) still works.
    """

    replays_cache = True  # what `cut_parts` looks for to refuse cutting twice

    def __init__(self, index: int, state: _State, template: tuple | None, first: bool, block: nn.Module):
        super().__init__()
        self.index = index
        self._state = state
        self._template = template
        self._first = first
        ref = next((p for p in block.parameters() if p.is_floating_point()), None)
        # Follows .to(device/dtype) like the other weights; not saved (persistent=False).
        probe = torch.zeros(()) if ref is None else torch.zeros((), dtype=ref.dtype, device=ref.device)
        self.register_buffer("_dtype_probe", probe, persistent=False)
        self.__dict__["_shadow"] = _meta_copy(block)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            shadow = self.__dict__.get("_shadow")
            if shadow is None or name.startswith("__"):
                raise
            dtype = self._buffers["_dtype_probe"].dtype
            if any(p.dtype != dtype for p in shadow.parameters() if p.is_floating_point()):
                shadow.to(dtype=dtype)
            return getattr(shadow, name)

    def forward(self, *args, **kwargs):
        if self._first:
            live = None
            try:
                kind, key = hidden_arg(args, kwargs)
                live = args[key] if kind == "arg" else kwargs[key]
            except ConfigError:
                pass
            hidden = self._state.prepare(live)
        else:
            hidden = self._state.current
            if hidden is None:
                hidden = self._state.prepare(None)
        return rebuild_output(self._template, hidden)

    def extra_repr(self) -> str:
        return f"block {self.index}: replayed from the cache"


def _meta_copy(block: nn.Module) -> nn.Module | None:
    """A copy of `block` whose tensors live on the meta device (no memory), or None."""
    memo: dict[int, Any] = {}
    for p in block.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=False)
    for b in block.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    try:
        return copy.deepcopy(block, memo)
    except Exception:
        return None


class Replay:
    """Handle returned by `skip_below`: load cached states, build stub inputs, restore the blocks."""

    def __init__(self, encoder: Encoder, k: int, j: int, slots, originals: list[nn.Module] | None,
                 state: _State, hook, example: dict[str, torch.Tensor]):
        self.encoder = encoder
        self.k = k
        self.j = j
        self._slots = slots
        self._originals = originals
        self._state = state
        self._hook = hook
        self._example = {key: v for key, v in example.items() if torch.is_tensor(v)}

    def load(self, hidden: torch.Tensor) -> None:
        """Set the batch-first states (as `hidden_below` returns them) for the next forwards."""
        if not torch.is_tensor(hidden):
            raise TypeError(f"hidden must be a tensor, got {type(hidden).__name__}")
        self._state.loaded = hidden.detach()
        self._state.current = None

    def clear(self) -> None:
        self._state.loaded = self._state.current = None

    @contextlib.contextmanager
    def loaded(self, hidden: torch.Tensor) -> Iterator[Replay]:
        self.load(hidden)
        try:
            yield self
        finally:
            self.clear()

    def stub(self, batch_size: int, batch: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """`batch` completed with zeros for every floating input the encoder takes (pixels, waveforms),
        shaped like the probe item; integer inputs (token ids, masks) must be given."""
        out = dict(batch or {})
        for key, value in self._example.items():
            if key in out:
                continue
            if not value.is_floating_point():
                raise ValueError(f"replay needs the real {key!r} of the batch (keep it with the cache)")
            out[key] = value.new_zeros((batch_size, *value.shape[1:]))
        return out

    def __call__(self, hidden: torch.Tensor, batch: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """``encoder(stub(B, batch))`` with `hidden` loaded: the replayed encoder output."""
        self.load(hidden)
        return self.encoder(self.stub(hidden.shape[0], batch))

    def restore(self) -> None:
        """Put the original blocks back and remove the hook (the encoder is whole again); blocks
        follow a ``.to(device/dtype)`` applied to the encoder in between."""
        if self._originals is None:
            raise RuntimeError("skip_below(keep=False) dropped the original blocks: reload the encoder instead")
        for (parent, key), block in zip(self._slots, self._originals):
            probe = getattr(parent, key)._buffers["_dtype_probe"]  # follows .to() of the cut encoder
            ref = next((p for p in block.parameters() if p.is_floating_point()), None)
            if ref is not None and (ref.dtype, ref.device) != (probe.dtype, probe.device):
                block.to(device=probe.device, dtype=probe.dtype)
            setattr(parent, key, block)
        self._hook.remove()
        self.clear()
        self._originals = None

    def __repr__(self) -> str:
        return f"Replay({spec_of(self.encoder)!r}, top-k:{self.k}, blocks 0..{self.j - 1} from the cache)"


def skip_below(encoder: Encoder, k: int | str, *, example: dict[str, torch.Tensor] | None = None,
               keep: bool = True) -> Replay:
    """Replace blocks ``0..j-1`` by modules returning the loaded cached state; returns a `Replay`.

    Runs `check_deterministic_below` on `example` (default: one synthetic item), which also
    records each skipped block's output structure (tensor or tuple) to rebuild it. Raises
    ConfigError when the encoder currently trains a parameter the policy top-k:k would not (its
    gradient would be lost). The skipped blocks leave ``encoder.parameters()`` and its
    ``state_dict()``; ``keep=False`` also drops the Replay's reference to them.
    """
    k, j, blocks, head = cut_parts(encoder, k)
    trained = trained_ids(blocks, head, j)
    wrong = [n for n, p in encoder.named_parameters() if p.requires_grad and id(p) not in trained]
    if wrong:
        raise ConfigError(f"{spec_of(encoder)}: cached top-k:{k} trains only blocks {j}.. and the head, but "
                          f"{len(wrong)} other parameters require grad ({', '.join(wrong[:3])}...): use the "
                          f"policy top-k:{k}")
    sample = example_batch(encoder, example)
    _, templates = run_to_cut(encoder, sample, k, check=True, record=blocks[:j])
    time_major = seq_first(encoder, blocks[j])
    state = _State(time_major, encoder.modality == "text")
    slots, originals = [], []
    for i, block in enumerate(blocks[:j]):
        stand_in = _Skipped(i, state, templates.get(i), first=i == 0, block=block)
        for parent, key in locate(encoder, block):
            slots.append((parent, key))
            originals.append(block)
            setattr(parent, key, stand_in)

    def substitute(module, args, kwargs):
        kind, key = hidden_arg(args, kwargs)
        live = args[key] if kind == "arg" else kwargs[key]
        hidden = state.prepare(live) if j == 0 else state.current
        if hidden is None:
            hidden = state.prepare(live)
        if kind == "arg":
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, key: hidden}

    hook = blocks[j].register_forward_pre_hook(substitute, with_kwargs=True)
    return Replay(encoder, k, j, slots, originals if keep else None, state, hook, sample)
