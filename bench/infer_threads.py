"""Inference on one intra-op thread vs torch's default, by LLM width: where `Engine`'s ``threads="auto"`` comes from.

For each LLM width, a randomly initialised model of the ``shapes`` preset (the bundled model's layout) with that
LLM width, and the ``mid`` preset, runs one prefill forward (image, panoptic map, aux text, question) at batch 1
and batch 8, with ``torch.set_num_threads(1)`` and with torch's default thread count, interleaved in one process.
A ratio above 1 means one thread is faster. Writes bench/results/infer_threads.json.

    python bench/infer_threads.py [--widths 128,256,512] [--reps 9] [--quick]
"""

from __future__ import annotations

import os

# as `make` and `import moai` do
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
from pathlib import Path
from typing import Any

from timing import interleave, machine, median_ms, write

RESULTS = Path(__file__).resolve().parent / "results" / "infer_threads.json"


def build(preset: str, width: int | None) -> tuple[Any, Any]:
    """A random model of ``preset`` (LLM ``width`` wide when given) and its config."""
    import torch

    import moai

    torch.manual_seed(0)
    config = moai.MoAIConfig.from_preset(preset)
    if width is not None:  # the LLM only; heads stay 32 wide, the MLP 3x
        text = config.text_config
        text.hidden_size, text.intermediate_size = width, 3 * width
        text.num_attention_heads = text.num_key_value_heads = width // text.head_dim
    return moai.MoAIForConditionalGeneration(config).eval(), config


def inputs(config: Any, batch: int, question: int = 16, aux: int = 100) -> dict[str, Any]:
    """A prefill batch: ``<image>`` tokens and a ``question``-token prompt; ``aux`` aux tokens."""
    import torch

    n, size, vocab = config.num_image_tokens, config.image_size, config.text_config.vocab_size
    ids = torch.randint(3, vocab - 1, (batch, n + question))
    ids[:, 1 : 1 + n] = config.image_token_id
    out = {
        "input_ids": ids,
        "pixel_values": torch.randn(batch, 3, size, size),
        "aux_input_ids": torch.randint(3, vocab - 1, (batch, aux)),
    }
    if config.use_aux_map:
        out["aux_pixel_values"] = torch.randn(batch, 3, size, size)
    return out


def measure(model: Any, batch: dict[str, Any], reps: int) -> dict[str, float]:
    """Median ms of a prefill forward on one thread and on torch's default threads, interleaved."""
    import torch

    from moai.engine import intra_op_threads  # what Engine.generate runs its forward passes in

    def forward(threads: int) -> None:
        with intra_op_threads(threads), torch.no_grad():
            model(**batch, logits_to_keep=1)

    times = interleave({"one": lambda: forward(1), "default": lambda: forward(0)}, most=reps, warmup=2)
    one, many = median_ms(times["one"]), median_ms(times["default"])
    return {
        "one_thread_ms": round(one, 1),
        "default_threads_ms": round(many, 1),
        "ratio": round(many / one, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--widths", default="128,256,384,512", help="LLM widths of the shapes preset (default: %(default)s)"
    )
    parser.add_argument("--reps", type=int, default=9, help="interleaved rounds (default: %(default)s)")
    parser.add_argument("--no-mid", action="store_true", help="leave out the mid preset (default: include)")
    parser.add_argument(
        "--quick", action="store_true", help="1 round, widths 128; prints, writes only with --out"
    )
    parser.add_argument("--out", type=Path, default=None, help=f"results JSON (default {RESULTS})")
    args = parser.parse_args()
    import torch

    if args.quick:
        args.widths, args.reps, args.no_mid = "128", 1, True
    models = [("shapes", int(w)) for w in args.widths.split(",")]
    if not args.no_mid:
        models.append(("mid", None))
    rows = []
    print(f"torch default threads: {torch.get_num_threads()}; median ms of a prefill forward")
    print(f"{'model':<16} {'batch':>5} {'1 thread':>9} {'default':>9} {'default / 1':>12}")
    for preset, width in models:
        model, config = build(preset, width)
        name = f"{preset} {config.text_config.hidden_size}"
        for b in (1, 8):
            row = {"preset": preset, "llm_width": config.text_config.hidden_size, "batch": b}
            row |= measure(model, inputs(config, b), args.reps)
            rows.append(row)
            print(
                f"{name:<16} {b:>5} {row['one_thread_ms']:>9} {row['default_threads_ms']:>9} {row['ratio']:>11}x",
                flush=True,
            )
    out = args.out or (None if args.quick else RESULTS)
    if out is not None:
        write(out, {"reps": args.reps, "rows": rows, "machine": machine()})


if __name__ == "__main__":
    main()
