# Copyright 2026 The moai authors. SPDX-License-Identifier: MIT
"""MoAI-Compressor (paper §3, MoAI-Compressor; docs/model.md §5): a Perceiver resampler over the aux embeddings.

Input: aux embeddings = [word embeddings of the verbalized CV outputs ; projected panoptic-map tokens],
shape [B, T, D]. Output: [B, L, D] with L learned latents (64 in MoAI-7B), used only as keys/values of the
mixer's AUX experts. Each block: latents += Attn(LN(latents) -> q, [LN(x) ; LN(latents)] -> k, v), then
latents += FF(latents); a final LayerNorm.

Shapes: B batch, T aux tokens, L latents, D hidden, H heads, E head width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .configuration import MoAICompressorConfig


class PerceiverAttention(nn.Module):
    """Latents attend to [inputs ; latents] (Flamingo's variant of Perceiver cross-attention)."""

    def __init__(self, dim: int, num_heads: int, head_dim: int, eps: float) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        inner = num_heads * head_dim
        self.norm_media = nn.LayerNorm(dim, eps=eps)
        self.norm_latents = nn.LayerNorm(dim, eps=eps)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        b, t, _ = x.shape
        x, latents = self.norm_media(x), self.norm_latents(latents)
        q = self.to_q(latents)  # [B, L, H*E]
        k, v = self.to_kv(torch.cat([x, latents], dim=1)).chunk(2, dim=-1)  # [B, T+L, H*E] each
        q, k, v = (
            z.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2) for z in (q, k, v)
        )  # [B,H,*,E]
        sim = (q * self.head_dim**-0.5) @ k.transpose(-1, -2)  # [B, H, L, T+L]
        if key_mask is not None:
            keep = torch.cat(
                [key_mask.bool(), key_mask.new_ones(b, latents.shape[1], dtype=torch.bool)], dim=1
            )
            sim = sim.masked_fill(~keep[:, None, None, :], torch.finfo(sim.dtype).min)
        sim = sim - sim.amax(dim=-1, keepdim=True).detach()  # max-subtraction, as the official
        out = sim.softmax(dim=-1) @ v  # [B, H, L, E]
        return self.to_out(out.transpose(1, 2).flatten(2))  # [B, L, D]


class FeedForward(nn.Module):
    """LayerNorm -> Linear -> GELU -> Linear, no biases."""

    def __init__(self, dim: int, mult: float, eps: float) -> None:
        super().__init__()
        inner = int(dim * mult)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.fc1 = nn.Linear(dim, inner, bias=False)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class AuxEncoderLayer(nn.Module):
    """Not in the official model: one pre-LN transformer block over the aux tokens (bidirectional
    self-attention, padded tokens masked as keys, then a feed-forward), so that each aux word carries its
    neighbours: which object a relation's predicate belongs to, which the bare word embeddings do not say
    (`MoAICompressorConfig.encoder_layers`; docs/shapesworld.md, "Position: the easiest case first")."""

    def __init__(self, dim: int, config: MoAICompressorConfig) -> None:
        super().__init__()
        self.num_heads, self.head_dim = config.num_heads, config.head_dim
        inner = config.num_heads * config.head_dim
        self.norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.to_qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)
        self.ff = FeedForward(dim, config.ff_mult, config.layer_norm_eps)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        """Args: x [B, T, D]; key_mask [B, T] (1 = real token) or None. Returns [B, T, D]."""
        q, k, v = (
            z.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)
            for z in self.to_qkv(self.norm(x)).chunk(3, dim=-1)
        )  # [B, H, T, E] each
        keep = None
        if key_mask is not None:  # a row without any real token attends to all, so that nothing is NaN
            keep = key_mask.bool() | ~key_mask.bool().any(dim=-1, keepdim=True)
            keep = keep[:, None, None, :]  # [B, 1, 1, T]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)  # [B, H, T, E]
        x = x + self.to_out(out.transpose(1, 2).flatten(2))
        return x + self.ff(x)


class CompressorBlock(nn.Module):
    def __init__(self, dim: int, config: MoAICompressorConfig) -> None:
        super().__init__()
        self.attn = PerceiverAttention(dim, config.num_heads, config.head_dim, config.layer_norm_eps)
        self.ff = FeedForward(dim, config.ff_mult, config.layer_norm_eps)


class MoAICompressor(nn.Module):
    """Compress aux embeddings [B, T, D] into [B, L, D] learned-latent tokens."""

    param_group = "compressor"
    """Parameter group of the whole compressor (`MoAIForConditionalGeneration.parameter_groups`)."""

    def __init__(self, dim: int, config: MoAICompressorConfig) -> None:
        super().__init__()
        self.config = config
        # passthrough (not in the official model): no latents and no blocks, every aux token is handed on
        self.latents = (
            None
            if config.passthrough
            else nn.Parameter(torch.randn(config.num_latents, dim) * config.latent_init_std)
        )
        self.position_embedding = (
            nn.Embedding(config.max_aux_positions, dim) if config.aux_position_embeddings else None
        )
        self.encoder = nn.ModuleList(AuxEncoderLayer(dim, config) for _ in range(config.encoder_layers))
        depth = 0 if config.passthrough else config.depth
        self.layers = nn.ModuleList(CompressorBlock(dim, config) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)

    def add_positions(self, aux_embeds: torch.Tensor, aux_mask: torch.Tensor | None) -> torch.Tensor:
        """aux_embeds [B, T, D] plus the aux position embeddings (unchanged when the config has none)."""
        if self.position_embedding is None:
            return aux_embeds
        if aux_mask is None:
            positions = torch.arange(aux_embeds.shape[1], device=aux_embeds.device).expand(
                aux_embeds.shape[:2]
            )
        else:  # count positions over real tokens only, so left padding does not shift them
            positions = (aux_mask.long().cumsum(-1) - 1).clamp(min=0)
        positions = positions.clamp(max=self.position_embedding.num_embeddings - 1)
        return aux_embeds + self.position_embedding(positions)

    def forward(self, aux_embeds: torch.Tensor, aux_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Args: aux_embeds [B, T, D]; aux_mask [B, T] (1 = real token) or None. Returns [B, L, D], or
        [B, T, D] with ``passthrough`` (the caller masks the padded tokens)."""
        aux_embeds = self.add_positions(aux_embeds, aux_mask)
        for layer in self.encoder:
            aux_embeds = layer(aux_embeds, aux_mask)  # [B, T, D]
        if self.latents is None:
            return self.norm(aux_embeds)  # [B, T, D]
        key_mask = aux_mask if self.config.key_padding_mask else None
        latents = self.latents.to(aux_embeds.dtype).expand(aux_embeds.shape[0], -1, -1)  # [B, L, D]
        for block in self.layers:
            latents = block.attn(aux_embeds, latents, key_mask) + latents
            latents = block.ff(latents) + latents
        return self.norm(latents)
