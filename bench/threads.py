"""Training-step speed on a busy CPU: the thread settings `moai` picks vs the OpenMP defaults.

Each configuration runs the same training step (tiny preset, batch 4) in a fresh process, without and with a
busy-loop process on one core, interleaved; every row is a time per step and its ratio to `moai`'s setting
in the same condition. Why, and the committed run: bench/README.md.

    python bench/threads.py [--steps N] [--rounds R] [--quick] [--out bench/results/threads.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

from timing import in_turn, interleave, write

RESULTS = Path(__file__).resolve().parent / "results" / "threads.json"
HOG = "while True: pass"
CONDITIONS = ("idle", "one core busy")
CONFIGS = {
    # the GNU OpenMP default: OMP_WAIT_POLICY set but empty, so moai's default does not apply
    "openmp default": {"OMP_WAIT_POLICY": ""},
    "moai (PASSIVE)": {},
    "OMP_NUM_THREADS=1": {"OMP_NUM_THREADS": "1"},
}


def child(steps: int) -> None:
    """In a fresh process: mean seconds per training step over ``steps`` steps after two warm-up steps."""
    import moai  # noqa: I001 (before torch: importing moai sets the OpenMP defaults measured here)
    import torch

    torch.manual_seed(0)
    cfg = moai.MoAIConfig.from_preset("tiny")
    model = moai.MoAIForConditionalGeneration(cfg).train()
    model.set_trainable("moai")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    b, n, size = 4, cfg.num_image_tokens, cfg.image_size
    ids = torch.randint(3, 250, (b, 96))
    ids[:, 1 : 1 + n] = cfg.image_token_id
    batch = {
        "input_ids": ids,
        "labels": ids.masked_fill(ids == cfg.image_token_id, -100),
        "pixel_values": torch.randn(b, 3, size, size),
        "aux_input_ids": torch.randint(3, 250, (b, 40)),
        "aux_pixel_values": torch.randn(b, 3, size, size),
    }

    def step() -> None:
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()

    print(statistics.fmean(interleave({"step": step}, steps, warmup=2)["step"]))


def run_child(env_extra: dict[str, str], steps: int) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    cmd = [sys.executable, __file__, "--child", str(steps)]
    out = subprocess.run(cmd, env=env | env_extra, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per run (default: 10)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default: 3)")
    parser.add_argument(
        "--quick", action="store_true", help="1 round of 1 step; prints, writes only with --out"
    )
    parser.add_argument("--out", type=Path, default=None, help=f"results JSON (default {RESULTS})")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child)
        return
    if args.quick:
        args.steps, args.rounds = 1, 1

    times: dict[tuple[str, str], list[float]] = {}
    for i in range(args.rounds):
        for condition in CONDITIONS:
            hog = subprocess.Popen([sys.executable, "-c", HOG]) if condition != "idle" else None
            try:
                for name in in_turn(list(CONFIGS), i):
                    times.setdefault((condition, name), []).append(run_child(CONFIGS[name], args.steps))
            finally:
                if hog is not None:
                    hog.kill()
                    hog.wait()

    rows = []
    print(f"{os.cpu_count()} CPUs; median s/step over {args.rounds} rounds of {args.steps} steps")
    print(f"{'condition':<14} {'threads':<20} {'s/step':>8} {'vs moai':>8}")
    for condition in CONDITIONS:
        base = statistics.median(times[(condition, "moai (PASSIVE)")])
        for name in CONFIGS:
            t = statistics.median(times[(condition, name)])
            rows.append({"condition": condition, "threads": name, "s_per_step": t, "ratio_vs_moai": t / base})
            print(f"{condition:<14} {name:<20} {t:>8.3f} {t / base:>7.2f}x")
    out = args.out or (None if args.quick else RESULTS)
    if out is not None:
        write(out, {"steps": args.steps, "rounds": args.rounds, "rows": rows})


if __name__ == "__main__":
    main()
