"""Decoding in causal mixer scope: with the `MoAICache` against without a cache (docs/model.md §8).

The bundled model's mixers run in ``causal`` scope: every generated token is mixed, so before the `MoAICache`
its ``generate`` ran the whole sequence at every step. This times ``Engine.generate`` on the bundled model
(or ``--model``) over the sign-word question of fresh ShapesWorld scenes (multi-token answers), at batch 1 and
batch 8, ``max_new_tokens`` = ``min_new_tokens`` = N (every row decodes N tokens), with ``use_cache=True`` and
``use_cache=False`` interleaved in one process; it checks that both give the same tokens. A ratio above 1
means the cache is faster. Writes bench/results/causal_decode.json.

    python bench/causal_decode.py [--tokens 4,8,16] [--reps 9] [--quick]
"""

from __future__ import annotations

import os

# as `make` and `import moai` do
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import tempfile
from pathlib import Path
from typing import Any

from timing import interleave, machine, median_ms, now, paired_ratio, ratio, write

RESULTS = Path(__file__).resolve().parent / "results" / "causal_decode.json"
QUESTION = "What word is written on the sign?"
SEED = 6161
"""World seed of the scenes timed here (not a training, check or ablation seed)."""


def batches(model: str | None, sizes: list[int]) -> tuple[Any, dict[int, Any]]:
    """The engine and one prepared batch per size: fresh scenes, the sign-word question."""
    from moai.engine import Engine
    from moai.worlds.shapes import write_world

    engine = Engine.load(model) if model else Engine.load()
    world = Path(tempfile.mkdtemp(prefix="causal-decode-"))
    write_world(world, scenes=max(sizes), seed=SEED)
    images = sorted((world / "images").iterdir())
    return engine, {n: engine.prepare(images[:n], [QUESTION] * n)[0] for n in sizes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="model directory (default: the bundled model)")
    parser.add_argument("--tokens", default="4,8,16", help="tokens decoded per row (default: %(default)s)")
    parser.add_argument("--batches", default="1,8", help="batch sizes (default: %(default)s)")
    parser.add_argument("--reps", type=int, default=9, help="timed rounds per setting (default: %(default)s)")
    parser.add_argument(
        "--quick", action="store_true", help="2 rounds, 4 tokens; writes nothing unless --out"
    )
    parser.add_argument(
        "--out", help="result file (default: bench/results/causal_decode.json; none with --quick)"
    )
    args = parser.parse_args(argv)
    tokens = [4] if args.quick else [int(t) for t in args.tokens.split(",")]
    sizes = [int(b) for b in args.batches.split(",")]
    reps = 2 if args.quick else args.reps

    engine, prepared = batches(args.model, sizes)
    scope = engine.model.mixer_settings.scope
    rows = []
    for size in sizes:
        for n in tokens:
            settings = dict(max_new_tokens=n, min_new_tokens=n)
            cached = engine.generate(prepared[size], **settings, use_cache=True)
            whole = engine.generate(prepared[size], **settings, use_cache=False)
            same = cached.tolist() == whole.tolist()
            batch = prepared[size]
            times = interleave(
                {
                    "cache": lambda b=batch, s=settings: engine.generate(b, **s, use_cache=True),
                    "no_cache": lambda b=batch, s=settings: engine.generate(b, **s, use_cache=False),
                },
                most=reps,
                least=reps,
            )
            row = {
                "batch": size,
                "tokens": n,
                "cache_ms": round(median_ms(times["cache"]), 2),
                "no_cache_ms": round(median_ms(times["no_cache"]), 2),
                "speedup": round(ratio(times["no_cache"], times["cache"]), 3),
                "speedup_paired_median": round(paired_ratio(times["no_cache"], times["cache"]), 3),
                "same_tokens": same,
            }
            rows.append(row)
            print(
                f"batch {size:2d}, {n:2d} tokens: MoAICache {row['cache_ms']:7.1f} ms, no cache "
                f"{row['no_cache_ms']:7.1f} ms: {row['speedup']:.2f}x faster with the cache "
                f"(paired {row['speedup_paired_median']:.2f}x); same tokens: {same}"
            )
    if not all(r["same_tokens"] for r in rows):
        print("the cached and uncached tokens differ")
        return 1
    out = args.out or (None if args.quick else RESULTS)
    if out:
        write(Path(out), {"date": now(), "scope": scope, "reps": reps, "rows": rows, "machine": machine()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
