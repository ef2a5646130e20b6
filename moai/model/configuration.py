# Copyright 2026 The moai authors. SPDX-License-Identifier: MIT
"""MoAI configuration: one `MoAIConfig` with nested sub-configs, and named presets.

Presets (`MoAIConfig.from_preset`):
  * ``tiny``     random, 112 px images (64 image tokens), 4 decoder layers, one mixer layer; for tests.
  * ``shapes``   random, the bundled ShapesWorld model's architecture (docs/shapesworld.md): 224 px images
                 in 28 px patches (64 image tokens), a 128-wide 4-layer LLM over a word-level vocabulary, mixers in layers 1
                 and 3, a 64-latent compressor with aux positions.
  * ``mid``      random, ~100M-parameter LLM, ViT-B/16-class tower at 224 px, mixers every 4th layer; benchmarks.
  * ``moai-7b``  exactly the published MoAI-7B (docs/model.md), official compatibility options on.

Every difference between the official model and the default for new models is a field here with a
docstring (docs/official.md §4); the ``official`` preset flag only selects those field values.
"""

from __future__ import annotations

from typing import Any, Literal

from transformers import CLIPVisionConfig, LlamaConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .constants import EXPERTS_PER_STREAM, MIXER_MODES

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class MoAICompressorConfig(PreTrainedConfig):
    """MoAI-Compressor: a Perceiver resampler turning aux embeddings into a few latent tokens (paper §3)."""

    model_type = "moai_compressor"

    depth: int = 4
    """Number of (cross-attention, feed-forward) blocks."""
    num_heads: int = 4
    """Attention heads of each block."""
    head_dim: int = 64
    """Width of one head; the attention width is ``num_heads * head_dim`` (256 in MoAI-7B)."""
    num_latents: int = 64
    """Number of learned latent tokens = number of compressed aux tokens handed to the mixers."""
    latent_init_std: float = 1.0
    """Standard deviation of the latents' normal init (official: 1, ``torch.randn``). The latents are the
    residual stream of the compressor: at 1 they outweigh the aux content the first block adds (~0.03), so
    the compressed aux starts almost the same for every sample (2.5 % variation on ShapesWorld) and the
    mixers get almost no gradient; a small value (0.02, the ``shapes`` preset) lets the aux content dominate."""
    ff_mult: float = 1.0
    """Feed-forward width as a multiple of the LLM hidden size (1 in MoAI-7B)."""
    key_padding_mask: bool = True
    """Mask padded aux tokens as keys. Off reproduces the official compressor, which attends to the left-pad
    ``</s>`` embeddings of a batched verbalization (docs/model.md §5)."""
    aux_position_embeddings: bool = False
    """Add learned positional embeddings to the aux inputs (positions counted over non-pad tokens). The
    official compressor has none and sees the verbalization as a bag of word embeddings."""
    max_aux_positions: int = 4096
    """Rows of the positional table when ``aux_position_embeddings`` is on."""
    text_layers: int = 0
    """Run the verbalization through the first ``text_layers`` decoder layers of the LLM (frozen in MoAI
    training, no mixers) before the compressor reads it, so that each word carries its context (the colour
    before a kind); 0 (official, paper §3): the bare word embeddings, from which a small compressor cannot tell
    which colour goes with which kind (docs/shapesworld.md, "What limits the model"). The map tokens are not
    affected."""
    passthrough: bool = False
    """Not in the official model: no compression. The compressor returns its position-embedded, normalised
    input (every aux token; no latents, no blocks) and the AUX experts attend to all of those tokens, padding
    masked. Measured on ShapesWorld (docs/shapesworld.md, "Matching a word in the aux"): new experts on a
    synthetic aux leave the 50 % plateau sooner this way; the bundled recipe does not score higher with it."""
    encoder_layers: int = 0
    """Not in the official model: trainable transformer blocks (bidirectional self-attention over the aux
    tokens, then a feed-forward; ``num_heads`` x ``head_dim`` wide) between the aux positions and the latents
    (or the passthrough), so that each aux word carries its neighbours; 0 (official, paper §3): the compressor
    reads the bare word embeddings, where "red circle is left of blue square" and "blue square is left of red
    circle" differ only in positions (docs/shapesworld.md, "Position: the easiest case first")."""
    layer_norm_eps: float = 1e-5
    """Epsilon of the compressor's LayerNorms (PyTorch default, as the official)."""


class MoAIMixerConfig(PreTrainedConfig):
    """MoAI-Mixer: six attention experts and two gates in selected decoder layers (paper §3; docs/model.md §6).

    ``mode``, ``top_k``, ``scope``, ``gate_softmax_dtype`` and ``forced_experts`` are the run-time switches a
    model starts with; ``model.set_mixer(...)`` changes them without touching the config.
    """

    model_type = "moai_mixer"

    layers: list[int] | None = None
    """0-based decoder layer indices that get a mixer (official: 7, 15, 23, 31)."""
    num_heads: int = 4
    """Heads of each expert attention; head width is ``hidden_size / num_heads``."""
    rank: int = 64
    """Rank of the low-rank q/k/v/o factorisations of every expert."""
    mode: Literal["sample", "gated", "topk"] = "gated"
    """Default expert routing. ``sample``: training step 1, one random expert per stream per layer, no gates.
    ``gated``: training step 2 and inference, dense softmax mix of the three experts of a stream. ``topk``:
    keep the ``top_k`` largest gate weights per token and renormalise."""
    top_k: int = 2
    """k for ``topk`` mode (1 or 2)."""
    scope: Literal["prompt", "causal"] = "prompt"
    """Which language tokens enter the mixer. ``prompt``: image tokens and the prompt's language tokens,
    bidirectionally; answer and generated tokens never enter a stream nor serve as keys (no leakage,
    training equals inference, cache equals no-cache). ``causal``: answer tokens join the language
    stream, whose self-attention is causally masked; image tokens still only see prompt tokens."""
    expert_padding_mask: bool = True
    """Mask the padding slots of the per-sample gathered streams. The official eval loop runs one sample at
    a time (no padding exists there), which this reproduces; off lets padding slots act as keys."""
    gate_softmax_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    """dtype of the gate softmax. The official model uses float16 at inference and bfloat16 in step 2, and
    multiplies those rounded weights into the float32 expert outputs."""
    forced_experts: list[int] | None = None
    """Force the step-1 expert choice ``[image_expert, language_expert]`` (0 aux, 1 cross-modal, 2 self)
    in every mixer layer, for tests and parity; None draws uniformly at random."""
    identity_init: bool = True
    """Zero the last factor of every expert's output projection at init, so that each expert returns its
    query input and the mixer is the identity (docs/model.md §6): training starts from the base model."""
    attention_sink: bool = False
    """Give every expert a learned key and value (zero at init) that its queries may attend to instead of any
    token, so that an expert can find "nothing here" (an attention sink; docs/model.md §6). Not in the
    official model, whose experts attend to their tokens only."""
    into_residual: bool = False
    """Also add the mixer's change of the normalised states to the decoder layer's residual stream, so that the
    experts' output reaches the later layers and the LM head directly, not only through this layer's attention
    (docs/model.md §6). Not in the official model, whose residual keeps the un-mixed input."""


class PLoRAConfig(PreTrainedConfig):
    """Partial LoRA: low-rank deltas on every decoder linear, applied at image-token positions only (docs/model.md §7)."""

    model_type = "moai_plora"

    enabled: bool = True
    """Add PLoRA factors to the decoder (MoAI-7B inherits them, frozen, from InternLM-XComposer2)."""
    r: int = 256
    """LoRA rank."""
    alpha: float = 256.0
    """LoRA alpha; the delta is scaled by ``alpha / r``."""
    dropout: float = 0.0
    """Dropout on the LoRA input in training mode (official: 0.05)."""
    zero_init_b: bool = True
    """Initialise ``B`` to zero (new models) so PLoRA starts as a no-op."""


class MoAIConfig(PreTrainedConfig):
    """Configuration of `MoAIForConditionalGeneration`.

    The LLM is any Llama-family ``transformers`` config (``text_config``); its ``vocab_size`` is the LM-head
    size, and the input embedding table has one more row for ``<image>`` (``image_token_id``), as MoAI-7B.
    """

    model_type = "moai"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=CLIPVisionConfig),
        "text_config": SubConfigSpec(config_class=LlamaConfig),
        "compressor_config": SubConfigSpec(config_class=MoAICompressorConfig),
        "mixer_config": SubConfigSpec(config_class=MoAIMixerConfig),
        "plora_config": SubConfigSpec(config_class=PLoRAConfig),
    }

    vision_config: dict | PreTrainedConfig | None = None
    """CLIP vision tower, built at the target image size (490 px -> 1226 positions for MoAI-7B)."""
    text_config: dict | PreTrainedConfig | None = None
    """The LLM decoder config (Llama layout; InternLM2 weights are converted to it)."""
    compressor_config: dict | PreTrainedConfig | None = None
    """MoAI-Compressor sub-config."""
    mixer_config: dict | PreTrainedConfig | None = None
    """MoAI-Mixer sub-config."""
    plora_config: dict | PreTrainedConfig | None = None
    """PLoRA sub-config."""
    image_token_id: int | None = None
    """Id of ``<image>``; defaults to ``text_config.vocab_size`` (the extra embedding row)."""
    vision_feature_layer: int = -1
    """Index into the CLIP hidden states used as image features (-1: last layer, before post-layernorm,
    as the official; LLaVA uses -2)."""
    vision_attn_implementation: str | None = None
    """Attention kernel of the vision tower; ``moai_clip_official`` reproduces the arithmetic order of the
    official environment (transformers 4.38 CLIP) bit for bit. None: the model's ``attn_implementation``."""
    projector_hidden_act: str = "gelu"
    """Activation of the mlp2x projector (Linear -> act -> Linear)."""
    use_aux_map: bool = True
    """The aux input includes the panoptic colour map passed through the vision tower and projector."""
    position_ids_from_mask: bool = True
    """RoPE positions from the attention mask (correct under left padding). Off uses 0..S-1 for every row,
    as the official code does (docs/model.md §8)."""
    compat: Literal["default", "official"] = "default"
    """Which compatibility level the preset selected; informational, the fields above carry the behaviour."""
    image_mean: list[float] | None = None
    """Per-channel mean for pixel normalisation (CLIP's by default)."""
    image_std: list[float] | None = None
    """Per-channel std for pixel normalisation (CLIP's by default)."""
    tie_word_embeddings: bool = False
    """The LM head is separate from the input embeddings (they even differ in size)."""
    use_cache: bool = True
    """``generate`` keeps a KV cache (transformers' generation reads it here, as for a causal LM)."""

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        if self.image_token_id is None:
            self.image_token_id = self.text_config.vocab_size
        if self.image_mean is None:
            self.image_mean = list(CLIP_MEAN)
        if self.image_std is None:
            self.image_std = list(CLIP_STD)
        if self.mixer_config.layers is None:
            self.mixer_config.layers = []
        self.validate_moai()

    # -- derived sizes -------------------------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return self.text_config.hidden_size

    @property
    def image_size(self) -> int:
        return self.vision_config.image_size

    @property
    def num_image_tokens(self) -> int:
        """Patch tokens per image (CLS dropped): (image_size / patch_size)^2."""
        return (self.vision_config.image_size // self.vision_config.patch_size) ** 2

    def validate_moai(self) -> None:
        """Check relations between fields; raise ValueError naming the field."""
        text, mixer = self.text_config, self.mixer_config
        if self.vision_config.image_size % self.vision_config.patch_size:
            raise ValueError(
                f"vision_config.image_size={self.vision_config.image_size} is not a multiple of "
                f"patch_size={self.vision_config.patch_size}"
            )
        for idx in mixer.layers:
            if not 0 <= idx < text.num_hidden_layers:
                raise ValueError(f"mixer_config.layers has {idx}, outside 0..{text.num_hidden_layers - 1}")
        if text.hidden_size % mixer.num_heads:
            raise ValueError(
                f"hidden_size={text.hidden_size} not divisible by mixer num_heads={mixer.num_heads}"
            )
        if mixer.mode not in MIXER_MODES:
            raise ValueError(f"mixer_config.mode must be sample, gated or topk, got {mixer.mode!r}")
        if mixer.scope not in ("prompt", "causal"):
            raise ValueError(f"mixer_config.scope must be prompt or causal, got {mixer.scope!r}")
        if mixer.top_k not in (1, 2):
            raise ValueError(f"mixer_config.top_k must be 1 or 2, got {mixer.top_k}")
        if mixer.forced_experts is not None and (
            len(mixer.forced_experts) != 2
            or any(e not in range(EXPERTS_PER_STREAM) for e in mixer.forced_experts)
        ):
            raise ValueError(
                f"mixer_config.forced_experts must be [img, lang] with values in 0..{EXPERTS_PER_STREAM - 1}, "
                f"got {mixer.forced_experts}"
            )

    # -- presets -------------------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> MoAIConfig:
        """Build a named preset (``tiny``, ``mid``, ``moai-7b``); keyword overrides replace top-level fields."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        kwargs = PRESETS[name]()
        kwargs.update(overrides)
        return cls(**kwargs)


def _tiny() -> dict[str, Any]:
    return dict(
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=112,
            patch_size=14,
            hidden_act="quick_gelu",
            layer_norm_eps=1e-5,
        ),
        text_config=dict(
            vocab_size=264,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=2048,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            rms_norm_eps=1e-5,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=None,
            tie_word_embeddings=False,
        ),
        compressor_config=dict(depth=2, num_heads=4, head_dim=16, num_latents=16, ff_mult=1.0),
        mixer_config=dict(layers=[2], num_heads=4, rank=16),
        plora_config=dict(r=8, alpha=8.0),
    )


def _mid() -> dict[str, Any]:
    return dict(
        vision_config=dict(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            image_size=224,
            patch_size=16,
            hidden_act="quick_gelu",
            layer_norm_eps=1e-5,
        ),
        text_config=dict(
            vocab_size=32000,
            hidden_size=768,
            intermediate_size=2048,
            num_hidden_layers=12,
            num_attention_heads=12,
            num_key_value_heads=4,
            max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            rms_norm_eps=1e-5,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=None,
            tie_word_embeddings=False,
        ),
        compressor_config=dict(depth=4, num_heads=4, head_dim=64, num_latents=64, ff_mult=1.0),
        mixer_config=dict(layers=[3, 7, 11], num_heads=4, rank=64),
        plora_config=dict(r=64, alpha=64.0),
    )


def _shapes() -> dict[str, Any]:
    return dict(
        vision_config=dict(  # the 224 px canvas unresized, 28 px patches: a whole shape in one to four patches
            hidden_size=96,
            intermediate_size=384,
            num_hidden_layers=3,
            num_attention_heads=4,
            image_size=224,
            patch_size=28,
            hidden_act="quick_gelu",
            layer_norm_eps=1e-5,
        ),
        text_config=dict(
            vocab_size=320,  # the word tokenizer's rows plus reserved ones (moai/train/vocab.py)
            hidden_size=128,
            intermediate_size=384,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=1024,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            rms_norm_eps=1e-5,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
            tie_word_embeddings=False,
        ),
        compressor_config=dict(
            depth=2,
            num_heads=4,
            head_dim=32,
            num_latents=64,
            ff_mult=1.0,
            aux_position_embeddings=True,
            max_aux_positions=1024,
            latent_init_std=0.02,
        ),
        mixer_config=dict(layers=[1, 3], num_heads=4, rank=32),
        plora_config=dict(r=16, alpha=16.0),
    )


def official_overrides(mixer_layers: list[int], gate_dtype: str = "float16") -> dict[str, Any]:
    """Field values that reproduce the official numerics (docs/official.md §4)."""
    return dict(
        compat="official",
        position_ids_from_mask=False,
        vision_attn_implementation="moai_clip_official",
        vision_feature_layer=-1,
        compressor=dict(
            key_padding_mask=False,
            aux_position_embeddings=False,
            text_layers=0,
            passthrough=False,
            encoder_layers=0,
        ),
        mixer=dict(
            layers=mixer_layers,
            scope="prompt",
            gate_softmax_dtype=gate_dtype,
            identity_init=False,
            expert_padding_mask=True,
            attention_sink=False,
            into_residual=False,
        ),
        plora=dict(dropout=0.05, zero_init_b=False),
    )


def _moai_7b() -> dict[str, Any]:
    official = official_overrides([7, 15, 23, 31])
    return dict(
        compat=official["compat"],
        position_ids_from_mask=official["position_ids_from_mask"],
        vision_attn_implementation=official["vision_attn_implementation"],
        vision_config=dict(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            image_size=490,
            patch_size=14,
            hidden_act="quick_gelu",
            layer_norm_eps=1e-5,
            projection_dim=768,
        ),
        text_config=dict(
            vocab_size=92544,
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            max_position_embeddings=32768,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            rms_norm_eps=1e-5,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=None,
            tie_word_embeddings=False,
        ),
        compressor_config=dict(
            depth=4, num_heads=4, head_dim=64, num_latents=64, ff_mult=1.0, **official["compressor"]
        ),
        mixer_config=dict(num_heads=4, rank=64, **official["mixer"]),
        plora_config=dict(r=256, alpha=256.0, **official["plora"]),
    )


PRESETS = {"tiny": _tiny, "shapes": _shapes, "mid": _mid, "moai-7b": _moai_7b}
