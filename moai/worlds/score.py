"""Scoring answers against a ShapesWorld question file (docs/shapesworld.md, Scoring and Files).

An answer is right when it equals the question's ``answer`` ignoring case, after both are stripped of
surrounding whitespace and one trailing period. Accuracy is per category and overall, and per question
template beside the template's majority answer (what a model that answers without looking scores); a
question without an answer counts as wrong. A malformed line of either file is a ``Problem`` (file, line, reason) that the
caller reports and skips, or, with ``strict``, a ``ValueError`` naming it.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..io import Problem
from .shapes import CATEGORIES, COLOURS, KINDS, PLURALS


def normalize_answer(text: str) -> str:
    """``" Yes. "`` -> ``"yes"``: strip whitespace, drop one trailing period, strip again, lower-case."""
    text = text.strip()
    if text.endswith("."):
        text = text[:-1].strip()
    return text.lower()


def is_correct(answer: str, truth: str) -> bool:
    return normalize_answer(answer) == normalize_answer(truth)


_FILLED = re.compile(
    r"\b(" + "|".join(sorted([*COLOURS, *KINDS, *PLURALS.values()], key=len, reverse=True)) + r")\b"
)


def template_key(text: str) -> str:
    """A question with its colour, kind and sign words replaced by placeholders: the question's template
    (``"Is the word QUAKE written in the image?"`` -> ``"Is the word {WORD} written in the image?"``)."""
    return re.sub(r"\b[A-Z]{3,6}\b", "{WORD}", _FILLED.sub("{x}", text))


@dataclass(frozen=True)
class ScoredQuestion:
    question_id: str
    category: str
    answer: str
    text: str = ""
    """The question (its template is `template_key` of it; empty where the line has none)."""


@dataclass
class Tally:
    correct: int = 0
    total: int = 0

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0


@dataclass(frozen=True)
class TemplateScore:
    """One question template's accuracy beside its majority answer's."""

    category: str
    template: str
    """`template_key` of the questions (``NO_TEXT`` for lines without a ``text``)."""
    model: Tally
    """The answers' tally."""
    majority: Tally
    """The tally of the template's most common right answer given to every one of its questions."""

    def to_dict(self) -> dict:
        return {
            "category": self.category,
            "template": self.template,
            "correct": self.model.correct,
            "total": self.model.total,
            "accuracy": self.model.accuracy,
            "majority": self.majority.accuracy,
        }


@dataclass
class Score:
    per_category: dict[str, Tally]
    overall: Tally
    per_template: list[TemplateScore] = field(default_factory=list)
    """Every (category, template), in the category order, then by template."""
    missing: list[str] = field(default_factory=list)
    """Question ids without an answer (counted wrong)."""
    unknown: list[str] = field(default_factory=list)
    """Answer ids of no question (ignored)."""
    problems: list[Problem] = field(default_factory=list)

    def to_dict(self, by_template: bool = False) -> dict:
        def row(t: Tally) -> dict:
            return {"correct": t.correct, "total": t.total, "accuracy": t.accuracy}

        out = {
            "categories": {c: row(t) for c, t in self.per_category.items()},
            "overall": row(self.overall),
            "missing": self.missing,
            "unknown": self.unknown,
            "problems": [str(p) for p in self.problems],
        }
        if by_template:
            out["templates"] = [t.to_dict() for t in self.per_template]
        return out


def json_lines(path: Path) -> Iterator[tuple[int, object | Problem]]:
    """``(line number, parsed object or Problem)`` for every non-blank line of a UTF-8 JSONL file (a leading
    byte-order mark is allowed; lines end at ``\n`` only, as JSONL's, so a U+2028 inside a string stays)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a UTF-8 text file (expected JSONL)") from None
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as err:
            yield number, Problem(str(path), number, f"malformed JSON ({err.msg})")


#: Category of questions whose line has none (the question file may leave it out; docs/shapesworld.md).
NO_CATEGORY = "(none)"
#: Template of questions whose line has no ``text`` (scoring needs only the id and the answer).
NO_TEXT = "(no text)"


def string_field(row: object, key: str) -> str | None:
    """A non-empty string value, or an integer written as a string (LLaVA's ``model_vqa`` files use
    integer question ids and answers such as ``3``); None otherwise."""
    value = row.get(key) if isinstance(row, dict) else None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value if isinstance(value, str) and value.strip() else None


def _check(problem: Problem, problems: list[Problem], strict: bool) -> None:
    if strict:
        raise ValueError(f"{problem} (--strict)")
    problems.append(problem)


def read_questions(path: Path, strict: bool = False) -> tuple[list[ScoredQuestion], list[Problem]]:
    """Questions with a ``question_id`` and an ``answer`` (``category`` defaults to ``NO_CATEGORY``);
    the other lines are problems."""
    questions: list[ScoredQuestion] = []
    problems: list[Problem] = []
    seen: set[str] = set()
    for number, row in json_lines(path):
        if isinstance(row, Problem):
            _check(row, problems, strict)
            continue
        if not isinstance(row, dict):
            _check(Problem(str(path), number, "not a JSON object"), problems, strict)
            continue
        qid, answer = string_field(row, "question_id"), string_field(row, "answer")
        missing = [k for k, v in (("question_id", qid), ("answer", answer)) if v is None]
        if missing:
            reason = f"no {' and no '.join(missing)} (a non-empty string is needed for scoring)"
            _check(Problem(str(path), number, reason), problems, strict)
            continue
        if qid in seen:
            _check(Problem(str(path), number, f"duplicate question_id {qid!r}"), problems, strict)
            continue
        seen.add(qid)
        category = string_field(row, "category") or NO_CATEGORY
        questions.append(ScoredQuestion(qid, category, answer, string_field(row, "text") or ""))
    if not questions:
        raise ValueError(f"{path}: no usable question (expected JSONL lines with question_id and answer)")
    return questions, problems


def read_answers(path: Path, strict: bool = False) -> tuple[dict[str, str], list[Problem]]:
    """``question_id -> text``; lines without both strings, and repeated ids, are problems."""
    answers: dict[str, str] = {}
    problems: list[Problem] = []
    for number, row in json_lines(path):
        if isinstance(row, Problem):
            _check(row, problems, strict)
            continue
        qid = string_field(row, "question_id")
        text = row.get("text") if isinstance(row, dict) else None
        if isinstance(text, int) and not isinstance(text, bool):
            text = str(text)
        if qid is None or not isinstance(text, str):
            reason = "not an object with a question_id and a string text"
            _check(Problem(str(path), number, reason), problems, strict)
            continue
        if qid in answers:
            _check(Problem(str(path), number, f"duplicate answer for {qid!r}"), problems, strict)
            continue
        answers[qid] = text
    return answers, problems


def score(questions: list[ScoredQuestion], answers: dict[str, str]) -> Score:
    """Accuracy per category (the world's categories first, in their order, then any others) and overall, and
    per (category, template) beside the template's majority answer's: its most common normalized right answer
    among its questions, given to all of them."""
    names = [c for c in CATEGORIES if any(q.category == c for q in questions)]
    names += sorted({q.category for q in questions} - set(CATEGORIES))
    per_category = {c: Tally() for c in names}
    overall = Tally()
    per_template: dict[tuple[str, str], Tally] = {}
    truths: dict[tuple[str, str], Counter] = {}  # each template's normalized right answers
    missing = []
    for q in questions:
        given = answers.get(q.question_id)
        if given is None:
            missing.append(q.question_id)
        right = given is not None and is_correct(given, q.answer)
        key = (q.category, template_key(q.text) if q.text else NO_TEXT)
        for tally in (per_category[q.category], overall, per_template.setdefault(key, Tally())):
            tally.total += 1
            tally.correct += right
        truths.setdefault(key, Counter())[normalize_answer(q.answer)] += 1
    asked = {q.question_id for q in questions}
    unknown = [qid for qid in answers if qid not in asked]
    templates = [
        TemplateScore(
            category,
            template,
            per_template[(category, template)],
            Tally(
                truths[(category, template)].most_common(1)[0][1], per_template[(category, template)].total
            ),
        )
        for category, template in sorted(per_template, key=lambda k: (names.index(k[0]), k[1]))
    ]
    return Score(per_category, overall, templates, missing, unknown)


def score_files(questions_path: Path, answers_path: Path, strict: bool = False) -> Score:
    """Read both files and score; a missing file is an ``OSError``, ``strict`` turns problems into errors."""
    for path in (questions_path, answers_path):
        if path.is_dir():
            raise IsADirectoryError(f"{path}: is a directory, not a JSONL file")
    questions, q_problems = read_questions(questions_path, strict)
    answers, a_problems = read_answers(answers_path, strict)
    result = score(questions, answers)
    result.problems = q_problems + a_problems
    return result


def format_table(result: Score, by_template: bool = False) -> str:
    """The accuracy table printed by ``moai worlds score`` (``by_template``: then one row a question
    template, with the accuracy of its majority answer)."""
    lines = [f"{'category':<10} {'correct':>7} {'total':>6} {'accuracy':>8}"]
    for name, tally in [*result.per_category.items(), ("overall", result.overall)]:
        lines.append(f"{name:<10} {tally.correct:>7} {tally.total:>6} {100 * tally.accuracy:>7.1f}%")
    if by_template:
        width = max([len("template"), *(len(t.template) for t in result.per_template)])
        lines += [
            "",
            f"{'category':<10} {'template':<{width}} {'correct':>7} {'total':>6} {'accuracy':>8} {'majority':>8}",
        ]
        for t in result.per_template:
            lines.append(
                f"{t.category:<10} {t.template:<{width}} {t.model.correct:>7} {t.model.total:>6} "
                f"{100 * t.model.accuracy:>7.1f}% {100 * t.majority.accuracy:>7.1f}%"
            )
    return "\n".join(lines)
