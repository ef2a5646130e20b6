"""Training-step speed on a busy CPU: the thread settings `moai` picks vs the OpenMP defaults.

torch's CPU kernels run on OpenMP threads. With GNU OpenMP's default wait policy an idle worker spins
before it sleeps; when another process holds a core, the spinning threads and the worker that has real
work fight for the same cores and a step can take ~100x longer. Importing ``moai`` sets
``OMP_WAIT_POLICY=PASSIVE`` unless the variable is already set (moai/__init__.py).

Each configuration runs the same child (tiny preset, batch 4, forward + backward + AdamW) in a fresh
process, once on an idle machine and once while a busy-loop process holds one core; the configurations
are interleaved, and every row reports its time per step and the ratio to `moai` in the same condition.

    python bench/threads.py [--steps N] [--rounds R] [--out bench/results/threads.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CHILD = """
import sys, time
import moai  # sets the thread defaults before torch loads
import torch
from moai import MoAIConfig, MoAIForConditionalGeneration

torch.manual_seed(0)
cfg = MoAIConfig.from_preset("tiny")
model = MoAIForConditionalGeneration(cfg).train()
model.set_trainable("moai")
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
b, s, n = 4, 96, cfg.num_image_tokens
ids = torch.randint(3, 250, (b, s)); ids[:, 1 : 1 + n] = cfg.image_token_id
batch = dict(
    input_ids=ids, labels=ids.masked_fill(ids == cfg.image_token_id, -100), pixel_values=torch.randn(b, 3, cfg.image_size, cfg.image_size),
    aux_input_ids=torch.randint(3, 250, (b, 40)), aux_pixel_values=torch.randn(b, 3, cfg.image_size, cfg.image_size),
)
def step():
    loss = model(**batch).loss
    loss.backward(); opt.step(); opt.zero_grad()
for _ in range(2):
    step()
steps = int(sys.argv[1])
start = time.perf_counter()
for _ in range(steps):
    step()
print((time.perf_counter() - start) / steps)
"""

HOG = "while True: pass"

CONFIGS = {
    # the GNU OpenMP default: OMP_WAIT_POLICY set but empty, so moai's default does not apply
    "openmp default": {"OMP_WAIT_POLICY": ""},
    "moai (PASSIVE)": {},
    "OMP_NUM_THREADS=1": {"OMP_NUM_THREADS": "1"},
}


def run_child(env_extra: dict[str, str], steps: int) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    env.update(env_extra)
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(steps)], env=env, capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per run (default: 10)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default: 3)")
    parser.add_argument("--out", default=str(REPO / "bench/results/threads.json"))
    args = parser.parse_args()

    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for condition in ("idle", "one core busy"):
            hog = subprocess.Popen([sys.executable, "-c", HOG]) if condition != "idle" else None
            try:
                for name, env in CONFIGS.items():
                    times.setdefault((condition, name), []).append(run_child(env, args.steps))
            finally:
                if hog is not None:
                    hog.kill()
                    hog.wait()

    rows = []
    print(f"{os.cpu_count()} CPUs; median s/step over {args.rounds} rounds of {args.steps} steps")
    print(f"{'condition':<14} {'threads':<20} {'s/step':>8} {'vs moai':>8}")
    for condition in ("idle", "one core busy"):
        base = statistics.median(times[(condition, "moai (PASSIVE)")])
        for name in CONFIGS:
            t = statistics.median(times[(condition, name)])
            rows.append({"condition": condition, "threads": name, "s_per_step": t, "ratio_vs_moai": t / base})
            print(f"{condition:<14} {name:<20} {t:>8.3f} {t / base:>7.2f}x")
    Path(args.out).write_text(
        json.dumps({"steps": args.steps, "rounds": args.rounds, "rows": rows}, indent=1)
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
