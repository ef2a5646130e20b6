"""MoAI vs the bare backbone: prefill and per-token decode time on CPU, and an analytic FLOP breakdown.

``make bench`` (writes bench/results/model.json), ``--quick`` for a smoke run that prints only. What is timed
against what, and how to read it: bench/README.md.
"""

from __future__ import annotations

import os

# as `make` and `import moai` do: idle OpenMP threads sleep, so a busy CPU does not collapse the timings
# (bench/threads.py); set before torch loads, unless the environment says otherwise
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timing import clock, in_turn, machine, median_ms, now, paired_ratio, ratio, rounds, write

from moai.model.configuration import MoAIConfig
from moai.model.mixer import MoAIMixer
from moai.model.modeling import MoAIForConditionalGeneration
from moai.model.processing import MoAIProcessor

RESULTS = Path(__file__).resolve().parent / "results" / "model.json"
TARGETS = {"prefill": 1.25, "decode": 1.05}
TARGET_PRESET = "mid"  # the targets are stated for the mid preset; other presets are reported only
SEED = 0

QUESTION = "Which object is left of the red cube here?"  # ~60 text tokens with the chat template
# A verbalization in the style of MoAI's CV-output text (boxes, OCR, relations), cut to ``AUX_CHARS``.
AUX_TEXT = (
    "The image includes bounding boxes and their objects: {person} <0.12, 0.30, 0.41, 0.95>, {dog} "
    "<0.48, 0.61, 0.77, 0.98>, {car} <0.55, 0.10, 0.99, 0.52>, {traffic light} <0.02, 0.01, 0.09, 0.22>. "
    "The image includes text descriptions: {STOP} <0.80, 0.15, 0.88, 0.21>. The image includes scene graph "
    "relations: {person} walking {dog}, {car} parked on {street}, {dog} next to {person}."
)
AUX_CHARS = 275  # byte-level tokenizer: 275 characters = 275 tokens (+ BOS)

# Token counts assumed for one MoAI-7B sample (490 px, patch 14 -> 35 x 35 = 1225 image tokens; docs/model.md §2).
MOAI_7B_SAMPLE = {"text_tokens": 60, "verbalization_tokens": 275}
FLOP_TERMS = ("vision", "vision_aux_map", "compressor", "mixers", "llm_prefill", "per_decoded_token")


# ---------------------------------------------------------------------------------------------------------
# Analytic FLOPs (2 * MACs of every matmul, attention scores and values included; norms, activations,
# softmax, RoPE and embedding look-ups are not counted).
# ---------------------------------------------------------------------------------------------------------
def mm(rows: int, inner: int, cols: int) -> int:
    """FLOPs of a [rows, inner] @ [inner, cols] matmul."""
    return 2 * rows * inner * cols


def vision_flops(config: MoAIConfig) -> dict[str, int]:
    """One pass of the CLIP tower (CLS + patches, all layers) and the mlp2x projector on the patch tokens."""
    vc, dim = config.vision_config, config.hidden_size
    n = config.num_image_tokens
    t = n + 1  # + CLS
    c, inter = vc.hidden_size, vc.intermediate_size
    patch_embed = mm(n, vc.num_channels * vc.patch_size**2, c)
    per_layer = 4 * mm(t, c, c) + 2 * mm(t, c, t) + mm(t, c, inter) + mm(t, inter, c)
    tower = patch_embed + vc.num_hidden_layers * per_layer
    projector = mm(n, c, dim) + mm(n, dim, dim)
    return {"tower": tower, "projector": projector, "total": tower + projector}


def compressor_flops(config: MoAIConfig, aux_tokens: int) -> int:
    """Perceiver resampler: latents attend to [aux tokens ; latents], then a feed-forward, ``depth`` times."""
    cc, dim = config.compressor_config, config.hidden_size
    lat, inner, ff = cc.num_latents, cc.num_heads * cc.head_dim, int(dim * cc.ff_mult)
    keys = aux_tokens + lat
    attn = mm(lat, dim, inner) + mm(keys, dim, 2 * inner) + 2 * mm(lat, inner, keys) + mm(lat, inner, dim)
    return cc.depth * (attn + mm(lat, dim, ff) + mm(lat, ff, dim))


def expert_flops(dim: int, rank: int, n_q: int, n_kv: int) -> int:
    """One low-rank expert attention: q/o on the queries, k/v on the keys (each D->R->D), scores and values
    over the full width D (the heads split D)."""
    low_rank = mm(1, dim, rank) + mm(1, rank, dim)  # per token
    return (2 * n_q + 2 * n_kv) * low_rank + 2 * mm(n_q, dim, n_kv)


def mixer_flops(config: MoAIConfig, n_img: int, n_lang: int) -> dict[str, int]:
    """All mixer layers in gated mode: six experts (all three of each stream run) and two 3-way gates."""
    mc, dim = config.mixer_config, config.hidden_size
    lat = config.compressor_config.num_latents
    per_layer = {
        "img_aux": expert_flops(dim, mc.rank, n_img, lat),
        "img_lang": expert_flops(dim, mc.rank, n_img, n_lang),
        "img_self": expert_flops(dim, mc.rank, n_img, n_img),
        "lang_aux": expert_flops(dim, mc.rank, n_lang, lat),
        "lang_img": expert_flops(dim, mc.rank, n_lang, n_img),
        "lang_self": expert_flops(dim, mc.rank, n_lang, n_lang),
        "gates": mm(n_img + n_lang, dim, 3),
    }
    layers = len(mc.layers)
    out = {f"{k}_per_layer": v for k, v in per_layer.items()}
    out["per_layer"] = sum(per_layer.values())
    out["layers"] = layers
    out["total"] = layers * out["per_layer"]
    return out


def _kv_width(config: MoAIConfig) -> tuple[int, int]:
    text = config.text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return text.num_attention_heads * head_dim, text.num_key_value_heads * head_dim


def plora_flops(config: MoAIConfig, n_img: int) -> int:
    """PLoRA deltas on the image tokens of every decoder layer (q/k/v share one A)."""
    if not config.plora_config.enabled:
        return 0
    text, r = config.text_config, config.plora_config.r
    dim, inter = text.hidden_size, text.intermediate_size
    q_w, kv_w = _kv_width(config)
    per_token = (
        mm(1, dim, r)  # shared A of q/k/v
        + mm(1, r, q_w)
        + 2 * mm(1, r, kv_w)  # B of q, k, v
        + mm(1, q_w, r)
        + mm(1, r, dim)  # o
        + 2 * (mm(1, dim, r) + mm(1, r, inter))  # gate, up
        + mm(1, inter, r)
        + mm(1, r, dim)  # down
    )
    return text.num_hidden_layers * n_img * per_token


def llm_prefill_flops(config: MoAIConfig, seq: int, n_img: int) -> dict[str, int]:
    """Decoder over ``seq`` prompt tokens (causal: seq*(seq+1)/2 score pairs), PLoRA on the image tokens, and
    the LM head on the last position only (generation asks for ``logits_to_keep=1``)."""
    text = config.text_config
    dim, inter = text.hidden_size, text.intermediate_size
    q_w, kv_w = _kv_width(config)
    pairs = seq * (seq + 1) // 2
    proj = mm(seq, dim, q_w) + 2 * mm(seq, dim, kv_w) + mm(seq, q_w, dim)
    attn = 2 * 2 * pairs * q_w
    mlp = 3 * mm(seq, dim, inter)
    layers = text.num_hidden_layers * (proj + attn + mlp)
    plora = plora_flops(config, n_img)
    lm_head = mm(1, dim, text.vocab_size)
    return {
        "decoder_layers": layers,
        "attention_scores_values": text.num_hidden_layers * attn,
        "plora": plora,
        "lm_head_last_position": lm_head,
        "total": layers + plora + lm_head,
        "memo_lm_head_all_positions": mm(seq, dim, text.vocab_size),
    }


def decode_token_flops(config: MoAIConfig, context: int) -> int:
    """One generated token attending to ``context`` cached tokens + itself; no mixer, compressor or PLoRA
    runs on decode steps (generated tokens are stream 0)."""
    text = config.text_config
    dim, inter = text.hidden_size, text.intermediate_size
    q_w, kv_w = _kv_width(config)
    per_layer = (
        mm(1, dim, q_w)
        + 2 * mm(1, dim, kv_w)
        + mm(1, q_w, dim)
        + 2 * 2 * (context + 1) * q_w
        + 3 * mm(1, dim, inter)
    )
    return text.num_hidden_layers * per_layer + mm(1, dim, text.vocab_size)


def flop_breakdown(config: MoAIConfig, text_tokens: int, verbalization_tokens: int) -> dict[str, Any]:
    """Analytic FLOPs of one sample (batch 1): MoAI's extra terms against the bare backbone's prefill."""
    n_img = config.num_image_tokens
    seq = n_img + text_tokens
    vision = vision_flops(config)
    comp = compressor_flops(config, verbalization_tokens + n_img)
    mixers = mixer_flops(config, n_img, text_tokens)
    llm = llm_prefill_flops(config, seq, n_img)
    per_token = decode_token_flops(config, seq)
    backbone_prefill = vision["total"] + llm["total"]
    overhead = vision["total"] + comp + mixers["total"]
    return {
        "tokens": {
            "image_tokens": n_img,
            "vision_positions": n_img + 1,
            "text_prompt_tokens": text_tokens,
            "llm_prefill_tokens": seq,
            "verbalization_tokens": verbalization_tokens,
            "aux_map_tokens": n_img,
            "compressor_input_tokens": verbalization_tokens + n_img,
            "compressor_latents": config.compressor_config.num_latents,
            "mixer_layers": list(config.mixer_config.layers),
            "decode_context_tokens": seq,
        },
        "vision": vision["total"],
        "vision_detail": vision,
        "vision_aux_map": vision["total"],
        "compressor": comp,
        "mixers": mixers["total"],
        "mixers_detail": mixers,
        "llm_prefill": llm["total"],
        "llm_prefill_detail": llm,
        "per_decoded_token": per_token,
        "backbone_prefill": backbone_prefill,
        "moai_prefill": backbone_prefill + overhead,
        "moai_overhead": overhead,
        "moai_overhead_fraction_of_prefill": overhead / backbone_prefill,
        "overhead_fraction_by_term": {
            "vision_aux_map": vision["total"] / backbone_prefill,
            "compressor": comp / backbone_prefill,
            "mixers": mixers["total"] / backbone_prefill,
        },
        "predicted_prefill_ratio": (backbone_prefill + overhead) / backbone_prefill,
        "predicted_decode_ratio": 1.0,
    }


# ---------------------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------------------
def build_pair(preset: str) -> tuple[MoAIConfig, MoAIForConditionalGeneration, MoAIForConditionalGeneration]:
    config = MoAIConfig.from_preset(preset)
    base_config = MoAIConfig.from_preset(preset)
    base_config.mixer_config.layers = []
    torch.manual_seed(SEED)
    moai = MoAIForConditionalGeneration(config).eval()
    torch.manual_seed(SEED)
    base = MoAIForConditionalGeneration(base_config).eval()
    # share the backbone weights: the baseline then computes what MoAI computes minus its extra modules
    result = base.load_state_dict(moai.state_dict(), strict=False)
    if result.missing_keys or any(".moai_mixer." not in k for k in result.unexpected_keys):
        raise RuntimeError(f"backbone keys differ: {result}")
    return config, moai, base


def make_inputs(config: MoAIConfig) -> dict[str, torch.Tensor]:
    processor = MoAIProcessor.from_config(config)
    rng = np.random.default_rng(SEED)
    size = config.image_size
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    # a panoptic map is a few flat colour regions
    palette = rng.integers(0, 256, (8, 3), dtype=np.uint8)
    regions = rng.integers(0, 8, (size // 16 + 1, size // 16 + 1))
    panoptic = palette[np.kron(regions, np.ones((16, 16), dtype=np.int64))[:size, :size]]
    aux_text = (AUX_TEXT * 2)[:AUX_CHARS]
    batch = processor(images=[image], text=[QUESTION], aux_text=[aux_text], aux_images=[panoptic])
    return dict(batch)


class Session:
    """One generation of a model: a prefill (as generate's first step: cache on, logits of the last
    position only) and then cached greedy decode steps of one token each, timed one call at a time."""

    def __init__(self, model: MoAIForConditionalGeneration, inputs: dict[str, torch.Tensor]) -> None:
        self.model, self.inputs = model, inputs
        self.cache = self.token = self.mask = None

    @torch.no_grad()
    def prefill(self) -> float:
        elapsed, out = clock(self.model, **self.inputs, use_cache=True, logits_to_keep=1)
        self.cache, self.mask = out.cache, self.inputs["attention_mask"]
        self.token = out.logits[:, -1].argmax(-1, keepdim=True)  # [B, 1]
        return elapsed

    @torch.no_grad()
    def step(self) -> float:
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], 1)], dim=1)
        elapsed, out = clock(
            self.model,
            input_ids=self.token,
            attention_mask=self.mask,
            mm_token_type_ids=torch.zeros_like(self.token),  # generated tokens: stream 0
            cache=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self.token = out.logits[:, -1].argmax(-1, keepdim=True)
        return elapsed


class ComponentTimer:
    """Wall time of the vision tower, projector, compressor and mixer calls during a prefill, by forward hooks
    (a few microseconds per call) that stay on during the timed prefills; decode steps call none of these."""

    def __init__(self, model: MoAIForConditionalGeneration) -> None:
        self.times: dict[str, list[float]] = {}
        starts: list[float] = []
        named = [
            ("vision", model.vision_tower),
            ("projector", model.projector),
            ("compressor", model.compressor),
        ]
        named += [("mixers", m) for m in model.modules() if isinstance(m, MoAIMixer)]
        self.handles = []
        for name, module in named:
            self.handles.append(
                module.register_forward_pre_hook(lambda *_: starts.append(time.perf_counter()))
            )
            self.handles.append(
                module.register_forward_hook(
                    lambda *_, n=name: self.times.setdefault(n, []).append(time.perf_counter() - starts.pop())
                )
            )

    def take(self, total: float) -> dict[str, float]:
        """Split one prefill of ``total`` seconds and reset. Vision = tower + projector; the image is encoded
        first, the panoptic map second; ``rest_llm`` = everything else (LLM with PLoRA, embeddings, head)."""
        t, self.times = self.times, {}
        vision, proj = t.get("vision", []), t.get("projector", [])
        parts = {
            "vision_image": sum(vision[:1]) + sum(proj[:1]),
            "vision_aux_map": sum(vision[1:]) + sum(proj[1:]),
            "compressor": sum(t.get("compressor", [])),
            "mixers": sum(t.get("mixers", [])),
        }
        parts["rest_llm"] = total - sum(parts.values())
        parts["total"] = total
        return parts

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def bench_preset(
    preset: str, reps: int, min_reps: int, budget_s: float, decode_tokens: int, warmup: int
) -> dict[str, Any]:
    """Time one preset: up to ``reps`` interleaved repetitions (at least ``min_reps``; no new one starts
    after ``budget_s`` seconds of timing), each a prefill and ``decode_tokens`` cached steps per model."""
    t0 = time.perf_counter()
    load_start = os.getloadavg()[0]
    config, moai, base = build_pair(preset)
    inputs = make_inputs(config)
    models = {"moai": moai, "baseline": base}
    with torch.no_grad():
        logits = {k: m(**inputs, use_cache=False, logits_to_keep=1).logits for k, m in models.items()}
    diff = float((logits["moai"] - logits["baseline"]).abs().max())
    t_build = time.perf_counter() - t0
    for _ in range(warmup):
        for m in models.values():
            session = Session(m, inputs)
            session.prefill()
            for _ in range(min(4, decode_tokens)):
                session.step()

    timers = {name: ComponentTimer(m) for name, m in models.items()}  # after the warm-up
    prefill: dict[str, list[float]] = {k: [] for k in models}
    decode: dict[str, list[float]] = {k: [] for k in models}
    parts: dict[str, dict[str, list[float]]] = {k: {} for k in models}
    for rep in rounds(reps, min_reps, budget_s):
        order = in_turn(list(models), rep)  # A B, B A, ...
        sessions = {name: Session(models[name], inputs) for name in order}
        for name in order:
            prefill[name].append(sessions[name].prefill())
            for k, v in timers[name].take(prefill[name][-1]).items():
                parts[name].setdefault(k, []).append(v)
        for step in range(decode_tokens):  # decode steps interleaved too, each model on its own cache
            for name in in_turn(order, step):
                decode[name].append(sessions[name].step())
        del sessions
    for timer in timers.values():
        timer.remove()
    components = {name: {k: round(median_ms(v), 2) for k, v in p.items()} for name, p in parts.items()}
    # MoAI's extra prefill time per term, as a fraction of the baseline prefill (cf. flops_analytic)
    base_ms, extra = components["baseline"]["total"], components["moai"]
    measured_terms = {k: extra[k] / base_ms for k in ("vision_aux_map", "compressor", "mixers")}
    measured_terms["rest"] = (extra["total"] - base_ms) / base_ms - sum(measured_terms.values())

    med = {
        name: {"prefill_ms": median_ms(prefill[name]), "decode_ms_per_token": median_ms(decode[name])}
        for name in models
    }
    ratios = {k: ratio(t["moai"], t["baseline"]) for k, t in (("prefill", prefill), ("decode", decode))}
    t_timing = time.perf_counter() - t0 - t_build
    n_text = int((inputs["input_ids"] != config.image_token_id).sum())
    n_verb = int(inputs["aux_attention_mask"].sum())
    flops = flop_breakdown(config, n_text, n_verb)
    judged = preset == TARGET_PRESET
    return {
        "shapes": {
            "prompt_tokens": int(inputs["input_ids"].shape[1]),
            "image_tokens": config.num_image_tokens,
            "text_prompt_tokens": n_text,
            "aux_text_tokens": n_verb,
            "aux_map_tokens": config.num_image_tokens,
            "image_size": config.image_size,
            "mixer_layers": list(config.mixer_config.layers),
            "decode_steps_per_rep": decode_tokens,
        },
        "parameters": {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()},
        "reps": len(prefill["moai"]),
        "moai": {k: round(v, 3) for k, v in med["moai"].items()},
        "baseline": {k: round(v, 3) for k, v in med["baseline"].items()},
        "ratio": {k: round(v, 4) for k, v in ratios.items()},
        "ratio_paired_median": {
            k: round(paired_ratio(t["moai"], t["baseline"]), 4)
            for k, t in (("prefill", prefill), ("decode", decode))
        },
        "targets": dict(TARGETS),
        "targets_apply": judged,
        "met": {k: ratios[k] <= TARGETS[k] for k in TARGETS},
        "prefill_components_ms": components,
        "prefill_overhead_fraction_by_term_measured": {k: round(v, 4) for k, v in measured_terms.items()},
        "flops_analytic": {k: flops[k] for k in FLOP_TERMS}
        | {
            "moai_overhead_fraction_of_prefill": round(flops["moai_overhead_fraction_of_prefill"], 4),
            "overhead_fraction_by_term": {
                k: round(v, 4) for k, v in flops["overhead_fraction_by_term"].items()
            },
            "predicted_prefill_ratio": round(flops["predicted_prefill_ratio"], 4),
        },
        "check_last_logits_max_abs_diff": diff,
        "load_average_1m": {"start": round(load_start, 2), "end": round(os.getloadavg()[0], 2)},
        "seconds": {
            "build": round(t_build, 1),
            "timing": round(t_timing, 1),
            "total": round(time.perf_counter() - t0, 1),
        },
    }


def print_report(results: dict[str, Any], flops_7b: dict[str, Any]) -> None:
    print()
    print(f"{'preset':<7} {'model':<9} {'prefill ms':>11} {'decode ms/tok':>14}")
    for preset, r in results.items():
        for name in ("moai", "baseline"):
            print(
                f"{preset:<7} {name:<9} {r[name]['prefill_ms']:>11.1f} {r[name]['decode_ms_per_token']:>14.2f}"
            )
        print(
            f"{preset:<7} {'ratio':<9} {r['ratio']['prefill']:>10.3f}x {r['ratio']['decode']:>13.3f}x"
            f"   (paired medians {r['ratio_paired_median']['prefill']:.3f}x / "
            f"{r['ratio_paired_median']['decode']:.3f}x)"
        )
    print()
    for preset, r in results.items():
        tag = "target" if r["targets_apply"] else "target (reported only; judged at mid)"
        for k in ("prefill", "decode"):
            verdict = "MET" if r["met"][k] else "MISSED"
            print(f"{preset}: {k} ratio {r['ratio'][k]:.3f}x, {tag} <= {TARGETS[k]}x: {verdict}")
    print()
    print("prefill components, MoAI, median ms (vision = tower + projector):")
    for preset, r in results.items():
        c = r["prefill_components_ms"]["moai"]
        f = r["flops_analytic"]
        print(
            f"  {preset}: image vision {c['vision_image']:.1f}, aux-map vision {c['vision_aux_map']:.1f}, "
            f"compressor {c['compressor']:.1f}, mixers {c['mixers']:.1f}, LLM+rest {c['rest_llm']:.1f}, "
            f"total {c['total']:.1f}; analytic overhead {100 * f['moai_overhead_fraction_of_prefill']:.1f}% "
            f"of backbone prefill -> predicted prefill ratio {f['predicted_prefill_ratio']:.3f}x"
        )
        m, a = r["prefill_overhead_fraction_by_term_measured"], f["overhead_fraction_by_term"]
        print(
            "    MoAI extra prefill as % of baseline prefill, measured (analytic FLOPs): "
            + ", ".join(f"{k} {100 * m[k]:.1f}% ({100 * a[k]:.1f}%)" for k in a)
            + f", rest {100 * m['rest']:.1f}%"
        )
    print()
    g = 1e9
    print("moai-7b analytic GFLOPs per sample:")
    for key in FLOP_TERMS:
        print(f"  {key:<18} {flops_7b[key] / g:>10.1f}")
    fr = flops_7b["overhead_fraction_by_term"]
    print(
        f"  MoAI overhead = {100 * flops_7b['moai_overhead_fraction_of_prefill']:.2f}% of backbone prefill "
        f"(aux-map vision {100 * fr['vision_aux_map']:.2f}%, compressor {100 * fr['compressor']:.2f}%, "
        f"mixers {100 * fr['mixers']:.2f}%) -> predicted prefill ratio {flops_7b['predicted_prefill_ratio']:.3f}x, "
        "decode 1.000x"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--presets", default="tiny,mid", help="comma-separated presets (default tiny,mid)")
    parser.add_argument(
        "--quick", action="store_true", help="few repetitions; prints, writes only with --out"
    )
    parser.add_argument("--reps", type=int, default=None, help="most interleaved repetitions per preset")
    parser.add_argument(
        "--budget-s", type=float, default=None, help="no new repetition after this many timing seconds"
    )
    parser.add_argument("--decode-tokens", type=int, default=None, help="cached decode steps per repetition")
    parser.add_argument("--out", type=Path, default=None, help=f"results JSON (default {RESULTS})")
    args = parser.parse_args(argv)

    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    reps = args.reps or (3 if args.quick else 20)
    min_reps = min(reps, 2 if args.quick else 5)
    budget_s = args.budget_s or (15.0 if args.quick else 120.0)
    decode_tokens = args.decode_tokens or (4 if args.quick else 16)
    warmup = 1 if args.quick else 2
    out = args.out if args.out is not None else (None if args.quick else RESULTS)

    start = time.perf_counter()
    info = machine(dtype="float32", device="cpu")
    print(
        f"torch {info['torch']}, {info['torch_threads']} threads, {info['cpu']}; reps {min_reps}..{reps} "
        f"(timing budget {budget_s:.0f} s/preset), decode steps/rep {decode_tokens}"
    )
    results = {}
    for preset in presets:
        print(f"[{preset}] building, warming up, timing ...", flush=True)
        results[preset] = bench_preset(preset, reps, min_reps, budget_s, decode_tokens, warmup)
        r = results[preset]
        print(f"[{preset}] {r['reps']} reps, done in {r['seconds']['total']} s", flush=True)

    flops_7b = flop_breakdown(MoAIConfig.from_preset("moai-7b"), **MOAI_7B_SAMPLE)
    print_report(results, flops_7b)
    elapsed = time.perf_counter() - start
    print(f"\ntotal {elapsed:.0f} s")

    if out is not None:
        settings = {"quick": args.quick, "max_reps": reps, "min_reps": min_reps}
        settings |= {"timing_budget_s_per_preset": budget_s, "decode_steps_per_rep": decode_tokens}
        payload = {
            "benchmark": "bench/model.py, read with bench/README.md",
            "date": now(),
            "machine": info,
            "method": settings | {"warmup_runs": warmup},
            "target_preset": TARGET_PRESET,
            "presets": results,
            "flops_moai_7b": flops_7b,
            "total_seconds": round(elapsed, 1),
        }
        write(out, payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
