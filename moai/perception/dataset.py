"""Pre-computing perception for a whole data set (``moai perceive --data``), data-parallel and resumable.

Images come from a LLaVA-style JSON list (or JSON lines) of records with an ``"image"`` field (a path or a
list of paths, relative to ``image_root``, default: the file's directory; records without an image are
text-only and skipped) or from a directory (every file with an image extension, recursively). Each image
is listed once (first occurrence), in a fixed order; rank ``r`` of ``w`` takes items ``r, r + w, ...``.

Under ``accelerate launch`` (or ``torchrun``) the rank and world size come from accelerate's
``PartialState``; otherwise from the ``RANK`` / ``WORLD_SIZE`` environment variables (default: one
process). Each rank writes its own entries and its own index file (``cache.py``), so ranks never write
the same file, except for identical images, whose entries are identical and replaced atomically.

Bad records of the data file (a malformed JSON line, a record that is not an object, an image entry that is
not a path) are reported by file and line (``skipped FILE:LINE: reason``; ``FILE: record N: reason`` in a
JSON list), counted in the summary and skipped, as ``moai train`` does; a data file that cannot be read
at all (missing, not UTF-8, empty, a JSON list that does not parse) is an error naming it. Bad images are
reported (``skipped FILE: reason``), logged in the rank's index and counted in the summary. The run goes
on unless ``strict`` is set. A batch whose backend call fails is retried image by image, so one image
that crashes a backend is isolated the same way.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from ..io import ImageLoadError, parse_json, read_text
from .cache import PerceptionCache, config_versions, content_hash
from .config import PerceptionConfig
from .image import load_for
from .run import Perceiver, check_config

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


class BadImageError(ValueError):
    """Raised in ``strict`` mode for the first image that cannot be perceived."""


class BadRecordError(ValueError):
    """Raised in ``strict`` mode for the first bad record of the data file."""


@dataclass(frozen=True)
class RecordProblem:
    """A record of the data file that was skipped: where it is and why."""

    where: str
    """``FILE:LINE`` (JSON lines) or ``FILE: record N`` (a JSON list, N from 1)."""
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass
class DataListing:
    """The images of a data set, in order, each once, and the records that were skipped."""

    images: list[Path] = field(default_factory=list)
    problems: list[RecordProblem] = field(default_factory=list)


def _records(data: Path) -> list[tuple[str, Any]]:
    """``(where, record)`` pairs of a LLaVA JSON list or JSON-lines file; a bad JSON line gives a
    ``RecordProblem`` in place of its record."""
    text = read_text(data, "LLaVA JSON or JSON lines")
    if data.suffix.lower() == ".jsonl":
        out: list[tuple[str, Any]] = []
        for lineno, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            where = f"{data}:{lineno}"
            try:
                out.append((where, json.loads(line)))
            except RecursionError:
                out.append((where, RecordProblem(where, "malformed JSON line: nested too deeply")))
            except json.JSONDecodeError as err:
                out.append(
                    (where, RecordProblem(where, f"malformed JSON line: {err.msg} (column {err.colno})"))
                )
        return out
    records = parse_json(text, data, "a list of LLaVA records; a JSON-lines file needs the .jsonl extension")
    if not isinstance(records, list):
        raise ValueError(
            f"{data}: expected a JSON list of LLaVA records, got a JSON {type(records).__name__}"
        )
    return [(f"{data}: record {number}", record) for number, record in enumerate(records, start=1)]


def _record_images(record: Any) -> list[str]:
    """The image paths of one LLaVA record (none for a text-only record); ``ValueError`` names the problem."""
    if not isinstance(record, dict):
        raise ValueError(f"not a JSON object: {type(record).__name__}")
    value = record.get("image")
    if value is None:
        return []
    names = value if isinstance(value, list) else [value]
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"'image' must be a path or a list of paths, got {name!r}")
    return names


def scan_data(data: str | Path, image_root: str | Path | None = None) -> DataListing:
    """The images of a LLaVA JSON / JSON-lines file or of a directory, and the bad records (module docstring)."""
    data = Path(data)
    if not data.exists():
        raise FileNotFoundError(f"{data}: data set not found")
    if image_root is not None and not Path(image_root).is_dir():
        raise FileNotFoundError(f"{image_root}: --image-root is not a directory")
    if data.is_dir():
        files = (p for p in data.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        return DataListing(images=sorted(files))
    root = Path(image_root) if image_root is not None else data.parent
    listing = DataListing()
    seen: dict[Path, None] = {}
    for where, record in _records(data):
        if isinstance(record, RecordProblem):
            listing.problems.append(record)
            continue
        try:
            names = _record_images(record)
        except ValueError as err:
            listing.problems.append(RecordProblem(where, str(err)))
            continue
        for name in names:
            seen.setdefault(root / name, None)
    listing.images = list(seen)
    return listing


def list_images(data: str | Path, image_root: str | Path | None = None) -> list[Path]:
    """The images of a LLaVA JSON / JSON-lines file or of a directory (bad records skipped; `scan_data`)."""
    return scan_data(data, image_root).images


def distributed_context() -> tuple[int, int, str | None]:
    """``(rank, world_size, device or None)`` from accelerate's ``PartialState`` or ``RANK``/``WORLD_SIZE``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and "MASTER_ADDR" in os.environ:
        try:
            import torch
            from accelerate import PartialState
        except ImportError:
            return rank, world, None
        # On a CPU-only machine PartialState() stays single-process unless asked for CPU (gloo) explicitly.
        state = PartialState(cpu=not torch.cuda.is_available())
        if state.num_processes == world:
            return state.process_index, state.num_processes, str(state.device)
    return rank, world, None


@dataclass
class RunSummary:
    """What one rank did."""

    rank: int
    world: int
    total: int
    new: int = 0
    cached: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    bad_records: int = 0
    """Records of the data file that were skipped (counted by rank 0 only)."""

    def line(self) -> str:
        where = f" (rank {self.rank} of {self.world})" if self.world > 1 else ""
        skipped = f", {self.bad_records} bad records skipped" if self.bad_records else ""
        return (
            f"perceived {self.total} images{where}: {self.new} new, {self.cached} already cached, "
            f"{len(self.failed)} failed{skipped}"
        )


def precompute(
    data: str | Path,
    out: str | Path,
    config: PerceptionConfig,
    *,
    image_root: str | Path | None = None,
    strict: bool = False,
    rank: int | None = None,
    world: int | None = None,
    progress: bool = True,
    log: TextIO | None = None,
    perceiver_factory: Callable[[PerceptionConfig], Perceiver] = Perceiver,
) -> RunSummary:
    """Perceive every image of ``data`` not yet in the cache ``out`` (this rank's shard only).

    Models are loaded only when some image of the shard still needs them, so a finished run reruns in
    seconds. Raises ``CacheMismatchError`` when ``out`` holds another config, ``BadRecordError`` /
    ``BadImageError`` for the first bad record / image when ``strict``.
    """
    log = log or sys.stderr
    env_rank, env_world, device = distributed_context()
    rank = env_rank if rank is None else rank
    world = env_world if world is None else world
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside world size {world}")
    if device is not None and config.device == "auto":
        config = replace(config, device=device)
    check_config(config)  # a missing extra stops here, before the cache directory is created
    listing = scan_data(data, image_root)  # so does a bad data file
    if strict and listing.problems:
        raise BadRecordError(f"{listing.problems[0]} (--strict)")
    if rank == 0:
        for problem in listing.problems:
            print(f"skipped {problem}", file=log, flush=True)
    images = listing.images[rank::world]
    cache = PerceptionCache(out, config=config, versions=config_versions(config), create=True)
    tag = f"rank{rank:05d}"
    cache.remove_stale_temporaries(tag)
    summary = RunSummary(
        rank=rank, world=world, total=len(images), bad_records=len(listing.problems) if rank == 0 else 0
    )
    perceiver: Perceiver | None = None
    pending: list[tuple[Path, str, Any]] = []

    def fail(source: Path, reason: str, key: str | None = None) -> None:
        summary.failed.append((str(source), reason))
        print(f"skipped {source}: {reason}", file=log, flush=True)
        cache.append_index(
            rank, world, {"source": str(source), "key": key, "status": "error", "error": reason}
        )
        if strict:
            raise BadImageError(f"{source}: {reason} (--strict)")

    def run_batch(batch: list[tuple[Path, str, Any]]) -> None:
        nonlocal perceiver
        if perceiver is None:
            perceiver = perceiver_factory(config)
        try:
            results = perceiver.perceive_loaded([img for _, _, img in batch])
        except Exception as err:  # isolate the image that breaks a backend
            if len(batch) > 1:
                for item in batch:
                    run_batch([item])
                return
            source, key, _ = batch[0]
            fail(source, f"perception failed ({_one_line(err)})", key)
            bar.update(1)
            return
        for (source, key, _), perception in zip(batch, results):
            cache.put(key, perception, source=str(source), tag=tag)
            cache.append_index(rank, world, {"source": str(source), "key": key, "status": "ok"})
            summary.new += 1
            bar.update(1)

    def flush() -> None:
        if pending:
            batch = list(pending)
            pending.clear()
            run_batch(batch)

    bar = _progress(len(images), enabled=progress and rank == 0)
    try:
        for source in images:
            try:
                key = content_hash(source)
            except OSError as err:
                fail(source, f"cannot read file ({err.strerror or err})")
                bar.update(1)
                continue
            if cache.has(key) or any(key == k for _, k, _ in pending):
                summary.cached += 1
                bar.update(1)
                continue
            try:
                image = load_for(config, source)
            except ImageLoadError as err:
                fail(source, err.reason, key)
                bar.update(1)
                continue
            pending.append((source, key, image))
            if len(pending) >= config.batch_size:
                flush()
        flush()
    finally:
        bar.close()
    return summary


def _one_line(err: BaseException | None) -> str:
    text = str(err).strip().splitlines()[0] if err is not None and str(err).strip() else type(err).__name__
    return f"{type(err).__name__}: {text}"


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, desc="perceive", unit="img", file=sys.stderr, dynamic_ncols=True)
