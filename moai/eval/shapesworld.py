# Copyright 2026 The moai authors. SPDX-License-Identifier: MIT
"""ShapesWorld, the project's own synthetic world (docs/shapesworld.md, Questions, Scoring and Files).

``load`` takes the folder ``moai worlds shapes --out DIR`` wrote (its ``questions.jsonl``) or a question
file itself; images resolve against the question file's folder. Every question needs ``question_id``,
``image``, ``text`` and ``answer``; ``category`` may be left out (it scores under ``(none)``). Scoring is
`moai.worlds.score`'s rule (case-insensitive match after stripping whitespace and one trailing period);
accuracy is in percent, like the other benchmarks of `moai.eval`, overall and per category.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..io import Problem
from ..worlds.score import NO_CATEGORY, is_correct, json_lines, string_field
from ..worlds.shapes import CATEGORIES
from .common import Example, Examples

NAME = "shapesworld"

#: The question file inside a world folder (docs/shapesworld.md, Files).
QUESTION_FILE = "questions.jsonl"


def load(path: Path) -> Examples:
    """The questions of a world folder (or of a question file); lines without an id, image, text or
    answer, and repeated ids, are problems naming the line."""
    path = Path(path)
    file = path / QUESTION_FILE if path.is_dir() else path
    examples: list[Example] = []
    problems: list[Problem] = []
    seen: set[str] = set()
    for number, row in json_lines(file):
        if isinstance(row, Problem):
            problems.append(row)
            continue
        fields = {key: string_field(row, key) for key in ("question_id", "image", "text", "answer")}
        missing = [key for key, value in fields.items() if value is None]
        if missing:
            problems.append(Problem(str(file), number, f"no {', '.join(missing)} (non-empty strings needed)"))
            continue
        qid = fields["question_id"]
        if qid in seen:
            problems.append(Problem(str(file), number, f"question {qid}: duplicated id (the first is kept)"))
            continue
        seen.add(qid)
        category = string_field(row, "category") or NO_CATEGORY
        examples.append(
            Example(
                qid, file.parent / fields["image"], fields["text"], fields["answer"], {"category": category}
            )
        )
    return Examples(examples, problems)


def prompt(example: Example) -> str:
    """The question as written: the world's model is trained on the bare questions (docs/shapesworld.md)."""
    return example.question


def score(predictions: dict[str, str], examples: list[Example]) -> dict[str, Any]:
    """``accuracy`` (percent) overall and ``categories: {name: accuracy}``, the world's categories first in
    their order, then any others sorted. A question without a prediction counts as wrong."""
    names = [c for c in CATEGORIES if any(e.meta["category"] == c for e in examples)]
    names += sorted({e.meta["category"] for e in examples} - set(CATEGORIES))
    right = {e.question_id: is_correct(predictions.get(e.question_id, ""), e.answer) for e in examples}
    categories = {}
    for name in names:
        marks = [right[e.question_id] for e in examples if e.meta["category"] == name]
        categories[name] = 100 * sum(marks) / len(marks)
    accuracy = 100 * sum(right.values()) / len(right) if right else 0.0
    return {"accuracy": accuracy, "categories": categories}
