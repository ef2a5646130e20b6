# Copyright 2026 The moai authors. SPDX-License-Identifier: MIT
"""AI2D test, multiple-choice questions on science diagrams (Kembhavi et al., ECCV 2016; docs/eval.md).

LLaVA-1.5 has no AI2D layout; this is the one of MoAI's official evaluation::

    DIR/ai2d_test.json     [{imageName, question, metadata: {questionId, answerTexts, correctAnswer
                            (index), abcLabel}}]   (the fields of AI2D's own questions/*.json)
    DIR/ai2d_images/images/{imageName}       the diagrams
    DIR/ai2d_images/abc_images/{imageName}   the diagrams with letter labels (questions with abcLabel)

``accuracy`` in percent (AI2D has no categories).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..worlds.score import string_field
from .common import Example, Examples
from .parse import LETTERS, choice_prompt
from .records import IN_DOCUMENT, Collector, accuracy, choices_right, json_document

NAME = "ai2d"
QUESTION_FILE = "ai2d_test.json"
IMAGE_FOLDER = "ai2d_images"


def read_record(record: Any) -> tuple[str, str, str, list[str], str, bool] | str:
    """``(id, image name, question, options, answer letter, abc-labelled)`` of a record, or why it is
    unusable."""
    metadata = record.get("metadata") if isinstance(record, dict) else None
    if not isinstance(metadata, dict):
        return "no 'metadata' object"
    qid, image = string_field(metadata, "questionId"), string_field(record, "imageName")
    question = string_field(record, "question")
    options, answer = metadata.get("answerTexts"), metadata.get("correctAnswer")
    if None in (qid, image, question):
        return "no questionId, imageName or question"
    if not isinstance(options, list) or len(options) < 2 or not all(isinstance(o, str) for o in options):
        return "answerTexts is not a list of at least two strings"
    if isinstance(answer, str) and answer.isdigit():
        answer = int(answer)
    if not isinstance(answer, int) or not 0 <= answer < len(options):
        return f"correctAnswer {answer!r} is not the index of an answer"
    return qid, image, question, options, LETTERS[answer], bool(metadata.get("abcLabel"))


def load(path: Path) -> Examples:
    """The questions of ``DIR/ai2d_test.json``; a record without an id, image, question, answer texts or
    a valid answer index is a problem."""
    path = Path(path)
    file = path / QUESTION_FILE
    records = json_document(file, "the AI2D test question file")
    if not isinstance(records, list):
        raise ValueError(f"{file}: not a JSON list (expected the AI2D test question file)")
    found = Collector(file)
    for position, record in enumerate(records):
        parsed = read_record(record)
        if isinstance(parsed, str):
            found.skip(IN_DOCUMENT, f"question at position {position}: {parsed}")
            continue
        qid, image, question, options, answer, abc = parsed
        image_path = path / IMAGE_FOLDER / ("abc_images" if abc else "images") / image
        found.add(IN_DOCUMENT, Example(qid, image_path, question, answer, {"options": options}))
    return found.examples()


def prompt(example: Example) -> str:
    """The question, its lettered options, one a line, and the option-letter instruction (MoAI's prompt)."""
    return choice_prompt(example.question, example.meta["options"])


def score(predictions: dict[str, str], examples: list[Example]) -> dict[str, Any]:
    """``accuracy`` in percent."""
    return {"accuracy": accuracy(choices_right(predictions, examples).values())}
