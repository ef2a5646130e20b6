# Copyright 2026 The moai authors. SPDX-License-Identifier: MIT
"""Reading benchmark files record by record, and the accuracy arithmetic the scorers share (docs/eval.md).

A bad record is a ``Problem`` naming the file, the line (JSONL, TSV) or 0 for a record of a JSON document
(the reason then names the record's id or position), and why; the caller keeps the good records.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..io import Problem, read_json
from ..worlds.score import json_lines, string_field
from .common import Example, Examples
from .parse import option_letter

#: ``Problem.line`` of a record inside a JSON document (not a line of its own).
IN_DOCUMENT = 0


def require_file(path: Path, what: str) -> Path:
    """``path`` if it is a file; ``FileNotFoundError("PATH: no such file (expected WHAT)")`` otherwise."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected {what})")
    return path


def jsonl_rows(path: Path, required: Iterable[str]) -> tuple[list[tuple[int, dict[str, Any]]], list[Problem]]:
    """``(line, row)`` of the JSONL lines that are objects with every ``required`` field as a non-empty
    string (integers are read as strings, as LLaVA writes ids); the other lines are problems."""
    rows: list[tuple[int, dict[str, Any]]] = []
    problems: list[Problem] = []
    required = tuple(required)
    for number, row in json_lines(require_file(path, "a JSONL question file")):
        if isinstance(row, Problem):
            problems.append(row)
            continue
        if not isinstance(row, dict):
            problems.append(Problem(str(path), number, "not a JSON object"))
            continue
        missing = [key for key in required if string_field(row, key) is None]
        if missing:
            problems.append(Problem(str(path), number, f"{row_name(row)}: {missing_reason(missing)}"))
            continue
        rows.append((number, row))
    return rows, problems


def json_document(path: Path, what: str) -> Any:
    """A whole JSON file (`moai.io.read_json`), after checking it exists."""
    return read_json(require_file(path, what), what)


def row_name(row: dict[str, Any], key: str = "question_id") -> str:
    """``"question 17"`` for a row with that id, ``"a question without an id"`` otherwise."""
    qid = string_field(row, key)
    return f"question {qid}" if qid is not None else "a question without an id"


def missing_reason(fields: list[str]) -> str:
    """``"no 'image', 'text' (non-empty strings needed)"``."""
    return f"no {', '.join(repr(f) for f in fields)} (non-empty strings needed)"


def percent(correct: int, total: int) -> float:
    """``100 * correct / total``; 0.0 for no questions."""
    return 100.0 * correct / total if total else 0.0


def accuracy(marks: Iterable[bool]) -> float:
    """Percent of true marks."""
    marks = list(marks)
    return percent(sum(marks), len(marks))


def accuracy_by(
    examples: list[Example], right: dict[str, bool], key: Callable[[Example], str]
) -> dict[str, float]:
    """Accuracy (percent) per value of ``key(example)``, the values sorted."""
    groups: dict[str, list[bool]] = {}
    for example in examples:
        groups.setdefault(key(example), []).append(right[example.question_id])
    return {name: accuracy(groups[name]) for name in sorted(groups)}


def choices_right(predictions: dict[str, str], examples: list[Example]) -> dict[str, bool]:
    """Whether each multiple-choice example's prediction picks its answer letter among
    ``meta["options"]`` (`moai.eval.parse.option_letter`); a missing prediction is wrong."""
    return {
        e.question_id: option_letter(predictions.get(e.question_id, ""), e.meta["options"]) == e.answer
        for e in examples
    }


class Collector:
    """The examples of one question file as a loader finds them: ``add`` keeps an example unless its id
    was seen (a problem naming the line), ``skip`` records a bad record, ``examples()`` hands both over."""

    def __init__(self, file: Path, problems: Iterable[Problem] = ()) -> None:
        self.file = file
        self.problems: list[Problem] = list(problems)
        self._examples: list[Example] = []
        self._seen: set[str] = set()
        self.left_out: dict[str, str] = {}

    def add(self, line: int, example: Example) -> None:
        if example.question_id in self._seen:
            self.skip(line, f"question {example.question_id}: duplicated id (the first is kept)")
            return
        self._seen.add(example.question_id)
        self._examples.append(example)

    def skip(self, line: int, reason: str) -> None:
        self.problems.append(Problem(str(self.file), line, reason))

    def leave_out(self, question_id: str, reason: str) -> None:
        """A question the benchmark's scored part leaves out by design (`Examples.left_out`)."""
        self.left_out[question_id] = reason

    def examples(self) -> Examples:
        return Examples(self._examples, self.problems, self.left_out)
