# Copyright 2026 The moai authors. SPDX-License-Identifier: MIT
"""TextVQA val, questions that need reading the text in the image (Singh et al., CVPR 2019; docs/eval.md).

Layout (LLaVA-1.5's ``playground/data/eval/textvqa``)::

    DIR/llava_textvqa_val_v051_ocr.jsonl   question_id (the image id), image, text, category
    DIR/TextVQA_0.5.1_val.json             {"data": [{question_id, image_id, question, answers: [10], ...}]}
    DIR/train_images/*.jpg

LLaVA's question file ids are image ids, shared by the questions of one image, and its text is the
question, a ``Reference OCR token: ...`` line and the short-answer line; as LLaVA's ``eval_textvqa.py``
does, a question is matched to the official annotation by image id and lower-cased question. Here each
example takes the official, unique ``question_id``; the question keeps the OCR line (the LLaVA-1.5 / MoAI
protocol, docs/eval.md), and ``prompt`` puts the short-answer line back. A LLaVA answer file (image id and
``prompt`` per row) is read as it is: ``meta[LLAVA_KEY]`` names each question by its LLaVA id and text
(`moai.eval.common.read_predictions`).

``accuracy`` is the VQA soft accuracy in percent: for each of the ten human answers left out in turn, the
prediction scores min(1, matches among the other nine / 3); the ten are averaged, then averaged over the
questions. Prediction and answers are compared after `moai.eval.parse.vqa_normalize`.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any

from ..io import Problem
from ..worlds.score import string_field
from .common import LLAVA_KEY, Example, Examples
from .parse import SHORT_ANSWER, strip_suffix, vqa_normalize
from .records import IN_DOCUMENT, Collector, json_document, jsonl_rows

NAME = "textvqa"
QUESTION_FILE = "llava_textvqa_val_v051_ocr.jsonl"
ANNOTATION_FILE = "TextVQA_0.5.1_val.json"


def read_annotations(path: Path) -> tuple[dict[tuple[str, str], deque[dict[str, Any]]], list[Problem]]:
    """``(image_id, lower-cased question) -> annotations`` of the official file; an annotation without an
    id, image id, question or list of string answers is a problem."""
    document = json_document(path, "the TextVQA annotation file")
    records = document.get("data") if isinstance(document, dict) else None
    if not isinstance(records, list):
        raise ValueError(f"{path}: no 'data' list (expected the TextVQA annotation file)")
    index: dict[tuple[str, str], deque[dict[str, Any]]] = {}
    problems = []
    for position, record in enumerate(records):
        fields = [string_field(record, key) for key in ("question_id", "image_id", "question")]
        answers = record.get("answers") if isinstance(record, dict) else None
        listed = isinstance(answers, list) and answers and all(isinstance(a, str) for a in answers)
        if None in fields or not listed:
            reason = (
                f"annotation {position}: needs question_id, image_id, question and a list of string answers"
            )
            problems.append(Problem(str(path), IN_DOCUMENT, reason))
            continue
        qid, image_id, question = fields
        index.setdefault((image_id, question.strip().lower()), deque()).append(
            {"question_id": qid, "answers": answers}
        )
    return index, problems


def load(path: Path) -> Examples:
    """Questions of LLaVA's file with the official ids and answers; a question with no annotation is a
    problem naming its line."""
    path = Path(path)
    file = path / QUESTION_FILE
    rows, problems = jsonl_rows(file, ("question_id", "image", "text"))
    annotations, annotation_problems = read_annotations(path / ANNOTATION_FILE)
    found = Collector(file, problems + annotation_problems)
    for number, row in rows:
        question = strip_suffix(row["text"], SHORT_ANSWER)
        image_id = string_field(row, "question_id")
        queue = annotations.get((image_id, question.split("\n")[0].strip().lower()))
        if not queue:
            found.skip(
                number, f"image {image_id}: no annotation in {ANNOTATION_FILE} for this image and question"
            )
            continue
        record = queue.popleft()
        image = path / "train_images" / row["image"]
        meta = {"image_id": image_id, LLAVA_KEY: {"question_id": image_id, "prompt": row["text"]}}
        found.add(number, Example(record["question_id"], image, question, list(record["answers"]), meta))
    return found.examples()


def prompt(example: Example) -> str:
    """The question and the short-answer instruction (MoAI's and LLaVA-1.5's prompt)."""
    return f"{example.question}\n{SHORT_ANSWER}"


def soft_accuracy(prediction: str, answers: list[str]) -> float:
    """VQA accuracy (0..1) of one prediction: the mean over leave-one-out subsets of min(1, matches / 3)."""
    guess = vqa_normalize(prediction)
    truths = [vqa_normalize(a) for a in answers]
    subsets = [truths[:i] + truths[i + 1 :] for i in range(len(truths))]
    return sum(min(1.0, subset.count(guess) / 3) for subset in subsets) / len(subsets)


def score(predictions: dict[str, str], examples: list[Example]) -> dict[str, Any]:
    """``accuracy``: the mean soft accuracy, in percent."""
    values = [soft_accuracy(predictions.get(e.question_id, ""), e.answer) for e in examples]
    return {"accuracy": 100.0 * sum(values) / len(values) if values else 0.0}
