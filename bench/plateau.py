"""When did a training run leave its plateau? The mean loss of each window of steps, from a run's metrics.jsonl.

    python bench/plateau.py runs/exp-esc/*/ --window 50

The recipe's ``step2_blank`` part (sign questions about blanked images, the OCR text alone in the aux) sits at
the chance loss until the MoAI modules start reading the aux, then falls (docs/shapesworld.md, "What starts the
reading: the base"). For each run directory this prints its start model, image slot and seed (from its
config.yaml), the mean loss of every ``--window`` logged steps and the first step whose window mean is below
``--below`` times the first window's (the plateau: a stuck run's windows stay within a few percent of the
first), or ``-`` when none is.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml


def read_losses(run: Path) -> list[tuple[int, float]]:
    """(step, loss) of each logged step of ``run``'s metrics.jsonl, in step order."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return sorted((int(r["step"]), float(r["loss"])) for r in rows if "loss" in r and "step" in r)


def window_means(losses: Sequence[tuple[int, float]], window: int) -> list[tuple[int, float]]:
    """(last step, mean loss) of each window of ``window`` steps: steps 1-window, window+1-2*window, ...; a
    window holds the logged steps in it (a run logs every ``log_every`` steps) and one without any is left out."""
    if window < 1:
        raise ValueError(f"window {window}: must be >= 1")
    groups: dict[int, list[float]] = {}
    for step, loss in losses:
        groups.setdefault((step - 1) // window, []).append(loss)
    return [((k + 1) * window, statistics.fmean(v)) for k, v in sorted(groups.items())]


def escape_step(means: Sequence[tuple[int, float]], below: float) -> int | None:
    """The last step of the first window whose mean is below ``below`` times the first window's; None if none."""
    if not means:
        return None
    floor = below * means[0][1]
    return next((step for step, mean in means[1:] if mean < floor), None)


def describe(run: Path) -> str:
    """The run's start model, image slot and seed, from its config.yaml."""
    config = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").is_file() else {}
    model = Path(str(config.get("model", "?")))
    start = f"{model.parent.parent.name}/{model.parent.name}" if model.name == "final" else str(model)
    return f"from {start}, image_slot {config.get('image_slot', 'as_written (before the option)')}, seed {config.get('seed', '?')}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories of `moai train` (metrics.jsonl)")
    parser.add_argument("--window", type=int, default=50, help="steps a window (default 50)")
    parser.add_argument(
        "--below",
        type=float,
        default=0.8,
        help="a window left the plateau when its mean is below this times the first window's (default 0.8)",
    )
    args = parser.parse_args(argv)
    if args.window < 1:
        parser.error(f"--window {args.window}: must be >= 1")
    status = 0
    for run in args.runs:
        if not (run / "metrics.jsonl").is_file():
            print(f"plateau: {run}: no metrics.jsonl, skipped", file=sys.stderr)
            status = 2
            continue
        means = window_means(read_losses(run), args.window)
        found = escape_step(means, args.below)
        print(f"{run}: {describe(run)}; left the plateau by step {found if found is not None else '-'}")
        print("  " + " ".join(f"{mean:.3f}" for _, mean in means))
    return status


if __name__ == "__main__":
    raise SystemExit(main())
