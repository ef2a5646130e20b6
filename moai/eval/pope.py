# Copyright 2026 The moai authors. SPDX-License-Identifier: MIT
"""POPE, object hallucination as yes/no questions on COCO (Li et al., EMNLP 2023; docs/eval.md).

Layout (LLaVA-1.5's ``playground/data/eval/pope``)::

    DIR/llava_pope_test.jsonl                 question_id, image, text (+ the short-answer line), category
    DIR/coco/coco_pope_{adversarial,popular,random}.json   JSON Lines: question_id, image, text, label
    DIR/val2014/COCO_val2014_*.jpg

The label files number their questions 1..N per split while LLaVA's question file gives each split its
own id range, and LLaVA's scorer pairs them by position; here a question takes the label of the line with
the same image and question text in its split's label file (in the published files both pairings agree).

An answer is "no" when its first sentence (up to the first period, commas removed) has the word "no" or
"not" in any case, and "yes" otherwise: LLaVA's ``eval_pope.py`` rule (which looks for "No", "no", "not").
Scores are percentages, like the papers': per split ``accuracy``, ``precision``, ``recall``, ``f1`` (of
"yes" as the positive class) and ``yes_ratio``; the top-level keys of the same names are their means over
the splits scored, ``f1`` first (LLaVA-style papers quote the mean F1).
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any

from ..io import Problem
from ..worlds.score import string_field
from .common import Example, Examples
from .parse import SHORT_ANSWER, strip_suffix
from .records import Collector, jsonl_rows, percent

NAME = "pope"
QUESTION_FILE = "llava_pope_test.jsonl"
SPLITS = ("adversarial", "popular", "random")
METRICS = ("accuracy", "precision", "recall", "f1", "yes_ratio")
#: The top-level means, the mean F1 first: the number LLaVA-style papers quote for POPE.
HEADLINE_FIRST = ("f1", "accuracy", "precision", "recall", "yes_ratio")


def label_file(path: Path, split: str) -> Path:
    return path / "coco" / f"coco_pope_{split}.json"


def read_labels(path: Path) -> tuple[dict[tuple[str, str], deque[str]], list[Problem]]:
    """``(image, question) -> labels`` (in file order) of one split's label file."""
    rows, problems = jsonl_rows(path, ("image", "text", "label"))
    labels: dict[tuple[str, str], deque[str]] = {}
    for number, row in rows:
        label = row["label"].strip().lower()
        if label not in ("yes", "no"):
            problems.append(Problem(str(path), number, f"label {row['label']!r} is not yes or no"))
            continue
        labels.setdefault((row["image"], row["text"].strip()), deque()).append(label)
    return labels, problems


def load(path: Path) -> Examples:
    """The questions of ``DIR/llava_pope_test.jsonl`` with their labels; a question of an unknown split,
    or without a label line, is a problem."""
    path = Path(path)
    file = path / QUESTION_FILE
    rows, problems = jsonl_rows(file, ("question_id", "image", "text", "category"))
    found = Collector(file, problems)
    labels: dict[str, dict[tuple[str, str], deque[str]]] = {}
    for split in sorted({row["category"] for _, row in rows} & set(SPLITS)):
        labels[split], split_problems = read_labels(label_file(path, split))
        found.problems += split_problems
    for number, row in rows:
        qid, split = string_field(row, "question_id"), row["category"]
        if split not in SPLITS:
            found.skip(number, f"question {qid}: category {split!r} is not one of {', '.join(SPLITS)}")
            continue
        question = strip_suffix(row["text"], SHORT_ANSWER)
        queue = labels[split].get((row["image"], question))
        if not queue:
            found.skip(
                number, f"question {qid}: no label for its image and question in {label_file(path, split)}"
            )
            continue
        found.add(
            number, Example(qid, path / "val2014" / row["image"], question, queue.popleft(), {"split": split})
        )
    return found.examples()


def prompt(example: Example) -> str:
    """The question and the short-answer instruction (MoAI's and LLaVA-1.5's prompt)."""
    return f"{example.question}\n{SHORT_ANSWER}"


def parse_answer(text: str) -> str:
    """``"no"`` when the first sentence says no or not, ``"yes"`` otherwise (LLaVA's POPE rule)."""
    first = text.split(".")[0].replace(",", "")
    return "no" if {"no", "not"} & {word.lower() for word in first.split()} else "yes"


def split_scores(pairs: list[tuple[str, str]]) -> dict[str, float]:
    """The five metrics (percent) of ``(prediction, label)`` pairs, "yes" the positive class."""
    tp = sum(p == "yes" and t == "yes" for p, t in pairs)
    fp = sum(p == "yes" and t == "no" for p, t in pairs)
    tn = sum(p == "no" and t == "no" for p, t in pairs)
    fn = sum(p == "no" and t == "yes" for p, t in pairs)
    precision, recall = percent(tp, tp + fp), percent(tp, tp + fn)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": percent(tp + tn, len(pairs)),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": percent(tp + fp, len(pairs)),
    }


def score(predictions: dict[str, str], examples: list[Example]) -> dict[str, Any]:
    """Per split (``splits: {name: {metric: percent}}``) and the means over the splits scored."""
    pairs: dict[str, list[tuple[str, str]]] = {}
    for e in examples:
        pairs.setdefault(e.meta["split"], []).append(
            (parse_answer(predictions.get(e.question_id, "")), e.answer)
        )
    splits = {name: split_scores(pairs[name]) for name in SPLITS if name in pairs}
    means = {m: sum(s[m] for s in splits.values()) / len(splits) if splits else 0.0 for m in HEADLINE_FIRST}
    return {**means, "splits": splits}
