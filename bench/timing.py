"""The timing every bench script shares: interleaved rounds in one process, medians, ratios, machine record.

A ratio is only ever taken between calls timed in the same process, round by round in alternating order
(A B, B A, A B, ...), so that drift in a shared machine's load falls on both sides (bench/README.md).
Standard library only at import: a script may still set OpenMP's environment before torch loads.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

K = TypeVar("K")


def clock(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[float, Any]:
    """Wall seconds of one call, and what it returned."""
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


def rounds(most: int, least: int = 1, budget_s: float = float("inf")) -> Iterator[int]:
    """Round numbers 0, 1, ...: at most ``most``, at least ``least``, and none starts after ``budget_s`` s."""
    start, i = time.perf_counter(), 0
    while i < most and (i < least or time.perf_counter() - start < budget_s):
        yield i
        i += 1


def in_turn(names: Sequence[K], i: int) -> list[K]:
    """Round ``i``'s order: as given in even rounds, reversed in odd ones."""
    return list(names) if i % 2 == 0 else list(names)[::-1]


def interleave(
    calls: dict[K, Callable[[], Any]],
    most: int,
    least: int = 1,
    budget_s: float = float("inf"),
    warmup: int = 1,
    self_timed: bool = False,
    progress: Callable[[int, float], None] | None = None,
) -> dict[K, list[float]]:
    """Seconds per call of each of ``calls``, one call each per round (see `rounds`, `in_turn`), after
    ``warmup`` untimed calls each. ``self_timed``: a call returns the seconds it measured itself (to leave its
    own set-up out). ``progress(rounds_done, seconds)`` is called after every round."""
    for _ in range(warmup):
        for call in calls.values():
            call()
    times: dict[K, list[float]] = {name: [] for name in calls}
    start = time.perf_counter()
    for i in rounds(most, least, budget_s):
        for name in in_turn(list(calls), i):
            times[name].append(calls[name]() if self_timed else clock(calls[name])[0])
        if progress is not None:
            progress(i + 1, time.perf_counter() - start)
    return times


def median_ms(times: Sequence[float]) -> float:
    return 1e3 * statistics.median(times)


def ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """median(a) / median(b)."""
    return statistics.median(a) / statistics.median(b)


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """Median of the ratios of calls timed side by side: a cross-check of `ratio` robust to drift."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def summary_ms(times: Sequence[float]) -> dict[str, Any]:
    return {
        "median_ms": round(median_ms(times), 2),
        "min_ms": round(1e3 * min(times), 2),
        "reps": len(times),
    }


def machine(**extra: Any) -> dict[str, Any]:
    """The run's software and machine, plus ``extra`` fields."""
    import torch  # here, not at the top: see the module docstring
    import transformers

    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.is_file() else []
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), platform.processor()
    )
    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        **extra,
    }


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def write(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")
