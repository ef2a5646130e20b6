"""Check ``moai.verbalize.official`` against verbalization goldens of the official MoAI code.

Golden files are JSON lines in the format of tests/fixtures/README.md (``verbalize_public.jsonl``)::

    {"case": str, "kind": "seg"|"od"|"sgg"|"ocr"|"aux", "input": {...},
     "expected": str | "expected_error": str, ["expected_numpy2": str], ...}

Each neutral ``input`` is converted to the plain inputs of the verbalizers (the official templates:
docs/verbalization.md §3), the result is compared byte for byte with the expected string, and the last printed line is
``N/M exact`` where M counts the cases with an expected string (malformed lines count as failures),
followed by `` (K documented deviations: ...)`` for the ``expected_error`` cases, which this project
handles by choice (e.g. the official OCR ``TypeError`` on ``None`` becomes an empty sentence).

The SGG order is whatever ``np.argpartition`` returns in the official code: it depends on the numpy
version and, for numpy 2, on the CPU (x86-simd-sort with AVX2 / AVX-512). ``expected`` is numpy 1.26's
order and ``expected_numpy2`` (where present) the order of the generator's numpy 2.4 machine. By default
(``--selection introselect``) the portable re-implementation of numpy 1.26's introselect is used and
compared with ``expected`` on every machine; ``--selection numpy`` calls the installed ``np.argpartition``
and is compared with ``expected_numpy2`` under numpy >= 2 (exact only on a CPU that selects like the
generator's).

Usage: ``python -m moai.compat.verbalize_golden FILE.jsonl [--selection introselect|numpy]``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..perception.vocab import coco_panoptic_classes, owlv2_queries
from ..verbalize.official import (
    DEFAULT_SELECTION,
    SELECTION_INTROSELECT,
    SELECTION_NUMPY,
    join_aux,
    psg_predicates,
    verbalize_detections,
    verbalize_ocr,
    verbalize_relations,
    verbalize_segments,
)

#: Under numpy >= 2 the ``expected_numpy2`` strings apply to ``selection='numpy'`` (argpartition order).
NUMPY2 = int(np.__version__.split(".")[0]) >= 2
#: How many characters of context to show around the first difference.
DIFF_CONTEXT = 40
#: Fill value of the HF panoptic post-processor when nothing is segmented (``zeros - 1``).
NO_MASK_FILL = -1


class MalformedCase(ValueError):
    """A golden line that cannot be turned into verbalizer inputs."""


# --- small validators -------------------------------------------------------------------------------------------


def _get(mapping: Any, key: str, where: str) -> Any:
    if not isinstance(mapping, Mapping):
        raise MalformedCase(f"{where} must be an object, got {type(mapping).__name__}")
    if key not in mapping:
        raise MalformedCase(f"missing key {where}.{key}")
    return mapping[key]


def _list(value: Any, where: str) -> list:
    if not isinstance(value, list):
        raise MalformedCase(f"{where} must be a list, got {type(value).__name__}")
    return value


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedCase(f"{where} must be an integer, got {value!r}")
    return value


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedCase(f"{where} must be a number, got {value!r}")
    return float(value)


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise MalformedCase(f"{where} must be a string, got {value!r}")
    return value


def _canvas(inp: Any, where: str) -> tuple[int, int]:
    """``canvas`` as ``(width, height)``; the public goldens are square, so the order is moot there."""
    canvas = _list(_get(inp, "canvas", where), f"{where}.canvas")
    if len(canvas) != 2:
        raise MalformedCase(f"{where}.canvas must have 2 entries, got {canvas!r}")
    width, height = (_int(v, f"{where}.canvas") for v in canvas)
    if width <= 0 or height <= 0:
        raise MalformedCase(f"{where}.canvas must be positive, got {canvas!r}")
    return width, height


def _vocab_index(vocab: Sequence[str], name: Any, where: str) -> int:
    name = _str(name, where)
    try:
        return vocab.index(name)
    except ValueError:
        raise MalformedCase(f"{where}: unknown name {name!r}") from None


# --- neutral input -> verbalizer inputs (tests/fixtures/README.md) -------------------------------------------------


def seg_sentence(inp: Any, where: str = "input") -> str:
    """Paint the rects into an id map (segment i -> id i + 1, list order) and verbalize it."""
    width, height = _canvas(inp, where)
    segments = _list(_get(inp, "segments", where), f"{where}.segments")
    coco = coco_panoptic_classes()
    seg_map = np.zeros((height, width), dtype=np.int32)
    if not segments:
        seg_map[:] = NO_MASK_FILL
    named: list[tuple[int, str]] = []
    for i, segment in enumerate(segments):
        at = f"{where}.segments[{i}]"
        label = coco[_vocab_index(coco, _get(segment, "label", at), f"{at}.label")]
        for j, rect in enumerate(_list(_get(segment, "rects", at), f"{at}.rects")):
            rect = _list(rect, f"{at}.rects[{j}]")
            if len(rect) != 4:
                raise MalformedCase(f"{at}.rects[{j}] must have 4 entries, got {rect!r}")
            x1, y1, x2, y2 = (_int(v, f"{at}.rects[{j}]") for v in rect)
            seg_map[y1:y2, x1:x2] = i + 1
        named.append((i + 1, label))
    return verbalize_segments(seg_map, named, canvas=(width, height))


def od_sentence(inp: Any, where: str = "input") -> str:
    """Detections in list order; the label comes from ``label_index`` into the 1847 OWLv2 queries."""
    canvas = _canvas(inp, where)
    detections = _list(_get(inp, "detections", where), f"{where}.detections")
    queries = owlv2_queries()
    boxes, scores, labels = [], [], []
    for i, det in enumerate(detections):
        at = f"{where}.detections[{i}]"
        box = _list(_get(det, "box", at), f"{at}.box")
        if len(box) != 4:
            raise MalformedCase(f"{at}.box must have 4 entries, got {box!r}")
        boxes.append([_number(v, f"{at}.box") for v in box])
        scores.append(_number(_get(det, "score", at), f"{at}.score"))
        if isinstance(det, Mapping) and "label_index" in det:
            index = _int(det["label_index"], f"{at}.label_index")
            if not 0 <= index < len(queries):
                raise MalformedCase(f"{at}.label_index {index} outside 0..{len(queries) - 1}")
            if "label" in det and det["label"] != queries[index]:
                raise MalformedCase(f"{at}.label {det['label']!r} != queries[{index}] {queries[index]!r}")
            labels.append(queries[index])
        else:
            labels.append(queries[_vocab_index(queries, _get(det, "label", at), f"{at}.label")])
    return verbalize_detections(np.asarray(boxes, dtype=np.float32).reshape(-1, 4), scores, labels, canvas)


def sgg_sentence(inp: Any, where: str = "input", selection: str = DEFAULT_SELECTION) -> str:
    """Build ``rel_pairs`` (R, 2) and float32 ``rel_dists`` (R, 1 + 56) and verbalize them.

    Column 0 holds ``background_score`` (default 0), column ``PREDICATES.index(p) + 1`` the score of
    ``p`` (``other_predicates`` first, the main predicate last), all other columns 0.
    """
    coco = coco_panoptic_classes()
    predicates = psg_predicates()
    objects = _list(_get(inp, "objects", where), f"{where}.objects")
    labels = [coco[_vocab_index(coco, name, f"{where}.objects[{i}]")] for i, name in enumerate(objects)]
    relations = _list(_get(inp, "relations", where), f"{where}.relations")
    pairs = np.zeros((len(relations), 2), dtype=np.int64)
    dists = np.zeros((len(relations), 1 + len(predicates)), dtype=np.float32)
    for k, rel in enumerate(relations):
        at = f"{where}.relations[{k}]"
        pairs[k] = (
            _int(_get(rel, "subject", at), f"{at}.subject"),
            _int(_get(rel, "object", at), f"{at}.object"),
        )
        dists[k, 0] = _number(rel.get("background_score", 0.0), f"{at}.background_score")
        others = rel.get("other_predicates", {})
        if not isinstance(others, Mapping):
            raise MalformedCase(f"{at}.other_predicates must be an object")
        for name, score in others.items():
            dists[k, 1 + _vocab_index(predicates, name, f"{at}.other_predicates")] = _number(score, at)
        main = _vocab_index(predicates, _get(rel, "predicate", at), f"{at}.predicate")
        dists[k, 1 + main] = _number(_get(rel, "score", at), f"{at}.score")
    return verbalize_relations(labels, pairs, dists, predicates=predicates, selection=selection)


def ocr_sentence(inp: Any, where: str = "input") -> str:
    """``ocr_result`` is ``PaddleOCR.ocr(img)[0]``: ``[[box, [text, conf]], ...]`` or ``null``."""
    result = _get(inp, "ocr_result", where)
    if result is None:
        return verbalize_ocr(None)
    lines = []
    for i, line in enumerate(_list(result, f"{where}.ocr_result")):
        at = f"{where}.ocr_result[{i}]"
        if not isinstance(line, list) or len(line) != 2:
            raise MalformedCase(f"{at} must be [box, [text, confidence]]")
        recognized = _list(line[1], f"{at}[1]")
        if len(recognized) != 2:
            raise MalformedCase(f"{at}[1] must be [text, confidence]")
        lines.append((_str(recognized[0], f"{at}[1][0]"), _number(recognized[1], f"{at}[1][1]")))
    return verbalize_ocr(lines)


def aux_sentence(inp: Any, where: str = "input", selection: str = DEFAULT_SELECTION) -> str:
    """The four parts joined as the official ``make_human_string``."""
    return join_aux(
        seg_sentence(_get(inp, "seg", where), f"{where}.seg"),
        od_sentence(_get(inp, "od", where), f"{where}.od"),
        sgg_sentence(_get(inp, "sgg", where), f"{where}.sgg", selection),
        ocr_sentence(_get(inp, "ocr", where), f"{where}.ocr"),
    )


KINDS: dict[str, Callable[..., str]] = {
    "seg": seg_sentence,
    "od": od_sentence,
    "sgg": sgg_sentence,
    "ocr": ocr_sentence,
    "aux": aux_sentence,
}
#: The kinds whose result depends on the SGG top-k selection order.
_ORDER_DEPENDENT = frozenset({"sgg", "aux"})


def case_sentence(kind: str, inp: Any, selection: str = DEFAULT_SELECTION) -> str:
    """The verbalizer output for one neutral ``input`` of the given ``kind``."""
    if kind not in KINDS:
        raise MalformedCase(f"unknown kind {kind!r} (known: {', '.join(KINDS)})")
    if kind in _ORDER_DEPENDENT:
        return KINDS[kind](inp, "input", selection)
    return KINDS[kind](inp, "input")


# --- runner ------------------------------------------------------------------------------------------------------


def first_difference(expected: str, got: str) -> int:
    """Index of the first differing character (the shorter length if one is a prefix of the other)."""
    for i, (a, b) in enumerate(zip(expected, got)):
        if a != b:
            return i
    return min(len(expected), len(got))


def _report_mismatch(name: str, expected: str, got: str, out: Callable[[str], Any]) -> None:
    pos = first_difference(expected, got)
    lo = max(0, pos - DIFF_CONTEXT)
    out(f"MISMATCH {name}: first difference at character {pos}")
    out(f"  expected: {expected!r}")
    out(f"  got:      {got!r}")
    out(f"  expected[{lo}:]: {expected[lo : pos + DIFF_CONTEXT]!r}")
    out(f"  got[{lo}:]:      {got[lo : pos + DIFF_CONTEXT]!r}")


def _expected(case: Mapping[str, Any], selection: str) -> str | None:
    """The expected string for this numpy and selection, ``None`` for an ``expected_error`` case.

    ``expected`` is the numpy 1.26 result; ``expected_numpy2`` (where present) applies to the installed
    ``np.argpartition`` under numpy >= 2, while the portable introselect always reproduces ``expected``.
    """
    has_expected = "expected" in case
    if has_expected == ("expected_error" in case):
        raise MalformedCase("needs exactly one of 'expected' and 'expected_error'")
    if not has_expected:
        return None
    numpy2_order = NUMPY2 and selection == SELECTION_NUMPY
    key = "expected_numpy2" if numpy2_order and "expected_numpy2" in case else "expected"
    return _str(case[key], key)


def read_golden_lines(path: str | Path) -> list[str]:
    """The lines of a golden file; ``OSError`` / ``ValueError`` naming the file when it cannot be read."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a directory, not a golden JSONL file")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (expected a golden JSONL file)")
    try:
        with open(path, encoding="utf-8") as fh:
            # Split on "\n" only: str.splitlines() would also split inside raw U+2028 / U+0085 in texts.
            return fh.read().split("\n")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path}: not a UTF-8 text file (byte {err.start}), not a golden JSONL file"
        ) from None


def check_golden_lines(lines: Sequence[str], path: str | Path) -> None:
    """Refuse a file that holds no case at all: empty, or not one line of it a JSON object."""
    numbered = [(n, text) for n, text in enumerate(lines, start=1) if text.strip()]
    if not numbered:
        raise ValueError(f"{path}: empty file, no golden case")
    first_error = None
    for lineno, text in numbered:
        try:
            if isinstance(json.loads(text), dict):
                return
            first_error = first_error or f"line {lineno} is not a JSON object"
        except json.JSONDecodeError as err:
            first_error = first_error or f"line {lineno} column {err.colno}: {err.msg}"
        except RecursionError:
            first_error = first_error or f"line {lineno}: JSON nested too deeply"
    raise ValueError(f"{path}: not a golden JSONL file, no line is a JSON case ({first_error})")


def run(path: str, out: Callable[[str], Any] = print, selection: str = DEFAULT_SELECTION) -> int:
    """Run every case of the golden JSONL ``path``; print failures and, last, ``N/M exact (...)``.

    ``selection`` is passed to ``verbalize_relations`` (``"introselect"``, the default: numpy 1.26's order
    anywhere, compared with ``expected``; ``"numpy"``: the installed ``np.argpartition``, compared with
    ``expected_numpy2`` under numpy >= 2). Returns 0 only when every case with an expected string is
    reproduced exactly (N == M) and the file held at least one case; malformed lines are reported with
    their line number and count as failures. An unreadable file prints ``cannot read ...`` and returns 1
    (``run_file`` raises instead).
    """
    try:
        lines = read_golden_lines(path)
    except (OSError, ValueError) as exc:
        out(f"cannot read {path}: {exc}")
        out("0/0 exact")
        return 1
    return run_lines(lines, str(path), out, selection)


def run_file(path: str, out: Callable[[str], Any] = print, selection: str = DEFAULT_SELECTION) -> int:
    """``run`` for the command line: a file that cannot be read or holds no case raises (exit code 2)."""
    lines = read_golden_lines(path)
    check_golden_lines(lines, path)
    return run_lines(lines, str(path), out, selection)


def run_lines(
    lines: Sequence[str], source: str, out: Callable[[str], Any], selection: str = DEFAULT_SELECTION
) -> int:
    """The body of ``run``: check each line of ``source`` (already read) and print the summary."""
    exact = checked = 0
    deviations: list[str] = []
    for lineno, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        name = f"line {lineno}"
        try:
            try:
                case = json.loads(text)
            except json.JSONDecodeError as exc:
                raise MalformedCase(f"bad JSON ({source}:{lineno} column {exc.colno}: {exc.msg})") from None
            name = f"line {lineno} ({_str(_get(case, 'case', 'case'), 'case')})"
            kind = _str(_get(case, "kind", "case"), "kind")
            expected = _expected(case, selection)
            got = case_sentence(kind, _get(case, "input", "case"), selection)
        except MalformedCase as exc:
            checked += 1
            out(f"MALFORMED {name}: {exc}")
            continue
        except Exception as exc:  # a crash in the verbalizer must not stop the run
            checked += 1
            out(f"ERROR {name}: {type(exc).__name__}: {exc}")
            continue
        if expected is None:
            deviations.append(case["case"])
            continue
        checked += 1
        if got == expected:
            exact += 1
        else:
            _report_mismatch(name, expected, got, out)

    summary = f"{exact}/{checked} exact"
    if deviations:
        summary += f" ({len(deviations)} documented deviations: {', '.join(deviations)})"
    out(summary)
    return 0 if exact == checked and (checked or deviations) else 1


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: ``verbalize_golden FILE.jsonl [--selection introselect|numpy]``."""
    parser = argparse.ArgumentParser(
        prog="python -m moai.compat.verbalize_golden", description=__doc__.split("\n")[0]
    )
    parser.add_argument("path", help="golden JSONL file (format: tests/fixtures/README.md)")
    parser.add_argument(
        "--selection",
        choices=(SELECTION_NUMPY, SELECTION_INTROSELECT),
        default=DEFAULT_SELECTION,
        help="SGG top-k order: numpy 1.26's introselect (default, portable) or the installed np.argpartition",
    )
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help / usage errors
        return int(exc.code or 0)
    return run(args.path, selection=args.selection)


if __name__ == "__main__":
    raise SystemExit(main())
