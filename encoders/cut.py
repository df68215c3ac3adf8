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

Where the code is: `encoders.cut_blocks` (blocks, slots, layouts, modes), `encoders.cut_hidden`
(the state at the cut and the checks), `encoders.cut_replay` (`skip_below`, `Replay`).

Not supported: the ``layer=`` option (intermediate outputs), blocks that hand tensors other
than the hidden state to the next block (T5's position bias); extra tensor outputs of a
skipped block (CLAP/Swin's pre-downsampling state, only read for ``output_hidden_states``)
are replayed as ``None``.
"""

from __future__ import annotations

from .cut_blocks import cut_index, parse_k, train_mode
from .cut_hidden import check_deterministic_below, fit_length, hidden_below
from .cut_replay import Replay, skip_below

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
