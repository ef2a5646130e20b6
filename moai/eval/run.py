# Copyright 2026 The moai authors. SPDX-License-Identifier: MIT
"""``moai eval run``: answer a benchmark's questions with the inference engine, then score them
(docs/eval.md, Running a benchmark).

The questions are the benchmark module's (``load``), the prompts its ``prompt(example)``; answers come from
`moai.engine.Engine.answer` (batched, greedy). Every batch is appended to ``DIR/predictions.jsonl`` in
LLaVA's answer format (``question_id``, ``prompt``, ``text``, ``model_id``), so an interrupted run continues
where it stopped: a rerun first merges the answer files it finds into ``predictions.jsonl`` (a line cut
short by a killed run is reported and dropped), then answers only the questions without an answer.

Data-parallel (``torchrun`` / ``accelerate launch`` set ``WORLD_SIZE`` and ``RANK``): the questions left
are dealt out round-robin, rank ``R`` appends to ``DIR/predictions.rank{R}.jsonl``; after a barrier rank 0
merges the shards into ``predictions.jsonl`` in the benchmark's question order (the file a one-process run
writes), removes them, and scores. ``DIR/scores.json`` holds the scores (the keys `score_file` returns, the
same ones ``moai eval score --json`` prints) and ``run``, the run's settings and package versions.
"""

from __future__ import annotations

import json
import os
import platform
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, TextIO

from ..io import ImageLoadError, Problem, load_image
from ..worlds.score import json_lines, string_field
from . import get_benchmark
from .common import Example, Examples, read_predictions, score_predictions
from .report import SCORES_FILE, headline

if TYPE_CHECKING:
    from ..engine import Engine

PREDICTIONS = "predictions.jsonl"
"""The answer file of a run directory (all ranks' answers once merged)."""
SHARD = "predictions.rank{rank}.jsonl"
"""The answer file rank ``rank`` of a data-parallel run appends to until rank 0 merges it."""
SHARD_PATTERN = re.compile(r"predictions\.rank(\d+)\.jsonl")
SCORES = SCORES_FILE
"""Scores and run metadata of a run directory."""
PRECISIONS = ("float32", "bfloat16", "float16")
"""``--precision``: the dtype the model runs in."""
BUNDLED_MODEL = "checkpoints/moai-tiny-shapes"
"""How ``run.model`` names the bundled model (``--model`` not given)."""
BARRIER_TIMEOUT = timedelta(hours=2)
"""How long a rank waits at a barrier for the others (the slowest rank's share of the generation)."""
TEXTVQA = "textvqa"
"""The benchmark whose prompts may carry reference OCR tokens (LLaVA-1.5's ``..._ocr`` question file)."""
OCR_MARKER = "Reference OCR token"


@dataclass(frozen=True)
class RunSettings:
    """The options of ``moai eval run`` (docs/eval.md, Running a benchmark)."""

    benchmark: str
    data: Path
    out: Path
    model: Path | None = None
    """A saved MoAI directory or an official checkpoint (None: the bundled model)."""
    batch_size: int = 16
    limit: int | None = None
    """Answer and score only the first ``limit`` questions of the benchmark file (None: all)."""
    strict: bool = False
    device: str = "auto"
    precision: str = "float32"
    max_new_tokens: int = 16
    progress: bool = True


# -- answer files -----------------------------------------------------------------------------------------------
def shard_path(out: Path, rank: int) -> Path:
    return out / SHARD.format(rank=rank)


def answer_files(path: Path) -> list[Path]:
    """The answer files behind ``--predictions``: a run directory or its ``predictions.jsonl`` gives that
    file (if present) and the directory's rank shards in rank order; any other file is read alone.
    ``FileNotFoundError`` if there is none."""
    path = Path(path)
    if path.is_dir() or path.name == PREDICTIONS:
        folder = path if path.is_dir() else path.parent
        shards = [
            (int(m.group(1)), p)
            for p in folder.glob("predictions.rank*.jsonl")
            if (m := SHARD_PATTERN.fullmatch(p.name))
        ]
        files = [p for p in (folder / PREDICTIONS,) if p.is_file()] + [p for _, p in sorted(shards)]
        if not files:
            raise FileNotFoundError(
                f"{path}: no {PREDICTIONS} and no rank shards (expected a moai eval run output)"
            )
        return files
    if not path.is_file():
        raise FileNotFoundError(f"{path}: predictions file not found")
    return [path]


def read_answer_rows(files: Iterable[Path]) -> tuple[dict[str, dict[str, Any]], list[Problem]]:
    """``question_id -> the answer's JSON object`` over several answer files, the first answer of an id kept.

    Each file is checked by `moai.eval.common.read_predictions` (its problems are returned); an id answered
    again in a later file with the same text (a shard left beside the merged file) is no problem, with
    another text it is one.
    """
    rows: dict[str, dict[str, Any]] = {}
    problems: list[Problem] = []
    for file in files:
        texts, found = read_predictions(file)
        problems += found
        for number, row in json_lines(file):
            qid = string_field(row, "question_id")
            if qid is None or qid not in texts or row.get("text") != texts[qid]:
                continue  # a bad line (reported by read_predictions) or a repeat within the file
            text = texts.pop(qid)
            if qid not in rows:
                rows[qid] = row
            elif rows[qid]["text"] != text:
                reason = f"question {qid}: answered differently in an earlier file (the first answer is kept)"
                problems.append(Problem(str(file), number, reason))
    return rows, problems


def load_predictions(
    path: Path, examples: list[Example] | None = None
) -> tuple[dict[str, str], list[Problem]]:
    """``question_id -> text`` of ``--predictions`` (a file, or a run directory with its shards); a lone file
    is read with the benchmark's ``examples``, so that LLaVA's answer files need no conversion
    (`moai.eval.common.read_predictions`)."""
    files = answer_files(path)
    if len(files) == 1:
        return read_predictions(files[0], examples)
    rows, problems = read_answer_rows(files)
    return {qid: row["text"] for qid, row in rows.items()}, problems


def write_merged(out: Path, rows: dict[str, dict[str, Any]], order: list[str]) -> Path:
    """``out/predictions.jsonl`` rewritten with ``rows`` in question ``order`` (ids of no question last)
    and the rank shards removed; written to a temporary file first, so a crash leaves the old files."""
    position = {qid: i for i, qid in enumerate(order)}
    ranked = sorted(rows, key=lambda qid: position.get(qid, len(order)))
    target, temporary = out / PREDICTIONS, out / f"{PREDICTIONS}.tmp"
    with temporary.open("w", encoding="utf-8") as sink:
        sink.writelines(json.dumps(rows[qid], ensure_ascii=False) + "\n" for qid in ranked)
    temporary.replace(target)
    for shard in answer_files(out):
        if shard != target:
            shard.unlink()
    return target


# -- scoring ----------------------------------------------------------------------------------------------------
def load_examples(benchmark: ModuleType, data: Path) -> Examples:
    """The benchmark's questions; ``FileNotFoundError`` / ``ValueError`` (one line) if there are none."""
    if not Path(data).exists():
        raise FileNotFoundError(f"{data}: benchmark data not found (docs/eval.md says what goes where)")
    examples = benchmark.load(Path(data))
    if not examples:
        first = f"; first problem: {examples.problems[0]}" if examples.problems else ""
        raise ValueError(f"{data}: no usable {benchmark.NAME} question{first}")
    return examples


def score_file(
    benchmark: ModuleType,
    examples: Examples,
    predictions: Path,
    strict: bool = False,
    only: set[str] | None = None,
) -> dict[str, Any]:
    """The scores of an answer file (or run directory): ``benchmark``, the benchmark's metrics, ``scored``,
    ``excluded`` and ``problems`` (`score_predictions`). ``only``: score these question ids and ignore
    answers to the benchmark's other questions (``--limit``)."""
    texts, problems = load_predictions(predictions, examples)
    if only is not None:
        known = {e.question_id for e in examples}
        texts = {qid: text for qid, text in texts.items() if qid in only or qid not in known}
        examples = Examples([e for e in examples if e.question_id in only], examples.problems)
    scores = score_predictions(benchmark, texts, examples, problems, str(predictions), strict)
    return {"benchmark": benchmark.NAME, **scores}


# -- the process group ------------------------------------------------------------------------------------------
class ProcessGroup:
    """The ranks of a data-parallel run (``WORLD_SIZE`` / ``RANK`` set by ``torchrun`` or ``accelerate
    launch``; a gloo group, enough for barriers), or the one process. A context manager: leaving it destroys
    the group, since a rank that exits with a live gloo group aborts ("terminate called without an active
    exception")."""

    def __init__(self) -> None:
        self.rank, self.world, self.local_rank = 0, 1, 0

    def __enter__(self) -> ProcessGroup:
        world = _env_int("WORLD_SIZE", 1)
        if world > 1:
            import torch.distributed as dist  # heavy: torch

            dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
            self.local_rank = _env_int("LOCAL_RANK", self.rank)
        return self

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist  # heavy: torch

            dist.barrier()

    def __exit__(self, *exc: object) -> None:
        if self.world > 1:
            import torch.distributed as dist  # heavy: torch

            if dist.is_initialized():
                dist.destroy_process_group()


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"environment variable {name}={text!r}: not an integer") from None


# -- the run ----------------------------------------------------------------------------------------------------
def run_benchmark(settings: RunSettings, err: TextIO | None = None) -> dict[str, Any] | None:
    """Answer the questions ``settings`` selects that ``settings.out`` has no answer for, then (rank 0)
    merge the answer files, score and write ``scores.json``. Returns the scores on rank 0, None elsewhere.

    Bad records of the benchmark file and unreadable images are reported on ``err`` (one line each) and
    skipped; ``settings.strict`` raises ``ValueError`` naming the first instead.
    """
    err = err or sys.stderr
    benchmark = get_benchmark(settings.benchmark)
    out = Path(settings.out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out}: --out exists and is not a directory")

    with ProcessGroup() as group:
        say = (
            (lambda line: print(f"moai eval run: {line}", file=err)) if group.rank == 0 else (lambda _: None)
        )
        examples = load_examples(benchmark, settings.data) if group.rank == 0 else None
        group.barrier()  # rank 0 has read the files first (MMBench unpacks its images on first reading)
        examples = examples if examples is not None else load_examples(benchmark, settings.data)
        chosen = list(examples)[: settings.limit] if settings.limit else list(examples)
        blind = [e for e in chosen if e.image is None]
        if settings.strict and (examples.problems or blind):
            first = (
                examples.problems[0] if examples.problems else f"question {blind[0].question_id}: no image"
            )
            raise ValueError(
                f"{first} (--strict; {len(examples.problems) + len(blind)} question(s) unusable)"
            )
        for problem in examples.problems:
            say(f"skipped {problem}")
        if blind:
            say(
                f"skipped {len(blind)} question(s) without an image: the engine answers questions about an "
                "image (they are excluded from the scores, as MoAI's evaluation leaves them out)"
            )
        out.mkdir(parents=True, exist_ok=True)
        order = [e.question_id for e in examples]
        if group.rank == 0:
            for problem in consolidate(out, order):
                say(f"ignored {problem}")
        model = _resolve(settings.model, group, say)
        device = pick_device(settings.device, group)
        group.barrier()  # rank 0 has merged the answers of earlier runs
        rows, _ = read_answer_rows(_existing_answers(out))
        group.barrier()  # every rank has read them before any rank writes
        name = model_id(settings)
        others = sorted({str(r["model_id"]) for r in rows.values() if r.get("model_id", name) != name})
        if others:
            raise ValueError(
                f"{out}: holds answers of model {', '.join(others)}, not {name} "
                "(give another --out, or the model that wrote them)"
            )
        todo = [e for e in chosen if e.question_id not in rows and e.image is not None]
        mine = todo[group.rank :: group.world]
        before = sum(e.question_id in rows for e in chosen)
        if before:
            say(f"{before} of {len(chosen)} question(s) already answered in {out}, skipped")
        sink = out / PREDICTIONS if group.world == 1 else shard_path(out, group.rank)
        if mine:
            engine = _load_engine(model, device, settings.precision)
            known = {qid: row["text"] for qid, row in rows.items()}
            with _progress(len(mine), settings.progress and group.rank == 0) as bar:
                tally = _RunningScore(benchmark, chosen, known, bar)
                answer_questions(engine, benchmark, mine, sink, settings, tally.update, err)
        group.barrier()  # every rank has written its answers
        scores = None
        if group.rank == 0:
            consolidate(out, order)
            merged, _ = read_answer_rows(answer_files(out))
            only = {e.question_id for e in chosen} if settings.limit else None
            scores = score_file(benchmark, examples, out / PREDICTIONS, settings.strict, only)
            scores["run"] = run_metadata(settings, benchmark, model, device, chosen, group.world)
            (out / SCORES).write_text(
                json.dumps(scores, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
            )
            answered = sum(1 for e in todo if e.question_id in merged)
            say(
                f"answered {answered} new question(s) with {group.world} process(es) "
                f"({before} already answered, {len(chosen) - before - answered} skipped); "
                f"wrote {out / PREDICTIONS} and {out / SCORES}"
            )
        group.barrier()  # rank 0 (which hosts the group's store) leaves last
    return scores


def consolidate(out: Path, order: list[str]) -> list[Problem]:
    """Merge the answer files of run directory ``out`` into its ``predictions.jsonl`` (`write_merged`),
    leaving out bad lines (a line cut short by a killed run); returns them."""
    files = _existing_answers(out)
    if not files:
        return []
    rows, problems = read_answer_rows(files)
    write_merged(out, rows, order)
    return problems


def model_id(settings: RunSettings) -> str:
    """The ``model_id`` of the answers: the model directory's name."""
    return Path(settings.model or BUNDLED_MODEL).name


def _existing_answers(out: Path) -> list[Path]:
    try:
        return answer_files(out)
    except FileNotFoundError:
        return []  # a new run


def _resolve(model: Path | None, group: ProcessGroup, say: Callable[[str], None]) -> Path:
    """The saved MoAI directory to load; rank 0 converts an official checkpoint first, the others reuse it."""
    from ..compat.resolve import resolve_model  # heavy: the converter (torch)
    from ..engine import DEFAULT_MODEL  # heavy: torch, transformers

    if model is None:
        say(f"model: the bundled {BUNDLED_MODEL}")
        return DEFAULT_MODEL
    resolved = resolve_model(model, log=say) if group.rank == 0 else None
    group.barrier()
    return resolved if resolved is not None else resolve_model(model, log=say)


def pick_device(device: str, group: ProcessGroup) -> str:
    """``--device``: ``auto`` is the rank's CUDA device when there is one, else cpu; a bare ``cuda`` in a
    data-parallel run is the rank's own device."""
    import torch  # heavy: torch

    if device == "auto":
        return f"cuda:{group.local_rank}" if torch.cuda.is_available() else "cpu"
    return f"cuda:{group.local_rank}" if device == "cuda" and group.world > 1 else device


def _load_engine(model: Path, device: str, precision: str) -> Engine:
    # heavy: torch and the engine (transformers)
    import torch

    from ..engine import Engine

    engine = Engine.load(model, device=device)
    engine.model.to(getattr(torch, precision))
    return engine


def answer_questions(
    engine: Engine,
    benchmark: ModuleType,
    examples: list[Example],
    sink: Path,
    settings: RunSettings,
    on_batch: Callable[[int, dict[str, str]], None],
    err: TextIO | None = None,
) -> list[str]:
    """Answer ``examples`` in batches of ``settings.batch_size`` (greedy), appending each batch's records
    to ``sink``. A question whose image is missing or unreadable is reported and skipped (``strict``:
    ``ValueError``). Returns the skipped ones' reasons."""
    err = err or sys.stderr
    skipped: list[str] = []
    with sink.open("a", encoding="utf-8") as file:
        for start in range(0, len(examples), settings.batch_size):
            chunk = examples[start : start + settings.batch_size]
            batch, images = [], []
            for example in chunk:
                try:
                    images.append(load_image(example.image))
                    batch.append(example)
                except ImageLoadError as error:
                    reason = f"question {example.question_id}: {error}"
                    if settings.strict:
                        raise ValueError(f"{reason} (--strict)") from None
                    print(f"moai eval run: skipped {reason}", file=err)
                    skipped.append(reason)
            new: dict[str, str] = {}
            if batch:
                prompts = [benchmark.prompt(e) for e in batch]
                answers = engine.answer(images, prompts, max_new_tokens=settings.max_new_tokens)
                for example, prompt, answer in zip(batch, prompts, answers):
                    record = {"question_id": example.question_id, "prompt": prompt, "text": answer.text}
                    file.write(
                        json.dumps({**record, "model_id": model_id(settings)}, ensure_ascii=False) + "\n"
                    )
                    new[example.question_id] = answer.text
                file.flush()
            on_batch(len(chunk), new)
    return skipped


class _RunningScore:
    """The progress bar's postfix: the benchmark's headline metric over the questions answered so far."""

    def __init__(
        self, benchmark: ModuleType, examples: list[Example], known: dict[str, str], bar: Any
    ) -> None:
        self.benchmark, self.bar = benchmark, bar
        self.examples = {e.question_id: e for e in examples}
        self.predictions = {qid: text for qid, text in known.items() if qid in self.examples}

    def update(self, done: int, new: dict[str, str]) -> None:
        self.bar.update(done)
        if self.bar.disable or not new:
            return
        self.predictions.update(new)
        answered = [self.examples[qid] for qid in self.predictions]
        best = headline(self.benchmark.score(self.predictions, answered))
        if best is not None:
            self.bar.set_postfix({best[0]: f"{best[1]:.2f}"})


def _progress(total: int, enabled: bool) -> Any:
    from tqdm import tqdm  # heavy: only when answering

    return tqdm(total=total, desc="eval", unit="q", disable=not enabled, file=sys.stderr, dynamic_ncols=True)


# -- metadata ---------------------------------------------------------------------------------------------------
def run_metadata(
    settings: RunSettings,
    benchmark: ModuleType,
    model: Path,
    device: str,
    chosen: list[Example],
    processes: int,
) -> dict[str, Any]:
    """What ``scores.json`` records about the run (docs/eval.md, scores.json)."""
    from ..perception.settings import AuxSettings  # heavy: the perception package's imports

    aux = AuxSettings.load(model)
    meta: dict[str, Any] = {
        "data": str(settings.data),
        "model": str(settings.model) if settings.model else BUNDLED_MODEL,
        "model_id": model_id(settings),
        "precision": settings.precision,
        "device": device,
        "decoding": "greedy",
        "max_new_tokens": settings.max_new_tokens,
        "batch_size": settings.batch_size,
        "processes": processes,
        "perception_preset": aux.perception_preset,
        "verbalizer": aux.verbalizer,
        "map_style": aux.map_style,
        "limit": settings.limit,
        "questions": len(chosen),
        "versions": package_versions(),
    }
    if benchmark.NAME == TEXTVQA:
        meta["ocr_tokens"] = ocr_token_policy([benchmark.prompt(e) for e in chosen])
    return meta


def ocr_token_policy(prompts: list[str]) -> str:
    """Whether TextVQA prompts carry LLaVA-1.5's reference OCR tokens: ``in every prompt``, ``none`` or
    ``in N of M prompts`` (a policy that changes the score; docs/eval.md, TextVQA)."""
    given = sum(OCR_MARKER in p for p in prompts)
    if given == len(prompts):
        return "in every prompt"
    return "none" if given == 0 else f"in {given} of {len(prompts)} prompts"


def package_versions() -> dict[str, str]:
    """Python and the versions of the packages an answer depends on."""
    versions = {"python": platform.python_version()}
    for name, dist in (("moai", "moai-vlm"), ("torch", "torch"), ("transformers", "transformers")):
        try:
            versions[name] = version(dist)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions
