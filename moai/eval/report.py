# Copyright 2026 The moai authors. SPDX-License-Identifier: MIT
"""Scores as text and pictures (docs/eval.md, Comparing runs): the table ``moai eval run`` and ``moai eval
score`` print, and the Markdown table and bar chart of ``moai eval report`` (several runs' ``scores.json``
side by side: one column per run, one row per metric).

A metric is any number in a scores object; nested ones are named by their path (``categories/colour``).
The counts ``scored`` and ``excluded`` come last; ``benchmark``, ``problems`` and the run metadata ``run``
are not metrics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..io import read_json

COUNTS = ("scored", "excluded", "ignored")
"""The counts `score_predictions` adds to every benchmark's metrics."""
NOT_METRICS = ("benchmark", "problems", "notes", "run")
SCORES_FILE = "scores.json"
"""What ``moai eval run`` writes into its directory (`moai.eval.run.SCORES`)."""
MISSING = "—"
"""A cell of a metric the run does not have."""

# bar chart geometry, in inches
BAR_WIDTH = 0.35
CHART_MIN_WIDTH = 6.0
CHART_HEIGHT = 4.5
CHART_DPI = 100


def metric_rows(scores: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Every number of ``scores`` by its path, in the scores' own order, the counts last."""
    rows: dict[str, float] = {}
    for key, value in scores.items():
        if not prefix and key in (*NOT_METRICS, *COUNTS):
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows.update(metric_rows(value, f"{name}/"))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            rows[name] = value
    if not prefix:
        rows.update({key: scores[key] for key in COUNTS if isinstance(scores.get(key), int | float)})
    return rows


def headline(scores: dict[str, Any]) -> tuple[str, float] | None:
    """The benchmark's first top-level number (its main metric, e.g. ``accuracy``), or None."""
    for key, value in scores.items():
        if (
            key not in (*NOT_METRICS, *COUNTS)
            and isinstance(value, int | float)
            and not isinstance(value, bool)
        ):
            return key, value
    return None


def format_value(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:.2f}"


def format_scores(scores: dict[str, Any]) -> str:
    """A two-column text table (metric, value) of one scores object, headed by the benchmark."""
    rows = metric_rows(scores)
    width = max([len("metric"), *map(len, rows)])
    lines = [f"{scores.get('benchmark', '')}".strip(), f"{'metric':<{width}}  value"]
    lines += [f"{name:<{width}}  {format_value(value)}" for name, value in rows.items()]
    return "\n".join(line for line in lines if line)


def read_run(directory: Path) -> dict[str, Any]:
    """``DIR/scores.json`` of a ``moai eval run`` directory; ``FileNotFoundError`` / ``ValueError`` (one
    line) when it is missing or not a scores object."""
    path = Path(directory) / SCORES_FILE if Path(directory).is_dir() else Path(directory)
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: no {SCORES_FILE} (expected a moai eval run directory)")
    scores = read_json(path, "a moai eval scores.json")
    if not isinstance(scores, dict) or not isinstance(scores.get("benchmark"), str):
        raise ValueError(f"{path}: not a moai eval scores object (no 'benchmark')")
    return scores


def column_title(name: str, scores: dict[str, Any]) -> str:
    """``NAME (benchmark, model)``, the model from the run metadata (absent for a rescored file)."""
    model = scores.get("run", {}).get("model_id") if isinstance(scores.get("run"), dict) else None
    return f"{name} ({', '.join(x for x in (scores['benchmark'], model) if x)})"


def markdown_table(runs: dict[str, dict[str, Any]]) -> str:
    """The runs' metrics side by side: one column per run (titled by `column_title`), one row per metric
    (every metric of any run, in first-seen order; ``—`` where a run has none)."""
    tables = {name: metric_rows(scores) for name, scores in runs.items()}
    names = list(dict.fromkeys(metric for table in tables.values() for metric in table))
    names = [n for n in names if n not in COUNTS] + [n for n in COUNTS if n in names]

    def row(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    lines = [
        row(["metric", *(column_title(name, scores) for name, scores in runs.items())]),
        row(["---", *("---:" for _ in runs)]),
    ]
    for metric in names:
        cells = [format_value(t[metric]) if metric in t else MISSING for t in tables.values()]
        lines.append(row([metric, *cells]))
    return "\n".join(lines) + "\n"


def bar_chart(runs: dict[str, dict[str, Any]], path: Path) -> Path:
    """A grouped bar chart of the runs' metrics (the counts left out), one colour per run, as a PNG."""
    # heavy: matplotlib, only for --chart; the Agg canvas, no window and no global backend switch
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    tables = {name: metric_rows(scores) for name, scores in runs.items()}
    metrics = [m for m in dict.fromkeys(m for t in tables.values() for m in t) if m not in COUNTS]
    if not metrics:
        raise ValueError("eval report --chart: the runs have no metric to draw")
    width = max(CHART_MIN_WIDTH, (len(runs) + 1) * BAR_WIDTH * len(metrics))
    figure = Figure(figsize=(width, CHART_HEIGHT), dpi=CHART_DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    step = 1.0 / (len(runs) + 1)
    for i, (name, table) in enumerate(tables.items()):
        positions = [m + (i - (len(runs) - 1) / 2) * step for m in range(len(metrics))]
        values = [table.get(metric, 0.0) for metric in metrics]
        axes.bar(positions, values, width=step, label=column_title(name, runs[name]))
    axes.set_xticks(range(len(metrics)), metrics, rotation=30, ha="right")
    axes.set_ylabel("score")
    axes.set_title(", ".join(dict.fromkeys(scores["benchmark"] for scores in runs.values())))
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path)
    return Path(path)
