"""The contracts every transformers model keeps, kept by MoAI (the ones users rely on without reading the code):
output fields and tuples, the cache keyword, deepcopy, vocabulary resizing, text-only input, continuation of a
returned cache, the Auto classes, the base model, image features and weight initialisation."""

import copy

import pytest
import torch
from conftest import AUX, QUESTIONS, random_images, tiny_model
from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor

from moai import MoAIConfig, MoAIForConditionalGeneration, MoAIProcessor
from moai.model.modeling import MoAIModel

# fp32 eager vs SDPA on the tiny model: measured 1.6e-7 on the logits (different kernels, same math); 1e-5
# leaves room for other CPUs' rounding and still catches any real difference (a wrong mask or scale: >1e-2).
EAGER_SDPA_ATOL = 1e-5


@pytest.fixture()
def batch2(processor):
    return processor(
        images=random_images(2),
        text=QUESTIONS[:2],
        aux_text=AUX[:2],
        aux_images=random_images(2, seed=1, size=(112, 112)),
        return_tensors="pt",
    )


def test_hidden_states_attentions_and_tuple_output(batch2):
    model = tiny_model()
    model.set_attn_implementation("eager")
    n_layers = model.config.text_config.num_hidden_layers
    with torch.no_grad():
        out = model(**batch2, output_hidden_states=True, output_attentions=True)
        as_tuple = model(**batch2, return_dict=False)
    batch, seq = batch2["input_ids"].shape
    assert len(out.hidden_states) == n_layers + 1 and len(out.attentions) == n_layers
    assert all(h.shape == (batch, seq, model.config.text_config.hidden_size) for h in out.hidden_states)
    heads = model.config.text_config.num_attention_heads
    assert all(a.shape == (batch, heads, seq, seq) for a in out.attentions)
    # the last hidden state is the one the head reads
    torch.testing.assert_close(model.lm_head(out.hidden_states[-1]), out.logits, atol=0, rtol=0)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], out.logits)
    with torch.no_grad():
        gen = model.generate(
            **batch2,
            max_new_tokens=3,
            do_sample=False,
            return_dict_in_generate=True,
            output_attentions=True,
            output_hidden_states=True,
        )
    assert len(gen.attentions) == len(gen.hidden_states) == 3  # one entry per generated token
    assert all(len(step) == n_layers for step in gen.attentions)
    assert gen.attentions[0][0].shape == (batch, heads, seq, seq)  # the prefill
    assert gen.attentions[1][0].shape == (batch, heads, 1, seq + 1)  # a cached decode step


def test_eager_and_sdpa_agree(batch2):
    eager, sdpa = tiny_model(), tiny_model()
    eager.set_attn_implementation("eager")
    sdpa.set_attn_implementation("sdpa")
    with torch.no_grad():
        a = eager(**batch2, output_hidden_states=True)
        b = sdpa(**batch2, output_hidden_states=True)
    real = batch2["attention_mask"].bool()  # left padding: fully masked rows are undefined in both
    assert not real.all()
    torch.testing.assert_close(a.logits[real], b.logits[real], atol=EAGER_SDPA_ATOL, rtol=0)
    for x, y in zip(a.hidden_states, b.hidden_states):
        torch.testing.assert_close(x[real], y[real], atol=EAGER_SDPA_ATOL * 10, rtol=0)


def test_past_key_values_is_the_cache_keyword(batch2):
    model = tiny_model()
    with torch.no_grad():
        prefill = model(**batch2, use_cache=True)
        step = {
            "input_ids": torch.tensor([[7], [9]]),
            "attention_mask": torch.cat([batch2["attention_mask"], torch.ones(2, 1, dtype=torch.long)], 1),
        }
        with_cache = model(**step, cache=copy.deepcopy(prefill.cache)).logits
        with_pkv = model(**step, past_key_values=copy.deepcopy(prefill.cache)).logits
        without = model(**step).logits
    assert torch.equal(with_cache, with_pkv)
    assert (with_cache - without).abs().max() > 1e-3  # the cache is really used
    assert prefill.past_key_values is prefill.cache


def test_deepcopy_is_independent(batch2):
    model = tiny_model()
    clone = copy.deepcopy(model)
    with torch.no_grad():
        before = clone(**batch2).logits
        for name, param in model.named_parameters():
            if "plora_A" in name:
                param.zero_()
        assert (model(**batch2).logits - before).abs().max() > 1e-4  # the change matters to the original
        assert torch.equal(clone(**batch2).logits, before)  # and not to the copy
        half = copy.deepcopy(clone).to(torch.bfloat16)
        logits = half(**batch2).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()


def test_resize_keeps_image_an_input_only_row(batch2, processor):
    model = tiny_model()
    vocab, image_id = model.config.text_config.vocab_size, model.config.image_token_id
    assert image_id == vocab and model.get_input_embeddings().weight.shape[0] == vocab + 1
    image_row = model.get_input_embeddings().weight[image_id].detach().clone()
    with torch.no_grad():
        reference = model(**batch2).logits

    # to the vocabulary size: nothing moves
    model.resize_token_embeddings(vocab)
    assert model.get_input_embeddings().weight.shape[0] == vocab + 1 and model.lm_head.out_features == vocab
    with torch.no_grad():
        assert torch.equal(model(**batch2).logits, reference)

    # to the tokenizer's length plus added tokens (they come after <image>): <image> keeps its id and row
    grown = len(processor.tokenizer) + 3
    model.resize_token_embeddings(grown)
    assert model.config.text_config.vocab_size == grown and model.lm_head.out_features == grown
    assert model.get_input_embeddings().weight.shape[0] == grown + 1
    assert model.config.image_token_id == image_id
    assert torch.equal(model.get_input_embeddings().weight[image_id], image_row)
    with torch.no_grad():
        out = model(**batch2)
        torch.testing.assert_close(out.logits[..., :vocab], reference, atol=1e-6, rtol=0)
        generated = model.generate(**batch2, max_new_tokens=4, do_sample=True, temperature=50.0, top_k=0)
    assert (out.logits[..., image_id] == torch.finfo(out.logits.dtype).min).all()
    assert not (generated[:, batch2["input_ids"].shape[1] :] == image_id).any()

    # below the <image> id: the last row becomes <image>, the rows that stay keep their values
    before = model.get_input_embeddings().weight.detach().clone()
    small = vocab - 10
    model.resize_token_embeddings(small)
    assert model.get_input_embeddings().weight.shape[0] == small + 1 and model.lm_head.out_features == small
    assert model.config.image_token_id == small
    assert torch.equal(model.get_input_embeddings().weight, before[: small + 1])
    ids = batch2["input_ids"].clamp(max=small - 1).masked_fill(batch2["input_ids"] == image_id, small)
    aux_ids = batch2["aux_input_ids"].clamp(max=small - 1)  # the text must fit the smaller vocabulary
    with torch.no_grad():
        logits = model(**{**batch2, "input_ids": ids, "aux_input_ids": aux_ids}).logits
    assert logits.shape[-1] == small and torch.isfinite(logits).all()


def test_text_only_input_is_the_plain_llm():
    """No <image> token: no image, no aux, no mixer and no PLoRA; other mixer weights change nothing."""
    model, other = tiny_model(seed=0), tiny_model(seed=0)
    with torch.no_grad():
        for name, param in other.named_parameters():
            if ".moai_mixer." in name or "plora" in name or "compressor" in name:
                param.normal_()
    ids = torch.tensor([[1, 40, 41, 42, 43], [1, 50, 51, 52, 53]])
    with torch.no_grad():
        out = model(input_ids=ids)
        torch.testing.assert_close(other(input_ids=ids).logits, out.logits, atol=0, rtol=0)
        generated = model.generate(input_ids=ids, max_new_tokens=4, do_sample=False)
    assert out.gate_weights is None and generated.shape == (2, 9)


def test_generate_continues_a_returned_cache_without_the_images(batch2):
    """Image and aux inputs are consumed at prefill: a second generate on the returned cache needs neither."""
    model = tiny_model()
    with torch.no_grad():
        whole = model.generate(**batch2, max_new_tokens=8, do_sample=False)
        first = model.generate(**batch2, max_new_tokens=4, do_sample=False, return_dict_in_generate=True)
        mask = torch.cat([batch2["attention_mask"], torch.ones(2, 4, dtype=torch.long)], 1)
        cont = model.generate(
            input_ids=first.sequences,
            attention_mask=mask,
            cache=first.cache,
            max_new_tokens=4,
            do_sample=False,
        )
    assert torch.equal(cont, whole)


def test_auto_processor_and_base_model(tmp_path, batch2):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    MoAIProcessor.from_preset("tiny").save_pretrained(tmp_path)
    processor = AutoProcessor.from_pretrained(tmp_path)
    assert type(processor) is MoAIProcessor
    assert MoAIForConditionalGeneration.base_model_prefix == "model" and type(model.base_model) is MoAIModel
    assert type(AutoModelForImageTextToText.from_config(model.config)) is MoAIForConditionalGeneration
    assert type(AutoModel.from_config(model.config)) is MoAIModel
    with torch.no_grad():
        features = model.get_image_features(batch2["pixel_values"]).pooler_output
    assert features.shape == (2, model.config.num_image_tokens, model.config.text_config.hidden_size)


def test_fresh_model_is_identity_initialised():
    """PLoRA B and the experts' last factor start at zero (docs/model.md §6, §7) in `__init__` too."""
    model = MoAIForConditionalGeneration(MoAIConfig.from_preset("tiny"))
    zero = [m for m in model.modules() if getattr(m, "_moai_zero_init", False)]
    assert len(zero) > 0 and all(bool((m.weight == 0).all()) for m in zero)
    others = [p for n, p in model.named_parameters() if "plora_A" in n]
    assert all(p.std() > 0 for p in others)


def test_missing_weights_are_initialised_as_in_init(tmp_path):
    """A checkpoint without the vision tower / mixers loads them initialised as `__init__` does (same
    scheme: CLIP's own init for the tower, zeros for the identity factors), not left empty or random."""
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    fresh = MoAIForConditionalGeneration(MoAIConfig.from_preset("tiny"))
    fresh.save_pretrained(tmp_path)
    weights = load_file(str(tmp_path / "model.safetensors"))
    dropped = [k for k in weights if k.startswith("model.vision_tower.") or ".moai_mixer." in k]
    save_file({k: v for k, v in weights.items() if k not in dropped}, str(tmp_path / "model.safetensors"))
    loaded = MoAIForConditionalGeneration.from_pretrained(tmp_path)
    params = dict(loaded.named_parameters())
    reference = dict(fresh.named_parameters())
    for key in dropped:
        got, want = params[key].detach(), reference[key].detach()
        assert torch.isfinite(got).all(), key
        if bool((want == 0).all()) or bool((want == 1).all()):
            assert torch.equal(got, want), key  # zeros (identity factors, biases) and unit norms exactly
        elif want.numel() >= 64:
            # the same random scheme: the spread agrees within sampling error (std of a std ~ 1/sqrt(2n))
            ratio = float(got.float().std() / want.float().std())
            assert abs(ratio - 1) < 6 / (2 * want.numel()) ** 0.5 + 0.05, (key, ratio)


def test_static_cache_generation_compiles_fullgraph(batch2):
    """`_can_compile_fullgraph`: decode steps have no data-dependent branch (aux dropped after prefill, image
    checks skipped under compile), so static-cache generation compiles with ``fullgraph=True`` and matches."""
    from transformers import CompileConfig

    model = tiny_model()
    assert model._can_compile_fullgraph
    compile_config = CompileConfig(fullgraph=True)
    compile_config._compile_all_devices = True  # transformers auto-compiles on accelerators only
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    with torch.no_grad():
        dynamic = model.generate(**batch2, max_new_tokens=4, do_sample=False)
        static = model.generate(
            **batch2,
            max_new_tokens=4,
            do_sample=False,
            cache_implementation="static",
            compile_config=compile_config,
        )
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1  # it did compile, in one graph
    assert torch.equal(static, dynamic)


def test_image_inputs_without_their_tokens_and_tokens_without_images(batch2, processor):
    """As llava: <image> tokens without pixel_values stay plain embeddings, images of samples without <image>
    tokens are unused (a warning says so in both cases); a count that cannot be matched is an error."""
    from moai.model import modeling

    model = tiny_model()
    modeling.logger.warning_once.cache_clear()
    text_only = processor.tokenizer(["a plain question", "another one"], return_tensors="pt", padding=True)
    with torch.no_grad():
        # images of a batch whose text has no <image> token: not used
        plain = model(input_ids=text_only.input_ids, attention_mask=text_only.attention_mask).logits
        given = model(
            input_ids=text_only.input_ids,
            attention_mask=text_only.attention_mask,
            pixel_values=batch2["pixel_values"],
        ).logits
        assert torch.equal(plain, given)
        # one image per sample [B, ...] with one text-only sample == the compact form [n, ...]
        ids = batch2["input_ids"].clone()
        ids[1][ids[1] == model.config.image_token_id] = 5  # sample 1 loses its image
        aux = {k: batch2[k] for k in ("aux_input_ids", "aux_attention_mask", "aux_pixel_values")}
        per_sample = model(
            input_ids=ids, attention_mask=batch2["attention_mask"], pixel_values=batch2["pixel_values"], **aux
        )
        compact = model(
            input_ids=ids,
            attention_mask=batch2["attention_mask"],
            pixel_values=batch2["pixel_values"][:1],
            **aux,
        )
        assert torch.equal(per_sample.logits, compact.logits)
        # <image> tokens without pixel_values: the <image> row is embedded, nothing crashes
        blind = model(input_ids=batch2["input_ids"], attention_mask=batch2["attention_mask"], **aux).logits
        assert torch.isfinite(blind).all()
        # ... and without the aux inputs either: the plain LLM (an assistant model in assisted decoding)
        other = copy.deepcopy(model)
        for name, param in other.named_parameters():
            if ".moai_mixer." in name or "plora" in name:
                param.normal_()
        text = {"input_ids": batch2["input_ids"], "attention_mask": batch2["attention_mask"]}
        assert torch.equal(model(**text).logits, other(**text).logits)
        with pytest.raises(ValueError, match="does not match the images"):
            model(
                input_ids=ids,
                attention_mask=batch2["attention_mask"],
                pixel_values=batch2["pixel_values"][:1].repeat(3, 1, 1, 1),
                **aux,
            )
        with pytest.raises(ValueError, match="aux_input_ids"):
            model(
                input_ids=batch2["input_ids"],
                attention_mask=batch2["attention_mask"],
                pixel_values=batch2["pixel_values"],
            )


def test_custom_4d_attention_mask(batch2):
    """A 4-D mask (e.g. packed sequences) is passed through to attention; streams then ignore padding."""
    model = tiny_model()
    ids = batch2["input_ids"][:1]
    keep = batch2["attention_mask"][:1].bool()[0]
    ids = ids[:, keep]  # sample 0 without its padding
    sample = {
        k: batch2[k][:1] for k in ("pixel_values", "aux_input_ids", "aux_attention_mask", "aux_pixel_values")
    }
    seq = ids.shape[1]
    causal = torch.tril(torch.ones(seq, seq, dtype=torch.bool))
    mask4d = torch.zeros(1, 1, seq, seq).masked_fill(~causal, torch.finfo(torch.float32).min)
    with torch.no_grad():
        reference = model(input_ids=ids, **sample).logits
        custom = model(input_ids=ids, attention_mask=mask4d, **sample).logits
    torch.testing.assert_close(custom, reference, atol=1e-5, rtol=0)


def test_assisted_decoding_matches_greedy(batch2):
    """transformers runs the assistant without the images (and its candidates have no stream ids): the
    assistant sees plain tokens, the model verifies, and the result is greedy decoding's."""
    model, assistant = tiny_model(seed=0), tiny_model(seed=1)
    one = {k: v[:1] for k, v in batch2.items()}  # assisted decoding takes one sample
    with torch.no_grad():
        greedy = model.generate(**one, max_new_tokens=6, do_sample=False)
        assisted = model.generate(**one, max_new_tokens=6, do_sample=False, assistant_model=assistant)
    assert torch.equal(assisted, greedy)


def test_resize_pads_to_a_multiple():
    model = tiny_model()
    model.resize_token_embeddings(300, pad_to_multiple_of=64)
    assert model.vocab_size == model.config.text_config.vocab_size == 320
    assert model.get_input_embeddings().weight.shape[0] == 321
    with pytest.raises(ValueError, match="multiple of `1.3`"):
        model.resize_token_embeddings(300, pad_to_multiple_of=1.3)
