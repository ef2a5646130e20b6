"""``moai info`` and ``moai --version`` against numbers computed here, not by the code under test."""

import json

import moai
from moai import MoAIConfig
from moai.cli import main

#: MoAI-7B as published (docs/official.md): every parameter, and the MoAI modules (compressor + mixers).
MOAI_7B_TOTAL = 8_868_637_720
MOAI_7B_TRAINABLE = 201_793_560


def linear(n_in: int, n_out: int, bias: bool = True) -> int:
    return n_in * n_out + (n_out if bias else 0)


def expected_components(config: MoAIConfig) -> dict[str, int]:
    """Parameter count per component from the architecture (arXiv 2403.07508 §3; docs/model.md), by hand.

    CLIP ViT (patch conv without bias, class token, position table, pre/post LayerNorm, per layer q/k/v/o
    with bias, two LayerNorms, a two-layer MLP), the two-layer projector, the decoder (GQA attention without
    bias, SwiGLU MLP, two RMSNorms per layer, a final RMSNorm, one extra embedding row for ``<image>``), PLoRA
    (one A shared by q/k/v, an A and B for o and each MLP projection), per mixer layer six low-rank experts
    (q/k/v/o each two factors of rank r) and two gates (3 logits), and the compressor (latents, per layer
    attention with two LayerNorms and a feed-forward with one LayerNorm, a final LayerNorm).
    """
    v, t = config.vision_config, config.text_config
    c, m, r = config.compressor_config, config.mixer_config, config.plora_config.r
    d, h = v.hidden_size, t.hidden_size
    patches = (v.image_size // v.patch_size) ** 2
    vision_layer = (
        4 * linear(d, d) + 2 * 2 * d + linear(d, v.intermediate_size) + linear(v.intermediate_size, d)
    )
    vision = 3 * v.patch_size**2 * d + d + (patches + 1) * d + 2 * 2 * d + v.num_hidden_layers * vision_layer
    head_dim = h // t.num_attention_heads
    kv = t.num_key_value_heads * head_dim
    text_layer = h * h + 2 * h * kv + h * h + 3 * h * t.intermediate_size + 2 * h
    language_model = (t.vocab_size + 1) * h + t.num_hidden_layers * text_layer + h
    plora_layer = r * h + r * (h + 2 * kv) + 2 * r * h + 2 * (r * h + r * t.intermediate_size)
    plora_layer += r * t.intermediate_size + r * h
    mixer_layer = 6 * 4 * 2 * m.rank * h + 2 * linear(h, 3)
    inner = c.num_heads * c.head_dim
    ff = int(h * c.ff_mult)
    compressor_layer = 2 * 2 * h + h * inner + 2 * h * inner + inner * h + 2 * h + h * ff + ff * h
    return {
        "vision": vision,
        "projector": linear(d, h) + linear(h, h),
        "language_model": language_model,
        "plora": t.num_hidden_layers * plora_layer,
        "mixers": len(m.layers) * mixer_layer,
        "lm_head": t.vocab_size * h,
        "compressor": c.num_latents * h + c.depth * compressor_layer + 2 * h,
    }


def test_info_json_tiny_matches_the_architecture(capsys):
    assert main(["info", "--preset", "tiny", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    want = expected_components(MoAIConfig.from_preset("tiny"))
    assert report["components"] == want
    assert report["total_params"] == sum(want.values()) == 355_590
    assert report["trainable_params"] == want["compressor"] + want["mixers"] == 100_614
    assert report["image_tokens"] == (112 // 14) ** 2 and report["mixer_layers"] == [2]


def test_info_json_moai_7b_matches_the_published_model(capsys):
    assert main(["info", "--preset", "moai-7b", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["total_params"] == MOAI_7B_TOTAL
    assert report["trainable_params"] == MOAI_7B_TRAINABLE
    assert report["components"] == expected_components(MoAIConfig.from_preset("moai-7b"))
    assert report["image_tokens"] == 35 * 35 and report["mixer_layers"] == [7, 15, 23, 31]


def test_unknown_preset_is_a_clean_error(capsys):
    assert main(["info", "--preset", "nope"]) == 2
    assert "unknown preset" in capsys.readouterr().err


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"moai {moai.__version__}\n"
