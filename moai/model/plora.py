# Copyright 2026 The moai authors. SPDX-License-Identifier: MIT
"""Partial LoRA (PLoRA, from InternLM-XComposer2; docs/model.md §7): low-rank deltas at image tokens only.

Every linear of a decoder layer computes ``y = W x + b`` and, on the rows whose token is an image token,
adds ``B(A(dropout(x))) * alpha / r``. `PLoRALinear` is that linear: an ``nn.Linear`` (so ``.weight``, the
converter, peft LoRA targets and ``save_pretrained`` see a plain linear) with ``plora_A`` / ``plora_B``
factors, whose forward takes the image-token mask as an argument.

q, k and v share one ``A`` (the official fused ``wqkv`` has one); it is owned by the attention module
(``self_attn.plora_A_qkv``), which computes ``A(dropout(x))`` once and hands it to the three projections
(``down=``). Their ``B`` factors live on the projections (``q_proj.plora_B`` ...).

Shapes: B batch, S sequence, n image tokens in the batch, r rank.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .configuration import PLoRAConfig


def zero_init(linear: nn.Linear) -> nn.Linear:
    """Mark a linear to be zero-initialised by the model's weight init (LoRA B, expert output factor)."""
    linear._moai_zero_init = True
    return linear


class PLoRAFactor(nn.Linear):
    """One PLoRA factor (``A``: in -> r, or ``B``: r -> out), without bias."""

    param_group = "plora"
    """Parameter group of every PLoRA factor (`MoAIForConditionalGeneration.parameter_groups`)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features, bias=False)


def plora_down(
    a: PLoRAFactor, x: torch.Tensor, image_mask: torch.Tensor, p: float, training: bool
) -> torch.Tensor:
    """``A(dropout(x))`` at the image rows: x [B, S, in], image_mask [B, S] -> [n, r]."""
    return a(F.dropout(x[image_mask], p, training))


class PLoRALinear(nn.Linear):
    """``nn.Linear`` with a partial-LoRA delta at image tokens (docs/model.md §7).

    Args:
        in_features / out_features / bias: as ``nn.Linear``.
        config: the PLoRA settings, or None for a plain linear (no factors; the mask is ignored).
        own_a: give this linear its own ``plora_A``; False when the down-projection is shared (q, k, v) and
            passed to `forward` as ``down``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        *,
        config: PLoRAConfig | None = None,
        own_a: bool = True,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.plora_scaling = 0.0 if config is None else config.alpha / config.r
        self.plora_dropout = 0.0 if config is None else config.dropout
        if config is not None and own_a:
            self.plora_A = PLoRAFactor(in_features, config.r)
        if config is not None:
            self.plora_B = PLoRAFactor(config.r, out_features)
            if config.zero_init_b:
                zero_init(self.plora_B)

    @property
    def has_plora(self) -> bool:
        return hasattr(self, "plora_B")

    def forward(
        self, x: torch.Tensor, image_mask: torch.Tensor | None = None, down: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x [B, S, in] -> [B, S, out]; ``image_mask`` [B, S] (None: no image token in x); ``down`` [n, r]:
        the shared ``A(dropout(x))`` of q/k/v, computed by the caller."""
        out = F.linear(x, self.weight, self.bias)
        if image_mask is None or not self.has_plora:
            return out
        if down is None:
            down = plora_down(self.plora_A, x, image_mask, self.plora_dropout, self.training)
        delta = self.plora_B(down) * self.plora_scaling  # [n, out]
        return out.index_put((image_mask,), delta, accumulate=True)
