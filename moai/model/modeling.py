"""MoAIForConditionalGeneration: the whole forward pass, top to bottom (paper §3, Fig. 3; docs/model.md §1).

    pixel_values ─► vision tower ─► projector ─► image features ──┐ (replace the <image> tokens)
    input_ids ─► word embeddings ──────────────────────────────────┴─► LLM decoder ─► lm_head ─► logits
    aux_input_ids ─► word embeddings ─┐                                  ▲
    aux_pixel_values ─► vision ─► projector ─┴─► MoAI-Compressor ─► aux ─┘ (MoAI-Mixer in selected layers)

The mixer and PLoRA are hooks on the decoder (see ``mixer.py`` and ``plora.py``); they read a
``MoAIState`` passed down through the LLM's keyword arguments, so the LLM's parameter keys are untouched.

Shapes: B batch, S text sequence (image tokens expanded), N image tokens, T aux tokens, A compressed aux
tokens, D hidden, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, GenerationMixin, LlamaModel, PreTrainedModel
from transformers.cache_utils import Cache
from transformers.utils import ModelOutput

from .compressor import MoAICompressor
from .configuration import MoAICompressorConfig, MoAIConfig, MoAIMixerConfig, PLoRAConfig
from .mixer import STREAM_ANSWER, STREAM_IMAGE, STREAM_NONE, STREAM_PROMPT, MoAIMixer
from .plora import add_plora, zero_init
from .vision import MoAIProjector, MoAIVisionEncoder

IGNORE_INDEX = -100
TRAINABLE_POLICIES = ("moai", "moai+plora", "all", "none")


@dataclass
class MoAIState:
    """What the decoder hooks need during one forward (passed as the ``moai_state`` keyword)."""

    streams: torch.Tensor
    """[B, S] stream id per token of this forward's chunk (0 none, 1 image, 2 prompt, 3 answer)."""
    image_mask: torch.Tensor
    """[B, S] True at image tokens (where PLoRA applies)."""
    aux: torch.Tensor | None
    """[B, A, D] compressed aux tokens, or None when no token of this chunk enters the mixer."""
    mode: str
    """Mixer routing: sample | gated | topk."""
    forced_experts: list[int] | None = None
    """Step-1 choice [image, language] applied in every layer, or None to draw."""
    generator: torch.Generator | None = None
    """RNG for the step-1 draws (None: torch's global RNG)."""
    choices: dict[int, tuple[int, int]] = field(default_factory=dict)
    """Step-1 draws per layer, kept so that a gradient-checkpointing recompute reuses them."""
    gate_weights: dict[int, torch.Tensor] = field(default_factory=dict)
    """[B, S, 3] gate weights per mixer layer, filled by the hooks."""

    def expert_choice(self, layer_idx: int) -> tuple[int, int]:
        if self.forced_experts is not None:
            return tuple(self.forced_experts)
        if layer_idx not in self.choices:  # image first, then language, as the official draw order
            draw = [int(torch.randint(0, 3, (1,), generator=self.generator)) for _ in range(2)]
            self.choices[layer_idx] = (draw[0], draw[1])
        return self.choices[layer_idx]


@dataclass
class MoAIOutput(ModelOutput):
    """Output of `MoAIForConditionalGeneration.forward`."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cache: Cache | None = None
    gate_weights: tuple[torch.Tensor, ...] | None = None
    """One [B, S, 3] tensor per mixer layer (see `MoAIMixer.forward`); None when the mixer did not run."""


class MoAIPreTrainedModel(PreTrainedModel):
    config_class = MoAIConfig
    config: MoAIConfig
    base_model_prefix = ""
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["LlamaDecoderLayer", "CLIPEncoderLayer"]
    _supports_sdpa = True
    _supports_attention_backend = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.text_config.initializer_range
        if isinstance(module, nn.Linear):
            module.weight.normal_(0.0, std)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.normal_(0.0, std)
        elif isinstance(module, nn.LayerNorm):
            module.weight.fill_(1.0)
            module.bias.zero_()
        elif isinstance(module, MoAICompressor):
            module.latents.normal_(0.0, 1.0)
        if module is self:
            # sub-models (the LLM, CLIP) initialise their own linears, including the PLoRA factors hooked
            # onto them; the zero-inits are applied last, here, so nothing overwrites them.
            for sub in self.modules():
                if getattr(sub, "_moai_zero_init", False):
                    sub.weight.zero_()


class MoAIForConditionalGeneration(MoAIPreTrainedModel, GenerationMixin):
    """MoAI: vision tower + projector, MoAI-Compressor, and a Llama-family LLM with MoAI-Mixers and PLoRA."""

    def __init__(self, config: MoAIConfig) -> None:
        super().__init__(config)
        text, dim = config.text_config, config.text_config.hidden_size
        if config.vision_attn_implementation is not None:
            config.vision_config._attn_implementation = config.vision_attn_implementation
        self.vision = MoAIVisionEncoder(config.vision_config, config.vision_feature_layer)
        self.projector = MoAIProjector(config.vision_config.hidden_size, dim, config.projector_hidden_act)
        self.language_model = LlamaModel(text)
        # one extra input row for <image> (MoAI-7B: 92,545 rows in, 92,544 out); never a padding_idx
        # (the official pad id -100 would zero and freeze a real row, docs/model.md §3)
        self.language_model.embed_tokens = nn.Embedding(max(text.vocab_size, config.image_token_id + 1), dim)
        self.lm_head = nn.Linear(dim, text.vocab_size, bias=False)
        self.compressor = MoAICompressor(dim, config.compressor_config)
        self.mixer_mode = config.mixer_config.mode
        self.mixer_generator: torch.Generator | None = None

        layers = self.language_model.layers
        if config.plora_config.enabled:
            for layer in layers:
                add_plora(layer, config.plora_config)
        for idx in config.mixer_config.layers:
            attn = layers[idx].self_attn
            attn.moai_mixer = MoAIMixer(dim, config.mixer_config)
            if config.mixer_config.identity_init:
                for name in ("img_aux", "img_lang", "img_self", "lang_aux", "lang_img", "lang_self"):
                    zero_init(getattr(attn.moai_mixer, name).o_proj[1])
        for idx, layer in enumerate(layers):
            layer.self_attn.register_forward_pre_hook(self._make_attention_hook(idx), with_kwargs=True)
        self.post_init()
        self.set_trainable("moai")

    # -- hooks -----------------------------------------------------------------------------------
    @staticmethod
    def _make_attention_hook(layer_idx: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
            state: MoAIState | None = kwargs.pop("moai_state", None)
            mixer = getattr(module, "moai_mixer", None)
            if mixer is not None and state is not None and state.aux is not None:
                hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
                choice = state.expert_choice(layer_idx) if state.mode == "sample" else None
                mixed, weights = mixer(hidden, state.streams, state.aux, mode=state.mode, choice=choice)
                state.gate_weights[layer_idx] = weights
                if "hidden_states" in kwargs:
                    kwargs["hidden_states"] = mixed
                else:
                    args = (mixed, *args[1:])
            return args, kwargs

        return hook

    # -- accessors -------------------------------------------------------------------------------
    def get_input_embeddings(self) -> nn.Embedding:
        return self.language_model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.language_model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_mixer_mode(self, mode: str) -> None:
        """Switch routing at run time: ``sample`` (step 1), ``gated`` (step 2, inference) or ``topk``."""
        if mode not in ("sample", "gated", "topk"):
            raise ValueError(f"mixer mode must be sample, gated or topk, got {mode!r}")
        self.mixer_mode = mode

    @torch.no_grad()
    def reset_mixers(self, layers: list[int] | None = None) -> None:
        """(Re-)initialise the mixers of ``layers`` (default: all): normal weights, zero biases, and the
        identity init when configured. Used when mixers are added to a base model trained without them.
        """
        std = self.config.text_config.initializer_range
        chosen = self.config.mixer_config.layers if layers is None else layers
        for idx in chosen:
            for sub in self.language_model.layers[idx].self_attn.moai_mixer.modules():
                if isinstance(sub, nn.Linear):
                    sub.weight.normal_(0.0, std)
                    if sub.bias is not None:
                        sub.bias.zero_()
                    if getattr(sub, "_moai_zero_init", False):
                        sub.weight.zero_()

    def moai_parameter_names(self) -> list[str]:
        """Names of the MoAI modules' parameters (compressor, experts, gates): trainable by default."""
        return [n for n, _ in self.named_parameters() if n.startswith("compressor.") or ".moai_mixer." in n]

    def set_trainable(self, policy: str = "moai") -> int:
        """Set ``requires_grad`` by policy and return the trainable count.

        ``moai``: compressor + mixers only (the official recipe, docs/model.md §10); ``moai+plora``: also the
        PLoRA factors; ``all``: everything; ``none``: nothing.
        """
        if policy not in TRAINABLE_POLICIES:
            raise ValueError(f"trainable policy must be one of {TRAINABLE_POLICIES}, got {policy!r}")
        moai = set(self.moai_parameter_names())
        for name, param in self.named_parameters():
            is_plora = ".plora_" in name
            param.requires_grad_(
                policy == "all"
                or (policy != "none" and (name in moai or (policy == "moai+plora" and is_plora)))
            )
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def component_parameter_counts(self) -> dict[str, int]:
        """Parameter count per component (PLoRA counted apart from the LLM it hooks into)."""
        counts: dict[str, int] = {}
        for name, param in self.named_parameters():
            if ".moai_mixer." in name:
                key = "mixers"
            elif ".plora_" in name:
                key = "plora"
            else:
                key = name.split(".", 1)[0]
            counts[key] = counts.get(key, 0) + param.numel()
        return counts

    # -- inputs ----------------------------------------------------------------------------------
    def token_streams(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        *,
        past_length: int = 0,
    ) -> torch.Tensor:
        """Derive per-token stream ids [B, S] from the ids: image tokens, prompt language, answers (labels).

        The prompt ends at the first labelled token: everything from there on (answers, and in multi-turn
        data the later turns, whose states have seen earlier answers) is stream 3, outside the ``prompt``
        mixer scope. Tokens that continue a non-empty cache are generated tokens (0) unless image tokens.
        """
        image = input_ids == self.config.image_token_id
        real = (
            torch.ones_like(image)
            if attention_mask is None
            else attention_mask[:, -input_ids.shape[1] :].bool()
        )
        streams = torch.full_like(input_ids, STREAM_NONE)
        if past_length == 0:
            streams[real & ~image] = STREAM_PROMPT
            if labels is not None:
                after = (labels != IGNORE_INDEX).long().cumsum(dim=1) > 0  # [B, S] at/after the first answer
                streams[real & ~image & after] = STREAM_ANSWER
        streams[real & image] = STREAM_IMAGE
        return streams

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> projected patch features [B, N, D]."""
        expected = (self.config.vision_config.num_channels, self.config.image_size, self.config.image_size)
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(
                f"pixel_values must have shape (batch, {expected[0]}, {expected[1]}, {expected[2]}) "
                f"(channels, height, width), got {tuple(pixel_values.shape)}"
            )
        return self.projector(self.vision(pixel_values))

    def build_aux_embeds(
        self,
        aux_input_ids: torch.Tensor | None,
        aux_attention_mask: torch.Tensor | None,
        aux_pixel_values: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Aux embeddings [B, T, D] and mask [B, T]: word embeddings of the verbalization, then the map tokens.

        The verbalization is embedded with the LLM's own (frozen) input table, not run through any layer;
        the panoptic map goes through the same vision tower and projector as the image (paper §3, Verbalization).
        """
        if aux_input_ids is None:
            raise ValueError(
                "aux_input_ids (the tokenised verbalization) is required when aux_embeds is not given"
            )
        parts = [self.get_input_embeddings()(aux_input_ids)]  # [B, T_verb, D]
        masks = [torch.ones_like(aux_input_ids) if aux_attention_mask is None else aux_attention_mask]
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
            map_tokens = self.encode_images(aux_pixel_values).to(parts[0].dtype)  # [B, N, D]
            parts.append(map_tokens)
            masks.append(masks[0].new_ones(map_tokens.shape[:2]))
        return torch.cat(parts, dim=1), torch.cat(masks, dim=1)

    def _merge_image_features(
        self, input_ids: torch.Tensor, embeds: torch.Tensor, pixel_values: torch.Tensor | None
    ) -> torch.Tensor:
        image_mask = input_ids == self.config.image_token_id  # [B, S]
        n_tokens = image_mask.sum(dim=1)  # [B]
        if not bool(n_tokens.any()):
            return embeds
        if pixel_values is None:
            raise ValueError("input_ids contain <image> tokens but pixel_values is None")
        per_image = self.config.num_image_tokens
        if pixel_values.shape[0] != input_ids.shape[0] or bool((n_tokens != per_image).any()):
            raise ValueError(
                f"number of <image> tokens does not match the images: each sample needs exactly one image "
                f"({per_image} image tokens after expansion); got {n_tokens.tolist()} image tokens per sample "
                f"for {pixel_values.shape[0]} images and {input_ids.shape[0]} samples"
            )
        features = self.encode_images(pixel_values).to(embeds.dtype)  # [B, N, D]
        return embeds.masked_scatter(image_mask[..., None], features)

    # -- forward ---------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        *,
        attention_mask: torch.Tensor | None = None,
        aux_input_ids: torch.LongTensor | None = None,
        aux_attention_mask: torch.Tensor | None = None,
        aux_pixel_values: torch.FloatTensor | None = None,
        aux_embeds: torch.FloatTensor | None = None,
        mm_token_type_ids: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        mixer_mode: str | None = None,
        logits_to_keep: int = 0,
        **kwargs: Any,
    ) -> MoAIOutput:
        """Run MoAI on a (left-padded) batch.

        Args:
            input_ids: [B, S] token ids with ``<image>`` already expanded to N tokens per image.
            pixel_values: [B, 3, H, W] one image per sample.
            attention_mask: [B, S] (or [B, past + S] while generating) 1 = real token.
            aux_input_ids / aux_attention_mask: [B, T] the tokenised verbalization of the CV outputs.
            aux_pixel_values: [B, 3, H, W] the panoptic colour map (needed when ``config.use_aux_map``).
            aux_embeds: [B, T, D] precomputed aux embeddings, instead of the three inputs above.
            mm_token_type_ids: [B, S] stream ids (0 none/generated, 1 image, 2 prompt, 3 answer); derived
                from the ids, mask and labels when omitted.
            labels: [B, S] next-token targets (-100 ignored); positions with a label are answer tokens.
            mixer_mode: override the model's routing (sample | gated | topk) for this call.
        """
        if input_ids is None and inputs_embeds is None:
            raise ValueError("pass input_ids (or inputs_embeds)")
        past_length = cache.get_seq_length() if cache is not None else 0
        if input_ids is not None:
            if input_ids.shape[1] == 0:
                raise ValueError("input_ids is empty: the text has no tokens")
            streams = mm_token_type_ids
            if streams is None:
                streams = self.token_streams(input_ids, attention_mask, labels, past_length=past_length)
            if inputs_embeds is None:
                inputs_embeds = self.get_input_embeddings()(input_ids)  # [B, S, D]
                if bool((streams == STREAM_IMAGE).any()) or past_length == 0:
                    inputs_embeds = self._merge_image_features(input_ids, inputs_embeds, pixel_values)
        else:
            streams = (
                mm_token_type_ids
                if mm_token_type_ids is not None
                else inputs_embeds.new_zeros(inputs_embeds.shape[:2], dtype=torch.long)
            )

        # MoAI-Compressor: only when some token of this chunk enters the mixer (never on decode steps)
        mixer_layers = self.config.mixer_config.layers
        compressed = None
        if mixer_layers and bool((streams != STREAM_NONE).any()):
            aux_mask = None
            if aux_embeds is None:
                aux_embeds, aux_mask = self.build_aux_embeds(
                    aux_input_ids, aux_attention_mask, aux_pixel_values
                )
            elif aux_attention_mask is not None and aux_attention_mask.shape[1] == aux_embeds.shape[1]:
                aux_mask = aux_attention_mask
            compressed = self.compressor(aux_embeds.to(inputs_embeds.dtype), aux_mask).to(inputs_embeds.dtype)

        if position_ids is None and self.config.position_ids_from_mask and attention_mask is not None:
            positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # [B, past + S]
            position_ids = positions[:, -inputs_embeds.shape[1] :]

        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        mode = mixer_mode or self.mixer_mode
        state = MoAIState(
            streams=streams,
            image_mask=streams == STREAM_IMAGE,
            aux=compressed,
            mode=mode,
            forced_experts=self.config.mixer_config.forced_experts,
            generator=self.mixer_generator,
        )
        outputs = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            moai_state=state,
            **kwargs,
        )
        hidden = outputs.last_hidden_state  # [B, S, D]
        keep = slice(-logits_to_keep, None) if logits_to_keep else slice(None)
        logits = self.lm_head(hidden[:, keep])  # [B, S', V]

        loss = None
        if labels is not None:
            loss = causal_lm_loss(logits, labels, num_items_in_batch=num_items_in_batch)
        gate_weights = tuple(state.gate_weights[i] for i in mixer_layers if i in state.gate_weights) or None
        return MoAIOutput(loss=loss, logits=logits, cache=outputs.cache, gate_weights=gate_weights)

    def generate(self, input_ids: torch.Tensor | None = None, **kwargs: Any):
        """`GenerationMixin.generate` with the per-token streams filled in before the first step.

        Generated tokens get stream 0, so they never enter the mixer nor receive PLoRA, with or without a
        KV cache (docs/model.md §8: the official decode steps skip both).
        """
        if input_ids is not None and kwargs.get("mm_token_type_ids") is None:
            kwargs["mm_token_type_ids"] = self.token_streams(input_ids, kwargs.get("attention_mask"))
        return super().generate(input_ids=input_ids, **kwargs)


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
AutoModel.register(MoAIConfig, MoAIForConditionalGeneration)
