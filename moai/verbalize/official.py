"""Byte-exact re-implementation of the official MoAI verbalizers.

MoAI (Lee et al., "MoAI: Mixture of All Intelligence for Large Language and Vision Models", arXiv 2403.07508)
turns the outputs of four external computer-vision models (panoptic segmentation, open-world detection,
scene-graph generation, OCR) into English sentences that are embedded as auxiliary tokens. This module
reproduces the strings of the official code (`moai/utils/utils.py`, commit a7728a8) character for character,
including its quirks, on plain Python / numpy inputs. Templates, numeric details and quirks:
docs/verbalization.md.

Everything here is pure: no torch, no model. Thresholds and the canvas size are keyword arguments whose
defaults are the official values.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import numpy as np

from ..io import read_json

# --- official constants (docs/verbalization.md §1) ----------------------------------------------------------

#: Side of the square canvas every external model runs on; boxes are normalised by it.
OFFICIAL_CANVAS = 490
#: OWLv2 detections are kept when ``score >= 0.5`` (float32 compare).
OD_SCORE_THRESHOLD = 0.5
#: PSGTR: top-``min(10, #objects)`` relations by max predicate probability ...
SGG_TOP_K = 10
#: ... kept when that probability is ``>= 0.8`` (float32 compare).
SGG_SCORE_THRESHOLD = 0.8
#: PaddleOCR lines are kept when ``confidence >= 0.85`` (Python float compare).
OCR_CONFIDENCE_THRESHOLD = 0.85
#: Box coordinates are printed with ``f"{round(v, 2):.2f}"``.
BOX_DECIMALS = 2
#: Substrings removed from COCO-panoptic names, in this order (``str.replace``, anywhere in the name).
LABEL_SUFFIXES: tuple[str, ...] = ("-merged", "-other", "-stuff")

BOX_PREFIX = "The image includes bounding box coordinates and their objects: "
RELATION_PREFIX = "The image includes relationships between objects: "
OCR_PREFIX = "The image includes text descriptions: "
ITEM_SEPARATOR = ", and "
AUX_SEPARATOR = " "

Canvas = int | tuple[int, int]

_DATA_DIR = Path(__file__).resolve().parent / "data"


# --- vocabulary (package data, docs/verbalization.md §1) -----------------------------------------------------


@cache
def psg_predicates() -> tuple[str, ...]:
    """The 56 PSG predicates (``moai/verbalize/data/psg_predicates_56.json``); index 0 corresponds to column
    1 of PSGTR's ``rel_dists``. The label vocabularies of the perception models are in ``moai.perception.vocab``."""
    return tuple(read_json(_DATA_DIR / "psg_predicates_56.json", "a JSON list of predicate names"))


# --- small building blocks ------------------------------------------------------------------------------------


def _canvas_wh(canvas: Canvas) -> tuple[int, int]:
    """Return ``(width, height)`` for an int (square) or ``(width, height)`` canvas."""
    if isinstance(canvas, int | np.integer):
        return int(canvas), int(canvas)
    width, height = canvas
    return int(width), int(height)


def format_coordinate(value: float) -> str:
    """Format one normalised coordinate as the official ``box2string`` does: ``f"{round(v, 2):.2f}"``.

    Python's ``round`` is round-half-even on the exact binary value (``0.125 -> "0.12"``), and a tiny
    negative value keeps its sign (``-0.0006 -> "-0.00"``).
    """
    return f"{round(float(value), BOX_DECIMALS):.{BOX_DECIMALS}f}"


def format_box(box: Sequence[float] | np.ndarray) -> str:
    """Format an already-normalised box as ``[a, b, c, d]`` (docs/verbalization.md §2)."""
    return "[" + ", ".join(format_coordinate(v) for v in np.asarray(box).reshape(-1)) + "]"


def normalize_boxes_divide(boxes: np.ndarray | Sequence[Sequence[float]], canvas: Canvas) -> np.ndarray:
    """Normalise pixel boxes by float32 true division, as the official OD path (``boxes / 490`` on CPU).

    The boxes are cast to float32 first (OWLv2's tensors are float32); x coordinates are divided by the
    canvas width and y coordinates by its height. Nothing is clipped.
    """
    width, height = _canvas_wh(canvas)
    out = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    divisor = np.array([width, height, width, height], dtype=np.float32)
    return out / divisor


def normalize_boxes_scale(boxes: np.ndarray | Sequence[Sequence[float]], canvas: Canvas) -> np.ndarray:
    """Normalise pixel boxes as detectron2 ``Boxes.scale(1/W, 1/H)`` does in the official seg path.

    The in-place multiply of a float32 tensor by a Python float casts the factor to float32 first, so
    this is ``x * float32(1/W)`` (``490 * float32(1/490) == 0.99999994``), not a true division.
    """
    width, height = _canvas_wh(canvas)
    out = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    factor = np.array([1.0 / width, 1.0 / height, 1.0 / width, 1.0 / height], dtype=np.float32)
    return out * factor


def mask_bounding_boxes(segment_id_map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bounding boxes of every positive segment id present in ``segment_id_map`` (H, W).

    Follows detectron2 ``BitMasks.get_bounding_boxes``: ``[x_min, y_min, x_max + 1, y_max + 1]`` in
    float32 pixels. Ids are returned in ascending order; ids ``<= 0`` (unlabelled / background) are ignored
    and ids without pixels simply do not appear, as in the official ``make_seg_prompt``.
    """
    seg = np.asarray(segment_id_map)
    if seg.ndim != 2:
        raise ValueError(f"segment_id_map must be 2-D (H, W), got shape {seg.shape}")
    ids = np.unique(seg[seg > 0])
    boxes = np.zeros((len(ids), 4), dtype=np.float32)
    for row, seg_id in enumerate(ids):
        mask = seg == seg_id
        cols = np.flatnonzero(mask.any(axis=0))
        rows = np.flatnonzero(mask.any(axis=1))
        boxes[row] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return ids, boxes


def strip_label_suffixes(name: str, suffixes: Sequence[str] = LABEL_SUFFIXES) -> str:
    """Remove ``-merged``, ``-other``, ``-stuff`` (in that order, anywhere in the name) like the official code.

    ``"wall-other-merged" -> "wall"``, ``"door-stuff" -> "door"``, ``"wall-brick"`` is unchanged.
    """
    for suffix in suffixes:
        name = name.replace(suffix, "")
    return name


def number_duplicates(labels: Sequence[str]) -> list[str]:
    """Append ``" (#k)"`` to labels that occur more than once in the whole list (official SGG naming).

    ``["person", "person", "cup"] -> ["person (#1)", "person (#2)", "cup"]``. Numbering follows list order
    and counts every occurrence, not only the ones that end up in a relation.
    """
    totals = Counter(labels)
    seen: Counter[str] = Counter()
    out = []
    for label in labels:
        if totals[label] > 1:
            seen[label] += 1
            out.append(f"{label} (#{seen[label]})")
        else:
            out.append(label)
    return out


def _sentence(prefix: str, items: Sequence[str]) -> str:
    """``prefix + ", and ".join(items) + "."``, or ``''`` when there are no items."""
    if not items:
        return ""
    return prefix + ITEM_SEPARATOR.join(items) + "."


# --- the four verbalizers ---------------------------------------------------------------------------------------


def verbalize_segments(
    segment_id_map: np.ndarray,
    segments: Sequence[tuple[int, str]],
    canvas: Canvas = OFFICIAL_CANVAS,
) -> str:
    """Panoptic-segmentation sentence (official ``make_seg_prompt``; docs/verbalization.md §3).

    Args:
        segment_id_map: (H, W) integer panoptic id map (HF ``post_process_panoptic_segmentation``
            ``"segmentation"``); ids ``<= 0`` are unlabelled.
        segments: ``(segment_id, label_name)`` in ``segments_info`` order, with COCO-panoptic names.
        canvas: the size the boxes are normalised by (official: 490).

    Boxes come from the masks of ids ``1..max`` that have pixels, in id order, and are paired with
    ``segments`` **by position** (the official code ignores ``segment_id`` here). The official bare
    ``except`` turns two situations into the empty string, reproduced here:

    * no positive id in the map (``torch.stack([])`` fails);
    * fewer non-empty masks than segments, e.g. a segment whose pixels were all overwritten
      (``IndexError`` on the box list).
    """
    _, pixel_boxes = mask_bounding_boxes(segment_id_map)
    if len(pixel_boxes) == 0 or len(segments) > len(pixel_boxes):
        return ""
    boxes = normalize_boxes_scale(pixel_boxes, canvas)
    items = [f"{format_box(boxes[i])} {strip_label_suffixes(label)}" for i, (_, label) in enumerate(segments)]
    return _sentence(BOX_PREFIX, items)


def verbalize_detections(
    boxes: np.ndarray | Sequence[Sequence[float]],
    scores: np.ndarray | Sequence[float],
    labels: Sequence[str],
    canvas: Canvas = OFFICIAL_CANVAS,
    threshold: float = OD_SCORE_THRESHOLD,
) -> str:
    """Open-world detection sentence (official ``make_od_prompt``; docs/verbalization.md §3).

    Args:
        boxes: (N, 4) ``[x1, y1, x2, y2]`` in pixels, in post-processor (query) order.
        scores: (N,) detection scores.
        labels: (N,) label names (the OWLv2 query strings; resolve them by index, names repeat).
        canvas: normaliser (official: 490).
        threshold: keep ``score >= threshold``.

    Scores and boxes are float32 as in the official tensors: the comparison is done in float32 and the
    boxes are divided by the canvas in float32 (correctly rounded, the CPU behaviour; on CUDA the official
    pipeline multiplied by ``float32(1/490)`` and can differ at exact ``.xx5`` values, see
    docs/verbalization.md §2). Boxes are not clipped, so values below 0 or above 1 (and ``-0.00``) can appear.
    """
    scores32 = np.asarray(scores, dtype=np.float32).reshape(-1)
    boxes32 = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    if not (len(scores32) == len(boxes32) == len(labels)):
        raise ValueError(
            f"boxes ({len(boxes32)}), scores ({len(scores32)}) and labels ({len(labels)}) differ in length"
        )
    keep = np.flatnonzero(scores32 >= np.float32(threshold))
    normalized = normalize_boxes_divide(boxes32[keep], canvas)
    items = [f"{format_box(box)} {labels[i]}" for box, i in zip(normalized, keep)]
    return _sentence(BOX_PREFIX, items)


# --- top-k selection for the SGG verbalizer ------------------------------------------------------------------
#
# The official code takes its top-k relations with ``np.argpartition``, whose (unsorted) output order is an
# implementation detail: numpy <= 1.26 always runs its scalar introselect, numpy >= 2 dispatches float32
# input to x86-simd-sort when the CPU has AVX2 / AVX-512 (and falls back to introselect otherwise). The
# order shows up verbatim in the sentence. ``introselect_argpartition`` re-implements numpy's scalar
# introselect so that the official-era order (numpy 1.26; the official code predates numpy 2, so MoAI-7B was
# trained on verbalizations in this order) is reproduced on any machine. That is the default.

#: ``verbalize_relations(selection=...)``: the installed ``np.argpartition`` (what the official code does
#: on this numpy / CPU) or the portable re-implementation of numpy's scalar introselect (numpy <= 1.26).
SELECTION_NUMPY = "numpy"
SELECTION_INTROSELECT = "introselect"
DEFAULT_SELECTION = SELECTION_INTROSELECT
#: Below this many elements left of ``kth`` introselect uses an O(n * kth) selection sort.
_SMALL_KTH = 3
#: Groups of five for the median-of-medians fallback pivot.
_GROUP = 5


def _less(a: float, b: float) -> bool:
    """numpy's float ordering for sorting: NaN sorts after every number."""
    return a < b or (b != b and a == a)


def _median5(values: Sequence[float], order: list[int], start: int) -> int:
    """Index (0..4, relative to ``start``) of the median of five, with numpy's exact swap sequence."""

    def lt(i: int, j: int) -> bool:
        return _less(values[order[start + i]], values[order[start + j]])

    def swap(i: int, j: int) -> None:
        order[start + i], order[start + j] = order[start + j], order[start + i]

    for i, j in ((1, 0), (4, 3), (3, 0), (4, 1), (2, 1)):
        if lt(i, j):
            swap(i, j)
    if lt(3, 2):
        return 1 if lt(3, 1) else 3
    return 2


def _introselect(values: Sequence[float], order: list[int], start: int, num: int, kth: int) -> None:
    """Partially sort ``order[start:start + num]`` (indices into ``values``) so that position ``kth`` holds
    the index of the kth smallest value: numpy's ``introselect_`` (arg variant, no pivot cache)."""

    def val(i: int) -> float:
        return values[order[start + i]]

    def swap(i: int, j: int) -> None:
        order[start + i], order[start + j] = order[start + j], order[start + i]

    low, high = 0, num - 1
    if kth - low < _SMALL_KTH:  # selection sort of the first kth + 1 positions
        for i in range(kth + 1):
            smallest = i
            for j in range(i + 1, num):
                if _less(val(j), val(smallest)):
                    smallest = j
            swap(i, smallest)
        return
    if kth == num - 1:  # maximum only; the last of equal maxima wins
        largest = low
        for j in range(low + 1, num):
            if not _less(val(j), val(largest)):
                largest = j
        swap(kth, largest)
        return

    depth_limit = 2 * (num.bit_length() - 1)
    while low + 1 < high:
        ll, hh = low + 1, high
        if depth_limit > 0 or hh - ll < _GROUP:
            mid = low + (high - low) // 2  # median of three, moved to low; the minimum goes to low + 1
            if _less(val(high), val(mid)):
                swap(high, mid)
            if _less(val(high), val(low)):
                swap(high, low)
            if _less(val(low), val(mid)):
                swap(low, mid)
            swap(mid, low + 1)
        else:  # median of medians of five
            count = hh - ll
            groups = count // _GROUP
            for g in range(groups):
                swap(ll + g * _GROUP + _median5(values, order, start + ll + g * _GROUP), ll + g)
            if groups > 2:
                _introselect(values, order, start + ll, groups, groups // 2)
            swap(ll + groups // 2, low)
            ll, hh = ll - 1, hh + 1
        depth_limit -= 1

        pivot = val(low)
        while True:  # unguarded partition around the pivot in ``low``
            ll += 1
            while _less(val(ll), pivot):
                ll += 1
            hh -= 1
            while _less(pivot, val(hh)):
                hh -= 1
            if hh < ll:
                break
            swap(ll, hh)
        swap(low, hh)
        if hh >= kth:
            high = hh - 1
        if hh <= kth:
            low = ll

    if high == low + 1 and _less(val(high), val(low)):
        swap(high, low)


def introselect_argpartition(values: np.ndarray | Sequence[float], kth: int) -> np.ndarray:
    """``np.argpartition(values, kth)`` for a 1-D array, as numpy's scalar introselect computes it.

    Bit-identical to numpy <= 1.26 (and to numpy 2 without SIMD dispatch), independent of the CPU.
    Raises ``ValueError`` for an out-of-range ``kth`` like numpy does.
    """
    flat = np.asarray(values).reshape(-1)
    num = len(flat)
    position = kth + num if kth < 0 else kth
    if not 0 <= position < num:
        raise ValueError(f"kth(={kth}) out of bounds ({num})")
    order = list(range(num))
    _introselect(flat.tolist(), order, 0, num, position)
    return np.asarray(order, dtype=np.intp)


def _top_k_candidates(scores: np.ndarray, k: int, threshold: float, selection: str) -> np.ndarray:
    """Indices of the official SGG candidates: top-k by score (unsorted) that pass ``threshold``."""
    if selection == SELECTION_INTROSELECT:
        # np.partition and np.argpartition run the same algorithm there, so the values line up.
        candidates = introselect_argpartition(scores, -k)[-k:]
        kept_values = scores[candidates]
    else:
        candidates = np.argpartition(scores, -k)[-k:]
        # The official pairs a separate np.partition result with argpartition's indices by position.
        kept_values = np.partition(scores, -k)[-k:]
    return candidates[np.flatnonzero(kept_values >= scores.dtype.type(threshold))]


def verbalize_relations(
    object_labels: Sequence[str],
    rel_pairs: np.ndarray | Sequence[Sequence[int]],
    rel_dists: np.ndarray | Sequence[Sequence[float]],
    top_k: int = SGG_TOP_K,
    threshold: float = SGG_SCORE_THRESHOLD,
    predicates: Sequence[str] | None = None,
    selection: str = DEFAULT_SELECTION,
) -> str:
    """Scene-graph sentence (official ``make_sgg_prompt``; docs/verbalization.md §3).

    Args:
        object_labels: COCO-panoptic names of PSGTR's objects (``sgg_result.labels`` resolved, 0-based).
        rel_pairs: (R, 2) ``(subject, object)`` indices into ``object_labels``.
        rel_dists: (R, 1 + #predicates) float32 scores; column 0 is background and is ignored.
        top_k: the official ``num_rel``; ``k = min(top_k, len(object_labels))`` (number of *objects*).
        threshold: keep candidates whose max predicate score is ``>= threshold`` (float32 compare).
        predicates: predicate names for columns 1..; defaults to the 56 PSG predicates.
        selection: ``"introselect"`` (default) reproduces numpy 1.26's order (the official era) on any
            machine; ``"numpy"`` calls the installed ``np.argpartition`` / ``np.partition`` exactly like
            the official code, so the order depends on the numpy version *and* on the CPU (numpy 2 uses
            x86-simd-sort with AVX2 / AVX-512).

    Labels are suffix-stripped and then numbered over the whole object list (``person (#1)``). The
    candidates are ``np.argpartition(scores, -k)[-k:]`` masked by ``np.partition(scores, -k)[-k:] >=
    threshold``; the relations are written in that (unsorted) order. Where the official code raises
    inside its bare ``except`` (fewer relations than ``k``, no relations, an out-of-range index) the
    result is ``''`` as well.
    """
    if selection not in (SELECTION_NUMPY, SELECTION_INTROSELECT):
        raise ValueError(
            f"selection must be {SELECTION_NUMPY!r} or {SELECTION_INTROSELECT!r}, got {selection!r}"
        )
    names = number_duplicates([strip_label_suffixes(label) for label in object_labels])
    predicate_names = psg_predicates() if predicates is None else tuple(predicates)
    try:
        dists = np.asarray(rel_dists, dtype=np.float32)
        pairs = np.asarray(rel_pairs)
        predicate_scores = dists[:, 1:]
        best = predicate_scores.max(axis=1)
        chosen = _top_k_candidates(best, min(top_k, len(names)), threshold, selection)
        predicate_ids = predicate_scores[chosen].argmax(axis=1)
        items = [
            f"{names[subj]} is {predicate_names[pred]} {names[obj]}"
            for (subj, obj), pred in zip(pairs[chosen].tolist(), predicate_ids.tolist())
        ]
    except (ValueError, IndexError):
        return ""
    return _sentence(RELATION_PREFIX, items)


def paddle_ocr_lines(ocr_result: Sequence | None) -> list[tuple[str, float]] | None:
    """Convert ``PaddleOCR.ocr(img)[0]`` (``[[box, (text, conf)], ...]`` or ``None``) to ``(text, conf)``."""
    if ocr_result is None:
        return None
    return [(line[1][0], line[1][1]) for line in ocr_result]


def verbalize_ocr(
    lines: Sequence[tuple[str, float]] | None,
    threshold: float = OCR_CONFIDENCE_THRESHOLD,
) -> str:
    """OCR sentence (official ``make_ocr_prompt``; docs/verbalization.md §3).

    Args:
        lines: ``(text, confidence)`` in PaddleOCR line order, or ``None`` when no text was found.
        threshold: keep ``confidence >= threshold`` (Python float compare).

    Documented deviation: the official ``make_ocr_prompt(None)`` raises ``TypeError`` ('NoneType' object
    is not iterable), which crashes the official ``eval_process`` / ``demo_process`` on images without
    text (unmerged PR #13 adds a guard). Here ``None`` -- like an empty list -- gives ``''``.
    """
    if lines is None:
        return ""
    texts = [text for text, confidence in lines if confidence >= threshold]
    return _sentence(OCR_PREFIX, texts)


def join_aux(seg: str, od: str, sgg: str, ocr: str) -> str:
    """The auxiliary string (official ``make_human_string``; docs/verbalization.md §4).

    The four parts are joined with single spaces; empty parts keep their separator, so four empty parts
    give three spaces.
    """
    return AUX_SEPARATOR.join((seg, od, sgg, ocr))
