# Copyright 2026 The moai authors. SPDX-License-Identifier: MIT
"""MoAI-Mixer (paper §3, MoAI-Mixer; docs/model.md §6): six attention experts and two gates per mixer layer.

The mixer rewrites the *normalised* hidden states of the image tokens and of the language tokens just
before the attention projections of its decoder layer (`MoAIDecoderLayer.forward`); the residual stream is
untouched (docs/model.md §6).

    image stream     h_img  -> w0 * I_AUX(h_img, aux) + w1 * I_LANG(h_img, h_lang) + w2 * I_SELF(h_img, h_img)
    language stream  h_lang -> w0 * L_AUX(h_lang, aux) + w1 * L_IMG(h_lang, h_img) + w2 * L_SELF(h_lang, h_lang)

with (w0, w1, w2) = softmax(gate(h)) per token. Both streams are computed from the same pre-mix states.
Run-time switches (routing mode, step-1 draw, gate softmax dtype, scope) are a `MixerSettings`, set on the
model with `MoAIForConditionalGeneration.set_mixer` and handed to every mixer in `MixerInputs`.

Shapes: B batch, S sequence, N_i / N_l gathered image / language tokens per sample, A aux (compressed)
tokens, D hidden, H heads, E = D / H head width, R low rank.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .configuration import MoAIMixerConfig
from .constants import (
    EXPERT_NAMES,
    EXPERTS_PER_STREAM,
    IMAGE_EXPERTS,
    LANGUAGE_EXPERTS,
    MIXER_MODES,
    STREAM_ANSWER,
    STREAM_IMAGE,
    STREAM_PROMPT,
)
from .plora import zero_init

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
SCOPES = ("prompt", "causal")


def gate_bias_from(values: dict[str, float]) -> tuple[float, ...]:
    """A ``MixerSettings.gate_bias`` from ``{expert name: bias}`` (names of ``EXPERT_NAMES``; others 0)."""
    unknown = sorted(set(values) - set(EXPERT_NAMES))
    if unknown:
        raise ValueError(
            f"unknown expert(s) {unknown} in the gate bias; choose from {', '.join(EXPERT_NAMES)}"
        )
    return tuple(float(values.get(name, 0.0)) for name in EXPERT_NAMES)


def parse_gate_bias(text: str, what: str = "gate bias") -> tuple[float, ...]:
    """``"I_AUX=+1,L_AUX=0.5"`` -> a ``MixerSettings.gate_bias`` (experts not named get 0); a malformed
    text is a ValueError naming ``what`` (a CLI passes its flag)."""
    values = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        try:
            values[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"{what} {text!r}: expected EXPERT=NUMBER[,EXPERT=NUMBER]") from None
        if not sep:
            raise ValueError(f"{what} {text!r}: expected EXPERT=NUMBER[,EXPERT=NUMBER]")
    try:
        return gate_bias_from(values)
    except ValueError as err:
        raise ValueError(f"{what} {text!r}: {err}") from None


@dataclass(frozen=True)
class MixerSettings:
    """The mixers' run-time switches (docs/model.md §6, §10). A model starts from its ``mixer_config``
    and changes them with `MoAIForConditionalGeneration.set_mixer`; the config itself is never mutated."""

    mode: str = "gated"
    """``sample`` (training step 1: one random expert per stream and layer, no gates), ``gated`` (step 2
    and inference: dense softmax mix) or ``topk`` (keep the ``top_k`` largest gate weights)."""
    forced_experts: tuple[int, int] | None = None
    """Step-1 choice (image expert, language expert), 0 aux / 1 cross-modal / 2 self, in every mixer
    layer; None draws uniformly at random."""
    generator: torch.Generator | None = field(default=None, compare=False)
    """RNG of the step-1 draws (None: torch's global RNG)."""
    gate_softmax_dtype: str = "float32"
    """dtype of the gate softmax (official: float16 at inference, bfloat16 in step 2)."""
    top_k: int = 2
    """k of ``topk`` mode (1 or 2)."""
    scope: str = "prompt"
    """Language tokens in the mixer: ``prompt`` (bidirectional) or ``causal`` (answers join, causally)."""
    gate_bias: tuple[float, ...] | None = None
    """Test-time gate steering: a bias added to the gate logits, one value per expert in ``EXPERT_NAMES``
    order (image gate ``I_AUX, I_LANG, I_SELF``, then language gate ``L_AUX, L_IMG, L_SELF``); None adds
    nothing. ``gate_bias_from({"I_AUX": 1.0})`` builds one."""

    def __post_init__(self) -> None:
        if self.mode not in MIXER_MODES:
            raise ValueError(f"mixer mode must be sample, gated or topk, got {self.mode!r}")
        if self.forced_experts is not None:
            forced = tuple(self.forced_experts)
            if len(forced) != 2 or any(e not in range(EXPERTS_PER_STREAM) for e in forced):
                raise ValueError(
                    f"forced_experts must be (image, language) with values in 0..{EXPERTS_PER_STREAM - 1}, "
                    f"got {self.forced_experts}"
                )
            object.__setattr__(self, "forced_experts", forced)
        if self.gate_softmax_dtype not in _DTYPES:
            raise ValueError(
                f"gate_softmax_dtype must be one of {sorted(_DTYPES)}, got {self.gate_softmax_dtype!r}"
            )
        if self.top_k not in (1, 2):
            raise ValueError(f"top_k must be 1 or 2, got {self.top_k}")
        if self.scope not in SCOPES:
            raise ValueError(f"mixer scope must be prompt or causal, got {self.scope!r}")
        if self.gate_bias is not None:
            bias = tuple(float(b) for b in self.gate_bias)
            if len(bias) != len(EXPERT_NAMES) or not all(math.isfinite(b) for b in bias):
                raise ValueError(
                    f"gate_bias must be {len(EXPERT_NAMES)} finite numbers, got {self.gate_bias!r}"
                )
            object.__setattr__(self, "gate_bias", bias)

    @classmethod
    def from_config(cls, config: MoAIMixerConfig) -> MixerSettings:
        """The defaults a model built from ``config`` starts with."""
        forced = config.forced_experts
        return cls(
            mode=config.mode,
            forced_experts=None if forced is None else tuple(forced),
            gate_softmax_dtype=config.gate_softmax_dtype,
            top_k=config.top_k,
            scope=config.scope,
        )

    @property
    def decodes_with_memory(self) -> bool:
        """Whether cached decode steps mix their tokens against a `MixerMemory`: the gated (or top-k) mixing
        of ``causal`` scope, where answer tokens are in the language stream."""
        return self.scope == "causal" and self.mode != "sample"

    def replace(self, **changes: Any) -> MixerSettings:
        """A copy with ``changes`` applied (validated); an unknown name is a ValueError naming it."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            names = ", ".join(f.name for f in dataclasses.fields(self))
            raise ValueError(f"unknown mixer setting(s) {unknown}; the settings are {names}")
        return dataclasses.replace(self, **changes)

    def draw_experts(self, layers: list[int]) -> dict[int, tuple[int, int]]:
        """The step-1 expert choice (image, language) of each mixer layer, drawn once per forward, in layer
        order, image first (the official draw order). Drawn before the decoder runs, so that a
        gradient-checkpointing recompute of a layer reuses its draw. Empty outside ``sample`` mode."""
        if self.mode != "sample":
            return {}
        if self.forced_experts is not None:
            return {layer: self.forced_experts for layer in layers}
        choices = {}
        for layer in layers:
            image = int(torch.randint(0, EXPERTS_PER_STREAM, (1,), generator=self.generator))
            language = int(torch.randint(0, EXPERTS_PER_STREAM, (1,), generator=self.generator))
            choices[layer] = (image, language)
        return choices


@dataclass(frozen=True)
class MixerInputs:
    """What every mixer layer receives in one forward (built by `MoAIModel.forward`)."""

    streams: torch.Tensor
    """[B, S] stream id per token of this forward's chunk (moai.model.constants)."""
    aux: torch.Tensor
    """[B, A, D] compressed aux tokens (the MoAI-Compressor's output)."""
    settings: MixerSettings
    """Routing, gate dtype and scope."""
    choices: dict[int, tuple[int, int]]
    """Step-1 draws per decoder layer index (`MixerSettings.draw_experts`)."""
    aux_keep: torch.Tensor | None = None
    """[B, A] True where an aux token is real: set when the compressor passes padded aux tokens through
    (`MoAICompressorConfig.passthrough`); None when every aux token is real (the latents)."""
    memory: dict[int, MixerMemory] | None = None
    """Per mixer layer, the states of the tokens before this chunk (`MixerMemory`), kept by a `MoAICache`
    for the decode steps of ``causal`` scope; None outside it. Each mixer layer reads its entry and writes
    the entry extended by this chunk."""


class LowRankLinear(nn.Sequential):
    """Linear(D, R) -> Linear(R, D), no biases: the factorised projection of every expert."""

    def __init__(self, dim: int, rank: int) -> None:
        super().__init__(nn.Linear(dim, rank, bias=False), nn.Linear(rank, dim, bias=False))


class ExpertAttention(nn.Module):
    """One MoAI expert: multi-head attention with low-rank, GELU-activated projections.

    ``out = x_q + GELU(o(attn(GELU(q(x_q)), GELU(k(x_kv)), GELU(v(x_kv)))))`` (docs/model.md §6): the internal
    residual around the whole expert makes an expert with a zero last ``o`` factor the identity.

    With ``sink`` (`MoAIMixerConfig.attention_sink`, not in the official model) a learned key and value,
    zero at init, stand before the keys: a query may attend to it instead of any token (docs/model.md §6).
    """

    def __init__(self, dim: int, num_heads: int, rank: int, sink: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = LowRankLinear(dim, rank)
        self.k_proj = LowRankLinear(dim, rank)
        self.v_proj = LowRankLinear(dim, rank)
        self.o_proj = LowRankLinear(dim, rank)
        if sink:
            self.sink_key = nn.Parameter(torch.zeros(dim))
            self.sink_value = nn.Parameter(torch.zeros(dim))
        else:
            self.sink_key = self.sink_value = None

    def forward(
        self, x_q: torch.Tensor, x_kv: torch.Tensor, keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Args: x_q [B, Nq, D]; x_kv [B, Nk, D]; keep [B, Nq, Nk] or [B, 1, Nk] bool (True = may attend)."""
        q, k, v = F.gelu(self.q_proj(x_q)), F.gelu(self.k_proj(x_kv)), F.gelu(self.v_proj(x_kv))
        if self.sink_key is not None:
            batch = x_kv.shape[0]
            k = torch.cat([self.sink_key.expand(batch, 1, -1), k], dim=1)  # [B, 1 + Nk, D]
            v = torch.cat([self.sink_value.expand(batch, 1, -1), v], dim=1)  # [B, 1 + Nk, D]
            if keep is not None:  # the sink is always there
                keep = F.pad(keep, (1, 0), value=True)  # [B, Nq or 1, 1 + Nk]
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


@dataclass
class MixerMemory:
    """What one mixer layer keeps of the tokens already run, for the decode steps of ``causal`` scope
    (docs/model.md §8): the pre-mix normalised states the new language tokens attend to. Image tokens are
    all in the prefill and see only prompt language tokens, so nothing later changes them; a new answer
    token reads the image stream (L_IMG) and every earlier language token (L_SELF)."""

    image: torch.Tensor
    """[B, Ni, D] the image stream, gathered at prefill (padding slots as the mixer gathered them)."""
    image_valid: torch.Tensor
    """[B, Ni] True at a real image token."""
    language: torch.Tensor
    """[B, Nl, D] the language stream so far: the prefill's gathered stream, then each decode chunk whole."""
    language_valid: torch.Tensor
    """[B, Nl] True at a language-stream token (padding slots and tokens outside the stream are False)."""

    @classmethod
    def of_prefill(cls, hidden: torch.Tensor, streams: torch.Tensor) -> MixerMemory:
        """The memory after a prefill: hidden [B, S, D] normalised states, streams [B, S] (causal scope)."""
        img = Stream.from_mask(streams == STREAM_IMAGE)
        lang = Stream.from_mask(_language_mask(streams, causal=True))
        return cls(img.gather(hidden), img.valid, lang.gather(hidden), lang.valid)

    def extended(self, hidden: torch.Tensor, streams: torch.Tensor) -> MixerMemory:
        """This memory with a decode chunk appended: hidden [B, S, D], streams [B, S] (no image token)."""
        lang = _language_mask(streams, causal=True)  # [B, S]
        return MixerMemory(
            self.image,
            self.image_valid,
            torch.cat([self.language, hidden], dim=1),  # [B, Nl + S, D]
            torch.cat([self.language_valid, lang], dim=1),  # [B, Nl + S]
        )

    def select(self, index: torch.Tensor) -> MixerMemory:
        """The memory of the samples ``index`` [B'] (beam reordering, batch selection, repetition)."""
        return MixerMemory(*(t.index_select(0, index.to(t.device)) for t in dataclasses.astuple(self)))

    def cropped(self, tokens: int) -> MixerMemory:
        """The memory without its last ``tokens`` decoded tokens (assisted decoding's rejected candidates)."""
        return MixerMemory(
            self.image, self.image_valid, self.language[:, :-tokens], self.language_valid[:, :-tokens]
        )


def _language_mask(streams: torch.Tensor, causal: bool) -> torch.Tensor:
    """[B, S] True at the language stream's tokens: prompt tokens, and answer tokens in ``causal`` scope."""
    prompt = streams == STREAM_PROMPT
    return (prompt | (streams == STREAM_ANSWER)) if causal else prompt


class MoAIMixer(nn.Module):
    """Six experts + two gates for one decoder layer (paper §3, MoAI-Mixer).

    Registered on that layer's attention module (``self_attn.moai_mixer``, the official ``attention.moai_*``
    layout) and called by `MoAIDecoderLayer.forward` between the input norm and the attention.
    """

    param_group = "mixers"
    """Parameter group of the experts and gates (`MoAIForConditionalGeneration.parameter_groups`)."""

    def __init__(self, dim: int, config: MoAIMixerConfig) -> None:
        super().__init__()
        self.expert_padding_mask = config.expert_padding_mask
        self.into_residual = config.into_residual
        for name in IMAGE_EXPERTS + LANGUAGE_EXPERTS:
            expert = ExpertAttention(dim, config.num_heads, config.rank, sink=config.attention_sink)
            if (
                config.identity_init
            ):  # a zero last output factor makes the expert, hence the mixer, the identity
                zero_init(expert.o_proj[1])
            self.add_module(name, expert)
        self.gate_img = nn.Linear(dim, EXPERTS_PER_STREAM)
        self.gate_lang = nn.Linear(dim, EXPERTS_PER_STREAM)

    def forward(
        self,
        hidden: torch.Tensor,
        streams: torch.Tensor,
        aux: torch.Tensor,
        *,
        settings: MixerSettings,
        choice: tuple[int, int] | None = None,
        aux_keep: torch.Tensor | None = None,
        past: MixerMemory | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mix one layer's normalised states.

        Args:
            hidden: [B, S, D] normalised hidden states (the attention input).
            streams: [B, S] stream id per token (0 none, 1 image, 2 prompt language, 3 answer).
            aux: [B, A, D] compressed aux tokens.
            aux_keep: [B, A] True where an aux token is real, or None (all are).
            settings: routing mode, gate softmax dtype, top-k and scope.
            choice: step-1 expert indices (image, language), required in ``sample`` mode (0 aux, 1 cross-modal,
                2 self); drawn before the decoder runs (`MixerSettings.draw_experts`), so that a
                gradient-checkpointing recompute reuses the draw.
            past: the states of the tokens before this chunk (``causal`` scope, a decode step of a cached
                generation; `MixerMemory`): the chunk's language tokens attend to them as to the earlier
                tokens of one whole sequence.

        Returns:
            (mixed hidden [B, S, D], gate weights [B, S, 3]; image positions hold the weights of
            (I_AUX, I_LANG, I_SELF), language positions those of (L_AUX, L_IMG, L_SELF), others zero).
        """
        if past is not None:
            return self._decode(hidden, streams, aux, aux_keep, settings, past)
        mode = settings.mode
        causal = settings.scope == "causal"
        img_mask = streams == STREAM_IMAGE
        prompt_mask = streams == STREAM_PROMPT
        lang_mask = _language_mask(streams, causal)
        img, lang = Stream.from_mask(img_mask), Stream.from_mask(lang_mask)
        h_img, h_lang = img.gather(hidden), lang.gather(hidden)  # [B, Ni, D], [B, Nl, D]

        pad = self.expert_padding_mask
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

        aux_keys = None if aux_keep is None else aux_keep[:, None, :]  # [B, 1, A]
        img_inputs = ((aux, aux_keys), (h_lang, img_to_lang), (h_img, img_keys))
        lang_inputs = ((aux, aux_keys), (h_img, img_keys), (h_lang, lang_self))
        img_experts = [getattr(self, n) for n in IMAGE_EXPERTS]
        lang_experts = [getattr(self, n) for n in LANGUAGE_EXPERTS]

        k = EXPERTS_PER_STREAM
        if mode == "sample":
            if choice is None:
                raise ValueError("sample mode needs the expert choice (image, language)")
            mix_img = img_experts[choice[0]](h_img, *img_inputs[choice[0]]) if h_img.shape[1] else h_img
            mix_lang = lang_experts[choice[1]](h_lang, *lang_inputs[choice[1]]) if h_lang.shape[1] else h_lang
            w_img = (
                F.one_hot(torch.tensor(choice[0], device=hidden.device), k)
                .to(hidden.dtype)
                .expand(*h_img.shape[:2], k)
            )
            w_lang = (
                F.one_hot(torch.tensor(choice[1], device=hidden.device), k)
                .to(hidden.dtype)
                .expand(*h_lang.shape[:2], k)
            )
        elif mode in ("gated", "topk"):
            bias = settings.gate_bias  # None, or six logits: the image gate's three, then the language gate's
            w_img = self._gate(self.gate_img, h_img, settings, bias and bias[:k])
            w_lang = self._gate(self.gate_lang, h_lang, settings, bias and bias[k:])
            mix_img = self._combine(h_img, w_img, img_experts, img_inputs)
            mix_lang = self._combine(h_lang, w_lang, lang_experts, lang_inputs)
        else:
            raise ValueError(f"mixer mode must be sample, gated or topk, got {mode!r}")

        out = lang.scatter(img.scatter(hidden, mix_img), mix_lang)
        weights = hidden.new_zeros(*hidden.shape[:2], k)
        weights = lang.scatter(img.scatter(weights, w_img), w_lang)
        return out, weights

    def _decode(
        self,
        hidden: torch.Tensor,
        streams: torch.Tensor,
        aux: torch.Tensor,
        aux_keep: torch.Tensor | None,
        settings: MixerSettings,
        past: MixerMemory,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A decode chunk in ``causal`` scope: its language tokens mixed as `forward` mixes them in the whole
        sequence, their keys the image stream and the language stream of ``past`` followed by the chunk's own
        language tokens up to each query (causal). A chunk has no image token: images are in the prefill."""
        if not settings.decodes_with_memory:
            raise ValueError("a mixer memory serves the gated decode steps of causal scope only")
        if bool((streams == STREAM_IMAGE).any()):
            raise ValueError(
                "image tokens after the prefill: a mixer memory holds the image stream of the prefill"
            )
        chunk_lang = _language_mask(streams, causal=True)  # [B, S]
        lang = Stream.from_mask(chunk_lang)
        h_lang = lang.gather(hidden)  # [B, Nq, D]
        span = torch.arange(hidden.shape[1], device=hidden.device)
        sees_chunk = (span[None, None, :] <= lang.index[..., None]) & chunk_lang[:, None, :]  # [B, Nq, S]
        sees_past = past.language_valid[:, None, :].expand(-1, lang.index.shape[1], -1)  # [B, Nq, Nl]
        lang_self = torch.cat([sees_past, sees_chunk], dim=-1)  # [B, Nq, Nl + S]
        keys = torch.cat([past.language, hidden], dim=1)  # [B, Nl + S, D]
        img_keys = past.image_valid[:, None, :] if self.expert_padding_mask else None  # [B, 1, Ni]
        aux_keys = None if aux_keep is None else aux_keep[:, None, :]  # [B, 1, A]
        inputs = ((aux, aux_keys), (past.image, img_keys), (keys, lang_self))
        bias = settings.gate_bias
        k = EXPERTS_PER_STREAM
        w_lang = self._gate(self.gate_lang, h_lang, settings, bias and bias[k:])
        mix_lang = self._combine(h_lang, w_lang, [getattr(self, n) for n in LANGUAGE_EXPERTS], inputs)
        weights = lang.scatter(hidden.new_zeros(*hidden.shape[:2], k), w_lang)
        return lang.scatter(hidden, mix_lang), weights

    @staticmethod
    def _gate(
        gate: nn.Linear, h: torch.Tensor, settings: MixerSettings, bias: tuple[float, ...] | None = None
    ) -> torch.Tensor:
        """Softmax gate weights [B, N, 3] in the set dtype (official: fp16 eval / bf16 step 2); ``bias`` is
        added to the logits (test-time steering)."""
        logits = gate(h)
        if bias is not None:
            logits = logits + torch.tensor(bias, dtype=logits.dtype, device=logits.device)
        weights = F.softmax(logits, dim=-1, dtype=_DTYPES[settings.gate_softmax_dtype]).to(h.dtype)
        if settings.mode == "topk":
            top = weights.topk(settings.top_k, dim=-1)
            weights = torch.zeros_like(weights).scatter(-1, top.indices, top.values)
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights

    @staticmethod
    def _combine(h: torch.Tensor, w: torch.Tensor, experts: list[nn.Module], inputs: tuple) -> torch.Tensor:
        """Dense mix ``sum_i w_i * expert_i(h, kv_i)`` of one stream: h [B, N, D], w [B, N, 3] -> [B, N, D]."""
        if h.shape[1] == 0:
            return h
        out = None
        for i, (expert, (kv, keep)) in enumerate(zip(experts, inputs)):
            term = w[..., i : i + 1] * expert(h, kv, keep)
            out = term if out is None else out + term
        return out


def gate_statistics(
    gate_weights: tuple[torch.Tensor, ...] | None, streams: torch.Tensor, layers: list[int]
) -> dict:
    """Average gate weight of each expert per mixer layer, over the tokens that layer mixed (image experts
    over image tokens, language experts over the language tokens in the mixer scope: answer tokens outside
    the ``prompt`` scope carry zero weights and are left out)."""
    if not gate_weights:
        return {}
    out = {}
    image, lang = streams == STREAM_IMAGE, (streams == STREAM_PROMPT) | (streams == STREAM_ANSWER)
    k = EXPERTS_PER_STREAM
    for layer, weights in zip(layers, gate_weights):
        w = weights.detach().float()  # [B, S, k]
        mixed = w.sum(dim=-1) > 0  # [B, S]
        stats = {}
        for names, mask in ((EXPERT_NAMES[:k], image & mixed), (EXPERT_NAMES[k:], lang & mixed)):
            if bool(mask.any()):
                mean = w[mask].mean(dim=0)
                stats.update({n: float(v) for n, v in zip(names, mean)})
        out[f"layer{layer}"] = stats
    return out
