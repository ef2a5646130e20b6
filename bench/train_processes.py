"""A recipe stage on two data-parallel processes vs one process: the ShapesWorld recipe's `--processes`.

The same stage config (a shipped ShapesWorld config, batch 32, on a small fresh world) trained in turn by
`moai.recipes.launch.train_stage` on one process (torch's threads: all cores) and on two torchrun processes
(the cores shared, the batch split); interleaved rounds (bench/timing.py). Two times per run: the training
loop's own seconds (summary.json: the steps) and the wall time of the whole call (process start, model and
data loading too: what a recipe stage costs). Why, and the committed run: bench/README.md.

    python bench/train_processes.py [--steps N] [--rounds R] [--quick] [--out bench/results/train_processes.json]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from timing import clock, in_turn, machine, now, write

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results" / "train_processes.json"
CONFIGS = ROOT / "moai" / "train" / "configs" / "shapesworld"
BUNDLED = ROOT / "checkpoints" / "moai-tiny-shapes"
STAGES = {
    # the base's stage from a model made anew (as the recipe's base starts from its tower's model), and a
    # MoAI step-2 stage from the bundled model (frozen base, the aux from the perception cache)
    "base": ["model=shapes"],
    "step2": [f"model={BUNDLED}"],
}


def stage_config(stage: str, world: Path, out: Path, steps: int):
    from moai.train.config import TrainConfig

    overrides = [
        *STAGES[stage],
        f"output_dir={out}",
        f"data=[{{path: {world / 'train.json'}}}]",
        f"perception_cache={world / 'cache'}",
        f"max_steps={steps}",
        "warmup_steps=0",
        "progress=false",
        "tensorboard=false",
    ]
    return TrainConfig.load(CONFIGS / f"{stage}.yaml", overrides)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="training steps a run (default: 60)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default: 3)")
    parser.add_argument("--scenes", type=int, default=300, help="scenes of the world (default: 300)")
    parser.add_argument("--quick", action="store_true", help="1 round of 4 steps; writes only with --out")
    parser.add_argument("--out", type=Path, default=None, help=f"results JSON (default {RESULTS})")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.rounds = 4, 1

    from moai.perception.config import PerceptionConfig
    from moai.perception.dataset import precompute
    from moai.recipes.launch import train_stage
    from moai.worlds.shapes import write_world

    quiet = lambda _m: None  # noqa: E731
    processes = (1, 2)
    loop: dict[tuple[str, int], list[float]] = {}
    wall: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        world = Path(tmp) / "world"
        write_world(world, args.scenes, seed=5000)
        precompute(
            world / "train.json", world / "cache", PerceptionConfig.from_preset("shapesworld"), progress=False
        )
        for i in range(args.rounds):
            for stage in STAGES:
                for n in in_turn(processes, i):
                    config = stage_config(stage, world, Path(tmp) / f"{stage}-{n}-{i}", args.steps)
                    seconds, summary = clock(train_stage, config, n, quiet)
                    loop.setdefault((stage, n), []).append(summary["seconds"])
                    wall.setdefault((stage, n), []).append(seconds)
                    print(
                        f"round {i} {stage} {n} process(es): loop {summary['seconds']:.1f} s, wall {seconds:.1f} s"
                    )

    rows = []
    print(f"median over {args.rounds} rounds of {args.steps} steps of batch 32")
    print(f"{'stage':<6} {'processes':>9} {'loop s':>8} {'wall s':>8} {'loop vs 1':>10} {'wall vs 1':>10}")
    for stage in STAGES:
        base_loop, base_wall = (statistics.median(t[(stage, 1)]) for t in (loop, wall))
        for n in processes:
            t_loop, t_wall = statistics.median(loop[(stage, n)]), statistics.median(wall[(stage, n)])
            rows.append(
                {
                    "stage": stage,
                    "processes": n,
                    "loop_s": round(t_loop, 2),
                    "wall_s": round(t_wall, 2),
                    "speedup_loop_vs_1": round(base_loop / t_loop, 3),
                    "speedup_wall_vs_1": round(base_wall / t_wall, 3),
                }
            )
            print(
                f"{stage:<6} {n:>9} {t_loop:>8.1f} {t_wall:>8.1f} {base_loop / t_loop:>9.2f}x {base_wall / t_wall:>9.2f}x"
            )
    out = args.out or (None if args.quick else RESULTS)
    if out is not None:
        write(
            out,
            {"when": now(), "steps": args.steps, "rounds": args.rounds, "rows": rows, "machine": machine()},
        )


if __name__ == "__main__":
    main()
