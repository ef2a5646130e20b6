# Copyright 2026 The moai authors. SPDX-License-Identifier: MIT
"""MMBench dev, multiple-choice questions scored with CircularEval (Liu et al., arXiv 2307.06281;
docs/eval.md). `moai.eval.mmbench_cn` is the Chinese edition, read the same way.

Layout (LLaVA-1.5's ``playground/data/eval/mmbench``): ``DIR/mmbench_dev_20230712.tsv`` (``DIR`` may also
be a TSV file itself), tab-separated with a header: ``index``, ``question``, ``hint``, ``A``..``D`` (empty
or "nan" past the last option), ``answer`` (a letter), ``category``, ``l2-category``, ``image`` (the
image as base64, or the ``index`` of a row with the same image: all digits).

CircularEval asks a question once per rotation of its options and counts it right only when every
rotation is answered right. The distributed dev files already hold the rotations as rows of their own:
rotation ``k`` of question ``i`` has index ``i + k * 1000000``, its options and answer letter rotated. A
file with no index of 1000000 or more holds each question once; then ``load`` makes the rotations itself,
as LLaVA's ``--all-rounds`` does (rotation ``r`` shows option ``(j + r) mod n`` at letter ``j``), with ids
``"{index}-r{r}"``. Either way an example's ``meta["group"]`` is its question and ``meta["rotations"]``
how many rotations the question has; a question with a rotation left unscored counts as wrong. LLaVA's
answer file for a file of the second kind (``model_vqa_mmbench``'s: the index and a ``round_id`` per row)
is read as it is: ``meta[LLAVA_KEY]`` names rotation ``r`` by the index and round ``r``
(`moai.eval.common.read_predictions`).

The images are decoded into ``{tsv stem}_images/{index}.jpg`` (or ``.png``) next to the TSV the first
time the file is loaded, so that every example has an image file: `moai.eval.common.Example` holds paths.

``accuracy`` (percent of questions right), ``categories`` and ``l2_categories`` (the same per category).
"""

from __future__ import annotations

import base64
import binascii
import csv
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..io import Problem
from .common import LLAVA_KEY, Example, Examples
from .parse import LETTERS, OPTION_LETTER, choice_prompt, option_letter
from .records import Collector, accuracy, require_file

NAME = "mmbench"
TSV_FILE = "mmbench_dev_20230712.tsv"
#: Index offset between the rotations of one question in the distributed files.
ROTATION_STRIDE = 1_000_000
OPTION_COLUMNS = ("A", "B", "C", "D")
PNG_MAGIC = b"\x89PNG"


def is_empty(value: str | None) -> bool:
    """True for a missing cell as pandas writes one: empty, "nan" or "none"."""
    return value is None or value.strip().lower() in ("", "nan", "none")


@contextmanager
def _large_fields() -> Iterator[None]:
    """Let `csv` read base64 images (far above its default field limit) for the length of one read."""
    previous = csv.field_size_limit()
    csv.field_size_limit(2**31 - 1)
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def read_tsv(path: Path) -> tuple[list[tuple[int, dict[str, str]]], list[Problem]]:
    """``(line, row)`` of the data rows; a row that does not fit the header is a problem."""
    rows, problems = [], []
    try:
        with (
            require_file(path, "an MMBench TSV file").open(encoding="utf-8", newline="") as f,
            _large_fields(),
        ):
            reader = csv.reader(f, delimiter="\t")
            header = next(reader, None)
            if not header or "index" not in header:
                raise ValueError(f"{path}: no header with an 'index' column (expected an MMBench TSV file)")
            line = reader.line_num
            for cells in reader:
                if len(cells) != len(header):
                    problems.append(
                        Problem(str(path), line + 1, f"{len(cells)} cells, the header has {len(header)}")
                    )
                else:
                    rows.append((line + 1, dict(zip(header, cells))))
                line = reader.line_num
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a UTF-8 text file (expected an MMBench TSV file)") from None
    except csv.Error as err:
        raise ValueError(f"{path}: not a readable TSV file ({err})") from None
    return rows, problems


def image_file(folder: Path, index: str, data: bytes) -> Path:
    """Write ``data`` to ``folder/{index}.png|jpg`` unless a file of that size is there; its path."""
    path = folder / f"{index}.{'png' if data.startswith(PNG_MAGIC) else 'jpg'}"
    if not (path.is_file() and path.stat().st_size == len(data)):
        folder.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return path


def row_image(row: dict[str, str], images: dict[str, str], folder: Path) -> Path | str:
    """The image file of a row (decoded and written once), or the reason there is none."""
    cell = (row.get("image") or "").strip()
    if cell.isdigit() and cell in images:
        cell = images[cell].strip()
    if is_empty(cell) or cell.isdigit():
        return "no image (an empty cell, or the index of a row without one)"
    try:
        data = base64.b64decode(cell, validate=True)
    except (binascii.Error, ValueError):
        return "the image cell is not base64"
    try:
        return image_file(folder, row["index"].strip(), data)
    except OSError as err:
        return f"cannot write its image to {folder} ({err.strerror})"


def parse_row(row: dict[str, str], images: dict[str, str], folder: Path) -> dict[str, Any] | str:
    """One usable question of the TSV, before any rotation (index, image, question with the hint first,
    options, answer letter, categories), or the reason the row is not one."""
    index = row["index"].strip()
    if not index.isdigit():
        return "the index is not a number"
    options = []
    for column in OPTION_COLUMNS:
        if is_empty(row.get(column)):
            break
        options.append(row[column])
    if is_empty(row.get("question")) or len(options) < 2:
        return "no question or fewer than two options"
    answer = (row.get("answer") or "").strip()
    if answer not in tuple(LETTERS[: len(options)]):
        return f"answer {answer!r} is not the letter of one of its {len(options)} options"
    image = row_image(row, images, folder)
    if isinstance(image, str):
        return image
    hint = row.get("hint")
    return {
        "index": int(index),
        "image": image,
        "question": row["question"] if is_empty(hint) else f"{hint}\n{row['question']}",
        "options": options,
        "answer": answer,
        "category": row.get("category") or "",
        "l2_category": row.get("l2-category") or "",
    }


def rotations(question: dict[str, Any]) -> list[tuple[str, list[str], str]]:
    """``(id, options, answer letter)`` of each rotation of a question stored once."""
    options, n = question["options"], len(question["options"])
    answer = LETTERS.index(question["answer"])
    return [
        (f"{question['index']}-r{r}", options[r:] + options[:r], LETTERS[(answer - r) % n]) for r in range(n)
    ]


def load_file(file: Path) -> Examples:
    """The examples of one MMBench TSV (see the module docstring for the two kinds of file). A question
    stored with its rotations has as many rotations as the file has rows for it, bad rows included."""
    rows, problems = read_tsv(file)
    found = Collector(file, problems)
    indices = [int(row["index"]) for _, row in rows if row["index"].strip().isdigit()]
    rotated_in_file = any(index >= ROTATION_STRIDE for index in indices)
    sizes: dict[int, int] = {}
    for index in indices:
        sizes[index % ROTATION_STRIDE] = sizes.get(index % ROTATION_STRIDE, 0) + 1
    images = {row["index"].strip(): row.get("image") or "" for _, row in rows}
    folder = file.parent / f"{file.stem}_images"
    for line, row in rows:
        q = parse_row(row, images, folder)
        if isinstance(q, str):
            found.skip(line, f"question {row['index'].strip()}: {q}")
            continue
        meta = {"category": q["category"], "l2_category": q["l2_category"]}
        if rotated_in_file:
            group = q["index"] % ROTATION_STRIDE
            meta |= {"group": str(group), "rotations": sizes[group], "options": q["options"]}
            found.add(line, Example(str(q["index"]), q["image"], q["question"], q["answer"], meta))
            continue
        for r, (qid, options, answer) in enumerate(rotations(q)):
            rotation = meta | {"group": str(q["index"]), "rotations": len(options), "options": options}
            rotation[LLAVA_KEY] = {"question_id": str(q["index"]), "round_id": str(r)}
            found.add(line, Example(qid, q["image"], q["question"], answer, rotation))
    return found.examples()


def load(path: Path) -> Examples:
    """``DIR/mmbench_dev_20230712.tsv``, or the TSV file ``path`` names."""
    path = Path(path)
    return load_file(path if path.is_file() else path / TSV_FILE)


def prompt(example: Example) -> str:
    """The question (hint first), its lettered options, one a line, and MMBench's instruction."""
    return choice_prompt(example.question, example.meta["options"], OPTION_LETTER)


def score(predictions: dict[str, str], examples: list[Example]) -> dict[str, Any]:
    """CircularEval: ``accuracy``, ``categories``, ``l2_categories`` over questions (groups), in percent."""
    groups: dict[str, list[Example]] = {}
    for e in examples:
        groups.setdefault(e.meta["group"], []).append(e)

    def right(members: list[Example]) -> bool:
        answered = [option_letter(predictions.get(e.question_id, ""), e.meta["options"]) for e in members]
        every = all(a == e.answer for a, e in zip(answered, members))
        return len(members) == members[0].meta["rotations"] and every

    marks = {name: right(members) for name, members in groups.items()}
    by: dict[str, dict[str, list[bool]]] = {"category": {}, "l2_category": {}}
    for name, members in groups.items():
        for key, table in by.items():
            table.setdefault(members[0].meta[key] or "(none)", []).append(marks[name])
    return {
        "accuracy": accuracy(marks.values()),
        "categories": {c: accuracy(m) for c, m in sorted(by["category"].items())},
        "l2_categories": {c: accuracy(m) for c, m in sorted(by["l2_category"].items())},
    }
