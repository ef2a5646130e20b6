# Copyright 2026 The moai authors. SPDX-License-Identifier: MIT
"""MoAI: the whole forward pass, top to bottom (paper arXiv 2403.07508 §3, Fig. 3; docs/model.md §1).

`MoAIModel` runs everything up to the last hidden state (vision tower, projector, MoAI-Compressor, the LLM
decoder with the MoAI-Mixers); `MoAIForConditionalGeneration` adds the LM head, the loss and generation
(the transformers layout of llava: ``model.*`` + ``lm_head``; docs/model.md §12).

    pixel_values ─► vision tower ─► projector ─► image features ──┐ (replace the <image> tokens)
    input_ids ─► word embeddings ──────────────────────────────────┴─► MoAITextModel ─► lm_head ─► logits
    aux_input_ids ─► word embeddings ─┐                                  ▲
    aux_pixel_values ─► vision ─► projector ─┴─► MoAI-Compressor ─► aux ─┘ (MoAI-Mixer in selected layers)

The LLM decoder (`MoAITextModel`: Llama's decoder loop with the MoAI-Mixers and PLoRA) is written out in
`moai.model.decoder`.

Shapes: B batch, S text sequence (image tokens expanded), N image tokens, T aux tokens, A compressed aux
tokens, D hidden, V vocabulary, H heads, E head width, n image tokens in the batch.
"""

import dataclasses
from dataclasses import dataclass
from typing import Any, Unpack

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageTextToText,
    CLIPVisionModel,
    GenerationConfig,
    GenerationMixin,
    PreTrainedModel,
)
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMode
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput, logging
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import TransformersKwargs, can_return_tuple

from .cache import MoAICache
from .compressor import MoAICompressor
from .configuration import MoAICompressorConfig, MoAIConfig, MoAIMixerConfig, PLoRAConfig
from .constants import IGNORE_INDEX, STREAM_ANSWER, STREAM_IMAGE, STREAM_NONE
from .decoder import MoAIModelOutputWithPast, MoAITextModel, init_moai_zeros
from .mixer import ExpertAttention, MixerInputs, MixerSettings
from .processing import token_streams
from .vision import MoAIProjector, select_patch_features

logger = logging.get_logger(__name__)

PARAM_GROUPS = ("vision", "projector", "language_model", "plora", "mixers", "lm_head", "compressor", "lora")
"""Every parameter belongs to one group: a component of the model (its attribute name), or the group a
module declares for itself (``param_group``: MoAI-Compressor, MoAI-Mixer, PLoRA factors), or ``lora``
for the adapters peft injects (its tuner layers name them in ``adapter_layer_names``)."""

COMPONENT_GROUPS = {"vision_tower": "vision"}
"""Group names of the components whose attribute name differs (the CLIP tower is the ``vision`` group)."""

TRAINABLE_POLICIES: dict[str, tuple[str, ...]] = {
    "moai": ("compressor", "mixers"),
    "moai+plora": ("compressor", "mixers", "plora"),
    "moai+lora": ("compressor", "mixers", "lora"),
    "mixers": ("mixers",),
    "all": PARAM_GROUPS,
    "projector": ("projector",),
    "projector+llm": ("projector", "language_model", "plora", "lm_head"),
    "projector+lora": ("projector", "lora"),
    "none": (),
}
"""Trainable parameter groups per policy (docs/model.md §10). ``moai`` is the paper's recipe (§3, training):
compressor, experts and gates; the others are options of this project (``...+lora`` after
``moai.train.lora.add_lora``; ``mixers``: experts and gates with the compressor frozen; ``projector...`` for a
base model without MoAI modules)."""


# -- the whole model ----------------------------------------------------------------------------------
@dataclass
class MoAIOutput(ModelOutput):
    """Output of `MoAIForConditionalGeneration.forward` (a tuple in this field order with ``return_dict=False``).

    ``cache`` is the KV cache (transformers 5 name; ``out.past_key_values`` still reads it), ``hidden_states``
    (embeddings + one per decoder layer, the last after the final norm) and ``attentions`` (one per layer)
    are filled when ``output_hidden_states`` / ``output_attentions`` is asked for.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    gate_weights: tuple[torch.Tensor, ...] | None = None
    """One [B, S, 3] tensor per mixer layer (see `MoAIMixer.forward`); None when the mixer did not run."""
    image_outputs: BaseModelOutputWithPooling | None = None
    """The vision tower's output for the images; ``pooler_output`` [n, N, D] holds the projected features."""


class MoAIPreTrainedModel(PreTrainedModel):
    config_class = MoAIConfig
    config: MoAIConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["MoAIDecoderLayer", "CLIPEncoderLayer"]
    _skip_keys_device_placement = "cache"
    _supports_flash_attn = False
    _supports_sdpa = True
    _supports_flex_attn = False
    _can_compile_fullgraph = True
    _supports_attention_backend = True

    @classmethod
    def is_custom_code(cls) -> bool:
        """False: every init here goes through ``transformers.initialization``, which skips loaded weights, so
        ``from_pretrained`` may run the library's normal init dispatch over missing keys. (For "custom code"
        transformers skips modules without own parameters, e.g. CLIP's attention and MLP blocks, whose init
        sets their children: a tower missing from a checkpoint came out N(0, 0.02) instead of CLIP's init.)"""
        return False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """transformers' default init (normal linears and embeddings, unit norms), the compressor's latents
        N(0, 1), and zeros for the identity-preserving factors (docs/model.md §6, §7). The sub-models (the LLM,
        the CLIP tower) initialise their own modules, in `__init__` and for keys missing in ``from_pretrained``."""
        super()._init_weights(module)
        if isinstance(module, MoAICompressor) and module.latents is not None:
            init.normal_(module.latents, 0.0, module.config.latent_init_std)
        init_moai_zeros(module)


def _group_parameters(
    module: nn.Module, group: str, prefix: str, out: dict[str, list[tuple[str, nn.Parameter]]]
) -> None:
    """Assign ``module``'s parameters to ``group`` unless it declares its own (``param_group``), recursively;
    the submodules a peft tuner layer lists in ``adapter_layer_names`` (LoRA's A and B) are ``lora``."""
    group = getattr(module, "param_group", group)
    adapters = set(getattr(module, "adapter_layer_names", ()))
    for name, param in module.named_parameters(recurse=False):
        out.setdefault(group, []).append((prefix + name, param))
    for name, child in module.named_children():
        _group_parameters(child, "lora" if name in adapters else group, f"{prefix}{name}.", out)


class MoAIModel(MoAIPreTrainedModel):
    """MoAI without the LM head (as ``LlavaModel``): vision tower + projector, MoAI-Compressor, and the LLM
    decoder with MoAI-Mixers and PLoRA; returns the last hidden state (paper §3, Fig. 3)."""

    def __init__(self, config: MoAIConfig) -> None:
        super().__init__(config)
        text, dim = config.text_config, config.text_config.hidden_size
        if config.vision_attn_implementation is not None:
            config.vision_config._attn_implementation = config.vision_attn_implementation
        self.vision_tower = CLIPVisionModel(config.vision_config)  # built at the target image size
        # MoAI reads patch features before CLIP's post-layernorm and never its pooled output: the norm is
        # unused, so it never trains (kept for the checkpoint layout; `set_trainable("all")` still lists it)
        self.vision_tower.post_layernorm.requires_grad_(False)
        self.projector = MoAIProjector(config.vision_config.hidden_size, dim, config.projector_hidden_act)
        self.language_model = MoAITextModel(
            text,
            plora=config.plora_config if config.plora_config.enabled else None,
            mixer=config.mixer_config,
            embedding_rows=max(text.vocab_size, config.image_token_id + 1),
        )
        self.compressor = MoAICompressor(dim, config.compressor_config)
        self.mixer_settings = MixerSettings.from_config(config.mixer_config)  # run-time; see `set_mixer`
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.language_model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.language_model.embed_tokens = value

    # -- inputs ----------------------------------------------------------------------------------
    @can_return_tuple
    def get_image_features(self, pixel_values: torch.Tensor, **kwargs: Any) -> BaseModelOutputWithPooling:
        """pixel_values [B, 3, H, W] -> the vision tower's output with ``pooler_output`` [B, N, D]: the projected
        patch features, the tokens an image becomes (vision tower -> projector). ``output_hidden_states`` /
        ``output_attentions`` / ``return_dict`` as for any transformers model."""
        expected = (self.config.vision_config.num_channels, self.config.image_size, self.config.image_size)
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(
                f"pixel_values must have shape (batch, {expected[0]}, {expected[1]}, {expected[2]}) "
                f"(channels, height, width), got {tuple(pixel_values.shape)}"
            )
        pixel_values = pixel_values.to(self.vision_tower.embeddings.patch_embedding.weight.dtype)
        layer = self.config.vision_feature_layer
        asked = bool(kwargs.get("output_hidden_states"))
        if layer != -1:
            kwargs["output_hidden_states"] = True
        outputs = self.vision_tower(pixel_values, return_dict=True, **kwargs)
        features = select_patch_features(outputs, layer)  # [B, N, C]
        if layer != -1 and not asked:
            outputs.hidden_states = None
        outputs.pooler_output = self.projector(features)  # [B, N, D]
        return outputs

    def build_aux_embeds(
        self,
        aux_input_ids: torch.Tensor | None,
        aux_attention_mask: torch.Tensor | None,
        aux_pixel_values: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Aux embeddings [B, T, D] and mask [B, T]: word embeddings of the verbalization, then the map tokens.

        The verbalization is embedded with the LLM's own (frozen) input table (paper §3, Verbalization) and,
        when ``compressor_config.text_layers`` is above 0 (not in the paper), run through that many of its
        decoder layers; the panoptic map goes through the same vision tower and projector as the image.
        """
        if aux_input_ids is None:
            raise ValueError(
                "aux_input_ids (the tokenised verbalization) is required when the input has an image "
                "(the MoAI-Mixer reads it) and aux_embeds is not given"
            )
        masks = [torch.ones_like(aux_input_ids) if aux_attention_mask is None else aux_attention_mask]
        text_layers = self.config.compressor_config.text_layers
        if text_layers > 0:
            parts = [self.language_model.encode_text(aux_input_ids, masks[0], text_layers)]  # [B, T_verb, D]
        else:
            parts = [self.get_input_embeddings()(aux_input_ids)]  # [B, T_verb, D]
        if self.config.use_aux_map:
            if aux_pixel_values is None:
                raise ValueError(
                    "aux_pixel_values (the panoptic map image) is required by this config (use_aux_map=True); "
                    "pass it, or precomputed aux_embeds"
                )
            if aux_pixel_values.shape[0] != aux_input_ids.shape[0]:
                raise ValueError(
                    f"aux_pixel_values has {aux_pixel_values.shape[0]} maps for {aux_input_ids.shape[0]} samples"
                )
            map_tokens = self.get_image_features(
                aux_pixel_values, return_dict=True
            ).pooler_output  # [B, N, D]
            map_tokens = map_tokens.to(parts[0].dtype)
            parts.append(map_tokens)
            masks.append(masks[0].new_ones(map_tokens.shape[:2]))
        return torch.cat(parts, dim=1), torch.cat(masks, dim=1)

    def merge_image_features(
        self,
        input_ids: torch.Tensor,
        embeds: torch.Tensor,
        pixel_values: torch.Tensor | None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, BaseModelOutputWithPooling | None]:
        """Write the projected image features over the <image> tokens of embeds [B, S, D]; returns the new
        embeds and the vision output (None when no image was encoded).

        A sample has one image (N image tokens) or none (a text-only sample); ``pixel_values`` holds the
        images of the samples that have one, in batch order [n, 3, H, W], or one per sample [B, 3, H, W]. Images given for input_ids without
        any ``<image>`` token are not used (a warning says so).
        """
        image_mask = input_ids == self.config.image_token_id  # [B, S]
        if pixel_values is None:  # decode steps, text only (checked outside torch.compile: no data guards)
            if not torch.compiler.is_compiling() and bool(image_mask.any()):
                # as llava: the tokens stay plain embeddings (e.g. an assistant model in assisted decoding,
                # which transformers runs without the images); the warning says the image is not seen
                logger.warning_once(
                    "input_ids contain <image> tokens but pixel_values is None: they are embedded as plain "
                    "tokens and no image is seen"
                )
            return embeds, None
        n_tokens = image_mask.sum(dim=1)  # [B]
        if not bool(n_tokens.any()):
            logger.warning_once(
                "pixel_values were given but input_ids have no <image> token: images not used"
            )
            return embeds, None
        per_image = self.config.num_image_tokens
        has_image = n_tokens > 0  # [B]
        with_image = int(has_image.sum())
        if pixel_values.shape[0] == input_ids.shape[0] != with_image:  # one image per sample, some unused
            logger.warning_once(
                "some samples have pixel_values but no <image> token: their images are not used"
            )
            pixel_values = pixel_values[has_image]
        if pixel_values.shape[0] != with_image or bool(((n_tokens != 0) & (n_tokens != per_image)).any()):
            raise ValueError(
                f"number of <image> tokens does not match the images: a sample has one image ({per_image} "
                f"image tokens after expansion) or none; got {n_tokens.tolist()} image tokens per sample "
                f"for {pixel_values.shape[0]} images"
            )
        image_outputs = self.get_image_features(pixel_values, return_dict=True, **kwargs)
        features = image_outputs.pooler_output.to(embeds.dtype)  # [n, N, D]
        return embeds.masked_scatter(image_mask[..., None], features), image_outputs

    def _mixer_inputs(
        self,
        streams: torch.Tensor,
        aux_input_ids: torch.Tensor | None,
        aux_attention_mask: torch.Tensor | None,
        aux_pixel_values: torch.Tensor | None,
        aux_embeds: torch.Tensor | None,
        dtype: torch.dtype,
        mixer_mode: str | None,
    ) -> MixerInputs | None:
        """Compress the aux tokens (MoAI-Compressor, paper §3) and bundle what the mixers need; None (and no
        compressor work, no aux input needed) when no token of this chunk enters a mixer: text-only inputs,
        tokens that continue a cache, a model without mixers."""
        layers = self.language_model.mixer_layers
        if not layers:
            return None
        if (
            torch.compiler.is_compiling()
        ):  # compiled decode steps: generate drops the aux inputs after prefill
            if aux_input_ids is None and aux_embeds is None:
                return None
        elif not bool((streams != STREAM_NONE).any()):
            return None
        aux_mask = None
        if aux_embeds is None:
            aux_embeds, aux_mask = self.build_aux_embeds(aux_input_ids, aux_attention_mask, aux_pixel_values)
        elif aux_attention_mask is not None and aux_attention_mask.shape[1] == aux_embeds.shape[1]:
            aux_mask = aux_attention_mask
        compressed = self.compressor(aux_embeds.to(dtype), aux_mask).to(dtype)  # [B, A, D]
        # the latents have no padding; the aux tokens a passthrough compressor hands on do
        aux_keep = aux_mask.bool() if self.compressor.latents is None and aux_mask is not None else None
        settings = self.mixer_settings if mixer_mode is None else self.mixer_settings.replace(mode=mixer_mode)
        return MixerInputs(streams, compressed, settings, settings.draw_experts(layers), aux_keep)

    def _remember_prefill(self, mixer_inputs: MixerInputs, cache: MoAICache) -> MixerInputs:
        """A prefill into a `MoAICache` in ``causal`` scope keeps the compressed aux tokens, and every mixer
        layer its states (`MixerMemory`), for the decode steps; in another scope the cache keeps nothing."""
        if not mixer_inputs.settings.decodes_with_memory:
            return mixer_inputs
        cache.remember_aux(mixer_inputs.aux, mixer_inputs.aux_keep, mixer_inputs.streams.shape[1])
        return dataclasses.replace(mixer_inputs, memory=cache.mixers)

    def _decode_mixer_inputs(self, streams: torch.Tensor, cache: MoAICache) -> MixerInputs:
        """A decode step after a `_remember_prefill`: the chunk's tokens of the language stream (the answer
        tokens generate marks, stream 3) are mixed against the cache's aux tokens and mixer states; every
        chunk extends the states, its tokens outside the stream as padding, so that `MoAICache.crop` can cut
        them by count."""
        settings = self.mixer_settings
        if not settings.decodes_with_memory:
            raise ValueError(
                "cache: its mixer states were kept for causal-scope decoding; the mixers are now "
                f"scope={settings.scope!r}, mode={settings.mode!r}"
            )
        return MixerInputs(streams, cache.aux, settings, {}, cache.aux_keep, memory=cache.mixers)

    # -- forward ---------------------------------------------------------------------------------
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        aux_input_ids: torch.LongTensor | None = None,
        aux_attention_mask: torch.Tensor | None = None,
        aux_pixel_values: torch.FloatTensor | None = None,
        aux_embeds: torch.FloatTensor | None = None,
        mm_token_type_ids: torch.LongTensor | None = None,
        mixer_mode: str | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> MoAIModelOutputWithPast:
        """Embeddings (image features over ``<image>``) -> aux -> MoAI-Compressor -> the LLM decoder with the
        MoAI-Mixers -> last hidden state [B, S, D]. Arguments as `MoAIForConditionalGeneration.forward`."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if input_ids is not None and input_ids.shape[1] == 0:
            raise ValueError("input_ids is empty: the text has no tokens")
        past_length = cache.get_seq_length() if cache is not None else 0
        if mm_token_type_ids is None:  # the processor's stream ids; derived here only for raw token ids
            mm_token_type_ids = stream_ids(
                input_ids, inputs_embeds, self.config.image_token_id, attention_mask, None, past_length
            )

        seq = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        if (
            mm_token_type_ids.shape[1] != seq
        ):  # e.g. assisted decoding's candidates: newer tokens are stream 0
            mm_token_type_ids = fit_streams(mm_token_type_ids, seq)
        no_inputs = pixel_values is None and aux_input_ids is None and aux_embeds is None
        decoding = no_inputs and isinstance(cache, MoAICache) and cache.holds_mixer_states and past_length > 0
        if no_inputs and not decoding:
            # neither an image nor aux knowledge: the plain LLM (decode steps, a continued cache, text only,
            # or <image> tokens without their inputs, as an assistant model in assisted decoding sees them)
            if not torch.compiler.is_compiling() and bool((mm_token_type_ids != STREAM_NONE).any()):
                logger.warning_once(
                    "<image> tokens without pixel_values nor aux inputs: they run as plain tokens (no image, "
                    "no mixer, no PLoRA)"
                )
            mm_token_type_ids = torch.zeros_like(mm_token_type_ids)

        # 1. word embeddings, with the image features (vision tower -> projector) over the <image> tokens
        image_outputs = None
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)  # [B, S, D]
            vision_kwargs = {
                k: v for k, v in kwargs.items() if k in ("output_hidden_states", "output_attentions")
            }
            inputs_embeds, image_outputs = self.merge_image_features(
                input_ids, inputs_embeds, pixel_values, **vision_kwargs
            )

        # 2. aux tokens (verbalization + panoptic map) -> MoAI-Compressor -> the mixers' keys and values; a
        # decode step of causal scope takes them, and the earlier tokens' mixer states, from its MoAICache
        if decoding:
            mixer_inputs = self._decode_mixer_inputs(mm_token_type_ids, cache)
        else:
            mixer_inputs = self._mixer_inputs(
                mm_token_type_ids,
                aux_input_ids,
                aux_attention_mask,
                aux_pixel_values,
                aux_embeds,
                inputs_embeds.dtype,
                mixer_mode,
            )
            if isinstance(cache, MoAICache) and mixer_inputs is not None and past_length == 0:
                mixer_inputs = self._remember_prefill(mixer_inputs, cache)

        # 3. RoPE positions: from the mask (left padding) unless official (0..S-1, docs/model.md §8)
        padding_mask = attention_mask is not None and attention_mask.ndim == 2  # not a custom 4-D mask
        if position_ids is None and self.config.position_ids_from_mask and padding_mask:
            positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # [B, past + S]
            position_ids = positions[:, -inputs_embeds.shape[1] :]  # [B, S]

        # 4. the LLM decoder: MoAI-Mixers in their layers, PLoRA at image tokens
        image_mask = mm_token_type_ids == STREAM_IMAGE  # [B, S]
        if torch.compiler.is_compiling():  # no data-dependent guard: image tokens come with their pixels
            image_mask = image_mask if pixel_values is not None else None
        elif not bool(image_mask.any()):
            image_mask = None
        outputs = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            image_mask=image_mask,
            mixer_inputs=mixer_inputs,
            **kwargs,
        )
        outputs.image_outputs = image_outputs
        return outputs


def fit_streams(streams: torch.Tensor, length: int) -> torch.Tensor:
    """Stream ids [B, S'] fitted to a chunk of ``length`` tokens: the last ``length`` ids, or padded on the
    right with ``STREAM_NONE`` (tokens newer than the ids, e.g. assisted decoding's candidates)."""
    if streams.shape[1] >= length:
        return streams[:, streams.shape[1] - length :]
    return F.pad(streams, (0, length - streams.shape[1]), value=STREAM_NONE)  # [B, length]


def stream_ids(
    input_ids: torch.Tensor | None,
    inputs_embeds: torch.Tensor | None,
    image_token_id: int,
    attention_mask: torch.Tensor | None,
    labels: torch.Tensor | None,
    past_length: int,
) -> torch.Tensor:
    """Stream ids [B, S] for a caller that passed no ``mm_token_type_ids``: the processor's own function
    (`token_streams`) on the ids; tokens that continue a cache, and ``inputs_embeds`` without ids, are
    ``STREAM_NONE`` (no mixer, no PLoRA: image and aux inputs are consumed at prefill)."""
    if input_ids is None or past_length > 0:
        ref = input_ids if input_ids is not None else inputs_embeds[..., 0]
        return torch.full(ref.shape[:2], STREAM_NONE, dtype=torch.long, device=ref.device)
    if attention_mask is not None and attention_mask.ndim != 2:  # a custom 4-D mask: no padding information
        attention_mask = None
    if attention_mask is not None and attention_mask.shape[1] != input_ids.shape[1]:
        attention_mask = attention_mask[:, -input_ids.shape[1] :]
    return token_streams(input_ids, image_token_id, attention_mask, labels)


AUX_INPUTS = ("aux_input_ids", "aux_attention_mask", "aux_pixel_values", "aux_embeds")
"""The inputs that carry the auxiliary knowledge (the verbalized CV outputs and the panoptic map)."""


class MoAIForConditionalGeneration(MoAIPreTrainedModel, GenerationMixin):
    """MoAI: `MoAIModel` (vision tower + projector, MoAI-Compressor, LLM with MoAI-Mixers and PLoRA) and the
    LM head (paper §3, Fig. 3)."""

    _tied_weights_keys: dict[str, str] = {}

    def __init__(self, config: MoAIConfig) -> None:
        super().__init__(config)
        self.model = MoAIModel(config)
        self.vocab_size = config.text_config.vocab_size  # what the LM head predicts
        self.lm_head = nn.Linear(config.text_config.hidden_size, self.vocab_size, bias=False)
        self.post_init()

    # -- components and accessors ------------------------------------------------------------------
    @property
    def vision_tower(self) -> CLIPVisionModel:
        return self.model.vision_tower

    @property
    def projector(self) -> MoAIProjector:
        return self.model.projector

    @property
    def language_model(self) -> MoAITextModel:
        return self.model.language_model

    @property
    def compressor(self) -> MoAICompressor:
        return self.model.compressor

    @property
    def mixer_settings(self) -> MixerSettings:
        """The mixers' run-time switches (`set_mixer`)."""
        return self.model.mixer_settings

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs: Any) -> BaseModelOutputWithPooling:
        """`MoAIModel.get_image_features`: the vision output, ``pooler_output`` [B, N, D] the image's tokens."""
        return self.model.get_image_features(pixel_values, **kwargs)

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values [B, 3, H, W] -> the projected patch features [B, N, D] (`get_image_features`'s
        ``pooler_output``)."""
        return self.model.get_image_features(pixel_values, return_dict=True).pooler_output

    def build_aux_embeds(
        self,
        aux_input_ids: torch.Tensor | None,
        aux_attention_mask: torch.Tensor | None,
        aux_pixel_values: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`MoAIModel.build_aux_embeds`: aux embeddings [B, T, D] and mask [B, T]."""
        return self.model.build_aux_embeds(aux_input_ids, aux_attention_mask, aux_pixel_values)

    # -- run-time switches -------------------------------------------------------------------------
    def set_mixer(self, **changes: Any) -> MixerSettings:
        """Change the mixers' run-time switches; the ones not named keep their value. Returns the settings.

        Names (`MixerSettings`): ``mode`` (sample | gated | topk), ``forced_experts`` ((image, language) or
        None), ``generator`` (the step-1 RNG, or None), ``gate_softmax_dtype`` (float32 | float16 | bfloat16),
        ``top_k`` (1 | 2), ``scope`` (prompt | causal). The model starts from its ``mixer_config``, which this
        never changes (so the config saved with the model is what it was built with); a bad name or value
        is a ValueError. Example: ``model.set_mixer(mode="sample", forced_experts=(0, 2))``.
        """
        self.model.mixer_settings = self.model.mixer_settings.replace(**changes)
        return self.model.mixer_settings

    def set_mixer_mode(self, mode: str) -> None:
        """``set_mixer(mode=mode)``: ``sample`` (step 1), ``gated`` (step 2, inference) or ``topk``."""
        self.set_mixer(mode=mode)

    @torch.no_grad()
    def reset_mixers(self, layers: list[int] | None = None) -> None:
        """(Re-)initialise the mixers of ``layers`` (default: all): normal weights, zero biases and attention
        sinks, and the identity init when configured. Used when mixers are added to a base model trained
        without them.
        """
        std = self.config.text_config.initializer_range
        chosen = self.language_model.mixer_layers if layers is None else layers
        for idx in chosen:
            for sub in self.language_model.layers[idx].mixer.modules():
                if isinstance(sub, nn.Linear):
                    sub.weight.normal_(0.0, std)
                    if sub.bias is not None:
                        sub.bias.zero_()
                    if getattr(sub, "_moai_zero_init", False):
                        sub.weight.zero_()
                if isinstance(sub, ExpertAttention) and sub.sink_key is not None:
                    sub.sink_key.zero_()
                    sub.sink_value.zero_()

    # -- parameter groups and trainable sets -------------------------------------------------------
    def parameter_groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """(name, parameter) pairs per group (`PARAM_GROUPS`), in parameter order; empty groups left out.

        A parameter's group is the one its nearest module declares (``param_group``: the MoAI-Compressor,
        the MoAI-Mixers, the PLoRA factors), ``lora`` for peft adapters, else the model component it
        belongs to (``vision``, ``projector``, ``language_model``, ``lm_head``). No parameter name is parsed.
        """
        groups: dict[str, list[tuple[str, nn.Parameter]]] = {}
        for name, child in self.model.named_children():
            _group_parameters(child, COMPONENT_GROUPS.get(name, name), f"model.{name}.", groups)
        _group_parameters(self.lm_head, "lm_head", "lm_head.", groups)
        unknown = sorted(set(groups) - set(PARAM_GROUPS))
        if unknown:
            raise ValueError(f"parameters in undeclared groups {unknown}; known groups are {PARAM_GROUPS}")
        return groups

    def moai_parameter_names(self) -> list[str]:
        """Names of the MoAI modules' parameters (compressor, experts, gates): trainable by default."""
        groups = self.parameter_groups()
        return [name for group in TRAINABLE_POLICIES["moai"] for name, _ in groups.get(group, [])]

    def set_trainable(self, policy: str = "moai") -> int:
        """Set ``requires_grad`` by policy (`TRAINABLE_POLICIES`) and return the trainable count.

        ``moai``: compressor + mixers (the official recipe, docs/model.md §10); ``moai+plora``: also the
        PLoRA factors; ``moai+lora``: also peft LoRA adapters; ``mixers``: experts and gates only (the
        compressor frozen); ``all``: everything; ``projector``: the
        projector; ``projector+llm``: the projector, the LLM (with PLoRA) and the LM head; ``projector+lora``:
        the projector and the LoRA adapters; ``none``: nothing. The compressor trains only in a model with
        mixers (without them it never runs); ``...+lora`` needs the adapters injected first.
        """
        if policy not in TRAINABLE_POLICIES:
            raise ValueError(f"trainable policy must be one of {tuple(TRAINABLE_POLICIES)}, got {policy!r}")
        groups = self.parameter_groups()
        if policy.endswith("+lora") and "lora" not in groups:
            raise ValueError(
                f"trainable policy {policy!r} needs LoRA adapters: inject them first (moai.train.lora.add_lora)"
            )
        chosen = set(TRAINABLE_POLICIES[policy])
        if not self.language_model.mixer_layers:
            chosen.discard("compressor")
        for group, params in groups.items():
            for _, param in params:
                param.requires_grad_(group in chosen)
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def component_parameter_counts(self) -> dict[str, int]:
        """Parameter count per group (PLoRA counted apart from the LLM it belongs to), in `PARAM_GROUPS` order."""
        groups = self.parameter_groups()
        return {group: sum(p.numel() for _, p in groups[group]) for group in PARAM_GROUPS if group in groups}

    # -- forward ---------------------------------------------------------------------------------
    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        aux_input_ids: torch.LongTensor | None = None,
        aux_attention_mask: torch.Tensor | None = None,
        aux_pixel_values: torch.FloatTensor | None = None,
        aux_embeds: torch.FloatTensor | None = None,
        mm_token_type_ids: torch.LongTensor | None = None,
        mixer_mode: str | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> MoAIOutput:
        """Run MoAI on a (left-padded) batch: `MoAIModel`, then the LM head (and the loss with ``labels``).

        Args:
            input_ids: [B, S] token ids with ``<image>`` already expanded to N tokens per image; a sample
                without ``<image>`` tokens is text only (no mixer, no PLoRA: the plain LLM).
            pixel_values: [n, 3, H, W] one image per sample that has ``<image>`` tokens.
            attention_mask: [B, S] (or [B, past + S] while generating) 1 = real token.
            cache: the KV cache (``past_key_values=`` is accepted as the old transformers name).
            aux_input_ids / aux_attention_mask: [B, T] the tokenised verbalization of the CV outputs; needed
                when a sample has an image (the mixer reads it), not for text-only input nor for tokens that
                continue a cache (image and aux inputs are consumed at prefill).
            aux_pixel_values: [B, 3, H, W] the panoptic colour map (needed when ``config.use_aux_map``).
            aux_embeds: [B, T, D] precomputed aux embeddings, instead of the three inputs above.
            mm_token_type_ids: [B, S] stream ids from the processor (0 none/generated, 1 image, 2 prompt,
                3 answer); when omitted, `token_streams` derives them from the ids, mask and labels.
            labels: [B, S] next-token targets (-100 ignored).
            mixer_mode: the routing (sample | gated | topk) for this call only; see `set_mixer` for the rest.
            output_hidden_states / output_attentions / return_dict: as for any transformers model.
        """
        if mm_token_type_ids is None:
            past_length = cache.get_seq_length() if cache is not None else 0
            mm_token_type_ids = stream_ids(
                input_ids, inputs_embeds, self.config.image_token_id, attention_mask, labels, past_length
            )
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            aux_input_ids=aux_input_ids,
            aux_attention_mask=aux_attention_mask,
            aux_pixel_values=aux_pixel_values,
            aux_embeds=aux_embeds,
            mm_token_type_ids=mm_token_type_ids,
            mixer_mode=mixer_mode,
            **kwargs,
        )

        # 5. LM head and loss
        hidden = outputs.last_hidden_state  # [B, S, D]
        keep = slice(-logits_to_keep, None) if logits_to_keep else slice(None)
        logits = self.lm_head(hidden[:, keep])  # [B, S', V]
        image_id = self.config.image_token_id
        if image_id < logits.shape[-1]:  # <image> inside a resized vocabulary: an input-only token
            logits = logits.index_fill(
                -1, torch.tensor([image_id], device=logits.device), torch.finfo(logits.dtype).min
            )
        loss = None
        if labels is not None:
            loss = causal_lm_loss(logits, labels, num_items_in_batch=num_items_in_batch)
        return MoAIOutput(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            gate_weights=outputs.gate_weights,
            image_outputs=outputs.image_outputs,
        )

    def generate(self, input_ids: torch.Tensor | None = None, **kwargs: Any):
        """`GenerationMixin.generate` with the per-token streams filled in before the first step.

        Generated tokens get stream 0 (``transformers`` extends ``mm_token_type_ids`` with zeros), so they
        never enter the mixer nor receive PLoRA, with or without a KV cache (docs/model.md §8: the official
        decode steps skip both). A call that continues a returned cache (``cache=`` / ``past_key_values=``)
        needs neither the image nor the aux inputs again: the tokens after the cache are stream 0 too.

        With mixers in ``causal`` scope the answer tokens were in the mixer's language stream in training, so
        generated tokens join it here too (stream 3, `_update_model_kwargs_for_generation`), and the KV cache is
        a `MoAICache`, which also keeps the compressed aux tokens and the mixers' states of the tokens already
        run (`_prepare_cache_for_generation`); with ``use_cache=False`` each step runs the whole sequence. Either
        way each step's logits are those of the training forward over prompt and answer (docs/model.md §8).
        Such a model starts every call from its prompt: a cache passed in is an error.
        """
        if self._decodes_in_causal_scope():
            if kwargs.get("cache") is not None or kwargs.get("past_key_values") is not None:
                raise ValueError(
                    "cache: a model whose mixers run in causal scope makes its own cache in generate and cannot "
                    "continue one; set the prompt scope (model.set_mixer(scope='prompt')) to continue a cache"
                )
        if input_ids is not None and kwargs.get("mm_token_type_ids") is None:
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            past_length = cache.get_seq_length() if isinstance(cache, Cache) else 0
            kwargs["mm_token_type_ids"] = stream_ids(
                input_ids, None, self.config.image_token_id, kwargs.get("attention_mask"), None, past_length
            )
        return super().generate(input_ids=input_ids, **kwargs)

    def _decodes_in_causal_scope(self) -> bool:
        return self.mixer_settings.scope == "causal" and bool(self.language_model.mixer_layers)

    def _prepare_cache_for_generation(
        self,
        generation_config: GenerationConfig,
        model_kwargs: dict[str, Any],
        generation_mode: GenerationMode,
        batch_size: int,
        max_cache_length: int,
    ) -> None:
        """transformers' cache for ``generate``; in ``causal`` mixer scope a `MoAICache` in place of the
        dynamic one (the mixers' states must be kept too); another cache implementation, and assisted
        generation (its candidate tokens are verified outside the answer stream), are errors there."""
        if self._decodes_in_causal_scope() and generation_mode == GenerationMode.ASSISTED_GENERATION:
            raise ValueError(
                "assisted generation (assistant_model, prompt_lookup_num_tokens): a model whose mixers run in "
                "causal scope mixes every answer token, which the candidate tokens skip; decode without it"
            )
        super()._prepare_cache_for_generation(
            generation_config, model_kwargs, generation_mode, batch_size, max_cache_length
        )
        cache = model_kwargs.get("cache")
        if cache is None or not self._decodes_in_causal_scope() or isinstance(cache, MoAICache):
            return
        implementation = generation_config.cache_implementation
        if type(cache) is not DynamicCache:
            raise ValueError(
                f"cache_implementation={implementation!r}: a model whose mixers run in causal scope decodes "
                "with its dynamic MoAICache or without a cache (use_cache=False)"
            )
        model_kwargs["cache"] = MoAICache(
            config=self.config.get_text_config(decoder=True), offloading=implementation == "offloaded"
        )

    def _update_model_kwargs_for_generation(
        self,
        outputs: ModelOutput,
        model_kwargs: dict[str, Any],
        is_encoder_decoder: bool = False,
        num_new_tokens: int = 1,
    ) -> dict[str, Any]:
        """transformers' update (the new tokens get stream 0); in ``causal`` mixer scope the new tokens of a
        sample with an image get `STREAM_ANSWER` instead, the stream its answer tokens had in training."""
        model_kwargs = super()._update_model_kwargs_for_generation(
            outputs, model_kwargs, is_encoder_decoder, num_new_tokens
        )
        streams = model_kwargs.get("mm_token_type_ids")
        if streams is not None and self._decodes_in_causal_scope():
            with_image = (streams == STREAM_IMAGE).any(dim=1)  # [B]; text-only samples stay the plain LLM
            streams[with_image, -num_new_tokens:] = STREAM_ANSWER
        return model_kwargs

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        next_sequence_length: int | None = None,
        cache: Cache | None = None,
        attention_mask: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        is_first_iteration: bool | None = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """transformers' step inputs, without the aux inputs after prefill (as it drops ``pixel_values``):
        decode steps never reach the mixer, and a compiled decode step then needs no data-dependent check."""
        inputs = super().prepare_inputs_for_generation(
            input_ids,
            next_sequence_length=next_sequence_length,
            cache=cache,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            is_first_iteration=is_first_iteration,
            **kwargs,
        )
        if not is_first_iteration and kwargs.get("use_cache", True):
            for key in AUX_INPUTS:
                inputs.pop(key, None)
        return inputs

    # -- vocabulary --------------------------------------------------------------------------------
    def resize_token_embeddings(
        self,
        new_num_tokens: int | None = None,
        pad_to_multiple_of: int | None = None,
        mean_resizing: bool = True,
    ) -> nn.Embedding:
        """Resize the vocabulary to ``new_num_tokens`` (e.g. ``len(tokenizer)`` after adding tokens).

        The LM head gets ``new_num_tokens`` rows (``text_config.vocab_size``) and the input embedding one
        more, as in MoAI-7B (92,545 rows in, 92,544 out): ``<image>`` stays an input-only token. It keeps
        its id and row while the id fits (tokens added after it to a tokenizer keep their ids); when the id
        falls inside the new vocabulary its logit is masked to the dtype's minimum, so the head never
        produces it; shrinking below the id makes the last row ``<image>`` (``config.image_token_id``; the
        row's values never matter with an image, whose features replace it). Rows that stay keep their
        values and new rows are initialised as transformers does (docs/model.md §12).
        """
        embed = self.get_input_embeddings()
        if new_num_tokens is None and pad_to_multiple_of is None:
            return embed
        if new_num_tokens is None:
            new_num_tokens = self.config.text_config.vocab_size
        if pad_to_multiple_of is not None:
            if not isinstance(pad_to_multiple_of, int):  # transformers' own message
                raise ValueError(
                    f"Asking to pad the embedding matrix to a multiple of `{pad_to_multiple_of}`, which is not "
                    "and integer. Please make sure to pass an integer"
                )
            new_num_tokens = -(-new_num_tokens // pad_to_multiple_of) * pad_to_multiple_of
        new_embed = self._get_resized_embeddings(embed, new_num_tokens + 1, mean_resizing=mean_resizing)
        if self.config.image_token_id > new_num_tokens:  # its row is gone: the last row becomes <image>
            self.config.image_token_id = new_num_tokens
        self.set_input_embeddings(new_embed)
        self.lm_head = self._get_resized_lm_head(self.lm_head, new_num_tokens, mean_resizing=mean_resizing)
        self.config.text_config.vocab_size = new_num_tokens
        self.language_model.vocab_size = self.vocab_size = new_num_tokens
        return new_embed


def causal_lm_loss(
    logits: torch.Tensor, labels: torch.Tensor, *, num_items_in_batch: int | torch.Tensor | None = None
) -> torch.Tensor:
    """Next-token cross-entropy over positions with a label; summed and divided by the label count.

    ``num_items_in_batch`` (the global number of label tokens, e.g. across ranks and accumulation steps)
    replaces the local count so that distributed and accumulated losses equal the single-batch loss.
    """
    shift_logits = logits[:, :-1].float()  # [B, S-1, V]
    shift_labels = labels[:, 1:].to(logits.device)  # [B, S-1]
    total = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    count = num_items_in_batch if num_items_in_batch is not None else (shift_labels != IGNORE_INDEX).sum()
    return total / torch.as_tensor(count, device=total.device).clamp(min=1)


AutoConfig.register("moai", MoAIConfig)
AutoConfig.register("moai_compressor", MoAICompressorConfig)
AutoConfig.register("moai_mixer", MoAIMixerConfig)
AutoConfig.register("moai_plora", PLoRAConfig)
AutoModel.register(MoAIConfig, MoAIModel)
AutoModelForImageTextToText.register(MoAIConfig, MoAIForConditionalGeneration)
