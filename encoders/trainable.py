"""Which parameters train: frozen / full / top-k blocks / biases / LoRA."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from torch import nn

from pipeline.errors import ConfigError, ModalrecError

from pipeline.policy import Policy

if TYPE_CHECKING:
    from .base import Encoder

# Names of the repeated-block containers across timm, transformers and open_clip.
_BLOCK_LISTS = {"layer", "layers", "blocks", "resblocks", "h", "block", "stages"}
# Top-level modules/params that sit after the blocks even when registered before them
# (open_clip registers `proj` / `text_projection` as plain parameters, which come first).
_FINAL_NAMES = {"norm", "fc_norm", "layernorm", "layer_norm", "final_layer_norm", "ln_f", "ln_post",
                "ln_final", "post_layernorm", "pooler", "proj", "text_projection", "visual_projection",
                "audio_projection", "projection", "head", "attn_pool", "attnpool"}


def find_blocks(tower: nn.Module) -> list[nn.Module]:
    """The longest-running stack of repeated blocks/stages (by parameter count)."""
    candidates: list[list[nn.Module]] = []
    for name, module in tower.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(module, (nn.ModuleList, nn.Sequential)) and leaf in _BLOCK_LISTS and len(module):
            candidates.append(list(module))
        numbered = sorted(((int(n[5:]), c) for n, c in module.named_children() if re.fullmatch(r"layer\d+", n)),
                          key=lambda t: t[0])
        if len(numbered) >= 2:  # ResNet-style layer1..layer4
            candidates.append([c for _, c in numbered])
    if not candidates:
        return []
    return max(candidates, key=lambda blocks: sum(p.numel() for b in blocks for p in b.parameters()))


def generic_parts(tower: nn.Module) -> tuple[list[nn.Module], list[nn.Parameter]]:
    blocks = find_blocks(tower)
    in_blocks = {id(p) for b in blocks for p in b.parameters()}
    # Token tables are inputs, not part of the top: open_clip registers token_embedding late.
    # Likewise CLAP's HTSAT registers its input `batch_norm` (over mel bins) after its stages.
    embeddings = {id(p) for n, m in tower.named_modules()
                  if isinstance(m, nn.Embedding) or n.rsplit(".", 1)[-1] == "batch_norm" for p in m.parameters()}
    named = [(n, p) for n, p in tower.named_parameters() if id(p) not in embeddings]
    last = max((i for i, (_, p) in enumerate(named) if id(p) in in_blocks), default=len(named))
    head = [p for i, (n, p) in enumerate(named)
            if id(p) not in in_blocks and (i > last or n.split(".", 1)[0] in _FINAL_NAMES)]
    return blocks, head


def apply_policy(encoder: "Encoder", policy: Policy | str) -> None:
    policy = Policy.parse(policy)
    params = list(encoder.named_parameters())
    if policy.kind == "frozen":
        for _, p in params:
            p.requires_grad_(False)
        encoder.eval()
    elif policy.kind == "full":
        for _, p in params:
            p.requires_grad_(True)
    elif policy.kind == "bias":
        for name, p in params:
            p.requires_grad_(name.endswith("bias"))
    elif policy.kind == "top-k":
        _top_k(encoder, policy.k)
    else:
        _lora(encoder, policy.lora_rank)


def _top_k(encoder: "Encoder", k: int) -> None:
    blocks, head = encoder.trainable_parts()
    if not blocks:
        raise ConfigError(f"{encoder.spec}: no repeated blocks found, so 'top-k' cannot apply; use full or bias")
    if not 1 <= k <= len(blocks):
        raise ConfigError(f"{encoder.spec}: top-k:{k} is out of range, the model has {len(blocks)} blocks")
    for p in encoder.parameters():
        p.requires_grad_(False)
    for block in blocks[-k:]:
        for p in block.parameters():
            p.requires_grad_(True)
    for p in head:
        p.requires_grad_(True)


def _lora(encoder: "Encoder", rank: int) -> None:
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise ModalrecError("the 'lora' policy needs the peft package (pip install peft); "
                            "it is used for end-to-end training only") from None
    root = encoder.lora_root()
    if not any("lora_" in n for n, _ in root.named_parameters()):
        blocks, _ = encoder.trainable_parts()
        wanted = {id(m) for b in blocks for m in b.modules()}
        # nn.MultiheadAttention reads out_proj.weight directly, so an adapter there would be ignored.
        skip = {id(m.out_proj) for m in root.modules() if isinstance(m, nn.MultiheadAttention)}
        targets = [n for n, m in root.named_modules()
                   if type(m) in (nn.Linear, nn.modules.linear.NonDynamicallyQuantizableLinear)
                   and id(m) in wanted and id(m) not in skip]
        if not targets:  # all-conv blocks (ResNet, small ConvNeXts): adapt the 1x1/kxk convs
            targets = [n for n, m in root.named_modules()
                       if isinstance(m, nn.Conv2d) and m.groups == 1 and id(m) in wanted]
        if not targets:
            raise ConfigError(f"{encoder.spec}: no Linear or Conv2d layers inside its blocks for LoRA adapters")
        inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                                           target_modules=targets), root)
    for name, p in encoder.named_parameters():
        p.requires_grad_("lora_" in name)
