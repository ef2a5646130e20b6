# Copyright 2026 The moai authors. SPDX-License-Identifier: MIT
"""HallusionBench, yes/no questions that probe language hallucination and visual illusion (Guan et al.,
CVPR 2024; docs/eval.md).

Layout (the benchmark's repository; LLaVA-1.5 has none)::

    DIR/HallusionBench.json   [{category (VD|VS), subcategory, visual_input, set_id, figure_id,
                               question_id, question, gt_answer ("1" yes, "0" no), filename}]
    DIR/hallusion_bench/{VD|VS}/{subcategory}/{set_id}_{figure_id}.png

``filename`` is read relative to ``DIR/hallusion_bench`` (a leading ``./`` or ``hallusion_bench/`` is
dropped). Questions with ``visual_input`` "0" have no figure: they are loaded with no image (the
benchmark asks them without one); MoAI's own evaluation leaves them out, so ``aAcc_figure`` is also
given over the questions with a figure. A question's id is the benchmark's key
``"{category}_{subcategory}_{set_id}_{figure_id}_{question_id}"``.

The benchmark grades answers with GPT-4; here an answer is "yes" / "no" by MME's rule
(`moai.eval.parse.yes_no_prefix`) and anything else is uncertain. As in the benchmark's ``utils.py``, an
answer is right when it matches, and an uncertain answer also counts as right for a visual-supplement
question asked without its figure. In percent: ``aAcc`` (questions right), ``fAcc`` (figures whose
questions are all right), ``qAcc`` (questions right on every figure they are asked about: key category,
subcategory, set, question), ``aAcc_figure``, and ``categories`` (aAcc of VD and VS).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from ..worlds.score import string_field
from .common import Example, Examples
from .parse import yes_no_prefix
from .records import IN_DOCUMENT, Collector, accuracy, accuracy_by, json_document

NAME = "hallusionbench"
QUESTION_FILE = "HallusionBench.json"
IMAGE_FOLDER = "hallusion_bench"
KEYS = (
    "category",
    "subcategory",
    "visual_input",
    "set_id",
    "figure_id",
    "question_id",
    "question",
    "gt_answer",
)
ANSWERS = {"1": "yes", "0": "no"}


def image_path(path: Path, filename: str) -> Path:
    """The image of ``filename``: ``./VD/ocr/0_1.png`` and ``./hallusion_bench/VD/ocr/0_1.png`` are both
    ``DIR/hallusion_bench/VD/ocr/0_1.png``."""
    parts = [p for p in PurePosixPath(filename).parts if p != "."]
    if parts and parts[0] == IMAGE_FOLDER:
        parts = parts[1:]
    return path.joinpath(IMAGE_FOLDER, *parts)


def load(path: Path) -> Examples:
    """The questions of ``DIR/HallusionBench.json``; a record without one of the benchmark's fields, with
    an answer other than "0" / "1", or with a figure but no ``filename``, is a problem."""
    path = Path(path)
    file = path / QUESTION_FILE
    records = json_document(file, "HallusionBench.json")
    if not isinstance(records, list):
        raise ValueError(f"{file}: not a JSON list (expected HallusionBench.json)")
    found = Collector(file)
    for position, record in enumerate(records):
        fields = {key: string_field(record, key) for key in KEYS}
        missing = [key for key, value in fields.items() if value is None]
        if missing:
            found.skip(IN_DOCUMENT, f"question at position {position}: no {', '.join(missing)}")
            continue
        qid = "_".join(fields[k] for k in ("category", "subcategory", "set_id", "figure_id", "question_id"))
        if fields["gt_answer"] not in ANSWERS:
            found.skip(IN_DOCUMENT, f"question {qid}: gt_answer {fields['gt_answer']!r} is not '0' or '1'")
            continue
        filename = string_field(record, "filename")
        has_figure = fields["visual_input"] != "0"
        if has_figure and filename is None:
            found.skip(IN_DOCUMENT, f"question {qid}: visual_input {fields['visual_input']} but no filename")
            continue
        meta = {key: fields[key] for key in ("category", "subcategory", "set_id", "figure_id", "question_id")}
        meta["figure"] = has_figure
        image = image_path(path, filename) if has_figure else None
        found.add(IN_DOCUMENT, Example(qid, image, fields["question"], ANSWERS[fields["gt_answer"]], meta))
    return found.examples()


def prompt(example: Example) -> str:
    """The question as written (MoAI's evaluation adds no instruction)."""
    return example.question


def is_right(answer: str, example: Example) -> bool:
    said = yes_no_prefix(answer)
    if said is None:
        return example.meta["category"] == "VS" and not example.meta["figure"]
    return said == example.answer


def grouped(examples: list[Example], right: dict[str, bool], keys: tuple[str, ...]) -> float:
    """Percent of groups (examples sharing ``meta[keys]``) with every example right."""
    groups: dict[tuple[str, ...], bool] = {}
    for e in examples:
        key = tuple(e.meta[k] for k in keys)
        groups[key] = groups.get(key, True) and right[e.question_id]
    return accuracy(groups.values())


def score(predictions: dict[str, str], examples: list[Example]) -> dict[str, Any]:
    """``aAcc``, ``fAcc``, ``qAcc``, ``aAcc_figure`` and ``categories`` (aAcc per category), in percent."""
    right = {e.question_id: is_right(predictions.get(e.question_id, ""), e) for e in examples}
    figures = [e for e in examples if e.meta["figure"]]
    return {
        "aAcc": accuracy(right.values()),
        "fAcc": grouped(figures, right, ("category", "subcategory", "set_id", "figure_id")),
        "qAcc": grouped(examples, right, ("category", "subcategory", "set_id", "question_id")),
        "aAcc_figure": accuracy(right[e.question_id] for e in figures),
        "categories": accuracy_by(examples, right, lambda e: e.meta["category"]),
    }
