# Copyright 2026 The moai authors. SPDX-License-Identifier: MIT
"""Image path: CLIP vision tower at the target resolution + the mlp2x_gelu projector (docs/model.md §2).

Shapes: B batch, N image patch tokens (CLS dropped), C vision width, D LLM hidden size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface, CLIPVisionModel
from transformers.activations import ACT2FN
from transformers.masking_utils import AttentionMaskInterface, eager_mask
from transformers.modeling_outputs import BaseModelOutputWithPooling

OFFICIAL_CLIP_ATTENTION = "moai_clip_official"


def clip_official_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: object,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP attention with the arithmetic order of transformers 4.38 (the official MoAI environment).

    The query is scaled *before* ``q @ k^T`` (current transformers scales the product), which makes the
    vision features, and everything after them, bit-identical to the official fixtures instead of ~1e-6 off;
    the fp16 gate softmax of the official mixer turns such noise into ~1e-3 logit differences.
    Shapes: query/key/value [B, H, N, E] -> output [B, N, H, E].
    """
    weights = torch.matmul(query * scaling, key.transpose(2, 3))  # [B, H, N, N]
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = F.softmax(weights, dim=-1)
    weights = F.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


AttentionInterface.register(OFFICIAL_CLIP_ATTENTION, clip_official_attention)
AttentionMaskInterface.register(OFFICIAL_CLIP_ATTENTION, eager_mask)


def interpolate_position_table(
    table: torch.Tensor, new_grid: int, *, fp16_roundtrip: bool = True
) -> torch.Tensor:
    """Resize a CLIP position table (1 + g*g, C) to (1 + new_grid^2, C), as the official tower does once.

    Bicubic, ``align_corners=False``, on the patch rows only; the CLS row is kept. The official code casts
    the interpolated patch rows to fp16 and back (``fp16_roundtrip``), which changes them by up to ~1e-3
    relative; reproducing it is needed for parity with MoAI-7B (docs/model.md §2).
    """
    num_rows, width = table.shape
    old_grid = int(round((num_rows - 1) ** 0.5))
    if old_grid * old_grid != num_rows - 1:
        raise ValueError(f"position table has {num_rows} rows, expected 1 + a square number")
    cls_row, patch_rows = table[:1], table[1:]
    grid = patch_rows.reshape(1, old_grid, old_grid, width).permute(0, 3, 1, 2).float()  # [1, C, g, g]
    grid = F.interpolate(grid, size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    patch_rows = grid.permute(0, 2, 3, 1).reshape(new_grid * new_grid, width)  # [g'^2, C]
    if fp16_roundtrip:
        patch_rows = patch_rows.half().float()
    return torch.cat([cls_row.float(), patch_rows], dim=0).to(table.dtype)


def load_clip_weights(
    tower: CLIPVisionModel, state_dict: dict[str, torch.Tensor], *, fp16_roundtrip: bool = True
) -> None:
    """Load CLIP weights trained at another resolution into ``tower``, interpolating the position table once
    (`interpolate_position_table`), as the official tower does when it is built (docs/model.md §2)."""
    state_dict = dict(state_dict)
    key = "embeddings.position_embedding.weight"
    table = state_dict[key]
    target = tower.embeddings.position_embedding.weight
    if table.shape != target.shape:
        new_grid = int(round((target.shape[0] - 1) ** 0.5))
        state_dict[key] = interpolate_position_table(table, new_grid, fp16_roundtrip=fp16_roundtrip)
    tower.load_state_dict(state_dict, strict=True)


def select_patch_features(outputs: BaseModelOutputWithPooling, feature_layer: int) -> torch.Tensor:
    """The patch features MoAI reads from the CLIP tower's output: [B, N, C], CLS dropped.

    ``feature_layer`` -1 is ``last_hidden_state``: the last encoder layer *before* CLIP's post-layernorm
    (what the official MoAI-7B reads as ``hidden_states[-1]``); another index selects ``hidden_states[i]``
    (the tower must then be run with ``output_hidden_states=True``).
    """
    hidden = outputs.last_hidden_state if feature_layer == -1 else outputs.hidden_states[feature_layer]
    return hidden[:, 1:]  # [B, N, C]


class MoAIProjector(nn.Sequential):
    """mlp2x_gelu: Linear(C, D) -> GELU -> Linear(D, D) (LLaVA-1.5 / InternLM-XComposer2 style)."""

    def __init__(self, in_features: int, out_features: int, act: str = "gelu") -> None:
        super().__init__(
            nn.Linear(in_features, out_features), ACT2FN[act], nn.Linear(out_features, out_features)
        )
