# Copyright 2026 The moai authors. SPDX-License-Identifier: MIT
"""Q-Bench LLVisionQA dev, multiple-choice questions on low-level visual perception (Wu et al., ICLR 2024;
docs/eval.md).

Layout (LLaVA-1.5's ``playground/data/eval/qbench``)::

    DIR/llvisionqa_dev.json           [{img_path, question, candidates, correct_ans, type, concern}]
    DIR/images_llvisionqa/{img_path}

The file gives no ids: a question's id is its position in the file (``"0"``, ``"1"``, ...). The answer is
the letter of the candidate equal to ``correct_ans``. The prompt is MoAI's (question, lettered candidates,
the option-letter instruction), not LLaVA's "Choose between one of the options as follows:".

``accuracy``, and where the records have them, ``types`` (yes-or-no, what, how) and ``concerns``
(distortion, other low-level attribute, in-context distortion, in-context other: the benchmark's
quadrants), accuracy per value, in percent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..worlds.score import string_field
from .common import Example, Examples
from .parse import LETTERS, choice_prompt
from .records import IN_DOCUMENT, Collector, accuracy, accuracy_by, choices_right, json_document

NAME = "qbench"
QUESTION_FILE = "llvisionqa_dev.json"
IMAGE_FOLDER = "images_llvisionqa"
#: Names of the ``type`` and ``concern`` codes of LLVisionQA (Q-Bench paper, Section 2).
TYPES = {"0": "yes-or-no", "1": "what", "2": "how"}
CONCERNS = {"0": "distortion", "1": "other", "2": "in-context distortion", "3": "in-context other"}


def label(record: dict[str, Any], key: str, names: dict[str, str]) -> str:
    """The name of a record's code (``"1"`` -> ``"what"``), the value itself if unknown, ``(none)`` if
    absent."""
    value = string_field(record, key)
    return "(none)" if value is None else names.get(value, value)


def load(path: Path) -> Examples:
    """The questions of ``DIR/llvisionqa_dev.json``; a record without an image, question, candidates, or
    whose ``correct_ans`` is not one of its candidates, is a problem."""
    path = Path(path)
    file = path / QUESTION_FILE
    records = json_document(file, "the LLVisionQA question file")
    if not isinstance(records, list):
        raise ValueError(f"{file}: not a JSON list (expected the LLVisionQA question file)")
    found = Collector(file)
    for position, record in enumerate(records):
        image, question = string_field(record, "img_path"), string_field(record, "question")
        options = record.get("candidates") if isinstance(record, dict) else None
        correct = string_field(record, "correct_ans")
        if image is None or question is None:
            found.skip(IN_DOCUMENT, f"question {position}: no img_path or question")
            continue
        if not isinstance(options, list) or len(options) < 2 or not all(isinstance(o, str) for o in options):
            found.skip(IN_DOCUMENT, f"question {position}: candidates is not a list of at least two strings")
            continue
        if correct not in options:
            found.skip(
                IN_DOCUMENT, f"question {position}: correct_ans {correct!r} is not one of its candidates"
            )
            continue
        meta = {
            "options": options,
            "type": label(record, "type", TYPES),
            "concern": label(record, "concern", CONCERNS),
        }
        answer = LETTERS[options.index(correct)]
        found.add(IN_DOCUMENT, Example(str(position), path / IMAGE_FOLDER / image, question, answer, meta))
    return found.examples()


def prompt(example: Example) -> str:
    """The question, its lettered options, one a line, and the option-letter instruction (MoAI's prompt)."""
    return choice_prompt(example.question, example.meta["options"])


def score(predictions: dict[str, str], examples: list[Example]) -> dict[str, Any]:
    """``accuracy``, ``types`` and ``concerns`` (accuracy per value), in percent."""
    right = choices_right(predictions, examples)
    return {
        "accuracy": accuracy(right.values()),
        "types": accuracy_by(examples, right, lambda e: e.meta["type"]),
        "concerns": accuracy_by(examples, right, lambda e: e.meta["concern"]),
    }
