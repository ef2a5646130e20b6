# Copyright 2026 The moai authors. SPDX-License-Identifier: MIT
"""What every benchmark of `moai.eval` shares (docs/eval.md): the example record, the predictions reader and
the scoring wrapper that reports bad records instead of dropping them.

A benchmark is a module with three functions (docs/eval.md, Adding a benchmark)::

    load(path: Path) -> Examples             # the files as the benchmark distributes them
    prompt(example: Example) -> str          # the question with the official MoAI / LLaVA-1.5 suffix
    score(predictions: dict[str, str], examples: list[Example]) -> dict[str, Any]

``load`` reports a record with a missing or malformed field in ``Examples.problems`` (file, line or id,
reason) and keeps the valid ones; ``score`` sees only examples that have a prediction (`score_predictions`
removes and reports the rest).

Where LLaVA-1.5's answer files do not name a question by its id alone (MME and TextVQA repeat the image's
id for every question on it, MMBench's ``--all-rounds`` repeats the index for every rotation), ``load`` puts
the fields that do name it into ``Example.meta[LLAVA_KEY]``, and `read_predictions` given the examples reads
such files as they are (docs/eval.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..io import Problem
from ..worlds.score import json_lines, string_field


@dataclass(frozen=True)
class Example:
    """One question of a benchmark."""

    question_id: str
    """The id predictions refer to (the benchmark's own id; MMBench adds the rotation, ``"17-r2"``)."""
    image: Path | None
    """The image file (resolved against the data folder); None for a text-only question."""
    question: str
    """The question as the benchmark writes it (options and hints included where the benchmark puts them
    in the question; no answer-format suffix: `prompt` adds that)."""
    answer: Any
    """The ground truth (a string, a letter, or TextVQA's ten human answers)."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Benchmark-specific fields: category, subtask, options, the group of an MMBench rotation, ..."""


class Examples(list):
    """The valid examples of a benchmark file, with ``problems``: the records left out, and why; and
    ``left_out``: the ids of questions the benchmark's file holds but its scored part leaves out by design
    (SEED-Bench's video questions, ScienceQA's questions without an image), with the reason. Answers to
    them (LLaVA answers the whole file) are ignored with one line, not reported one by one as unknown."""

    def __init__(
        self,
        examples: list[Example] = (),
        problems: list[Problem] = (),
        left_out: dict[str, str] | None = None,
    ) -> None:
        super().__init__(examples)
        self.problems: list[Problem] = list(problems)
        self.left_out: dict[str, str] = dict(left_out or {})


class Benchmark(Protocol):
    """The module interface of one benchmark (see the module docstring)."""

    NAME: str

    def load(self, path: Path) -> Examples: ...

    def prompt(self, example: Example) -> str: ...

    def score(self, predictions: dict[str, str], examples: list[Example]) -> dict[str, Any]: ...


#: ``Example.meta`` key: the fields of a LLaVA-1.5 answer-file row that name the example when the row's
#: ``question_id`` is not the example's own, e.g. ``{"question_id": "OCR/0001.jpg", "prompt": "Is it ...?"}``:
#: ``question_id`` and the row's ``prompt`` (the question file's ``text``), or ``round_id`` for MMBench.
LLAVA_KEY = "llava_key"


def _text(row: dict[str, Any], name: str) -> str | None:
    """A field as a stripped string (an integer id or round written as digits), or None."""
    value = string_field(row, name)
    return value.strip() if value is not None else None


class LlavaKeys:
    """Which example a LLaVA-1.5 answer-file row answers when its ``question_id`` is not an example id but
    a LLaVA id: the example whose ``meta[LLAVA_KEY]`` has the row's values (`LLAVA_KEY`)."""

    def __init__(self, examples: list[Example]) -> None:
        self.known = {e.question_id for e in examples}
        #: LLaVA id -> the names of the fields its rows are matched on
        self.fields: dict[str, tuple[str, ...]] = {}
        #: the values of those fields -> the ids of the examples they name, in question-file order
        self.ids: dict[tuple[str | None, ...], list[str]] = {}
        for e in examples:
            key = e.meta.get(LLAVA_KEY)
            if not key or _text(key, "question_id") is None:
                continue
            names = self.fields.setdefault(_text(key, "question_id"), tuple(sorted(key)))
            self.ids.setdefault(tuple(_text(key, name) for name in names), []).append(e.question_id)

    def resolve(self, qid: str, row: dict[str, Any], answered: dict[str, str]) -> tuple[str, str | None]:
        """``(the id the row answers, None)``, or ``(qid, why the row answers nothing)``: the row's own id
        when it is an example's or no LLaVA id (`score_predictions` reports an unknown one), else the first
        example not yet ``answered`` of those its key names."""
        if qid in self.known or qid not in self.fields:
            return qid, None
        names = self.fields[qid]
        values = tuple(_text(row, name) for name in names)
        others = " and ".join(name for name in names if name != "question_id")
        if None in values:
            return qid, f"question {qid}: no {others} to tell which question of this id it answers"
        ids = self.ids.get(values)
        if ids is None:
            return qid, f"question {qid}: no question with this id has this {others}"
        free = [i for i in ids if i not in answered]
        if not free:
            return qid, f"question {qid}: answered again (same {others}; the first answer is kept)"
        return free[0], None


def read_predictions(
    path: Path, examples: list[Example] | None = None
) -> tuple[dict[str, str], list[Problem]]:
    """``question_id -> answer text`` of a predictions file (JSONL; LLaVA's answer format with ``question_id``
    and ``text`` is read as it is, other fields ignored). A malformed line, a missing id, an answer that is not
    a string and a repeated id (the first is kept) are problems naming the line and id.

    Given the benchmark's ``examples``, a row whose ``question_id`` is no example's id but a LLaVA id answers
    the example its LLaVA key names (`LlavaKeys`): MME's and TextVQA's image id with the row's ``prompt``,
    MMBench's index with its ``round_id``. Rows with the same key answer its questions in file order (LLaVA
    answers its question file in order); one more is a problem, and so is a key that names no question.
    Other ids are kept as they are (`score_predictions` reports them as unknown).
    """
    keys = LlavaKeys(examples) if examples is not None else None
    predictions: dict[str, str] = {}
    problems: list[Problem] = []
    for number, row in json_lines(path):
        if isinstance(row, Problem):
            problems.append(row)
            continue
        if not isinstance(row, dict):
            problems.append(Problem(str(path), number, "not a JSON object"))
            continue
        qid = string_field(row, "question_id")
        if qid is None:
            problems.append(Problem(str(path), number, "no question_id"))
            continue
        text = row.get("text")
        if not isinstance(text, str):
            problems.append(
                Problem(
                    str(path),
                    number,
                    f"question {qid}: the answer 'text' is {type(text).__name__}, not a string",
                )
            )
            continue
        target, reason = keys.resolve(qid, row, predictions) if keys is not None else (qid, None)
        if reason is None and target in predictions:
            reason = f"question {qid}: duplicated id (the first answer is kept)"
        if reason is not None:
            problems.append(Problem(str(path), number, reason))
            continue
        predictions[target] = text
    return predictions, problems


def score_predictions(
    benchmark: Benchmark,
    predictions: dict[str, str],
    examples: Examples,
    prediction_problems: list[Problem] = (),
    source: str = "predictions",
    strict: bool = False,
) -> dict[str, Any]:
    """``benchmark.score`` on the examples that have a prediction, plus what was left out.

    Unknown ids (a prediction for no question) and questions without a prediction are reported with their
    id; together with the problems of both files they go into ``problems`` (one line each) and their count
    into ``excluded``. ``strict`` raises ``ValueError`` naming the first problem instead.
    """
    known = {e.question_id for e in examples}
    left_out = getattr(examples, "left_out", {})
    ignored = [qid for qid in predictions if qid not in known and qid in left_out]
    notes = []
    if ignored:
        reasons = sorted({left_out[qid] for qid in ignored})
        notes.append(
            f"{source}: {len(ignored)} answer(s) to questions outside the scored part ignored ({'; '.join(reasons)})"
        )
        predictions = {qid: text for qid, text in predictions.items() if qid not in left_out}
    problems = [str(p) for p in (*examples.problems, *prediction_problems)]
    problems += [
        f"{source}: question {qid}: unknown id (not in the benchmark)"
        for qid in predictions
        if qid not in known
    ]
    answered = [e for e in examples if e.question_id in predictions]
    problems += [
        f"{source}: question {e.question_id}: no prediction"
        for e in examples
        if e.question_id not in predictions
    ]
    if strict and problems:
        raise ValueError(f"{problems[0]} (--strict; {len(problems)} problem(s) in all)")
    scores = benchmark.score({e.question_id: predictions[e.question_id] for e in answered}, answered)
    result = {**scores, "scored": len(answered), "excluded": len(problems), "problems": problems}
    if notes:
        result["ignored"], result["notes"] = len(ignored), notes
    return result
