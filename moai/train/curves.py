"""Reading a training run's loss curve: window means and the step where the loss left its plateau.

A MoAI stage that must learn to read its aux knowledge often sits at the chance loss for hundreds of steps,
then falls once the experts find the aux tokens that answer (docs/shapesworld.md, "What starts the reading:
the base"). The ShapesWorld recipe checks that its ``step2_blank`` part left that plateau;
``bench/plateau.py`` prints the same for any run.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PLATEAU_BELOW = 0.8
"""A window left the plateau when its mean loss is below this fraction of the plateau's level
(`plateau_level`). Over their first 1,000 steps the 50-step windows of the runs that stayed at chance (docs/shapesworld.md, "What
starts the reading: the base") keep within 3 % of it; the first window of a started reading below 0.8 of it is
at 0.72-0.79, and the next ones lower."""


def read_metrics(run: Path) -> list[dict[str, Any]]:
    """The records of ``run/metrics.jsonl`` (one per logged step), or [] when the run logged none."""
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{lineno}: malformed JSON line: {err.msg}") from None
    return records


def read_losses(run: str | Path) -> list[tuple[int, float]]:
    """(step, loss) of each logged training step of ``run/metrics.jsonl``, in step order."""
    return sorted(
        (int(r["step"]), float(r["loss"])) for r in read_metrics(Path(run)) if "loss" in r and "step" in r
    )


def window_means(losses: Sequence[tuple[int, float]], window: int) -> list[tuple[int, float]]:
    """(last step, mean loss) of each window of ``window`` steps: steps 1..window, window+1..2*window, ...; a
    window holds the steps logged in it (a run logs every ``log_every`` steps); one without any is left out."""
    if window < 1:
        raise ValueError(f"window {window}: must be >= 1")
    groups: dict[int, list[float]] = {}
    for step, loss in losses:
        groups.setdefault((step - 1) // window, []).append(loss)
    return [((k + 1) * window, statistics.fmean(v)) for k, v in sorted(groups.items())]


def plateau_level(losses: Sequence[tuple[int, float]], window: int) -> float | None:
    """The loss a run sat on at its start: the median of the losses logged in its first ``window`` steps (None
    when none is). A median, not the window's mean: a run whose first logged steps answer in another form (a
    loss of 2.3 at step 10, then the chance loss from step 20, as the reading stage on the position tower's base
    in docs/shapesworld.md) would otherwise put the level so high that the chance loss itself reads as a fall."""
    first = [loss for step, loss in losses if step <= window]
    return statistics.median(first) if first else None


@dataclass(frozen=True)
class Plateau:
    """Where a run's loss left the plateau it started on (`find_plateau`)."""

    means: list[tuple[int, float]]
    """(last step, mean loss) of each window (`window_means`)."""
    level: float | None
    """The plateau's loss (`plateau_level`); None when the run logged no step in its first window."""
    left_at: int | None
    """The last step of the first window after the first whose mean is below ``below`` times ``level``; None
    when no window is."""


def find_plateau(losses: Sequence[tuple[int, float]], window: int, below: float = PLATEAU_BELOW) -> Plateau:
    """The window means of ``losses`` (step, loss), the plateau's level and the step the loss left it."""
    means = window_means(losses, window)
    level = plateau_level(losses, window)
    left = None if level is None else next((step for step, mean in means[1:] if mean < below * level), None)
    return Plateau(means, level, left)
