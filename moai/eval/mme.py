# Copyright 2026 The moai authors. SPDX-License-Identifier: MIT
"""MME, yes/no questions in 14 subtasks (Fu et al., arXiv 2306.13394; docs/eval.md).

Layout (LLaVA-1.5's ``playground/data/eval/MME``)::

    DIR/llava_mme.jsonl          question_id (= image), image, text (+ short-answer line), category
    DIR/MME_Benchmark_release_version/SUBTASK/NAME.jpg and SUBTASK/NAME.txt
    DIR/MME_Benchmark_release_version/SUBTASK/images/NAME.jpg and SUBTASK/questions_answers_YN/NAME.txt

Each image has two questions, and each ``NAME.txt`` holds them as ``question<TAB>Yes|No`` lines, the
question ending in "Please answer yes or no."; LLaVA's file has the same question without that phrase
(and the short-answer line, which ``prompt`` puts back: the text MoAI's evaluation feeds). LLaVA's ids name
the image, so both questions share one; here a question's id is ``"{image}-{n}"``, ``n`` its line (1 or 2)
in the ground-truth file, e.g. ``"OCR/0020.jpg-2"``. A LLaVA answer file (``model_vqa_loader``'s, image id
and ``prompt`` per row) is read as it is: ``meta[LLAVA_KEY]`` names each question by its LLaVA id and text
(`moai.eval.common.read_predictions`).

An answer is "yes" or "no" by the rule of MME's ``calculation.py`` (`moai.eval.parse.yes_no_prefix`).
Per subtask ``acc`` is the percent of questions right and ``acc_plus`` the percent of images with both
questions right (an image whose other question was not scored counts as not both right); the subtask's
score is their sum (at most 200). ``perception`` sums the scores of the ten perception subtasks (at most
2000), ``cognition`` of the four cognition ones (at most 800), ``total`` both.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from ..worlds.score import string_field
from .common import LLAVA_KEY, Example, Examples
from .parse import SHORT_ANSWER, strip_suffix, yes_no_prefix
from .records import Collector, accuracy, jsonl_rows

NAME = "mme"
QUESTION_FILE = "llava_mme.jsonl"
DATA_FOLDER = "MME_Benchmark_release_version"
PERCEPTION = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
)
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
#: The phrase MME's own questions end with (LLaVA's question file leaves it out).
YES_NO_PHRASE = "Please answer yes or no."


def truth_file(image: str) -> PurePosixPath:
    """The ground-truth file of an image: ``S/images/N.jpg`` -> ``S/questions_answers_YN/N.txt``,
    ``S/N.jpg`` -> ``S/N.txt``."""
    parts = PurePosixPath(image)
    if parts.parent.name == "images":
        return parts.parent.parent / "questions_answers_YN" / f"{parts.stem}.txt"
    return parts.parent / f"{parts.stem}.txt"


def read_truth(path: Path) -> list[tuple[str, str]] | str:
    """``(question without the yes/no phrase, "yes"|"no")`` per line of one ground-truth file, or the reason
    it cannot be used."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError:
        return f"cannot read its ground truth {path}"
    except UnicodeDecodeError:
        return f"its ground truth {path} is not UTF-8 text"
    pairs = []
    for line in text.splitlines():
        if not line.strip():
            continue
        question, _, answer = line.strip().rpartition("\t")
        if not question or answer.strip().lower() not in ("yes", "no"):
            return f"its ground truth {path} has a line that is not 'question<TAB>Yes|No'"
        pairs.append((strip_suffix(question, YES_NO_PHRASE), answer.strip().lower()))
    return pairs


def load(path: Path) -> Examples:
    """The questions of ``llava_mme.jsonl`` with their answers from the benchmark's ground-truth files."""
    path = Path(path)
    file = path / QUESTION_FILE
    rows, problems = jsonl_rows(file, ("question_id", "image", "text", "category"))
    found = Collector(file, problems)
    truths: dict[PurePosixPath, list[tuple[str, str]] | str] = {}
    for number, row in rows:
        image, subtask = row["image"], row["category"]
        if subtask not in PERCEPTION + COGNITION:
            found.skip(number, f"image {image}: unknown subtask {subtask!r}")
            continue
        key = truth_file(image)
        if key not in truths:
            truths[key] = read_truth(path / DATA_FOLDER / key)
        truth = truths[key]
        if isinstance(truth, str):
            found.skip(number, f"image {image}: {truth}")
            continue
        question = strip_suffix(row["text"], SHORT_ANSWER)
        lines = [n for n, (q, _) in enumerate(truth, start=1) if q == question.strip()]
        if len(lines) != 1:
            found.skip(
                number,
                f"image {image}: the question is on {len(lines)} lines of its ground truth {key}, not 1",
            )
            continue
        n = lines[0]
        llava = {"question_id": string_field(row, "question_id"), "prompt": row["text"]}
        meta = {"subtask": subtask, "image_id": image, "pair_size": len(truth), LLAVA_KEY: llava}
        found.add(
            number, Example(f"{image}-{n}", path / DATA_FOLDER / image, question, truth[n - 1][1], meta)
        )
    return found.examples()


def prompt(example: Example) -> str:
    """The question and the short-answer line, as LLaVA's question file (which MoAI's evaluation feeds
    unchanged) has it."""
    return f"{example.question}\n{SHORT_ANSWER}"


def score(predictions: dict[str, str], examples: list[Example]) -> dict[str, Any]:
    """``subtasks: {name: {acc, acc_plus, score}}`` (percent), ``perception``, ``cognition``, ``total``."""
    right = {e.question_id: yes_no_prefix(predictions.get(e.question_id, "")) == e.answer for e in examples}
    subtasks = {}
    for name in PERCEPTION + COGNITION:
        chosen = [e for e in examples if e.meta["subtask"] == name]
        if not chosen:
            continue
        images: dict[str, list[Example]] = {}
        for e in chosen:
            images.setdefault(e.meta["image_id"], []).append(e)
        both = [
            len(qs) == qs[0].meta["pair_size"] and all(right[q.question_id] for q in qs)
            for qs in images.values()
        ]
        acc, acc_plus = accuracy(right[e.question_id] for e in chosen), accuracy(both)
        subtasks[name] = {"acc": acc, "acc_plus": acc_plus, "score": acc + acc_plus}
    perception = sum(s["score"] for name, s in subtasks.items() if name in PERCEPTION)
    cognition = sum(s["score"] for name, s in subtasks.items() if name in COGNITION)
    return {
        "subtasks": subtasks,
        "perception": perception,
        "cognition": cognition,
        "total": perception + cognition,
    }
