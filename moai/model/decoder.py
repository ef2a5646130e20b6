# Copyright 2026 The moai authors. SPDX-License-Identifier: MIT
"""The LLM decoder with MoAI (paper arXiv 2403.07508 §3, Fig. 3; docs/model.md §1, §6, §7).

`MoAITextModel` is Llama's decoder loop, and `MoAIDecoderLayer` reads top to bottom: input norm -> MoAI-Mixer
(mixer layers only) -> attention (PLoRA on image tokens) -> residual -> post-attention norm -> MLP (PLoRA) ->
residual. Llama's submodules keep their names, so the state-dict keys are those of a Llama decoder plus the
PLoRA factors (``*.plora_A`` / ``*.plora_B``, ``self_attn.plora_A_qkv``) and the mixers
(``self_attn.moai_mixer.*``). `moai.model.modeling` builds the whole model around it.

Shapes: B batch, S text sequence (image tokens expanded), D hidden, H heads, E head width, n image tokens in
the batch.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Unpack

import torch
from torch import nn
from transformers import LlamaConfig
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, BaseModelOutputWithPooling
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import (
    LlamaAttention,
    LlamaMLP,
    LlamaPreTrainedModel,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
    eager_attention_forward,
)
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import TransformersKwargs, merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration import MoAIMixerConfig, PLoRAConfig
from .mixer import ExpertAttention, MixerInputs, MixerMemory, MoAIMixer
from .plora import PLoRAFactor, PLoRALinear, plora_down


def _plora_like(linear: nn.Linear, config: PLoRAConfig | None, own_a: bool) -> PLoRALinear:
    """A `PLoRALinear` with ``linear``'s sizes and bias (the PLoRA factors only when ``config`` is given)."""
    bias = linear.bias is not None
    return PLoRALinear(linear.in_features, linear.out_features, bias, config=config, own_a=own_a)


class MoAIAttention(LlamaAttention):
    """Llama's attention whose q/k/v/o projections are PLoRA linears (docs/model.md §7).

    q, k and v share one PLoRA ``A`` (``plora_A_qkv``, the official fused ``wqkv`` has one); o has its own.
    In a mixer layer the layer's MoAI-Mixer is registered here as ``moai_mixer`` (the official
    ``attention.moai_*`` key layout); `MoAIDecoderLayer.forward` calls it.
    """

    def __init__(
        self, config: LlamaConfig, layer_idx: int, plora: PLoRAConfig | None, mixer: MoAIMixerConfig | None
    ) -> None:
        super().__init__(config, layer_idx)
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):  # same names, shapes and `.weight`
            setattr(self, name, _plora_like(getattr(self, name), plora, own_a=name == "o_proj"))
        self.plora_dropout = 0.0 if plora is None else plora.dropout
        if plora is not None:
            self.plora_A_qkv = PLoRAFactor(config.hidden_size, plora.r)
        if mixer is not None:
            self.moai_mixer = MoAIMixer(config.hidden_size, mixer)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """hidden_states [B, S, D] -> (output [B, S, D], attention weights or None).

        Adapted from transformers' LlamaAttention.forward (5.24): the same steps, with the image-token mask
        [B, S] (None: no image token here) handed to the PLoRA projections.
        """
        input_shape = hidden_states.shape[:-1]  # (B, S)
        hidden_shape = (*input_shape, -1, self.head_dim)  # (B, S, heads, E)

        down = None  # [n, r]: the shared A(dropout(x)) of q, k and v
        if image_mask is not None and hasattr(self, "plora_A_qkv"):
            down = plora_down(self.plora_A_qkv, hidden_states, image_mask, self.plora_dropout, self.training)
        query_states = self.q_proj(hidden_states, image_mask, down).view(hidden_shape).transpose(1, 2)
        key_states = self.k_proj(hidden_states, image_mask, down).view(hidden_shape).transpose(1, 2)
        value_states = self.v_proj(hidden_states, image_mask, down).view(hidden_shape).transpose(1, 2)
        # q [B, H, S, E]; k, v [B, H_kv, S, E]

        cos, sin = position_embeddings
        query_states, key_states = apply_rotary_pos_emb(query_states, key_states, cos, sin)

        if cache is not None:
            key_states, value_states = cache.update(key_states, value_states, self.layer_idx, kwargs=kwargs)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query_states,
            key_states,
            value_states,
            attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
            **kwargs,
        )
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()  # [B, S, H * E]
        attn_output = self.o_proj(attn_output, image_mask)  # [B, S, D]
        return attn_output, attn_weights


class MoAIMLP(LlamaMLP):
    """Llama's gated MLP whose gate/up/down projections are PLoRA linears (docs/model.md §7)."""

    def __init__(self, config: LlamaConfig, plora: PLoRAConfig | None) -> None:
        super().__init__(config)
        for name in ("gate_proj", "up_proj", "down_proj"):
            setattr(self, name, _plora_like(getattr(self, name), plora, own_a=True))

    def forward(self, x: torch.Tensor, image_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, S, D] -> [B, S, D]: LlamaMLP.forward with the image-token mask handed to the projections."""
        gated = self.act_fn(self.gate_proj(x, image_mask)) * self.up_proj(x, image_mask)  # [B, S, I]
        return self.down_proj(gated, image_mask)


class MoAIDecoderLayer(GradientCheckpointingLayer):
    """One LLM decoder layer with MoAI (paper §3, MoAI-Mixer; docs/model.md §6, §7).

    Llama's decoder layer (same submodule names: ``self_attn``, ``mlp``, ``input_layernorm``,
    ``post_attention_layernorm``) with the MoAI-Mixer between the input norm and the attention in mixer
    layers, and PLoRA in every projection. A `GradientCheckpointingLayer`: under activation checkpointing
    its forward is recomputed with the same arguments, hence the same image mask and step-1 draw.
    """

    def __init__(
        self, config: LlamaConfig, layer_idx: int, plora: PLoRAConfig | None, mixer: MoAIMixerConfig | None
    ) -> None:
        super().__init__()
        self.hidden_size = config.hidden_size
        self.layer_idx = layer_idx
        self.self_attn = MoAIAttention(config, layer_idx, plora, mixer)
        self.mlp = MoAIMLP(config, plora)
        self.input_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    @property
    def mixer(self) -> MoAIMixer | None:
        """This layer's MoAI-Mixer, or None (stored on the attention module: the official key layout)."""
        return getattr(self.self_attn, "moai_mixer", None)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = False,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        image_mask: torch.Tensor | None = None,
        mixer_inputs: MixerInputs | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """hidden_states [B, S, D] -> (hidden_states [B, S, D], gate weights [B, S, 3] or None).

        Adapted from transformers' LlamaDecoderLayer.forward (5.24), plus the mixer and the image mask.

        Args:
            image_mask: [B, S] True at image tokens (PLoRA), or None when this chunk has none.
            mixer_inputs: streams, compressed aux tokens, settings and step-1 draws; None when no token of
                this chunk enters the mixer (decode steps).
        """
        residual = hidden_states
        hidden_states = self.input_layernorm(hidden_states)

        # MoAI-Mixer: rewrites the normalised image and language states that feed q/k/v; the residual keeps the
        # un-mixed input (the official behaviour, docs/model.md §6) unless the mixer is `into_residual`
        gate_weights = None
        if self.mixer is not None and mixer_inputs is not None:
            memory = mixer_inputs.memory  # causal scope, cached generation: the earlier tokens' states
            past = None if memory is None else memory.get(self.layer_idx)
            mixed, gate_weights = self.mixer(
                hidden_states,
                mixer_inputs.streams,
                mixer_inputs.aux,
                settings=mixer_inputs.settings,
                choice=mixer_inputs.choices.get(self.layer_idx),
                aux_keep=mixer_inputs.aux_keep,
                past=past,
            )
            if memory is not None:
                memory[self.layer_idx] = (
                    MixerMemory.of_prefill(hidden_states, mixer_inputs.streams)
                    if past is None
                    else past.extended(hidden_states, mixer_inputs.streams)
                )
            if self.mixer.into_residual:
                residual = residual + (mixed - hidden_states)
            hidden_states = mixed

        # Self attention, PLoRA at image tokens
        hidden_states, _ = self.self_attn(
            hidden_states=hidden_states,
            position_embeddings=position_embeddings,
            attention_mask=attention_mask,
            image_mask=image_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = residual + hidden_states

        # Fully connected, PLoRA at image tokens
        residual = hidden_states
        hidden_states = self.post_attention_layernorm(hidden_states)
        hidden_states = self.mlp(hidden_states, image_mask)
        hidden_states = residual + hidden_states
        return hidden_states, gate_weights


@dataclass
class MoAIModelOutputWithPast(BaseModelOutputWithPast):
    """Output of `MoAITextModel` and `MoAIModel`: `BaseModelOutputWithPast` (the last hidden state, before
    the LM head) plus the gate weights of the mixer layers."""

    gate_weights: tuple[torch.Tensor, ...] | None = None
    """One [B, S, 3] tensor per mixer layer that ran, in layer order; None when no mixer ran."""
    image_outputs: BaseModelOutputWithPooling | None = None
    """The vision tower's output for the images (`MoAIModel.get_image_features`); None without images."""


class MoAITextModel(LlamaPreTrainedModel):
    """The LLM decoder: Llama's embeddings, decoder loop, final norm and RoPE, with `MoAIDecoderLayer`s.

    The input embedding has one row more than the vocabulary, for ``<image>`` (MoAI-7B: 92,545 rows in,
    92,544 out), and never a ``padding_idx``: the official pad id -100 would zero and freeze a real row
    (docs/model.md §3).
    """

    _no_split_modules = ["MoAIDecoderLayer"]
    _can_record_outputs = {"hidden_states": MoAIDecoderLayer, "attentions": MoAIAttention}

    def __init__(
        self, config: LlamaConfig, plora: PLoRAConfig | None, mixer: MoAIMixerConfig, embedding_rows: int
    ) -> None:
        super().__init__(config)
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(embedding_rows, config.hidden_size)
        self.layers = nn.ModuleList(
            MoAIDecoderLayer(config, idx, plora, mixer if idx in mixer.layers else None)
            for idx in range(config.num_hidden_layers)
        )
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Llama's init, then zeros for the identity-preserving factors (PLoRA ``B``, the experts' last
        ``o`` factor; docs/model.md §6, §7), so that a new model starts as its base LLM."""
        super()._init_weights(module)
        init_moai_zeros(module)

    @property
    def mixer_layers(self) -> list[int]:
        """Indices of the layers with a MoAI-Mixer, in execution order."""
        return [layer.layer_idx for layer in self.layers if layer.mixer is not None]

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        image_mask: torch.Tensor | None = None,
        mixer_inputs: MixerInputs | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> MoAIModelOutputWithPast:
        """inputs_embeds [B, S, D] (image features already written in) -> last hidden state [B, S, D].

        Adapted from transformers' LlamaModel.forward (5.24): the same loop; every layer also gets the image
        mask (PLoRA) and the mixer inputs, and the mixer layers' gate weights are collected.
        """
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)

        if position_ids is None:
            past_seen_tokens = cache.get_seq_length() if cache is not None else 0
            position_ids = (
                torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_seen_tokens
            )
            position_ids = position_ids.unsqueeze(0)  # [1, S]

        causal_mask = create_causal_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            cache=cache,
            position_ids=position_ids,
        )

        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids=position_ids)

        gate_weights = []
        for decoder_layer in self.layers[: self.config.num_hidden_layers]:
            hidden_states, layer_gates = decoder_layer(
                hidden_states,
                attention_mask=causal_mask,
                position_embeddings=position_embeddings,
                position_ids=position_ids,
                cache=cache,
                use_cache=use_cache,
                image_mask=image_mask,
                mixer_inputs=mixer_inputs,
                **kwargs,
            )
            if layer_gates is not None:
                gate_weights.append(layer_gates)

        hidden_states = self.norm(hidden_states)
        return MoAIModelOutputWithPast(
            last_hidden_state=hidden_states, cache=cache, gate_weights=tuple(gate_weights) or None
        )

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, num_layers: int
    ) -> torch.Tensor:
        """Token states [B, T, D] of left-padded ids [B, T] (attention_mask [B, T], 1 = real token) after the
        first ``num_layers`` decoder layers, run without mixers, image mask or cache; positions count real
        tokens only; padded positions are zero. The aux text's encoding when
        ``MoAICompressorConfig.text_layers`` > 0."""
        hidden_states = self.embed_tokens(input_ids)  # [B, T, D]
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # [B, T]
        causal_mask = create_causal_mask(
            config=self.config,
            inputs_embeds=hidden_states,
            attention_mask=attention_mask,
            cache=None,
            position_ids=position_ids,
        )
        position_embeddings = self.rotary_emb(hidden_states, position_ids=position_ids)
        for decoder_layer in self.layers[:num_layers]:
            hidden_states, _ = decoder_layer(
                hidden_states,
                attention_mask=causal_mask,
                position_embeddings=position_embeddings,
                position_ids=position_ids,
            )
        # a left pad's row attends to no real token; the compressor masks it out, zero keeps it finite
        return torch.where(attention_mask.bool()[..., None], hidden_states, hidden_states.new_zeros(()))


def init_moai_zeros(module: nn.Module) -> None:
    """The zero inits of the MoAI weights (docs/model.md §6, §7), for both `_init_weights`: the identity-preserving
    factors (PLoRA ``B``, the experts' last ``o`` factor) and the experts' attention sinks."""
    if getattr(module, "_moai_zero_init", False):
        init.zeros_(module.weight)
    if isinstance(module, ExpertAttention) and module.sink_key is not None:
        init.zeros_(module.sink_key)
        init.zeros_(module.sink_value)
