"""``compact`` verbalizer: the aux text of a small model, without coordinates or template prose, from a ``Perception``.

MoAI's aux text (paper §3, Verbalization) is mostly template: in a ShapesWorld scene the official string is
~230 word-level tokens, of which the words that differ between scenes (colours, kinds, relations, the sign's
word) are a small part, the rest boilerplate and box coordinates. A small model whose compressor starts from
random weights averages that text into almost the same vector for every scene (docs/verbalization.md §7).
``compact`` keeps only the content, ~95 tokens there::

    objects: green triangle, blue circle, green square, sign, yellow triangle. relations: green triangle is
    left of blue circle, green triangle is above green square, ... text: XMZV.

* objects: one item per object in reading order (top, then left): each PS segment, named by the confident
  OWOD detection whose box matches it (IoU >= ``match_iou``: the detection's open-vocabulary name is the more
  specific one) or else by its own label; then the confident detections that match no segment;
* relations: v2's selection (`verbalize_v2.verbalize_relations_v2`: the ``top_k`` best above the threshold)
  with the official object numbering;
* text: the confident OCR lines in reader order;
* the non-empty parts joined with single spaces, the text part last (or first, ``text_first``: the
  ``compact-text-first`` style). A module removed from the perception (``drop``) removes its
  part (PS and OWOD share the object part: either one still names the objects).

For new models only (the bundled ShapesWorld model's choice is measured in docs/shapesworld.md); MoAI-7B
reads the official text.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..verbalize.official import (
    OCR_CONFIDENCE_THRESHOLD,
    OD_SCORE_THRESHOLD,
    SGG_SCORE_THRESHOLD,
    SGG_TOP_K,
    strip_label_suffixes,
)
from .types import Box, Perception, box_iou
from .verbalize_v2 import V2Options, relation_items_v2

OBJECTS_PREFIX = "objects: "
RELATIONS_PREFIX = "relations: "
TEXT_PREFIX = "text: "
SEPARATOR = ", "


@dataclass(frozen=True)
class CompactOptions:
    """Thresholds of the compact verbalizer (defaults: the official verbalizer's values)."""

    od_threshold: float = OD_SCORE_THRESHOLD
    """Keep OWOD detections with at least this score."""
    match_iou: float = 0.5
    """A detection names the PS segment whose box it overlaps with at least this IoU."""
    sgg_top_k: int = SGG_TOP_K
    """At most this many relations."""
    sgg_threshold: float = SGG_SCORE_THRESHOLD
    """Keep relations with at least this score."""
    ocr_threshold: float = OCR_CONFIDENCE_THRESHOLD
    """Keep OCR lines with at least this confidence."""
    text_first: bool = False
    """Put the text part first, so that the OCR words start at the same aux position in every scene (a model
    that copies the sign word letter by letter finds it where it found it in an OCR-only aux)."""


def compact_objects(p: Perception, options: CompactOptions = CompactOptions()) -> list[tuple[str, Box]]:
    """``(name, pixel box)`` of every object, in reading order (module docstring)."""
    detections = [d for d in p.detections if d.score >= options.od_threshold]
    used: set[int] = set()
    objects = []
    for segment in p.segments:
        name = strip_label_suffixes(segment.label)
        best, best_iou = None, options.match_iou
        for i, det in enumerate(detections):
            iou = box_iou(det.box, segment.box)
            if i not in used and iou >= best_iou:
                best, best_iou = i, iou
        if best is not None:
            used.add(best)
            name = detections[best].label
        objects.append((name, segment.box))
    objects += [(d.label, d.box) for i, d in enumerate(detections) if i not in used]
    return sorted(objects, key=lambda item: (item[1][1], item[1][0], item[1][3], item[1][2]))


def verbalize_compact(p: Perception, options: CompactOptions = CompactOptions()) -> str:
    """The compact aux string: non-empty object, relation and text parts joined by single spaces."""
    names = [name for name, _ in compact_objects(p, options)]
    relations = relation_items_v2(
        p, V2Options(sgg_top_k=options.sgg_top_k, sgg_threshold=options.sgg_threshold)
    )
    words = [t.text for t in p.text_lines if t.score >= options.ocr_threshold]
    objects = OBJECTS_PREFIX + SEPARATOR.join(names) + "." if names else ""
    relations_part = RELATIONS_PREFIX + SEPARATOR.join(relations) + "." if relations else ""
    text = TEXT_PREFIX + SEPARATOR.join(words) + "." if words else ""
    parts = (text, objects, relations_part) if options.text_first else (objects, relations_part, text)
    return " ".join(part for part in parts if part)
