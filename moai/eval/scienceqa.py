# Copyright 2026 The moai authors. SPDX-License-Identifier: MIT
"""ScienceQA-IMG: the test questions of ScienceQA that come with an image (Lu et al., NeurIPS 2022;
docs/eval.md).

Layout (LLaVA-1.5's ``playground/data/eval/scienceqa``)::

    DIR/llava_test_CQM-A.json   [{id, image (only questions with one), conversations: [{value: "<image>\\n
                                 ...question...\\nA. ...\\nB. ..."}, {value: "B"}]}]
    DIR/problems.json           {id: {question, choices, answer (index), subject, ...}}
    DIR/pid_splits.json         {"test": [ids], ...}
    DIR/images/test/{id}/image.png

The question is LLaVA's text (context and question, the form MoAI's evaluation feeds) without the
``<image>`` token and without its option lines, which ``prompt`` writes back from ``problems.json``'s
choices; the answer is the letter of ``problems.json``'s answer. Questions without an image are not
ScienceQA-IMG and are left out without a report; a question that is not in the test split, not in
``problems.json``, or whose option lines differ from its choices, is a problem.

``accuracy`` and ``categories`` (accuracy per subject: natural, social, language science), in percent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..worlds.score import string_field
from .common import Example, Examples
from .parse import LETTERS, choice_prompt, format_options
from .records import IN_DOCUMENT, Collector, accuracy, accuracy_by, choices_right, json_document

NAME = "scienceqa"
QUESTION_FILE = "llava_test_CQM-A.json"
PROBLEMS_FILE = "problems.json"
SPLITS_FILE = "pid_splits.json"
IMAGE_TOKEN = "<image>"


def read_problem(problem: Any) -> tuple[list[str], str, str] | str:
    """``(choices, answer letter, subject)`` of a ``problems.json`` entry, or why it is unusable."""
    if not isinstance(problem, dict):
        return "its problems.json entry is not an object"
    choices, answer = problem.get("choices"), problem.get("answer")
    if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices) or len(choices) < 2:
        return "its problems.json choices are not a list of at least two strings"
    if not isinstance(answer, int) or not 0 <= answer < len(choices):
        return f"its problems.json answer {answer!r} is not the index of a choice"
    return choices, LETTERS[answer], string_field(problem, "subject") or "(none)"


def question_text(value: str, choices: list[str]) -> str | None:
    """LLaVA's question text without the image token and the option lines, or None when the last lines
    are not exactly the lettered choices."""
    text = value.replace(IMAGE_TOKEN, "").strip()
    options = format_options(choices)
    if not text.endswith(options):
        return None
    return text[: -len(options)].strip()


def load(path: Path) -> Examples:
    """The image questions of ``llava_test_CQM-A.json`` that are in the test split, with ``problems.json``'s
    choices and answers."""
    path = Path(path)
    file = path / QUESTION_FILE
    records = json_document(file, "LLaVA's ScienceQA question file")
    problems = json_document(path / PROBLEMS_FILE, "ScienceQA's problems.json")
    splits = json_document(path / SPLITS_FILE, "ScienceQA's pid_splits.json")
    if not isinstance(records, list) or not isinstance(problems, dict) or not isinstance(splits, dict):
        raise ValueError(
            f"{path}: expected a list in {QUESTION_FILE} and objects in {PROBLEMS_FILE}, {SPLITS_FILE}"
        )
    test = {str(pid) for pid in splits.get("test", ())}
    found = Collector(file)
    for position, record in enumerate(records):
        qid = string_field(record, "id")
        if qid is None:
            found.skip(IN_DOCUMENT, f"question at position {position}: no 'id'")
            continue
        if not isinstance(record, dict) or record.get("image") is None:
            found.leave_out(qid, "questions without an image: not part of ScienceQA-IMG")
            continue
        image = string_field(record, "image")
        turns = record.get("conversations")
        first = turns[0] if isinstance(turns, list) and turns else None
        value = first.get("value") if isinstance(first, dict) else None
        if image is None or not isinstance(value, str):
            found.skip(IN_DOCUMENT, f"question {qid}: no image path or no question in 'conversations'")
            continue
        if qid not in test:
            found.skip(IN_DOCUMENT, f"question {qid}: not in the test split of {SPLITS_FILE}")
            continue
        problem = read_problem(problems.get(qid)) if qid in problems else f"not in {PROBLEMS_FILE}"
        if isinstance(problem, str):
            found.skip(IN_DOCUMENT, f"question {qid}: {problem}")
            continue
        choices, answer, subject = problem
        question = question_text(value, choices)
        if question is None:
            found.skip(
                IN_DOCUMENT, f"question {qid}: its option lines are not the choices of {PROBLEMS_FILE}"
            )
            continue
        meta = {"options": choices, "subject": subject}
        found.add(IN_DOCUMENT, Example(qid, path / "images" / "test" / image, question, answer, meta))
    return found.examples()


def prompt(example: Example) -> str:
    """The question, its lettered options, one a line, and the option-letter instruction (MoAI's prompt)."""
    return choice_prompt(example.question, example.meta["options"])


def score(predictions: dict[str, str], examples: list[Example]) -> dict[str, Any]:
    """``accuracy`` and ``categories: {subject: accuracy}``, in percent."""
    right = choices_right(predictions, examples)
    return {
        "accuracy": accuracy(right.values()),
        "categories": accuracy_by(examples, right, lambda e: e.meta["subject"]),
    }
