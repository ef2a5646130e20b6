"""GPU parity and moai-7b timing (run by bench/gpu.sh on a machine with CUDA).

Parity: ``run_parity`` on CUDA in fp32 with TF32 off (docs/model.md §9; thresholds apply) and in
bf16 (max |Δ| reported, no threshold). Speed: a random moai-7b built on the GPU in bf16,
prefill of one 1,285-token prompt + 32 greedy decode tokens, against the same model with the mixers and
compressor removed (ratios measured in the same process).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch


def parity(fixture: str) -> dict:
    from moai.compat.parity import run_parity

    torch.backends.cuda.matmul.fp32_precision = "ieee"
    torch.backends.cudnn.conv.fp32_precision = "ieee"
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
    config = model.config
    n_img, n_text, n_aux = config.num_image_tokens, 60, 275
    ids = torch.randint(3, 1000, (1, n_img + n_text), device="cuda")
    ids[0, 10 : 10 + n_img] = config.image_token_id
    inputs = dict(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        pixel_values=torch.randn(
            1, 3, config.image_size, config.image_size, device="cuda", dtype=torch.bfloat16
        ),
        aux_input_ids=torch.randint(3, 1000, (1, n_aux), device="cuda"),
        aux_pixel_values=torch.randn(
            1, 3, config.image_size, config.image_size, device="cuda", dtype=torch.bfloat16
        ),
    )
    prefill, total = [], []
    with torch.no_grad():
        for _ in range(reps + 1):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(**inputs, logits_to_keep=1)
            torch.cuda.synchronize()
            t1 = time.perf_counter()
            model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
            torch.cuda.synchronize()
            t2 = time.perf_counter()
            prefill.append(t1 - t0)
            total.append(t2 - t1)
    prefill, total = prefill[1:], total[1:]  # drop the warm-up
    p, g = statistics.median(prefill), statistics.median(total)
    return {"prefill_s": p, "generate_32_s": g, "decode_s_per_token": (g - p) / new_tokens}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fixture", required=True)
    parser.add_argument("--out", default="bench/results/gpu.json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench/gpu.py needs a CUDA device")
    results = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    results["parity"] = parity(args.fixture)
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
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k != "parity"}, indent=2))
    print({d: (r["exit_code"], r["max_abs_diff"]) for d, r in results["parity"].items()})


if __name__ == "__main__":
    main()
