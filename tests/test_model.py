"""Model-core behaviour: batch invariance, cache, save/load, identity init, leakage, beams, keys, counts."""

import pytest
import torch
from conftest import AUX, QUESTIONS, random_images, randomize_zero_inits, select, tiny_model
from transformers import DynamicCache, LlamaModel

from moai import MoAIConfig, MoAIForConditionalGeneration
from moai.model.cache import MoAICache
from moai.model.modeling import MoAIModel


@pytest.mark.parametrize(
    "mixer", [{}, {"attention_sink": True}, {"into_residual": True}], ids=["plain", "sink", "residual"]
)
def test_batch_invariance_logits_and_greedy(batch4, processor, mixer):
    model = tiny_model(**mixer)
    with torch.no_grad():
        batched = model(**batch4).logits
        batched_ids = model.generate(**batch4, max_new_tokens=6, do_sample=False)
    width = batch4["input_ids"].shape[1]
    for i in range(4):
        single = select(batch4, i, processor)
        n = single["input_ids"].shape[1]
        assert n < width or i == 1  # the batch is really padded
        with torch.no_grad():
            alone = model(**single).logits
            alone_ids = model.generate(**single, max_new_tokens=6, do_sample=False)
        torch.testing.assert_close(batched[i, width - n :], alone[0], atol=1e-5, rtol=0)
        assert batched_ids[i, width:].tolist() == alone_ids[0, n:].tolist()


def test_kv_cache_equals_no_cache(batch4):
    model = tiny_model(seed=1)
    with torch.no_grad():
        cached = model.generate(**batch4, max_new_tokens=6, do_sample=False, use_cache=True)
        uncached = model.generate(**batch4, max_new_tokens=6, do_sample=False, use_cache=False)
    assert cached.tolist() == uncached.tolist()


def strengthen_experts(model: MoAIForConditionalGeneration, factor: float = 50.0) -> None:
    """Scale every expert's last output factor (zero-initialised, randomised by `randomize_zero_inits`) by
    ``factor``, so that what the mixers read shows in the logits."""
    with torch.no_grad():
        for name, module in model.named_modules():
            if ".moai_mixer." in name and getattr(module, "_moai_zero_init", False):
                module.weight.mul_(factor)


def causal_model(seed: int = 1, dtype: torch.dtype = torch.float32) -> MoAIForConditionalGeneration:
    """A tiny model in causal mixer scope whose experts are strong enough that the answer tokens' mixing
    shows in the logits."""
    model = tiny_model(seed=seed, scope="causal")
    strengthen_experts(model)
    return model.to(dtype)


@pytest.mark.parametrize("use_cache", [True, False], ids=["moai-cache", "no-cache"])
def test_causal_scope_generation_equals_the_training_forward(batch4, use_cache):
    """In causal scope the answer tokens are in the mixer in training (stream 3): the logits of every greedy
    step must be those of the forward pass over prompt + generated tokens with those streams, decoded with
    the `MoAICache` (aux tokens and mixer states kept) or without a cache."""
    model = causal_model()
    width, new = batch4["input_ids"].shape[1], 5
    with torch.no_grad():
        out = model.generate(
            **batch4,
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            return_dict_in_generate=True,
            output_logits=True,
            use_cache=use_cache,
        )
    assert isinstance(out.cache, MoAICache) if use_cache else out.cache is None
    generated = out.sequences[:, width:]  # [B, new]
    steps = torch.stack(out.logits, dim=1)  # [B, new, V]: the logits each step chose from
    full = dict(batch4)
    full["input_ids"] = out.sequences
    full["attention_mask"] = torch.cat([batch4["attention_mask"], torch.ones_like(generated)], dim=1)
    gap = {}
    for stream in (
        3,
        0,
    ):  # 3: STREAM_ANSWER, as the processor marks answers in training; 0: outside the mixer
        full["mm_token_type_ids"] = torch.cat(
            [batch4["mm_token_type_ids"], torch.full_like(generated, stream)], 1
        )
        with torch.no_grad():
            logits = model(**full).logits[:, width - 1 : -1]  # [B, new, V]
        gap[stream] = (logits - steps).abs().max().item()
    # measured: 1.5e-7 (no cache) and 1.6e-7 (MoAICache) with the training streams (fp32 reduction order),
    # 2e-4 had the answer tokens been left out of the mixer (a plain KV cache's decode): ~30x from each
    assert gap[3] < 5e-6 < gap[0]
    with pytest.raises(ValueError, match="causal scope makes its own cache"):
        model.generate(**batch4, max_new_tokens=2, cache=DynamicCache(config=model.config.text_config))


def test_causal_scope_cache_equals_no_cache_in_float64(batch4):
    """In float64 (no kernel-dependent fp32 rounding) the `MoAICache` decode equals the whole-sequence one:
    greedy tokens and every step's logits to 1e-12, beam search (the cache reordered) token for token, and
    a batch with a text-only sample (its tokens outside the mixer) the same."""
    model = causal_model(dtype=torch.float64)
    batch = {k: v.double() if v.is_floating_point() else v for k, v in batch4.items()}
    ids = batch["input_ids"].clone()
    ids[1][ids[1] == model.config.image_token_id] = 5  # sample 1 is text only
    mixed = {k: v for k, v in batch.items() if k != "mm_token_type_ids"}
    mixed.update(input_ids=ids, pixel_values=batch["pixel_values"][[0, 2, 3]])
    greedy = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False)
    logged = dict(return_dict_in_generate=True, output_logits=True)
    for inputs in (batch, mixed):
        with torch.no_grad():
            cached = model.generate(**inputs, **greedy, **logged)
            whole = model.generate(**inputs, **greedy, **logged, use_cache=False)
        assert cached.sequences.tolist() == whole.sequences.tolist()
        gap = (torch.stack(cached.logits) - torch.stack(whole.logits)).abs().max().item()
        assert gap < 1e-12  # measured 0.0; fp64 rounding of a reordered sum is ~1e-16 of the logits' ~1
    with torch.no_grad():
        beams = model.generate(**batch, max_new_tokens=5, num_beams=3, do_sample=False)
        beams_whole = model.generate(**batch, max_new_tokens=5, num_beams=3, do_sample=False, use_cache=False)
    assert beams.tolist() == beams_whole.tolist()


def test_moai_cache_selects_and_crops_the_mixer_states_with_the_keys(batch4):
    """`MoAICache.batch_select_indices` and `crop` act on the aux tokens and the mixers' states as on the
    keys and values: a decode step after them equals the same step run on the selected / shorter sequence."""
    model = causal_model(dtype=torch.float64)
    batch = {k: v.double() if v.is_floating_point() else v for k, v in batch4.items()}
    cache = MoAICache(config=model.config.text_config)
    mask, streams = batch["attention_mask"], batch["mm_token_type_ids"]

    def step(token: torch.Tensor, cache: MoAICache, mask: torch.Tensor, streams: torch.Tensor):
        mask = torch.cat([mask, torch.ones_like(token)], dim=1)
        streams = torch.cat([streams, torch.full_like(token, 3)], dim=1)  # the answer stream
        out = model(
            input_ids=token, attention_mask=mask, mm_token_type_ids=streams, cache=cache, use_cache=True
        )
        return out.logits[:, -1], mask, streams

    with torch.no_grad():
        logits = model(**batch, cache=cache, use_cache=True).logits[:, -1]
        assert cache.holds_mixer_states and cache.decoded == 0
        history = []
        for _ in range(3):
            token = logits.argmax(-1, keepdim=True)  # [B, 1]
            history.append((token, mask, streams))
            logits, mask, streams = step(token, cache, mask, streams)
        assert cache.decoded == 3
        cache.crop(-1)  # the last token out: its step again gives the same logits
        token, before_mask, before_streams = history[-1]
        again, _, _ = step(token, cache, before_mask, before_streams)
        torch.testing.assert_close(again, logits, atol=1e-12, rtol=0)
        cache.batch_select_indices(torch.tensor([2, 0]))
        assert cache.aux.shape[0] == 2 and all(m.language.shape[0] == 2 for m in cache.mixers.values())
        cache.crop(-1)
        picked, _, _ = step(token[[2, 0]], cache, before_mask[[2, 0]], before_streams[[2, 0]])
        torch.testing.assert_close(picked, logits[[2, 0]], atol=1e-12, rtol=0)
        with pytest.raises(ValueError, match="only 3 decoded"):
            cache.crop(-4)
        assert cache.get_seq_length() == batch["input_ids"].shape[1] + 3  # nothing cropped


def test_causal_scope_refuses_what_its_cache_cannot_follow(batch4):
    """A static cache keeps no mixer states and assisted decoding verifies candidates outside the answer
    stream: both are one-line errors in causal scope (the prompt scope runs them, test_hf_conformance)."""
    model = causal_model()
    with pytest.raises(ValueError, match="cache_implementation='static'"):
        model.generate(**batch4, max_new_tokens=2, cache_implementation="static")
    with pytest.raises(ValueError, match="assisted generation"):
        model.generate(**batch4, max_new_tokens=2, prompt_lookup_num_tokens=2)


def test_save_load_round_trip(tmp_path, batch4):
    model = tiny_model(seed=2)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = MoAIForConditionalGeneration.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch4).logits, model(**batch4).logits, atol=0, rtol=0)


def test_auto_classes(tmp_path, batch4):
    """As llava: AutoModel is the base model (no head), AutoModelForImageTextToText the full one."""
    from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText

    model = tiny_model(seed=2)
    model.save_pretrained(tmp_path)
    assert type(AutoConfig.from_pretrained(tmp_path)).__name__ == "MoAIConfig"
    full = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert type(full) is MoAIForConditionalGeneration
    base = AutoModel.from_pretrained(tmp_path).eval()
    assert type(base) is MoAIModel and not hasattr(base, "lm_head")
    with torch.no_grad():
        hidden = base(**batch4).last_hidden_state
        torch.testing.assert_close(full(**batch4).logits, model.lm_head(hidden), atol=0, rtol=0)


@pytest.mark.parametrize("into_residual", [False, True])
def test_into_residual_sends_the_mixers_change_past_the_attention(processor, into_residual):
    """With the mixer layer's attention output zeroed, the aux can reach the logits only through the residual
    stream: not at all in the official layout, through the mixer's change with ``into_residual``."""
    model = tiny_model(into_residual=into_residual)
    text_model = model.model.language_model
    with torch.no_grad():
        for i in text_model.mixer_layers:
            for weight in text_model.layers[i].self_attn.o_proj.parameters():
                weight.zero_()
    strengthen_experts(model)  # experts strong enough that the aux shows in the logits
    images, maps = random_images(4), random_images(4, seed=1, size=(112, 112))
    own = processor(images=images, text=QUESTIONS, aux_text=AUX, aux_images=maps, return_tensors="pt")
    other = processor(
        images=images, text=QUESTIONS, aux_text=AUX[::-1], aux_images=maps[::-1], return_tensors="pt"
    )
    assert torch.equal(own["input_ids"], other["input_ids"])
    with torch.no_grad():
        own_logits, other_logits = model(**own).logits, model(**other).logits
    gap = (own_logits - other_logits).abs().max().item()
    if into_residual:  # far above fp32 rounding of the logits (~1e-7 at their size, < 1)
        assert gap > 1e-4
    else:  # the aux touches nothing that reaches the logits: bitwise equal
        assert gap == 0.0


def test_attention_sink_is_a_learned_key_and_value_every_query_may_attend_to():
    """With ``attention_sink`` an expert's queries attend to the sink when every token is masked, and the
    sink takes its share of the attention otherwise; zero at init, as the other MoAI weights' identity init."""
    from moai.model.mixer import ExpertAttention

    torch.manual_seed(0)
    dim, heads, rank = 16, 2, 4
    expert = ExpertAttention(dim, heads, rank, sink=True)
    assert not expert.sink_key.any() and not expert.sink_value.any()
    plain = ExpertAttention(dim, heads, rank)
    assert plain.sink_key is None and set(plain.state_dict()) < set(expert.state_dict())
    with torch.no_grad():
        expert.sink_key.normal_()
        expert.sink_value.normal_()
    x_q, x_kv = torch.randn(2, 3, dim), torch.randn(2, 5, dim)
    nothing = torch.zeros(2, 1, 5, dtype=torch.bool)
    with torch.no_grad():
        # every token masked: the sink's value alone
        alone = x_q + torch.nn.functional.gelu(expert.o_proj(expert.sink_value)).expand_as(x_q)
        torch.testing.assert_close(expert(x_q, x_kv, nothing), alone, atol=1e-6, rtol=0)
        # the same weights without the sink read the tokens only: another output
        plain.load_state_dict({k: v for k, v in expert.state_dict().items() if "sink" not in k})
        everything = torch.ones(2, 1, 5, dtype=torch.bool)
        assert (expert(x_q, x_kv, everything) - plain(x_q, x_kv, everything)).abs().max() > 1e-3
        torch.testing.assert_close(expert(x_q, x_kv), expert(x_q, x_kv, everything), atol=1e-6, rtol=0)


def test_identity_init_equals_base_model(batch4):
    torch.manual_seed(3)
    config = MoAIConfig.from_preset("tiny")
    assert config.mixer_config.identity_init and config.plora_config.zero_init_b
    model = MoAIForConditionalGeneration(config).eval()
    base_config = MoAIConfig.from_preset("tiny")
    base_config.mixer_config.layers = []
    base = MoAIForConditionalGeneration(base_config).eval()
    missing, unexpected = base.load_state_dict(model.state_dict(), strict=False)
    assert not missing and all(".moai_mixer." in k for k in unexpected)
    with torch.no_grad():
        out = model(**batch4)
        torch.testing.assert_close(out.logits, base(**batch4).logits, atol=1e-5, rtol=0)
    assert out.gate_weights is not None  # the mixer did run
    # and it is not trivially the identity once the expert output factors move
    from conftest import randomize_zero_inits

    randomize_zero_inits(model)
    with torch.no_grad():
        assert (model(**batch4).logits - base(**batch4).logits).abs().max() > 1e-3


@pytest.mark.parametrize("scope", ["prompt", "causal"])
def test_no_leakage_from_answers(processor, scope):
    model = tiny_model(seed=4, scope=scope)
    model.train()  # training mode: labels present, dropout is 0 in the tiny preset
    images = random_images(1)
    kwargs = dict(
        images=images,
        text=["What color is the circle?"],
        aux_text=["aux words"],
        aux_images=random_images(1, 2, (112, 112)),
    )
    a = processor(**kwargs, answers=["pink and round"])
    b = processor(**kwargs, answers=["blue and round"])
    diff = (a["input_ids"] != b["input_ids"]).nonzero()
    first = int(diff[:, 1].min())
    assert (a["mm_token_type_ids"][0, first:] == 3).all()  # the change is in the answer
    out_a, out_b = model(**a), model(**b)
    torch.testing.assert_close(out_a.logits[:, :first], out_b.logits[:, :first], atol=0, rtol=0)
    assert out_a.loss is not None and torch.isfinite(out_a.loss)


def test_beam_search_expands_moai_inputs(batch4, processor):
    model = tiny_model(seed=5)
    with torch.no_grad():
        beams = model.generate(**batch4, max_new_tokens=5, num_beams=3, do_sample=False)
    width = batch4["input_ids"].shape[1]
    for i in (0, 2):
        single = select(batch4, i, processor)
        n = single["input_ids"].shape[1]
        with torch.no_grad():
            alone = model.generate(**single, max_new_tokens=5, num_beams=3, do_sample=False)
        assert beams[i, width:].tolist() == alone[0, n:].tolist()


def test_sampling_follows_the_model_distribution(batch4):
    """Sampling is seeded, top_k=1 is greedy, and every sampled token lies in the top-p nucleus of the
    model's own next-token distribution (checked by re-scoring the sampled sequences)."""
    model = tiny_model(seed=6)
    width = batch4["input_ids"].shape[1]
    sample = dict(max_new_tokens=4, do_sample=True, top_p=0.1, temperature=0.8)
    with torch.no_grad():
        torch.manual_seed(0)
        ids = model.generate(**batch4, **sample)
        torch.manual_seed(0)
        again = model.generate(**batch4, **sample)
        greedy = model.generate(**batch4, max_new_tokens=4, do_sample=False)
        top1 = model.generate(**batch4, max_new_tokens=4, do_sample=True, top_k=1)
        draws = set()
        for seed in range(6):
            torch.manual_seed(seed)
            draws.add(
                tuple(
                    model.generate(**batch4, max_new_tokens=4, do_sample=True, temperature=2.0)[
                        0, width:
                    ].tolist()
                )
            )
    assert ids.shape == (4, width + 4) and torch.equal(ids, again)
    assert torch.equal(top1, greedy)
    assert len(draws) > 1  # a hot sampler does not always pick the same tokens
    # re-score: each sampled token is inside the nucleus (smallest set with mass >= top_p) at its step
    streams = torch.cat([batch4["mm_token_type_ids"], torch.zeros_like(ids[:, width:])], dim=1)
    mask = torch.cat([batch4["attention_mask"], torch.ones_like(ids[:, width:])], dim=1)
    with torch.no_grad():
        logits = model(
            **{**batch4, "input_ids": ids, "attention_mask": mask, "mm_token_type_ids": streams}
        ).logits
    probs = (logits[:, width - 1 : -1].float() / sample["temperature"]).softmax(-1)  # [B, 4, V]
    chosen = probs.gather(-1, ids[:, width:, None]).squeeze(-1)  # [B, 4]
    mass_above = (probs * (probs > chosen[..., None])).sum(-1)  # probability of strictly likelier tokens
    assert (mass_above < sample["top_p"] + 1e-4).all()


def test_llm_parameter_keys_unchanged():
    config = MoAIConfig.from_preset("tiny")
    model = MoAIForConditionalGeneration(config)
    llm_keys = set(LlamaModel(config.text_config).state_dict())
    ours = {
        k.removeprefix("model.language_model.")
        for k in model.state_dict()
        if k.startswith("model.language_model.")
    }
    assert llm_keys <= ours
    extra = ours - llm_keys
    assert extra and all(".plora_" in k or ".moai_mixer." in k for k in extra)


def test_moai_policy_trains_only_moai_modules():
    model = tiny_model()
    # a new model trains everything it uses, as any transformers model (CLIP's post-layernorm is unused);
    # the paper's recipe is the "moai" policy
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"model.vision_tower.post_layernorm.weight", "model.vision_tower.post_layernorm.bias"}
    model.set_trainable("moai")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(model.moai_parameter_names())
    assert all(n.startswith("model.compressor.") or ".moai_mixer." in n for n in trainable)
    assert model.set_trainable("moai+plora") > model.set_trainable("moai")
    model.set_trainable("mixers")  # the compressor frozen
    mixers_only = {n for n, p in model.named_parameters() if p.requires_grad}
    assert mixers_only and mixers_only == {n for n in trainable if ".moai_mixer." in n}


def test_moai_7b_parameter_counts():
    with torch.device("meta"):
        model = MoAIForConditionalGeneration(MoAIConfig.from_preset("moai-7b"))
    assert sum(p.numel() for p in model.parameters()) == 8_868_637_720
    assert model.set_trainable("moai") == 201_793_560
    assert model.get_input_embeddings().weight.shape == (92545, 4096)
    assert model.lm_head.weight.shape == (92544, 4096)


def test_gate_weights_and_modes(batch4):
    model = tiny_model(seed=7)
    with torch.no_grad():
        gated = model(**batch4).gate_weights[0]  # [B, S, 3]
        streams = batch4["mm_token_type_ids"]
        in_stream = (streams == 1) | (streams == 2)
        torch.testing.assert_close(gated.sum(-1)[in_stream], torch.ones(int(in_stream.sum())))
        assert (gated[~in_stream] == 0).all()
        model.set_mixer(mode="topk", top_k=1)
        top1 = model(**batch4).gate_weights[0]
        assert set(top1[in_stream].unique().tolist()) <= {0.0, 1.0}
        model.set_mixer(mode="sample", forced_experts=[2, 0])
        sampled = model(**batch4).gate_weights[0]
        assert (sampled[streams == 1].argmax(-1) == 2).all() and (sampled[streams == 2].argmax(-1) == 0).all()
    with pytest.raises(ValueError, match="mixer mode"):
        model.set_mixer_mode("dense")


def test_gradient_checkpointing_keeps_plora_and_sample_draw(processor):
    model = tiny_model(seed=8)
    model.set_trainable("moai+plora")
    model.set_mixer_mode("sample")
    model.train()
    batch = processor(
        images=random_images(2),
        text=QUESTIONS[:2],
        aux_text=["a", "b"],
        aux_images=random_images(2, 1, (112, 112)),
        answers=["red", "3"],
    )

    def grads(checkpointing: bool) -> dict[str, torch.Tensor]:
        model.zero_grad()
        model.set_mixer(generator=torch.Generator().manual_seed(0))
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.activation_checkpointing_disable()
        model(**batch).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain, ckpt = grads(False), grads(True)
    assert any(".plora_" in n for n in plain)
    assert plain.keys() == ckpt.keys()
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("preset", ["tiny", "moai-7b"])
def test_state_dict_keys_and_shapes_are_the_recorded_ones(preset):
    """Converter, peft targets and saved checkpoints rely on these names (tests/fixtures/README.md)."""
    import json

    from conftest import FIXTURES

    want = json.loads((FIXTURES / "moai_state_dict_keys.json").read_text())[preset]
    with torch.device("meta"):
        model = MoAIForConditionalGeneration(MoAIConfig.from_preset(preset))
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert sorted(set(got) - set(want)) == [] and sorted(set(want) - set(got)) == []
    assert got == want


def test_the_mixer_runs_in_the_decoder_and_no_hooks_are_installed(batch4, monkeypatch):
    """The mixer is called by the decoder layer (not a hook that a transformers release could skip)."""
    from moai.model import mixer as mixer_module

    model = tiny_model(seed=9)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    with torch.no_grad():
        plain = model(**batch4).logits
    original = mixer_module.MoAIMixer.forward
    calls = []

    def scaled(self, hidden, *args, **kwargs):
        out, weights = original(self, hidden, *args, **kwargs)
        calls.append(self)
        return hidden + 10 * (out - hidden), weights

    monkeypatch.setattr(mixer_module.MoAIMixer, "forward", scaled)
    with torch.no_grad():
        changed = model(**batch4).logits
    assert calls == [model.language_model.layers[i].mixer for i in model.config.mixer_config.layers]
    assert (changed - plain).abs().max() > 1e-5  # identical runs differ by exactly 0


def test_streams_come_from_the_processor_and_one_function(batch4, processor):
    from moai.model.processing import token_streams

    model = tiny_model(seed=10)
    streams = token_streams(batch4["input_ids"], model.config.image_token_id, batch4["attention_mask"])
    assert torch.equal(streams, batch4["mm_token_type_ids"])
    without = {k: v for k, v in batch4.items() if k != "mm_token_type_ids"}
    with torch.no_grad():
        torch.testing.assert_close(model(**without).logits, model(**batch4).logits, atol=0, rtol=0)
    answered = processor(
        images=random_images(1), text=QUESTIONS[:1], aux_text=["a"], answers=["a red circle"]
    )
    derived = token_streams(
        answered["input_ids"], model.config.image_token_id, answered["attention_mask"], answered["labels"]
    )
    assert torch.equal(derived, answered["mm_token_type_ids"]) and (derived == 3).any()


def test_set_mixer_changes_run_time_switches_never_the_config(batch4):
    model = tiny_model(seed=11)
    before = model.config.to_dict()
    settings = model.set_mixer(mode="sample", forced_experts=[1, 2], gate_softmax_dtype="float16", top_k=1)
    assert settings.forced_experts == (1, 2) and model.mixer_settings is settings
    with torch.no_grad():
        gates = model(**batch4).gate_weights[0]
    assert (gates[batch4["mm_token_type_ids"] == 1].argmax(-1) == 1).all()
    model.set_mixer_mode("gated")
    assert model.mixer_settings.mode == "gated" and model.mixer_settings.forced_experts == (1, 2)
    assert model.config.to_dict() == before
    with pytest.raises(ValueError, match=r"unknown mixer setting\(s\) \['modes'\]"):
        model.set_mixer(modes="gated")
    with pytest.raises(ValueError, match="forced_experts"):
        model.set_mixer(forced_experts=[3, 0])
    with pytest.raises(ValueError, match="mixer scope"):
        model.set_mixer(scope="everything")


def test_parameter_groups_are_declared_by_modules_and_cover_every_parameter():
    from moai.model.modeling import PARAM_GROUPS, TRAINABLE_POLICIES

    with torch.device("meta"):
        model = MoAIForConditionalGeneration(MoAIConfig.from_preset("moai-7b"))
    groups = model.parameter_groups()
    names = [n for params in groups.values() for n, _ in params]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())  # each exactly once
    assert set(groups) <= set(PARAM_GROUPS)
    counts = model.component_parameter_counts()
    assert counts["plora"] == 603_979_776 and counts["mixers"] == 50_429_976
    assert counts["compressor"] == 151_363_584
    for policy, chosen in TRAINABLE_POLICIES.items():
        if policy.endswith("+lora"):
            with pytest.raises(ValueError, match="needs LoRA adapters"):
                model.set_trainable(policy)
            continue
        n = model.set_trainable(policy)
        assert n == sum(counts.get(g, 0) for g in chosen), policy
    base_config = MoAIConfig.from_preset("tiny")
    base_config.mixer_config.layers = []
    base = MoAIForConditionalGeneration(base_config)
    assert base.set_trainable("moai") == 0  # without mixers the compressor never runs


def test_deepcopy_owns_its_plora(batch4):
    import copy

    model = tiny_model(seed=12)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        before = twin(**batch4).logits
        for layer in model.language_model.layers:
            layer.self_attn.plora_A_qkv.weight.zero_()
        torch.testing.assert_close(twin(**batch4).logits, before, atol=0, rtol=0)
        assert (model(**batch4).logits - before).abs().max() > 1e-4


def assert_rows_as_alone(model, batched, batch4, processor) -> None:
    """Each row of the left-padded batch's logits equals the logits of its sample run alone (no padding)."""
    width = batch4["input_ids"].shape[1]
    for i in range(batch4["input_ids"].shape[0]):
        single = select(batch4, i, processor)
        with torch.no_grad():
            alone = model(**single).logits
        torch.testing.assert_close(
            batched[i, width - single["input_ids"].shape[1] :], alone[0], atol=1e-5, rtol=0
        )


def test_text_layers_feed_the_compressor_the_llm_states_of_the_aux_text(batch4, processor):
    """``compressor_config.text_layers``: the aux text reaches the compressor after that many LLM layers (run
    without mixers), unaffected by left padding; 0 is the paper's bare word embeddings."""
    torch.manual_seed(0)
    config = MoAIConfig.from_preset("tiny")
    config.compressor_config.text_layers = 2
    model = MoAIForConditionalGeneration(config).eval()
    randomize_zero_inits(model, 0)
    ids, mask = batch4["aux_input_ids"], batch4["aux_attention_mask"]
    assert (mask == 0).any()  # the aux texts are really left-padded
    with torch.no_grad():
        embeds, _ = model.model.build_aux_embeds(ids, mask, batch4["aux_pixel_values"])
        text = embeds[:, : ids.shape[1]]  # [B, T, D], then the map tokens
        expected = model.language_model.encode_text(ids, mask, 2)
        torch.testing.assert_close(text, expected)
        assert not torch.allclose(text[mask.bool()], model.get_input_embeddings()(ids)[mask.bool()])
        assert torch.isfinite(text).all() and not text[~mask.bool()].any()  # pads are zero
        for i in range(ids.shape[0]):  # each sample alone, unpadded: the same states
            real = ids[i][mask[i].bool()][None]
            alone = model.language_model.encode_text(real, torch.ones_like(real), 2)
            torch.testing.assert_close(text[i][mask[i].bool()], alone[0], atol=1e-5, rtol=0)
        # the whole model stays batch-invariant, and the decoder's hidden states are still one per layer
        out = model(**batch4, output_hidden_states=True)
    assert len(out.hidden_states) == config.text_config.num_hidden_layers + 1
    assert_rows_as_alone(model, out.logits, batch4, processor)
    config.compressor_config.text_layers = 0  # the paper's input: the bare word embeddings
    with torch.no_grad():
        bare, _ = model.model.build_aux_embeds(ids, mask, batch4["aux_pixel_values"])
    torch.testing.assert_close(bare[:, : ids.shape[1]], model.get_input_embeddings()(ids))


def test_passthrough_compressor_hands_every_real_aux_token_to_the_experts(batch4, processor, tmp_path):
    """``compressor_config.passthrough`` (not in the official model): no latents and no blocks; the AUX experts
    attend to the position-embedded, normalised aux tokens, padded ones masked, so a left-padded batch answers
    as each sample alone; the option survives save / load."""
    torch.manual_seed(0)
    config = MoAIConfig.from_preset("tiny")
    config.compressor_config.passthrough = True
    model = MoAIForConditionalGeneration(config).eval()
    randomize_zero_inits(model, 0)
    strengthen_experts(model)  # experts strong enough that what they read shows in the logits
    compressor = model.model.compressor
    assert compressor.latents is None and len(compressor.layers) == 0
    assert not any(".compressor.latents" in name for name, _ in model.named_parameters())
    ids, mask = batch4["aux_input_ids"], batch4["aux_attention_mask"]
    assert (mask == 0).any()  # the aux texts are really left-padded
    with torch.no_grad():
        embeds, aux_mask = model.model.build_aux_embeds(ids, mask, batch4["aux_pixel_values"])
        out = compressor(embeds, aux_mask)  # [B, T, D]: one token per aux token
        torch.testing.assert_close(out, compressor.norm(compressor.add_positions(embeds, aux_mask)))
        batched = model(**batch4).logits
    assert out.shape == embeds.shape
    assert_rows_as_alone(model, batched, batch4, processor)
    # the experts do read the aux tokens: another sample's aux changes the logits
    swapped = dict(batch4, aux_input_ids=ids.roll(1, 0), aux_attention_mask=mask.roll(1, 0))
    with torch.no_grad():
        assert (model(**swapped).logits - batched).abs().max() > 1e-4  # 10x the batch-invariance tolerance
    model.save_pretrained(tmp_path / "m")
    loaded = MoAIForConditionalGeneration.from_pretrained(tmp_path / "m").eval()
    assert loaded.config.compressor_config.passthrough and loaded.model.compressor.latents is None
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch4).logits, batched, atol=0, rtol=0)


def test_aux_encoder_gives_each_aux_token_its_context_and_keeps_padding_out(batch4, processor, tmp_path):
    """``compressor_config.encoder_layers`` (not in the official model): self-attention blocks over the aux
    tokens before the passthrough, so a token's output depends on its neighbours and their order (the bare
    passthrough's does not); padded tokens are masked, so a left-padded batch answers as each sample alone;
    the option survives save / load."""
    torch.manual_seed(0)
    config = MoAIConfig.from_preset("tiny")
    config.compressor_config.passthrough = True
    config.compressor_config.encoder_layers = 2
    config.compressor_config.aux_position_embeddings = True  # order is in the positions
    model = MoAIForConditionalGeneration(config).eval()
    randomize_zero_inits(model, 0)
    strengthen_experts(model)  # experts strong enough that what they read shows in the logits
    compressor = model.model.compressor
    assert len(compressor.encoder) == 2 and compressor.latents is None
    dim = config.text_config.hidden_size
    x = 0.02 * torch.randn(1, 5, dim, generator=torch.Generator().manual_seed(1))  # as word embeddings
    swapped = x[:, [0, 1, 3, 2, 4]]  # two neighbours of the last token change places
    with torch.no_grad():
        out, out_swapped = compressor(x), compressor(swapped)
        bare = compressor.norm(compressor.add_positions(x, None))
    assert (out[0, 4] - out_swapped[0, 4]).abs().max() > 1e-3  # the last token sees its neighbours' order
    encoder, compressor.encoder = compressor.encoder, torch.nn.ModuleList()
    with torch.no_grad():  # without the encoder the last token is blind to the others
        torch.testing.assert_close(compressor(x)[0, 4], compressor(swapped)[0, 4], atol=0, rtol=0)
    compressor.encoder = encoder
    assert not torch.allclose(out, bare)
    with torch.no_grad():
        batched = model(**batch4).logits
        no_aux = compressor(torch.randn(1, 3, dim), torch.zeros(1, 3, dtype=torch.long))
    assert torch.isfinite(no_aux).all()  # a sample whose aux is all padding gives no NaN
    assert_rows_as_alone(model, batched, batch4, processor)
    model.save_pretrained(tmp_path / "m")
    loaded = MoAIForConditionalGeneration.from_pretrained(tmp_path / "m").eval()
    assert loaded.config.compressor_config.encoder_layers == 2
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch4).logits, batched, atol=0, rtol=0)


def test_text_only_logits_equal_transformers_llama_with_the_same_weights():
    """Without an image or aux the model is its LLM: transformers' Llama given the same weights computes the
    same logits (bench/recall_probe.py compares the two decoders' learning on that premise)."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = MoAIForConditionalGeneration(MoAIConfig.from_preset("shapes")).eval()
    randomize_zero_inits(model)
    text = model.config.text_config
    llama = LlamaForCausalLM(text).eval()
    prefix = "model.language_model."
    weights = {
        "model." + k.removeprefix(prefix): v
        for k, v in model.state_dict().items()
        if k.startswith(prefix) and k.replace(prefix, "model.") in llama.state_dict()
    }
    weights["model.embed_tokens.weight"] = weights["model.embed_tokens.weight"][: text.vocab_size]
    weights["lm_head.weight"] = model.state_dict()["lm_head.weight"][: text.vocab_size]
    llama.load_state_dict(weights)  # strict: every Llama weight comes from the model
    ids = torch.randint(3, text.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model(input_ids=ids).logits[..., : text.vocab_size], llama(input_ids=ids).logits
    torch.testing.assert_close(ours, theirs)
