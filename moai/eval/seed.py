# Copyright 2026 The moai authors. SPDX-License-Identifier: MIT
"""SEED-Bench, image part: four-way multiple choice in nine dimensions (Li et al., arXiv 2307.16125;
docs/eval.md).

Layout (LLaVA-1.5's ``playground/data/eval/seed_bench``)::

    DIR/SEED-Bench.json          {"questions": [{question_id, question, choice_a..choice_d, answer,
                                  data_id, data_type, question_type_id}], "question_type": {name: id}}
    DIR/SEED-Bench-image/{data_id}

The benchmark's own ``SEED-Bench.json`` holds everything a question needs, so LLaVA's
``llava-seed-bench.jsonl`` (the same questions with the options and instruction written into the text) is
not read. Only ``data_type == "image"`` questions are loaded (SEED-IMG, the part MoAI reports); the video
questions are the other part of the benchmark, not bad records, and are left out without a report.

``accuracy`` and ``dimensions`` (accuracy per evaluation dimension, by the file's names), in percent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..worlds.score import string_field
from .common import Example, Examples
from .parse import LETTERS, choice_prompt
from .records import IN_DOCUMENT, Collector, accuracy, accuracy_by, choices_right, json_document

NAME = "seed"
ANNOTATION_FILE = "SEED-Bench.json"
IMAGE_FOLDER = "SEED-Bench-image"
CHOICES = ("choice_a", "choice_b", "choice_c", "choice_d")


def load(path: Path) -> Examples:
    """The image questions of ``DIR/SEED-Bench.json``; a record without an id, question, the four choices,
    an answer letter, ``data_id`` or a known dimension is a problem naming it."""
    path = Path(path)
    file = path / ANNOTATION_FILE
    document = json_document(file, "the SEED-Bench annotation file")
    records = document.get("questions") if isinstance(document, dict) else None
    types = document.get("question_type") if isinstance(document, dict) else None
    if not isinstance(records, list) or not isinstance(types, dict):
        raise ValueError(f"{file}: no 'questions' list and 'question_type' table (expected SEED-Bench.json)")
    dimensions = {str(number): name for name, number in types.items()}
    found = Collector(file)
    for position, record in enumerate(records):
        if not isinstance(record, dict):
            found.skip(IN_DOCUMENT, f"question at position {position}: not a JSON object")
            continue
        if record.get("data_type") != "image":
            if string_field(record, "question_id") is not None:
                found.leave_out(
                    string_field(record, "question_id"), "video questions: SEED-IMG scores images only"
                )
            continue
        qid = string_field(record, "question_id") or f"at position {position}"
        fields = {key: string_field(record, key) for key in ("question_id", "question", "data_id", *CHOICES)}
        missing = [key for key, value in fields.items() if value is None]
        if missing:
            found.skip(IN_DOCUMENT, f"question {qid}: no {', '.join(missing)}")
            continue
        answer, dimension = string_field(record, "answer"), string_field(record, "question_type_id")
        if answer not in tuple(LETTERS[: len(CHOICES)]) or dimension not in dimensions:
            found.skip(
                IN_DOCUMENT, f"question {qid}: answer {answer!r} or dimension {dimension!r} is not known"
            )
            continue
        options = [fields[key] for key in CHOICES]
        meta = {"options": options, "dimension": dimensions[dimension]}
        image = path / IMAGE_FOLDER / fields["data_id"]
        found.add(IN_DOCUMENT, Example(fields["question_id"], image, fields["question"], answer, meta))
    return found.examples()


def prompt(example: Example) -> str:
    """The question, its lettered options, one a line, and the option-letter instruction (MoAI's prompt)."""
    return choice_prompt(example.question, example.meta["options"])


def score(predictions: dict[str, str], examples: list[Example]) -> dict[str, Any]:
    """``accuracy`` and ``dimensions: {name: accuracy}``, in percent."""
    right = choices_right(predictions, examples)
    return {
        "accuracy": accuracy(right.values()),
        "dimensions": accuracy_by(examples, right, lambda e: e.meta["dimension"]),
    }
