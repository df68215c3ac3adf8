"""Cached top-k fine-tuning: cut an encoder below its top k blocks and replay from a cache.

With the policy ``top-k:k`` only blocks ``j..n-1`` (``j = n_blocks - k``) and the head
train. When nothing below block ``j`` is random in training, the hidden state entering
block ``j`` is a pure function of the item, so it can be computed once per item and the
top blocks trained from that cache, giving the same outputs and gradients as the uncached
run (same policy, same seed) up to floating-point noise::

    enc.set_trainable("top-k:2")
    h = hidden_below(enc, batch, 2)          # [B, ...] batch-first, store h[i] per item
    replay = skip_below(enc, 2)              # blocks 0..j-1 leave the encoder
    replay.load(h)                           # the cached hidden states of the next batch
    out = enc(batch)                         # runs only the stem (on whatever input) + top blocks

Conventions
-----------
* Training mode: modalrec puts every module whose parameters are *all* frozen into eval mode
  (`train_mode` does it); parameter-free modules (a timm ``pos_drop``, a wav2vec2
  ``encoder.dropout``) stay in training mode unless an ancestor is frozen. `hidden_below`
  always computes with those modes, as the uncached training step would, whatever mode the
  encoder is in, and restores the modes afterwards.
* Layout: the hidden state is always returned and loaded **batch-first** (axis 0). Blocks
  whose container declares ``batch_first=False`` (open_clip's ``Transformer`` built that way,
  ``nn.TransformerEncoder``-style stacks) exchange ``[T, B, D]``; `hidden_below` transposes it
  and the replay transposes back. Shapes: ViTs ``[B, tokens, D]``, text ``[B, T, H]``,
  CNN stages ``[B, C, H, W]``, wav2vec2-style ``[B, frames, H]``; dtype is the model's.
* Variable-length text: ``[B, T, H]`` with ``T`` the padded length of the batch it was
  computed in. Store items at any length >= their token count (e.g. `fit_length` to the
  tokenizer's max length, zeros past the end); at replay the loaded tensor is cut (or
  zero-padded) to the live batch's ``T`` automatically. Positions past an item's
  ``attention_mask`` differ from the uncached run, valid positions and pooled outputs do not
  (attention masks padding out).
* Inputs at replay: the encoder still runs everything outside the skipped blocks (stem,
  embeddings, masks, pooling, head) on the batch it is given, then block ``j`` receives the
  cached state. Text needs its real ``input_ids`` / ``attention_mask`` (masks and pooling read
  them); floating inputs (pixels, waveforms) may be zeros of the right shape:
  `Replay.stub` builds them. Audio models that read an ``attention_mask`` (HuBERT-style,
  layer-norm feature encoders) need the real mask too. The stem's compute on those zeros is
  the remaining cost (small for ViTs and text, larger for wav2vec2's convolutional feature
  encoder). Rows of the loaded tensor must be in the batch's item order.
* After `skip_below` the skipped blocks are no longer submodules: the encoder's
  ``state_dict()`` / ``parameters()`` lack them (they were frozen and stay the pretrained
  weights). Code that reads attributes of a skipped block (open_clip asks ``resblocks[0]``
  for its weight dtype) gets them from a copy on the meta device (no memory).
  `Replay.restore` puts the blocks back (unless created with ``keep=False``, which drops the
  last reference so their memory can be freed).
* Safety: `skip_below` and `hidden_below` run `check_deterministic_below`'s checks (a random
  module, random numbers drawn, batch statistics, or a trained parameter before the cut ->
  ConfigError; a policy other than top-k:k or k out of range -> ConfigError).

Not supported: the ``layer=`` option (intermediate outputs), blocks that hand tensors other
than the hidden state to the next block (T5's position bias); extra tensor outputs of a
skipped block (CLAP/Swin's pre-downsampling state, only read for ``output_hidden_states``)
are replayed as ``None``.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from pipeline.errors import ConfigError

if TYPE_CHECKING:
    from .base import Encoder

__all__ = [
    "Replay",
    "check_deterministic_below",
    "cut_index",
    "fit_length",
    "hidden_below",
    "parse_k",
    "skip_below",
    "train_mode",
]

_HIDDEN_KWARGS = ("hidden_states", "hidden_state", "x", "q_x", "input", "inputs_embeds")
_RATE_ATTRS = ("p", "prob", "drop_prob", "drop_rate", "rate")


class _Stop(Exception):
    """Raised from the hook on block j to end a forward once its input is known."""


# --- policy and structure ---------------------------------------------------------------------

def parse_k(k: int | str) -> int:
    """``2`` or ``"top-k:2"`` -> 2; any other policy is a ConfigError."""
    if isinstance(k, bool):
        raise ConfigError(f"cached top-k fine-tuning needs a block count, got {k!r}")
    if isinstance(k, int):
        return k
    text = str(k).strip().lower()
    if not text.startswith("top-k:"):
        raise ConfigError(f"cached fine-tuning only applies to the 'top-k:N' policy (the frozen blocks below "
                          f"the top N are what gets cached), not {k!r}")
    try:
        return int(text[6:])
    except ValueError:
        raise ConfigError(f"top-k policy needs a block count, e.g. 'top-k:2', got {k!r}") from None


def _spec(encoder) -> str:
    return getattr(encoder, "spec", "") or type(encoder).__name__


def _parts(encoder: Encoder, k: int | str) -> tuple[int, int, list[nn.Module], list[nn.Parameter]]:
    k = parse_k(k)
    if getattr(encoder, "layer", None) is not None:
        raise ConfigError(f"{_spec(encoder)}: cached top-k replays the final output; it does not support "
                          f"layer={encoder.layer}")
    blocks, head = encoder.trainable_parts()
    if not blocks:
        raise ConfigError(f"{_spec(encoder)}: no repeated blocks found, so there is no top-k cut to cache below")
    if not 1 <= k <= len(blocks):
        raise ConfigError(f"{_spec(encoder)}: top-k:{k} is out of range, the model has {len(blocks)} blocks")
    j = len(blocks) - k
    if any(isinstance(b, _Skipped) for b in blocks):
        raise ConfigError(f"{_spec(encoder)}: its blocks were already replaced by skip_below; call "
                          f"Replay.restore() first (or reload the encoder)")
    return k, j, blocks, head


def cut_index(encoder: Encoder, k: int | str) -> int:
    """j = n_blocks - k: the first trained block, whose input is what gets cached."""
    return _parts(encoder, k)[1]


def _trained_ids(blocks: list[nn.Module], head: list[nn.Parameter], j: int) -> set[int]:
    return {id(p) for b in blocks[j:] for p in b.parameters()} | {id(p) for p in head}


def _frozen_module_names(encoder: nn.Module, trained: set[int]) -> set[str]:
    """Modules the training convention puts in eval mode: they have parameters, none trained."""
    out = set()
    for name, module in encoder.named_modules():
        params = list(module.parameters())
        if params and not any(id(p) in trained for p in params):
            out.add(name)
    return out


def _is_active(name: str, frozen: set[str]) -> bool:
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
def _convention_modes(encoder: nn.Module, trained: set[int]) -> Iterator[None]:
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


def _random_reason(module: nn.Module) -> str | None:
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


def _locate(encoder: nn.Module, block: nn.Module) -> list[tuple[nn.Module, str]]:
    """Every (parent, attribute) slot holding `block`: ModuleList/Sequential indices or layerN."""
    return [(parent, key) for parent in encoder.modules() for key, child in parent._modules.items()
            if child is block]


def _names(encoder: nn.Module) -> dict[int, str]:
    return {id(m): n for n, m in encoder.named_modules()}


def _seq_first(encoder: nn.Module, block: nn.Module) -> bool:
    """True when the blocks exchange [T, B, D] (a container or block declaring batch_first=False)."""
    names = _names(encoder)
    slots = _locate(encoder, block)
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


def _hidden_arg(args: tuple, kwargs: dict) -> tuple[str, Any]:
    if args and torch.is_tensor(args[0]):
        return "arg", 0
    for key in _HIDDEN_KWARGS:
        if torch.is_tensor(kwargs.get(key)):
            return "kw", key
    raise ConfigError("cannot find the hidden-state tensor among the block's inputs "
                      f"(positional types {[type(a).__name__ for a in args]}, keywords {sorted(kwargs)})")


def _template(output: Any) -> tuple | None:
    """None for a plain tensor; else per element ('h',) for the hidden, ('v', value) or ('none',)."""
    if torch.is_tensor(output):
        return None
    if isinstance(output, (tuple, list)) and output and torch.is_tensor(output[0]):
        return tuple(("h",) if i == 0 else ("none",) if torch.is_tensor(v) or v is None else ("v", v)
                     for i, v in enumerate(output))
    raise ConfigError(f"unsupported block output {type(output).__name__}: cached top-k needs blocks returning "
                      f"a tensor or a tuple starting with one")


def _build(template: tuple | None, hidden: torch.Tensor) -> Any:
    if template is None:
        return hidden
    return tuple(hidden if t[0] == "h" else None if t[0] == "none" else t[1] for t in template)


def _leaf_names(tensor: torch.Tensor, names: dict[int, str]) -> list[str]:
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


# --- computing the hidden state at the cut -----------------------------------------------------

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


def _run_to_cut(encoder: Encoder, batch: dict, k: int | str, *, check: bool,
                record: list[nn.Module] | None = None) -> tuple[torch.Tensor, dict[int, tuple | None]]:
    """Forward `batch` until the input of block j is known; returns it batch-first and the output
    templates of the blocks below j (in `record`, if given)."""
    k, j, blocks, head = _parts(encoder, k)
    trained = _trained_ids(blocks, head, j)
    seq_first = _seq_first(encoder, blocks[j])
    captured: list[torch.Tensor] = []
    templates: dict[int, tuple | None] = {}

    def grab(module, args, kwargs):
        kind, key = _hidden_arg(args, kwargs)
        captured.append(args[key] if kind == "arg" else kwargs[key])
        raise _Stop

    handles = [blocks[j].register_forward_pre_hook(grab, with_kwargs=True)]
    for i, block in enumerate(record or []):
        handles.append(block.register_forward_hook(
            lambda m, a, out, i=i: templates.__setitem__(i, _template(out))))
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
            stack.enter_context(_convention_modes(encoder, trained))
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
            raise ConfigError(f"{_spec(encoder)}: block {j} never ran in the forward, so its input cannot be cached")
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
    return (hidden.transpose(0, 1) if seq_first else hidden), templates


def _check_run(encoder, j: int, k: int, hidden: torch.Tensor, ran, trained: set[int], before, after) -> None:
    spec, where = _spec(encoder), f"below block {j} (the cut of top-k:{k})"
    frozen: set[str] | None = None
    for name, module in ran:
        reason = _random_reason(module)
        if reason and frozen is None:
            frozen = _frozen_module_names(encoder, trained)
        if reason and _is_active(name, frozen):
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
        leaves = _leaf_names(hidden, {id(p): n for n, p in encoder.named_parameters()})
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
    return _run_to_cut(encoder, batch, k, check=check)[0]


def fit_length(hidden: torch.Tensor, length: int, axis: int = 1) -> torch.Tensor:
    """Cut or zero-pad `hidden` to `length` along `axis` (text: the token axis of [B, T, H])."""
    have = hidden.shape[axis]
    if have >= length:
        return hidden.narrow(axis, 0, length)
    pad = list(hidden.shape)
    pad[axis] = length - have
    return torch.cat([hidden, hidden.new_zeros(pad)], dim=axis)


# --- probing and checks --------------------------------------------------------------------------

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


def _example(encoder: Encoder, example: dict | None) -> dict[str, torch.Tensor]:
    if example is not None:
        return example
    try:
        return _probe_batch(encoder)
    except Exception as exc:  # a custom backend's preprocess may not take synthetic values
        raise ConfigError(f"{_spec(encoder)}: cannot build a probe item for the cut ({exc}); pass example= a "
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
    _run_to_cut(encoder, _example(encoder, batch), k, check=True)
    return j


# --- replaying from cached states ---------------------------------------------------------------

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
                kind, key = _hidden_arg(args, kwargs)
                live = args[key] if kind == "arg" else kwargs[key]
            except ConfigError:
                pass
            hidden = self._state.prepare(live)
        else:
            hidden = self._state.current
            if hidden is None:
                hidden = self._state.prepare(None)
        return _build(self._template, hidden)

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
        import copy

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
        return f"Replay({_spec(self.encoder)!r}, top-k:{self.k}, blocks 0..{self.j - 1} from the cache)"


def skip_below(encoder: Encoder, k: int | str, *, example: dict[str, torch.Tensor] | None = None,
               keep: bool = True) -> Replay:
    """Replace blocks ``0..j-1`` by modules returning the loaded cached state; returns a `Replay`.

    Runs `check_deterministic_below` on `example` (default: one synthetic item), which also
    records each skipped block's output structure (tensor or tuple) to rebuild it. Raises
    ConfigError when the encoder currently trains a parameter the policy top-k:k would not (its
    gradient would be lost). The skipped blocks leave ``encoder.parameters()`` and its
    ``state_dict()``; ``keep=False`` also drops the Replay's reference to them.
    """
    k, j, blocks, head = _parts(encoder, k)
    trained = _trained_ids(blocks, head, j)
    wrong = [n for n, p in encoder.named_parameters() if p.requires_grad and id(p) not in trained]
    if wrong:
        raise ConfigError(f"{_spec(encoder)}: cached top-k:{k} trains only blocks {j}.. and the head, but "
                          f"{len(wrong)} other parameters require grad ({', '.join(wrong[:3])}...): use the "
                          f"policy top-k:{k}")
    sample = _example(encoder, example)
    _, templates = _run_to_cut(encoder, sample, k, check=True, record=blocks[:j])
    seq_first = _seq_first(encoder, blocks[j])
    state = _State(seq_first, encoder.modality == "text")
    slots, originals = [], []
    for i, block in enumerate(blocks[:j]):
        stand_in = _Skipped(i, state, templates.get(i), first=i == 0, block=block)
        for parent, key in _locate(encoder, block):
            slots.append((parent, key))
            originals.append(block)
            setattr(parent, key, stand_in)

    def substitute(module, args, kwargs):
        kind, key = _hidden_arg(args, kwargs)
        live = args[key] if kind == "arg" else kwargs[key]
        hidden = state.prepare(live) if j == 0 else state.current
        if hidden is None:
            hidden = state.prepare(live)
        if kind == "arg":
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, key: hidden}

    hook = blocks[j].register_forward_pre_hook(substitute, with_kwargs=True)
    return Replay(encoder, k, j, slots, originals if keep else None, state, hook, sample)
