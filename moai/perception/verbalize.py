"""``Perception`` -> aux text and panoptic map, through the verbalizers of ``moai.verbalize``.

``verbalize_perception(p, style="official")`` feeds the official functions (``moai.verbalize.official``,
byte-exact with the official ``make_*_prompt``; docs/verbalization.md §3) with exactly the
arrays the official pipeline hands them: the panoptic id map and ``segments_info`` order, the OWLv2
boxes / scores / query names, the scene graph's object list and ``rel_dists`` rows, and the OCR
``(text, confidence)`` lines. ``style="v2"`` uses ``verbalize_v2.py`` and ``style="compact"``
``verbalize_compact.py`` (for new models only; not a default anywhere until the ShapesWorld ablation
measures them); ``style="compact-all"`` is ``compact`` keeping every relation instead of the 10 best,
``style="compact-text-first"`` ``compact`` with the OCR words first.

``panoptic_map(p, style="official")`` is the official colour map (the quirky [0, 1] float map fed to CLIP);
``style="corrected"`` gives 0..255 uint8 colours (``moai.verbalize.colormap``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

import numpy as np

from ..verbalize.colormap import corrected_panoptic_map, official_panoptic_map
from ..verbalize.official import (
    DEFAULT_SELECTION,
    join_aux,
    psg_predicates,
    verbalize_detections,
    verbalize_ocr,
    verbalize_relations,
    verbalize_segments,
)
from .types import Perception
from .verbalize_compact import CompactOptions, verbalize_compact
from .verbalize_v2 import verbalize_v2

STYLES = ("official", "v2", "compact", "compact-all", "compact-text-first")


def official_parts(p: Perception, selection: str = DEFAULT_SELECTION) -> tuple[str, str, str, str]:
    """The four official sentences ``(seg, od, sgg, ocr)`` of a perception (empty for roles that did not run)."""
    seg = verbalize_segments(
        p.segment_id_map(), [(i + 1, s.label) for i, s in enumerate(p.segments)], canvas=p.image_size
    )
    od = verbalize_detections(
        np.asarray([d.box for d in p.detections], dtype=np.float32).reshape(-1, 4),
        np.asarray([d.score for d in p.detections], dtype=np.float32),
        [d.label for d in p.detections],
        canvas=p.image_size,
    )
    predicates = p.predicates or psg_predicates()
    if p.relations:
        pairs = np.asarray([(r.subject, r.object) for r in p.relations], dtype=np.int64)
        dists = np.stack([r.distribution_row(predicates) for r in p.relations])
    else:
        pairs = np.zeros((0, 2), dtype=np.int64)
        dists = np.zeros((0, 1 + len(predicates)), dtype=np.float32)
    sgg = verbalize_relations(
        [o.label for o in p.objects], pairs, dists, predicates=predicates, selection=selection
    )
    ocr = verbalize_ocr([(t.text, t.score) for t in p.text_lines])
    return seg, od, sgg, ocr


def verbalize_perception(p: Perception, style: str = "official") -> str:
    """The aux string of one perception (``official``: ``seg + " " + od + " " + sgg + " " + ocr``)."""
    if style == "official":
        return join_aux(*official_parts(p))
    if style == "v2":
        return verbalize_v2(p)
    if style == "compact":
        return verbalize_compact(p)
    if style == "compact-all":  # every relation above the score threshold, not the top 10
        return verbalize_compact(p, CompactOptions(sgg_top_k=len(p.relations)))
    if style == "compact-text-first":  # the OCR words at the start of the aux
        return verbalize_compact(p, CompactOptions(text_first=True))
    raise ValueError(f"unknown verbalization style {style!r} (expected one of {', '.join(STYLES)})")


MAP_STYLES = ("official", "corrected")
"""Panoptic colour-map styles (`panoptic_map`)."""


def panoptic_map(p: Perception, style: str = "official") -> np.ndarray:
    """The panoptic colour map of a perception: ``official`` (H, W, 3) float in [0, 1] or ``corrected`` uint8."""
    if style == "official":
        return official_panoptic_map(p.segment_id_map())
    if style == "corrected":
        return corrected_panoptic_map(p.segment_id_map())
    raise ValueError(f"unknown panoptic map style {style!r} (expected 'official' or 'corrected')")


def aux_inputs(
    p: Perception, style: str = "official", map_style: str = "official", drop: Iterable[str] = ()
) -> tuple[str, np.ndarray]:
    """The aux text and panoptic colour map of ``p`` with the outputs of the modules in ``drop`` removed
    (`without_modules`): what the model reads. Training data, module dropout and the engine all use it."""
    kept = without_modules(p, drop)
    return verbalize_perception(kept, style=style), panoptic_map(kept, style=map_style)


MODULES: tuple[str, ...] = ("ps", "owod", "sgg", "ocr")
"""The four external CV modules whose verbalized outputs make the aux text (paper §3, Fig. 2)."""


def without_modules(p: Perception, modules: Iterable[str]) -> Perception:
    """``p`` with the outputs of ``modules`` (a subset of `MODULES`) removed: their sentences vanish from
    the aux text, and without ``ps`` the panoptic map is black. The removed-module ablation of the paper
    (Table 4) and module dropout in training use it."""
    drop = set(modules)
    unknown = drop - set(MODULES)
    if unknown:
        raise ValueError(f"unknown module(s) {sorted(unknown)}; choose from {', '.join(MODULES)}")
    changes: dict[str, tuple] = {}
    if "ps" in drop:
        changes["segments"] = ()
    if "owod" in drop:
        changes["detections"] = ()
    if "sgg" in drop:
        changes.update(objects=(), relations=())
    if "ocr" in drop:
        changes["text_lines"] = ()
    return replace(p, **changes) if changes else p
