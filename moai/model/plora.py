"""Partial LoRA (PLoRA, from InternLM-XComposer2; docs/model.md §7): low-rank deltas at image tokens only.

Every linear of a decoder layer gets ``y += B(A(dropout(x))) * alpha / r`` on the rows whose token is an
image token. q, k and v share one ``A`` (the official fused ``wqkv`` has one), owned by the attention module
(``self_attn.plora_A_qkv``); the B factors live on the projections (``q_proj.plora_B`` ...), so the LLM's own
parameter keys (``q_proj.weight`` ...) are unchanged.

The deltas are forward hooks on the projections. They read the image mask from a per-layer context that a
forward pre-hook on the attention module fills from the ``moai_state`` keyword the LLM passes down; those
hooks re-run under gradient checkpointing, so the recomputed graph keeps PLoRA (docs/model.md §7).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .configuration import PLoRAConfig


class PLoRAContext:
    """Per-layer, per-forward state: the image mask and the shared ``A(x)`` of q/k/v."""

    def __init__(self) -> None:
        self.image_mask: torch.Tensor | None = None
        self.qkv_input: torch.Tensor | None = None
        self.qkv_down: torch.Tensor | None = None

    def reset(self, image_mask: torch.Tensor | None = None) -> None:
        self.image_mask = image_mask if image_mask is not None and bool(image_mask.any()) else None
        self.qkv_input = self.qkv_down = None


def zero_init(linear: nn.Linear) -> nn.Linear:
    """Mark a linear to be zero-initialised by the model's weight init (LoRA B, expert output factor)."""
    linear._moai_zero_init = True
    return linear


def _lora_linear(in_features: int, out_features: int) -> nn.Linear:
    return nn.Linear(in_features, out_features, bias=False)


def add_plora(layer: nn.Module, config: PLoRAConfig) -> PLoRAContext:
    """Attach PLoRA factors and hooks to one Llama-style decoder layer; returns its context."""
    ctx = PLoRAContext()
    attn, mlp = layer.self_attn, layer.mlp
    scaling = config.alpha / config.r
    p = config.dropout

    def make_b(proj: nn.Linear) -> nn.Linear:
        b = _lora_linear(config.r, proj.out_features)
        if config.zero_init_b:
            zero_init(b)
        proj.plora_B = b
        return b

    # q, k, v: one shared A owned by the attention module
    attn.plora_A_qkv = _lora_linear(attn.q_proj.in_features, config.r)

    def qkv_hook(module: nn.Linear, args: tuple, output: torch.Tensor) -> torch.Tensor:
        mask = ctx.image_mask
        if mask is None:
            return output
        x = args[0]
        if ctx.qkv_input is not x:  # first of q/k/v on this input: compute the shared down-projection once
            ctx.qkv_input = x
            ctx.qkv_down = attn.plora_A_qkv(F.dropout(x[mask], p, module.training))  # [n_img, r]
        return output.index_put((mask,), module.plora_B(ctx.qkv_down) * scaling, accumulate=True)

    for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
        make_b(proj)
        proj.register_forward_hook(qkv_hook)

    def own_hook(module: nn.Linear, args: tuple, output: torch.Tensor) -> torch.Tensor:
        mask = ctx.image_mask
        if mask is None:
            return output
        delta = module.plora_B(module.plora_A(F.dropout(args[0][mask], p, module.training)))  # [n_img, out]
        return output.index_put((mask,), delta * scaling, accumulate=True)

    for proj in (attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj):
        proj.plora_A = _lora_linear(proj.in_features, config.r)
        make_b(proj)
        proj.register_forward_hook(own_hook)

    # The context is filled by a pre-hook on the *attention* module: transformers checkpoints the decoder
    # layer's `forward`, so hooks on the layer itself would not re-run when backward recomputes it, while
    # hooks on its attention (called inside that forward) do. The MLP runs later in the same forward and
    # reads the same mask. This hook must be registered before the one that pops `moai_state`.
    def attn_pre_hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        state = kwargs.get("moai_state")
        ctx.reset(None if state is None else state.image_mask)

    def attn_post_hook(module: nn.Module, args: tuple, output: Any) -> None:
        ctx.qkv_input = ctx.qkv_down = None  # drop this forward's activations

    attn.register_forward_pre_hook(attn_pre_hook, with_kwargs=True)
    attn.register_forward_hook(attn_post_hook)
    return ctx
