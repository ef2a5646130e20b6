"""Official compatibility: key mapping, streaming conversion of a re-sharded checkpoint, parity check."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import FIXTURES
from safetensors.torch import load_file, save_file

from moai.cli import main

TINY = FIXTURES / "official_tiny"


def test_compat_keys_maps_all_1197(capsys):
    assert main(["compat", "keys", str(FIXTURES / "moai7b_state_dict_shapes.json")]) == 0
    assert capsys.readouterr().out.strip().endswith("1197/1197 keys mapped")


def test_compat_keys_reports_missing_and_unknown(tmp_path, capsys):
    listing = json.loads((FIXTURES / "moai7b_state_dict_shapes.json").read_text())
    keys = dict(listing["keys"]) if isinstance(listing["keys"], dict) else dict(map(tuple, listing["keys"]))
    dropped = "model.layers.3.attention.wo.Plora_B.weight"
    keys.pop(dropped)
    keys["model.layers.3.attention.surprise.weight"] = [4, 4]
    (tmp_path / "k.json").write_text(json.dumps({"keys": keys}))
    assert main(["compat", "keys", str(tmp_path / "k.json")]) == 2
    assert "model.layers.3.attention.surprise.weight" in capsys.readouterr().err
    keys.pop("model.layers.3.attention.surprise.weight")
    (tmp_path / "k.json").write_text(json.dumps({"keys": keys}))
    assert main(["compat", "keys", str(tmp_path / "k.json")]) == 2
    assert "model.language_model.layers.3.self_attn.o_proj.plora_B.weight" in capsys.readouterr().err


def _resharded_fixture(tmp_path: Path) -> Path:
    src = tmp_path / "official"
    src.mkdir()
    shutil.copy(TINY / "config.json", src / "config.json")
    state = load_file(str(TINY / "state_dict.safetensors"))
    keys = sorted(state)
    halves = {
        "model-00001-of-00002.safetensors": keys[: len(keys) // 2],
        "model-00002-of-00002.safetensors": keys[len(keys) // 2 :],
    }
    weight_map = {}
    for name, part in halves.items():
        save_file(
            {k: state[k].to(torch.bfloat16) if "moai" not in k else state[k] for k in part}, str(src / name)
        )
        weight_map.update({k: name for k in part})
    (src / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return src


def test_convert_resharded_checkpoint_streams_and_keeps_dtype(tmp_path):
    from moai import MoAIForConditionalGeneration

    src = _resharded_fixture(tmp_path)
    out = tmp_path / "converted"
    assert main(["convert", "official", str(src), str(out)]) == 0
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 2
    first = load_file(str(out / "model-00001-of-00002.safetensors"))
    assert any(v.dtype == torch.bfloat16 for v in first.values())  # source dtype kept
    config = json.loads((out / "config.json").read_text())
    assert config["text_config"]["pad_token_id"] is None  # never the official -100
    assert config["compat"] == "official" and config["mixer_config"]["layers"] == [7, 15]
    model = MoAIForConditionalGeneration.from_pretrained(out)
    assert model.get_input_embeddings().weight.shape[0] == 129 and model.lm_head.weight.shape[0] == 128
    # values: the streamed, re-sharded conversion equals the single-file float32 conversion (which the parity
    # check validates), cast to the source dtype of each tensor
    reference = tmp_path / "reference"
    assert main(["convert", "official", str(TINY), str(reference)]) == 0
    want = load_file(str(reference / "model.safetensors"))
    got = {k: v for name in index["weight_map"].values() for k, v in load_file(str(out / name)).items()}
    assert got.keys() == want.keys()
    for key, value in got.items():
        assert value.dtype == (torch.float32 if "mixer" in key or "compressor" in key else torch.bfloat16), (
            key
        )
        assert torch.equal(value, want[key].to(value.dtype)), key
    # and one mapping spelled out: the official LM head is `output`
    source = load_file(str(TINY / "state_dict.safetensors"))
    assert torch.equal(got["lm_head.weight"], source["output.weight"].to(torch.bfloat16))


def test_convert_rejects_unmapped_and_missing_keys(tmp_path, capsys):
    src = tmp_path / "bad"
    src.mkdir()
    shutil.copy(TINY / "config.json", src / "config.json")
    state = load_file(str(TINY / "state_dict.safetensors"))
    state["model.layers.0.attention.extra.weight"] = torch.zeros(2)
    save_file(state, str(src / "state_dict.safetensors"))
    assert main(["convert", "official", str(src), str(tmp_path / "o1")]) == 2
    assert "model.layers.0.attention.extra.weight" in capsys.readouterr().err
    state.pop("model.layers.0.attention.extra.weight")
    state.pop("model.layers.5.feed_forward.w2.Plora_A.weight")
    save_file(state, str(src / "state_dict.safetensors"))
    assert main(["convert", "official", str(src), str(tmp_path / "o2")]) == 2
    assert "model.language_model.layers.5.mlp.down_proj.plora_A.weight" in capsys.readouterr().err


def test_wqkv_split_matches_grouped_layout():
    from moai.compat.official import _split_wqkv, config_from_official

    config = config_from_official(json.loads((TINY / "config.json").read_text()))
    heads, kv, d = 4, 2, 16
    rows = torch.arange((heads + 2 * kv) * d).float()[:, None]
    q, k, v = _split_wqkv(rows, config)
    # KV group 0 holds rows [q0, q1, k0, v0], group 1 [q2, q3, k1, v1]
    assert q[:d, 0].tolist() == list(range(0, d)) and q[2 * d : 3 * d, 0].tolist() == list(
        range(4 * d, 5 * d)
    )
    assert k[:d, 0].tolist() == list(range(2 * d, 3 * d)) and v[d:, 0].tolist() == list(range(7 * d, 8 * d))


@pytest.mark.slow
def test_parity_check_on_official_tiny(capsys):
    assert main(["compat", "check", str(TINY)]) == 0
    out = capsys.readouterr().out
    for key in (
        "logits_eval_b1 (gates teacher-forced)",
        "gate logits eval_b1 (fp32 stage)",
        "intermediates eval_b1 (teacher-forced)",
        "logits_eval_b1 (end to end)",
        "logits_step2_b1 (gates teacher-forced)",
        "logits_step2_b1 (end to end)",
        "logits_step1_dice00_b1",
        "logits_eval_b2 (non-pad rows)",
        "generated_ids_beam3_b1",
        "generated_ids_b2",
        "aux_embeds_b1",
    ):
        assert f"ok   {key}" in out
    assert out.strip().splitlines()[-1].startswith("PARITY OK")


def _parity_report() -> tuple[int, dict]:
    """The gated and step-1 checks, the ones a broken mixer must fail (the full run is the test above)."""
    from moai.compat.parity import run_parity

    report: dict = {}
    code = run_parity(
        TINY, out=lambda _line: None, report=report, noise_trials=1, sections=("gated", "step1")
    )
    assert not any(name.startswith(("generated_ids", "logits_eval_b2", "aux_embeds")) for name in report)
    return code, report


def test_parity_refuses_an_unknown_section():
    from moai.compat.parity import run_parity

    with pytest.raises(ValueError, match="unknown parity section"):
        run_parity(TINY, out=lambda _line: None, sections=("gated", "mixer"))


def test_parity_fails_with_the_gate_softmax_in_float32(monkeypatch):
    """The official gates take their softmax in fp16 (eval) / bf16 (step 2): float32 must be caught."""
    from moai.model import mixer

    monkeypatch.setitem(mixer._DTYPES, "float16", torch.float32)
    monkeypatch.setitem(mixer._DTYPES, "bfloat16", torch.float32)
    code, report = _parity_report()
    assert code == 1
    assert not report["logits_eval_b1 (gates teacher-forced)"]["ok"]
    assert not report["logits_step2_b1 (gates teacher-forced)"]["ok"]


def test_parity_fails_with_the_image_experts_swapped(monkeypatch):
    from moai.model import mixer

    monkeypatch.setattr(mixer, "IMAGE_EXPERTS", ("img_lang", "img_aux", "img_self"))
    code, report = _parity_report()
    assert code == 1
    assert not report["logits_eval_b1 (gates teacher-forced)"]["ok"]
    assert not report["logits_step1_dice00_b1"]["ok"]


def test_parity_fails_without_the_expert_residual(monkeypatch):
    """Each expert adds its output to its query input; dropping that residual must be caught."""
    from moai.model import mixer

    original = mixer.ExpertAttention.forward

    def no_residual(self, x_q, x_kv, keep=None):
        return original(self, x_q, x_kv, keep) - x_q

    monkeypatch.setattr(mixer.ExpertAttention, "forward", no_residual)
    code, report = _parity_report()
    assert code == 1
    assert not report["logits_eval_b1 (gates teacher-forced)"]["ok"]
    assert not report["logits_eval_b1 (end to end)"]["ok"]


def test_parity_fails_with_the_mixer_output_in_the_residual_stream(monkeypatch):
    """The mixer rewrites only the states that feed q/k/v; the decoder's residual stream keeps the un-mixed
    input (docs/model.md §6). Adding the mixer's change to the residual stream must be caught."""
    from moai.model import decoder

    original = decoder.MoAIDecoderLayer.forward

    def leaky(self, hidden_states, *args, mixer_inputs=None, **kwargs):
        out, gates = original(self, hidden_states, *args, mixer_inputs=mixer_inputs, **kwargs)
        if self.mixer is None or mixer_inputs is None:
            return out, gates
        normed = self.input_layernorm(hidden_states)
        choice = mixer_inputs.choices.get(self.layer_idx)
        mixed, _ = self.mixer(
            normed, mixer_inputs.streams, mixer_inputs.aux, settings=mixer_inputs.settings, choice=choice
        )
        return out + (mixed - normed), gates

    monkeypatch.setattr(decoder.MoAIDecoderLayer, "forward", leaky)
    code, report = _parity_report()
    assert code == 1
    assert not report["logits_eval_b1 (gates teacher-forced)"]["ok"]
    assert not report["logits_eval_b1 (end to end)"]["ok"]


def test_compat_verbalize_public(capsys):
    assert main(["compat", "verbalize", str(FIXTURES / "verbalize_public.jsonl")]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("28/28 exact") and "ocr_none_no_text_found" in last


def test_published_config_takes_moai_sizes_from_preset():
    """The published config.json is InternLM2's only: MoAI/CLIP/PLoRA sizes come from the moai-7b preset."""
    from moai import MoAIForConditionalGeneration
    from moai.compat.official import config_from_official

    published = {
        "architectures": ["MoAIModel"],
        "model_type": "internlm",
        "vocab_size": 92544,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-5,
        "rope_theta": 1000000,
        "rope_scaling": {"type": "dynamic", "factor": 2.0},
        "bias": False,
        "pad_token_id": -100,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float32",
    }
    config = config_from_official(published)
    assert config.text_config.pad_token_id is None
    assert config.text_config.rope_parameters["rope_type"] == "dynamic"
    assert config.text_config.rope_parameters["factor"] == 2.0
    assert (
        config.mixer_config.layers == [7, 15, 23, 31] and config.mixer_config.gate_softmax_dtype == "float16"
    )
    with torch.device("meta"):
        model = MoAIForConditionalGeneration(config)
    assert sum(p.numel() for p in model.parameters()) == 8_868_637_720


def test_first_divergence_is_reported_in_data_flow_order():
    from moai.compat.parity import _report_divergence

    want = {
        f"inter.eval_b1.{k}": torch.zeros(2)
        for k in ("vit_features", "compressed_aux", "layer00_out", "layer01_out")
    }
    got = {
        "vit_features": torch.zeros(2),
        "compressed_aux": torch.zeros(2),
        "layer00_out": torch.ones(2),
        "layer01_out": torch.ones(2),
    }
    lines = []
    _report_divergence("eval_b1", got, want, lines.append)
    assert lines == ["     first divergence in eval_b1: layer00_out max|Δ|=1"]


def test_official_tokenizer_and_template_are_converted(tmp_path):
    """A SentencePiece model trained here stands in for InternLM2's (not among the fixtures)."""
    spm = pytest.importorskip("sentencepiece", reason="the official extra (sentencepiece) is not installed")
    src = tmp_path / "official"
    src.mkdir()
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(
        "\n".join(
            ["AI assistant should give helpful and detailed answers to user.", "What color is it?"] * 40
        )
    )
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(src / "tokenizer"),
        vocab_size=300,
        bos_id=1,
        eos_id=2,
        unk_id=0,
        pad_id=-1,
        model_type="bpe",
        byte_fallback=True,
        minloglevel=2,
        user_defined_symbols=["[UNUSED_TOKEN_146]", "[UNUSED_TOKEN_145]"],
    )
    from moai.compat.tokenizer import load_official_tokenizer
    from moai.model.processing import MoAIProcessor

    tokenizer = load_official_tokenizer(src)
    assert tokenizer.convert_tokens_to_ids("<image>") == 300  # the extra row, as 92,544 in MoAI-7B
    assert tokenizer.pad_token_id == 2 and tokenizer.padding_side == "left"
    processor = MoAIProcessor(
        tokenizer, image_size=28, num_image_tokens=4, template="official", aux_map_mode="official"
    )
    batch = processor(images=[torch.zeros(28, 28, 3, dtype=torch.uint8).numpy()], text=["What color is it?"])
    ids = batch["input_ids"][0].tolist()
    assert ids[0] == 1 and ids.count(300) == 4
    text = tokenizer.decode(ids)
    assert (
        "AI assistant should give helpful" in text
        and "[UNUSED_TOKEN_146]" in text
        and text.rstrip().endswith("assistant")
    )


def test_official_aux_map_preprocessing_matches_the_fixture(tmp_path):
    """The processor's official map branch (fp16 rounding, 0..255 normalisation of a [0, 1] map) gives the
    official map tokens: vision tower + projector of the converted model on it equal `aux_recipe.map_embeds`."""
    from moai import MoAIForConditionalGeneration, MoAIProcessor

    assert main(["convert", "official", str(TINY), str(tmp_path / "conv")]) == 0
    model = MoAIForConditionalGeneration.from_pretrained(tmp_path / "conv").eval()
    cfg = model.config  # the fixture's vocabulary (128) is too small for the byte tokenizer: borrow tiny's
    processor = MoAIProcessor(
        MoAIProcessor.from_preset("tiny").tokenizer,
        image_size=cfg.image_size,
        num_image_tokens=cfg.num_image_tokens,
        image_mean=cfg.image_mean,
        image_std=cfg.image_std,
        aux_map_mode="official",
    )
    inputs = load_file(str(TINY / "inputs.safetensors"))
    for suffix in ("b1", "b2"):
        official_fp16 = inputs[
            f"aux_recipe.panoptic_map_fp16_{suffix}"
        ]  # [B, 3, H, W], colormap / 255 in fp16
        colours = (official_fp16.float() * 255).round()  # the uint8 colours the official map was made of
        assert torch.equal((colours / 255).half(), official_fp16)
        maps = [(c / 255).permute(1, 2, 0).numpy() for c in colours]  # the float32 maps, (H, W, 3)
        pixels = processor.preprocess_aux_images(maps)
        # the official image processor on the recorded fp16 map: (x - 255 mean) / (255 std), x in [0, 1]
        mean = torch.tensor(cfg.image_mean).view(1, 3, 1, 1) * 255
        std = torch.tensor(cfg.image_std).view(1, 3, 1, 1) * 255
        assert torch.equal(pixels, (official_fp16.float() - mean) / std)
        with torch.no_grad():
            tokens = model.encode_images(pixels)
        want = inputs[f"aux_recipe.map_embeds_{suffix}"]
        assert tokens.shape == want.shape
        assert (tokens - want).abs().max() <= 1e-4


def test_parity_on_cuda_in_float32_turns_tf32_off_and_restores_it():
    """cuDNN convolutions default to TF32 (1.8e-3 on the merged embeddings on an H200): the check runs float32 on
    CUDA in IEEE precision and leaves the process's setting as it found it; other devices and dtypes untouched."""
    from moai.compat.parity import _ieee_float32

    def flags() -> tuple[str, str]:
        return torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision

    before = flags()
    with _ieee_float32("cuda:0", "float32"):
        assert flags() == ("ieee", "ieee")
    assert flags() == before
    for device, dtype in (("cpu", "float32"), ("cuda", "bfloat16")):
        with _ieee_float32(device, dtype):
            assert flags() == before
