"""``v2`` verbalizer: a cleaner aux string for newly trained models (not for MoAI-7B), from a ``Perception``.

It lives here, not in ``moai.verbalize``, because it reads ``Perception`` objects and ``moai.verbalize`` sits
below perception (docs/architecture.md); its sentence pieces are ``moai.verbalize.official``'s.

The official strings (``moai/verbalize/official.py``, docs/verbalization.md) have quirks a new model need
not learn: OWLv2 boxes that repeat the PS segments, orders that follow model query ids or numpy's
``argpartition``, a scene-graph sentence that silently disappears when there are fewer relations than
objects, and extra spaces for empty parts. ``v2``:

* objects: the PS segments plus the OWOD detections with ``score >= od_threshold`` whose box does not
  duplicate a PS segment (IoU >= ``dedupe_iou``); labels suffix-stripped; grouped by label with a count,
  groups ordered by count (descending) then label, boxes within a group in reading order (top, then left):
  ``The image includes objects and their bounding box coordinates: person (2): [..], [..]; dog (1): [..].``
* relations: the ``top_k`` highest-scoring relations with ``score >= sgg_threshold``, sorted by score
  (ties: emission order), labels numbered like the official (``person (#2)``);
* OCR: the official sentence (``confidence >= ocr_threshold``, reader order);
* the non-empty sentences joined with single spaces.

Measured in the ShapesWorld ablation (docs/shapesworld.md, "Trained variants"): every MoAI stage trained on
it scores 83.0 % of the held-out questions against 83.4 % on ``official`` and 82.1 % on ``compact``, within
about one standard error; ``official`` stays the default style everywhere.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from ..verbalize.official import (
    ITEM_SEPARATOR,
    OCR_CONFIDENCE_THRESHOLD,
    OD_SCORE_THRESHOLD,
    RELATION_PREFIX,
    SGG_SCORE_THRESHOLD,
    SGG_TOP_K,
    format_box,
    number_duplicates,
    strip_label_suffixes,
    verbalize_ocr,
)
from .types import Box, Perception, box_iou

OBJECT_PREFIX = "The image includes objects and their bounding box coordinates: "
GROUP_SEPARATOR = "; "
BOX_SEPARATOR = ", "


@dataclass(frozen=True)
class V2Options:
    """Thresholds of the v2 verbalizer (defaults: the official verbalizer's values)."""

    od_threshold: float = OD_SCORE_THRESHOLD
    """Keep OWOD detections with at least this score."""
    dedupe_iou: float = 0.5
    """An OWOD box with at least this IoU against a PS segment box is a duplicate and dropped."""
    sgg_top_k: int = SGG_TOP_K
    """At most this many relations."""
    sgg_threshold: float = SGG_SCORE_THRESHOLD
    """Keep relations with at least this score."""
    ocr_threshold: float = OCR_CONFIDENCE_THRESHOLD
    """Keep OCR lines with at least this confidence."""


def v2_objects(p: Perception, options: V2Options = V2Options()) -> list[tuple[str, Box]]:
    """``(label, pixel box)`` of the segments and the non-duplicate confident detections."""
    objects = [(strip_label_suffixes(s.label), s.box) for s in p.segments]
    segment_boxes = [s.box for s in p.segments]
    for det in p.detections:
        if det.score < options.od_threshold:
            continue
        if any(box_iou(det.box, box) >= options.dedupe_iou for box in segment_boxes):
            continue
        objects.append((det.label, det.box))
    return objects


def verbalize_objects_v2(p: Perception, options: V2Options = V2Options()) -> str:
    """The grouped, counted object sentence (module docstring); ``''`` without objects."""
    width, height = p.image_size
    groups: dict[str, list[Box]] = defaultdict(list)
    for label, box in v2_objects(p, options):
        groups[label].append(box)
    if not groups:
        return ""
    items = []
    for label in sorted(groups, key=lambda name: (-len(groups[name]), name)):
        boxes = sorted(groups[label], key=lambda b: (b[1], b[0], b[3], b[2]))
        normalised = [format_box([b[0] / width, b[1] / height, b[2] / width, b[3] / height]) for b in boxes]
        items.append(f"{label} ({len(boxes)}): {BOX_SEPARATOR.join(normalised)}")
    return OBJECT_PREFIX + GROUP_SEPARATOR.join(items) + "."


def relation_items_v2(p: Perception, options: V2Options = V2Options()) -> list[str]:
    """``"subject is predicate object"`` for the top relations by score (official object numbering)."""
    names = number_duplicates([strip_label_suffixes(o.label) for o in p.objects])
    kept = [r for r in p.relations if r.score >= options.sgg_threshold]
    kept = sorted(kept, key=lambda r: -r.score)[: options.sgg_top_k]  # stable: ties keep emission order
    return [f"{names[r.subject]} is {r.predicate} {names[r.object]}" for r in kept]


def verbalize_relations_v2(p: Perception, options: V2Options = V2Options()) -> str:
    """The top relations by score, deterministic; ``''`` when none passes the threshold."""
    items = relation_items_v2(p, options)
    return RELATION_PREFIX + ITEM_SEPARATOR.join(items) + "." if items else ""


def verbalize_v2(p: Perception, options: V2Options = V2Options()) -> str:
    """The v2 aux string: non-empty object, relation and OCR sentences joined by single spaces."""
    parts = (
        verbalize_objects_v2(p, options),
        verbalize_relations_v2(p, options),
        verbalize_ocr([(t.text, t.score) for t in p.text_lines], threshold=options.ocr_threshold),
    )
    return " ".join(part for part in parts if part)
