"""When did a training run leave its plateau? The mean loss of each window of steps, from a run's metrics.jsonl.

    python bench/plateau.py runs/exp-esc/*/ --window 50

The recipe's ``step2_blank`` part (sign questions about blanked images, the OCR text alone in the aux) sits at
the chance loss until the MoAI modules start reading the aux, then falls (docs/shapesworld.md, "What starts the
reading: the base"). For each run directory this prints its start model, image slot and seed (from its
config.yaml), the mean loss of every ``--window`` logged steps and the first step whose window mean is below
``--below`` times the median loss of the first window, or ``-`` when none is (moai/train/curves.py, which the
recipe's check of ``step2_blank`` uses; a stuck run's windows stay within a few percent of the first).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from moai.train.config import trained_image_slot  # noqa: E402
from moai.train.curves import PLATEAU_BELOW, find_plateau, read_losses  # noqa: E402


def describe(run: Path) -> str:
    """The run's start model, image slot and seed, from its config.yaml."""
    config = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").is_file() else {}
    model = Path(str(config.get("model", "?")))
    start = f"{model.parent.parent.name}/{model.parent.name}" if model.name == "final" else str(model)
    return f"from {start}, image_slot {trained_image_slot(run) or '?'}, seed {config.get('seed', '?')}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories of `moai train` (metrics.jsonl)")
    parser.add_argument("--window", type=int, default=50, help="steps a window (default 50)")
    parser.add_argument(
        "--below",
        type=float,
        default=PLATEAU_BELOW,
        help="a window left the plateau when its mean is below this times the first window's median loss "
        f"(default {PLATEAU_BELOW})",
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
        plateau = find_plateau(read_losses(run), args.window, args.below)
        found = plateau.left_at
        print(f"{run}: {describe(run)}; left the plateau by step {found if found is not None else '-'}")
        print("  " + " ".join(f"{mean:.3f}" for _, mean in plateau.means))
    return status


if __name__ == "__main__":
    raise SystemExit(main())
