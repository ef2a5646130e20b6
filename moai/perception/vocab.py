"""The label vocabularies of the perception models, shipped in ``moai/perception/data/`` (docs/verbalization.md §1).

The PSG predicates, which the official scene-graph sentence also needs, are ``moai.verbalize``'s
(``psg_predicates``), the layer below.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from ..io import read_json

_DATA_DIR = Path(__file__).resolve().parent / "data"


@cache
def coco_panoptic_classes() -> tuple[str, ...]:
    """The 133 COCO-panoptic names (Mask2Former id2label order; PSGTR labels are this index + 1)."""
    return tuple(read_json(_DATA_DIR / "coco_panoptic_133.json", "a JSON list of class names"))


@cache
def owlv2_queries() -> tuple[str, ...]:
    """The 1847 OWLv2 text queries (ADE20K-847 then ImageNet-1k names; names repeat, indices do not)."""
    return tuple(read_json(_DATA_DIR / "owlv2_queries_1847.json", "a JSON list of query names"))
