"""Verbalization of external CV-model outputs (MoAI, arXiv 2403.07508, §3 and Fig. 4; docs/verbalization.md).

``official`` reproduces the official sentences byte for byte; ``colormap`` builds the panoptic-map image.
"""

from moai.verbalize.colormap import (
    PANOPTIC_NUM_COLORS,
    corrected_panoptic_map,
    official_panoptic_map,
    pascal_colormap,
)
from moai.verbalize.official import (
    DEFAULT_SELECTION,
    OCR_CONFIDENCE_THRESHOLD,
    OD_SCORE_THRESHOLD,
    OFFICIAL_CANVAS,
    SELECTION_INTROSELECT,
    SELECTION_NUMPY,
    SGG_SCORE_THRESHOLD,
    SGG_TOP_K,
    format_box,
    introselect_argpartition,
    join_aux,
    mask_bounding_boxes,
    number_duplicates,
    paddle_ocr_lines,
    psg_predicates,
    strip_label_suffixes,
    verbalize_detections,
    verbalize_ocr,
    verbalize_relations,
    verbalize_segments,
)

__all__ = [
    "DEFAULT_SELECTION",
    "OCR_CONFIDENCE_THRESHOLD",
    "OD_SCORE_THRESHOLD",
    "OFFICIAL_CANVAS",
    "PANOPTIC_NUM_COLORS",
    "SELECTION_INTROSELECT",
    "SELECTION_NUMPY",
    "SGG_SCORE_THRESHOLD",
    "SGG_TOP_K",
    "corrected_panoptic_map",
    "format_box",
    "introselect_argpartition",
    "join_aux",
    "mask_bounding_boxes",
    "number_duplicates",
    "official_panoptic_map",
    "paddle_ocr_lines",
    "pascal_colormap",
    "psg_predicates",
    "strip_label_suffixes",
    "verbalize_detections",
    "verbalize_ocr",
    "verbalize_relations",
    "verbalize_segments",
]
