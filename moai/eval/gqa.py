# Copyright 2026 The moai authors. SPDX-License-Identifier: MIT
"""GQA testdev-balanced, compositional questions on real images (Hudson & Manning, CVPR 2019;
docs/eval.md).

Layout (LLaVA-1.5's ``playground/data/eval/gqa``)::

    DIR/data/testdev_balanced_questions.json   {question_id: {imageId, question, answer, types: {structural,
                                                semantic, detailed}, ...}}   (GQA's own file)
    DIR/data/images/{imageId}.jpg

GQA's own file holds every question with its answer, so LLaVA's ``llava_gqa_testdev_balanced.jsonl`` (the
same questions, ids and images) is not read.

An answer is right when it equals the ground truth exactly after the normalisation LLaVA applies before
GQA's ``eval.py`` (trailing periods removed, lower case; surrounding whitespace removed too).
``accuracy``, ``structural`` and ``semantic`` (accuracy per question type, as ``eval.py`` reports), in
percent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..worlds.score import string_field
from .common import Example, Examples
from .parse import SHORT_ANSWER
from .records import IN_DOCUMENT, Collector, accuracy, accuracy_by, json_document

NAME = "gqa"
QUESTION_FILE = Path("data") / "testdev_balanced_questions.json"
IMAGE_FOLDER = Path("data") / "images"


def normalize(answer: str) -> str:
    """``" Yes. "`` -> ``"yes"``."""
    return answer.strip().rstrip(".").strip().lower()


def load(path: Path) -> Examples:
    """The questions of ``DIR/data/testdev_balanced_questions.json``; an entry without an image id,
    question or answer is a problem."""
    path = Path(path)
    file = path / QUESTION_FILE
    records = json_document(file, "GQA's testdev_balanced_questions.json")
    if not isinstance(records, dict):
        raise ValueError(f"{file}: not a JSON object of questions (expected GQA's question file)")
    found = Collector(file)
    for qid, record in records.items():
        fields = {key: string_field(record, key) for key in ("imageId", "question", "answer")}
        missing = [key for key, value in fields.items() if value is None]
        if missing:
            found.skip(IN_DOCUMENT, f"question {qid}: no {', '.join(missing)}")
            continue
        types = record.get("types") if isinstance(record.get("types"), dict) else {}
        meta = {key: string_field(types, key) or "(none)" for key in ("structural", "semantic")}
        image = path / IMAGE_FOLDER / f"{fields['imageId']}.jpg"
        found.add(IN_DOCUMENT, Example(str(qid), image, fields["question"], fields["answer"], meta))
    return found.examples()


def prompt(example: Example) -> str:
    """The question and the short-answer instruction (MoAI's and LLaVA-1.5's prompt)."""
    return f"{example.question}\n{SHORT_ANSWER}"


def score(predictions: dict[str, str], examples: list[Example]) -> dict[str, Any]:
    """``accuracy``, ``structural`` and ``semantic`` (accuracy per type), in percent."""
    right = {
        e.question_id: normalize(predictions.get(e.question_id, "")) == normalize(e.answer) for e in examples
    }
    return {
        "accuracy": accuracy(right.values()),
        "structural": accuracy_by(examples, right, lambda e: e.meta["structural"]),
        "semantic": accuracy_by(examples, right, lambda e: e.meta["semantic"]),
    }
