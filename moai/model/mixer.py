"""MoAI-Mixer (paper §3, MoAI-Mixer; docs/model.md §6): six attention experts and two gates per mixer layer.

The mixer rewrites the *normalised* hidden states of the image tokens and of the language tokens just
before the attention projection of its decoder layer; the residual stream is untouched (docs/model.md §6).

    image stream     h_img  -> w0 * I_AUX(h_img, aux) + w1 * I_LANG(h_img, h_lang) + w2 * I_SELF(h_img, h_img)
    language stream  h_lang -> w0 * L_AUX(h_lang, aux) + w1 * L_IMG(h_lang, h_img) + w2 * L_SELF(h_lang, h_lang)

with (w0, w1, w2) = softmax(gate(h)) per token. Both streams are computed from the same pre-mix states.

Shapes: B batch, S sequence, N_i / N_l gathered image / language tokens per sample, A aux (compressed)
tokens, D hidden, H heads, E = D / H head width, R low rank.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .configuration import MoAIMixerConfig

# Per-token stream ids (the processor's `mm_token_type_ids`).
STREAM_NONE, STREAM_IMAGE, STREAM_PROMPT, STREAM_ANSWER = 0, 1, 2, 3

IMAGE_EXPERTS = ("img_aux", "img_lang", "img_self")
LANGUAGE_EXPERTS = ("lang_aux", "lang_img", "lang_self")


class LowRankLinear(nn.Sequential):
    """Linear(D, R) -> Linear(R, D), no biases: the factorised projection of every expert."""

    def __init__(self, dim: int, rank: int) -> None:
        super().__init__(nn.Linear(dim, rank, bias=False), nn.Linear(rank, dim, bias=False))


class ExpertAttention(nn.Module):
    """One MoAI expert: multi-head attention with low-rank, GELU-activated projections.

    ``out = x_q + GELU(o(attn(GELU(q(x_q)), GELU(k(x_kv)), GELU(v(x_kv)))))`` (docs/model.md §6): the internal
    residual around the whole expert makes an expert with a zero last ``o`` factor the identity.
    """

    def __init__(self, dim: int, num_heads: int, rank: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = LowRankLinear(dim, rank)
        self.k_proj = LowRankLinear(dim, rank)
        self.v_proj = LowRankLinear(dim, rank)
        self.o_proj = LowRankLinear(dim, rank)

    def forward(
        self, x_q: torch.Tensor, x_kv: torch.Tensor, keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Args: x_q [B, Nq, D]; x_kv [B, Nk, D]; keep [B, Nq, Nk] or [B, 1, Nk] bool (True = may attend)."""
        q, k, v = F.gelu(self.q_proj(x_q)), F.gelu(self.k_proj(x_kv)), F.gelu(self.v_proj(x_kv))
        q, k, v = (z.unflatten(-1, (self.num_heads, -1)).transpose(1, 2) for z in (q, k, v))  # [B, H, N, E]
        scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5  # [B, H, Nq, Nk]
        if keep is not None:
            scores = scores.masked_fill(~keep[:, None], torch.finfo(scores.dtype).min)
        out = scores.softmax(dim=-1) @ v  # [B, H, Nq, E]
        out = out.transpose(1, 2).flatten(2)  # [B, Nq, D]
        return x_q + F.gelu(self.o_proj(out))


@dataclass
class Stream:
    """A stream gathered per sample: positions [B, N] (stream tokens first, in sequence order) and validity."""

    index: torch.Tensor
    valid: torch.Tensor

    @classmethod
    def from_mask(cls, mask: torch.Tensor) -> Stream:
        counts = mask.sum(dim=1)  # [B]
        n = int(counts.max()) if mask.numel() else 0
        # stable sort puts the stream's positions first, in their original order
        index = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :n]  # [B, N]
        valid = torch.arange(n, device=mask.device)[None, :] < counts[:, None]  # [B, N]
        return cls(index, valid)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        return x.gather(1, self.index[..., None].expand(-1, -1, x.shape[-1]))  # [B, N, D]

    def scatter(self, x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Write values [B, N, D] back at the stream positions of x [B, S, D]; padding slots are left as is."""
        idx = self.index[..., None].expand(-1, -1, x.shape[-1])
        values = torch.where(self.valid[..., None], values.to(x.dtype), x.gather(1, idx))
        return x.scatter(1, idx, values)


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class MoAIMixer(nn.Module):
    """Six experts + two gates for one decoder layer (registered on that layer's attention module)."""

    def __init__(self, dim: int, config: MoAIMixerConfig) -> None:
        super().__init__()
        self.config = config
        for name in IMAGE_EXPERTS + LANGUAGE_EXPERTS:
            self.add_module(name, ExpertAttention(dim, config.num_heads, config.rank))
        self.gate_img = nn.Linear(dim, 3)
        self.gate_lang = nn.Linear(dim, 3)

    def forward(
        self,
        hidden: torch.Tensor,
        streams: torch.Tensor,
        aux: torch.Tensor,
        *,
        mode: str,
        choice: tuple[int, int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mix one layer's normalised states.

        Args:
            hidden: [B, S, D] normalised hidden states (the attention input).
            streams: [B, S] stream id per token (0 none, 1 image, 2 prompt language, 3 answer).
            aux: [B, A, D] compressed aux tokens.
            mode: ``sample`` | ``gated`` | ``topk``.
            choice: step-1 expert indices (image, language), required in ``sample`` mode (0 aux, 1 cross-modal,
                2 self); the caller draws them so that a gradient-checkpointing recompute reuses the draw.

        Returns:
            (mixed hidden [B, S, D], gate weights [B, S, 3]; image positions hold the weights of
            (I_AUX, I_LANG, I_SELF), language positions those of (L_AUX, L_IMG, L_SELF), others zero).
        """
        cfg = self.config
        causal = cfg.scope == "causal"
        img_mask = streams == STREAM_IMAGE
        prompt_mask = streams == STREAM_PROMPT
        lang_mask = (prompt_mask | (streams == STREAM_ANSWER)) if causal else prompt_mask
        img, lang = Stream.from_mask(img_mask), Stream.from_mask(lang_mask)
        h_img, h_lang = img.gather(hidden), lang.gather(hidden)  # [B, Ni, D], [B, Nl, D]

        pad = cfg.expert_padding_mask
        img_keys = img.valid[:, None, :] if pad else None  # [B, 1, Ni]
        lang_keys = lang.valid[:, None, :] if pad else None  # [B, 1, Nl]
        img_to_lang = lang_keys
        lang_self = lang_keys
        if causal:
            # image tokens see only prompt language tokens; the language stream is causal (slot order = sequence order)
            is_prompt = prompt_mask.gather(1, lang.index) & lang.valid  # [B, Nl]
            img_to_lang = is_prompt[:, None, :]
            n = lang.index.shape[1]
            tri = torch.ones(n, n, dtype=torch.bool, device=hidden.device).tril()
            lang_self = tri[None] if lang_keys is None else (tri[None] & lang_keys)

        img_inputs = ((aux, None), (h_lang, img_to_lang), (h_img, img_keys))
        lang_inputs = ((aux, None), (h_img, img_keys), (h_lang, lang_self))
        img_experts = [getattr(self, n) for n in IMAGE_EXPERTS]
        lang_experts = [getattr(self, n) for n in LANGUAGE_EXPERTS]

        if mode == "sample":
            if choice is None:
                raise ValueError("sample mode needs the expert choice (image, language)")
            mix_img = img_experts[choice[0]](h_img, *img_inputs[choice[0]]) if h_img.shape[1] else h_img
            mix_lang = lang_experts[choice[1]](h_lang, *lang_inputs[choice[1]]) if h_lang.shape[1] else h_lang
            w_img = F.one_hot(torch.tensor(choice[0]), 3).to(hidden.dtype).expand(*h_img.shape[:2], 3)
            w_lang = F.one_hot(torch.tensor(choice[1]), 3).to(hidden.dtype).expand(*h_lang.shape[:2], 3)
        elif mode in ("gated", "topk"):
            w_img, w_lang = self._gate(self.gate_img, h_img, mode), self._gate(self.gate_lang, h_lang, mode)
            mix_img = self._combine(h_img, w_img, img_experts, img_inputs)
            mix_lang = self._combine(h_lang, w_lang, lang_experts, lang_inputs)
        else:
            raise ValueError(f"mixer mode must be sample, gated or topk, got {mode!r}")

        out = lang.scatter(img.scatter(hidden, mix_img), mix_lang)
        weights = hidden.new_zeros(*hidden.shape[:2], 3)
        weights = lang.scatter(img.scatter(weights, w_img), w_lang)
        return out, weights

    def _gate(self, gate: nn.Linear, h: torch.Tensor, mode: str) -> torch.Tensor:
        """Softmax gate weights [B, N, 3] in the configured dtype (official: fp16 eval / bf16 step 2)."""
        logits = gate(h)
        weights = F.softmax(logits, dim=-1, dtype=_DTYPES[self.config.gate_softmax_dtype]).to(h.dtype)
        if mode == "topk":
            top = weights.topk(self.config.top_k, dim=-1)
            weights = torch.zeros_like(weights).scatter(-1, top.indices, top.values)
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights

    @staticmethod
    def _combine(h: torch.Tensor, w: torch.Tensor, experts: list[nn.Module], inputs: tuple) -> torch.Tensor:
        if h.shape[1] == 0:
            return h
        out = None
        for i, (expert, (kv, keep)) in enumerate(zip(experts, inputs)):
            term = w[..., i : i + 1] * expert(h, kv, keep)
            out = term if out is None else out + term
        return out
