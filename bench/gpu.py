"""GPU parity and moai-7b timing (run by bench/gpu.sh on a machine with CUDA).

Parity: ``run_parity`` on CUDA in fp32 with TF32 off (docs/model.md §9; thresholds apply) and in
bf16 (max |Δ| reported, no threshold). Speed: a random moai-7b built on the GPU in bf16, prefill of one 1,285-token prompt + 32 greedy decode tokens, against the same model with
the mixers and compressor removed (ratios measured in the same process).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from pathlib import Path

import torch
from timing import interleave


def parity(fixture: str) -> dict:
    from moai.compat.parity import run_parity  # turns TF32 off itself for float32 on CUDA

    results = {}
    for dtype in ("float32", "bfloat16"):
        report: dict = {}
        code = run_parity(fixture, device="cuda", dtype=dtype, report=report)
        results[dtype] = {
            "exit_code": code,
            "max_abs_diff": max((r["max_diff"] for r in report.values()), default=0.0),
            "checks": report,
        }
    return results


def build_7b(with_moai: bool, preset: str = "moai-7b", device: str = "cuda") -> torch.nn.Module:
    """A random model built directly on ``device`` in bf16 (the model's own initialisation; not on the meta
    device: ``to_empty`` would leave non-persistent buffers such as position ids and RoPE frequencies as
    garbage)."""
    from moai import MoAIConfig, MoAIForConditionalGeneration

    config = MoAIConfig.from_preset(preset)
    if not with_moai:
        config.mixer_config.layers = []
    with torch.device(device):
        model = MoAIForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    return model.eval()


def time_generation(model: torch.nn.Module, reps: int = 5, new_tokens: int = 32) -> dict:
    config, device = model.config, model.device
    n_img, n_text, n_aux, size = config.num_image_tokens, 60, 275, config.image_size
    high = min(1000, config.text_config.vocab_size)
    ids = torch.randint(3, high, (1, n_img + n_text), device=device)
    ids[0, 10 : 10 + n_img] = config.image_token_id
    inputs = dict(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        pixel_values=torch.randn(1, 3, size, size, device=device, dtype=torch.bfloat16),
        aux_input_ids=torch.randint(3, high, (1, n_aux), device=device),
        aux_pixel_values=torch.randn(1, 3, size, size, device=device, dtype=torch.bfloat16),
    )
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None

    def synced(fn):
        return lambda: (sync(), fn(), sync())

    calls = {
        "prefill": synced(lambda: model(**inputs, logits_to_keep=1)),
        "generate": synced(
            lambda: model.generate(
                **inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False
            )
        ),
    }
    with torch.no_grad():
        times = interleave(calls, reps, warmup=1)
    p, g = statistics.median(times["prefill"]), statistics.median(times["generate"])
    return {"prefill_s": p, "generate_32_s": g, "decode_s_per_token": (g - p) / new_tokens}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fixture", default="tests/fixtures/official_tiny", help="(default: %(default)s)")
    parser.add_argument("--out", default="bench/results/gpu.json")
    parser.add_argument(
        "--parts",
        default="parity,timing",
        help="comma-separated parts to run: parity, timing; the others' results already in --out are kept "
        "(default: %(default)s)",
    )
    args = parser.parse_args()
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if not parts or parts - {"parity", "timing"}:
        raise SystemExit(f"--parts {args.parts!r}: expected parity and/or timing")
    if not torch.cuda.is_available():
        raise SystemExit("bench/gpu.py needs a CUDA device")
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else {}
    results.update(
        device=torch.cuda.get_device_name(), torch=torch.__version__, python=platform.python_version()
    )
    if "parity" in parts:
        results["parity"] = parity(args.fixture)
        print({d: (r["exit_code"], r["max_abs_diff"]) for d, r in results["parity"].items()})
    if "timing" in parts:
        timings = {}
        for name, with_moai in (("moai", True), ("backbone", False)):
            model = build_7b(with_moai)
            timings[name] = time_generation(model)
            del model
            torch.cuda.empty_cache()
        timings["prefill_ratio"] = timings["moai"]["prefill_s"] / timings["backbone"]["prefill_s"]
        timings["decode_ratio"] = (
            timings["moai"]["decode_s_per_token"] / timings["backbone"]["decode_s_per_token"]
        )
        results["moai_7b_bf16"] = timings
        print(json.dumps(timings, indent=2))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
