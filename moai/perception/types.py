"""Plain result types of the perception stage (arXiv 2403.07508 §3; docs/perception.md).

Every external CV model returns these frozen dataclasses; nothing here imports torch. Coordinates are
pixels of the *canvas* the backends saw (``Perception.image_size``: the 490 × 490 resized image in the
official pipeline), boxes are ``(x1, y1, x2, y2)`` with exclusive ``x2``/``y2`` for masks (detectron2
``BitMasks.get_bounding_boxes``: ``x2 = last column + 1``) and the post-processor's floats for detectors.

JSON: ``Perception.to_dict`` / ``Perception.from_dict`` (and ``to_json`` / ``from_json``) round-trip
exactly; masks are stored as uncompressed COCO run-length encoding (``{"size": [h, w], "counts": [...]}``,
column-major, counts start with a run of zeros), which ``pycocotools.mask.frPyObjects`` also reads.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Box = tuple[float, float, float, float]
Point = tuple[float, float]

#: Roles of the four external models, in the order the official pipeline verbalizes them.
ROLES: tuple[str, ...] = ("ps", "owod", "sgg", "ocr")
#: Accepted spellings of the roles (the CLI's ``--only seg,od`` and the official variable names).
ROLE_ALIASES: Mapping[str, str] = {"seg": "ps", "od": "owod", "panoptic": "ps", "detection": "owod"}
#: Version of the JSON layout written by ``Perception.to_dict``.
JSON_FORMAT = 1


def canonical_role(name: str) -> str:
    """``"seg" -> "ps"``, ``"od" -> "owod"``; raises ``ValueError`` naming the unknown role."""
    role = ROLE_ALIASES.get(name.strip().lower(), name.strip().lower())
    if role not in ROLES:
        raise ValueError(f"unknown perception role {name!r} (expected one of {', '.join(ROLES)}, seg, od)")
    return role


# --- run-length encoding of masks ------------------------------------------------------------------------------


def mask_to_rle(mask: np.ndarray) -> dict[str, list[int]]:
    """Encode a 2-D boolean mask as uncompressed COCO RLE (column-major runs, first run = zeros)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    flat = mask.ravel(order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


def rle_to_mask(rle: Mapping[str, Any]) -> np.ndarray:
    """Decode ``mask_to_rle``'s output back to a boolean (h, w) array."""
    height, width = (int(v) for v in rle["size"])
    counts = np.asarray(rle["counts"], dtype=np.int64)
    if counts.sum() != height * width:
        raise ValueError(f"RLE counts sum to {int(counts.sum())}, expected {height}x{width}={height * width}")
    values = np.arange(len(counts)) % 2 == 1
    flat = np.repeat(values, counts)
    return flat.reshape((height, width), order="F")


def mask_box(mask: np.ndarray) -> Box:
    """Bounding box of a mask as detectron2 ``BitMasks.get_bounding_boxes``: ``(x_min, y_min, x_max + 1,
    y_max + 1)``; all zeros for an empty mask (the official ``make_seg_prompt`` semantics)."""
    mask = np.asarray(mask, dtype=bool)
    cols = np.flatnonzero(mask.any(axis=0))
    rows = np.flatnonzero(mask.any(axis=1))
    if len(cols) == 0:
        return (0.0, 0.0, 0.0, 0.0)
    return (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two ``(x1, y1, x2, y2)`` boxes (0 for degenerate boxes): the one IoU of the
    package (scene-graph de-duplication, the ``v2`` verbalizer)."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = box_area(a) + box_area(b) - inter
    return inter / union if union > 0 else 0.0


def box_centre(box: Box) -> tuple[float, float]:
    """Centre of an ``(x1, y1, x2, y2)`` box."""
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def box_area(box: Box) -> float:
    """Area of an ``(x1, y1, x2, y2)`` box (0 when degenerate)."""
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def _box(value: Sequence[float]) -> Box:
    values = tuple(float(v) for v in value)
    if len(values) != 4:
        raise ValueError(f"a box needs 4 numbers (x1, y1, x2, y2), got {len(values)}")
    return values  # type: ignore[return-value]


# --- the four result types ----------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Segment:
    """One panoptic segment (PS; docs/perception.md, The official perception stage).

    Attributes:
        label: class name as the model names it (COCO-panoptic, e.g. ``"wall-other-merged"``; the
            verbalizer strips the suffixes).
        box: ``(x1, y1, x2, y2)`` canvas pixels of the mask, exclusive ``x2``/``y2`` (``x2 = last column + 1``).
        mask: (H, W) boolean mask on the canvas.
        score: the post-processor's segment score.
        label_id: index of ``label`` in the model's vocabulary (``id2label``), -1 when unknown.
    """

    label: str
    box: Box
    mask: np.ndarray
    score: float
    label_id: int = -1

    def __post_init__(self) -> None:
        object.__setattr__(self, "box", _box(self.box))
        object.__setattr__(self, "mask", np.asarray(self.mask, dtype=bool))
        object.__setattr__(self, "score", float(self.score))
        if self.mask.ndim != 2:
            raise ValueError(f"segment {self.label!r}: mask must be 2-D, got shape {self.mask.shape}")

    @classmethod
    def from_mask(cls, label: str, mask: np.ndarray, score: float, label_id: int = -1) -> Segment:
        """Build a segment whose box is computed from its mask (official semantics, ``mask_box``)."""
        return cls(label=label, box=mask_box(mask), mask=mask, score=score, label_id=label_id)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Segment):
            return NotImplemented
        return (
            (self.label, self.box, self.score, self.label_id)
            == (other.label, other.box, other.score, other.label_id)
            and self.mask.shape == other.mask.shape
            and bool(np.array_equal(self.mask, other.mask))
        )

    __hash__ = None  # type: ignore[assignment]

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "label_id": self.label_id,
            "box": list(self.box),
            "score": self.score,
            "mask": mask_to_rle(self.mask),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Segment:
        return cls(
            label=data["label"],
            box=data["box"],
            mask=rle_to_mask(data["mask"]),
            score=data["score"],
            label_id=int(data.get("label_id", -1)),
        )


@dataclass(frozen=True)
class Detection:
    """One detected box (OWOD; docs/perception.md, The official perception stage); also the scene graph's objects.

    Attributes:
        label: the query / class name (OWLv2: one of the 1,847 official queries).
        box: ``(x1, y1, x2, y2)`` canvas pixels as the post-processor returns them (not clipped).
        score: detection score.
        label_id: index into the backend's vocabulary (authoritative: the OWLv2 query list repeats names).
    """

    label: str
    box: Box
    score: float
    label_id: int = -1

    def __post_init__(self) -> None:
        object.__setattr__(self, "box", _box(self.box))
        object.__setattr__(self, "score", float(self.score))

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "label_id": self.label_id, "box": list(self.box), "score": self.score}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Detection:
        return cls(
            label=data["label"], box=data["box"], score=data["score"], label_id=int(data.get("label_id", -1))
        )


@dataclass(frozen=True)
class Relation:
    """One scene-graph edge ``subject --predicate--> object`` (SGG; docs/perception.md and docs/verbalization.md §3).

    ``subject`` and ``object`` index ``Perception.objects`` (the scene-graph model's own object list,
    which the official verbalizer numbers as a whole: ``person (#1)``). ``distribution`` is the model's full
    score row ``[background, predicate_0, ..., predicate_{P-1}]`` over ``Perception.predicates`` (PSGTR:
    1 + 56 columns); ``predicate``/``score`` are its argmax / max over the non-background columns, as the
    official code selects them (``Relation.from_distribution``). A backend without a distribution (the
    geometric one) leaves it empty; ``distribution_row`` then synthesises a one-hot row.
    """

    subject: int
    subject_label: str
    predicate: str
    object: int
    object_label: str
    score: float
    distribution: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "score", float(self.score))
        object.__setattr__(self, "distribution", tuple(float(v) for v in self.distribution))

    @classmethod
    def from_distribution(
        cls,
        subject: int,
        object: int,  # noqa: A002 - the scene-graph term
        labels: Sequence[str],
        distribution: Sequence[float] | np.ndarray,
        predicates: Sequence[str],
    ) -> Relation:
        """Argmax over the non-background columns (column 0 is background), like ``make_sgg_prompt``."""
        row = np.asarray(distribution, dtype=np.float32).reshape(-1)
        if len(row) != 1 + len(predicates):
            raise ValueError(
                f"distribution has {len(row)} columns, expected 1 + {len(predicates)} predicates"
            )
        best = int(row[1:].argmax())
        return cls(
            subject=int(subject),
            subject_label=labels[subject],
            predicate=predicates[best],
            object=int(object),
            object_label=labels[object],
            score=float(row[1 + best]),
            distribution=tuple(row.tolist()),
        )

    def distribution_row(self, predicates: Sequence[str]) -> np.ndarray:
        """The float32 ``[background, predicates...]`` row the official verbalizer reads.

        The stored distribution when there is one; otherwise a row with ``score`` in this relation's
        predicate column and zeros elsewhere (background 0), which the official argmax maps back to
        ``(predicate, score)``.
        """
        if self.distribution:
            if len(self.distribution) != 1 + len(predicates):
                raise ValueError(
                    f"relation distribution has {len(self.distribution)} columns, "
                    f"expected 1 + {len(predicates)} predicates"
                )
            return np.asarray(self.distribution, dtype=np.float32)
        row = np.zeros(1 + len(predicates), dtype=np.float32)
        try:
            row[1 + list(predicates).index(self.predicate)] = self.score
        except ValueError:
            raise ValueError(f"predicate {self.predicate!r} is not in the predicate vocabulary") from None
        return row

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "subject": self.subject,
            "subject_label": self.subject_label,
            "predicate": self.predicate,
            "object": self.object,
            "object_label": self.object_label,
            "score": self.score,
        }
        if self.distribution:
            out["distribution"] = list(self.distribution)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Relation:
        return cls(
            subject=int(data["subject"]),
            subject_label=data["subject_label"],
            predicate=data["predicate"],
            object=int(data["object"]),
            object_label=data["object_label"],
            score=data["score"],
            distribution=tuple(data.get("distribution", ())),
        )


@dataclass(frozen=True)
class TextLine:
    """One recognised text line (OCR; docs/perception.md, The official perception stage).

    Attributes:
        text: the recognised string, verbatim.
        quad: the detector's four corner points ``((x, y) × 4)`` in canvas pixels, clockwise from top-left.
        score: recognition confidence.
    """

    text: str
    quad: tuple[Point, Point, Point, Point]
    score: float

    def __post_init__(self) -> None:
        quad = tuple((float(x), float(y)) for x, y in self.quad)
        if len(quad) != 4:
            raise ValueError(f"text line {self.text!r}: quad needs 4 points, got {len(quad)}")
        object.__setattr__(self, "quad", quad)
        object.__setattr__(self, "score", float(self.score))

    @property
    def box(self) -> Box:
        """Axis-aligned box around the quad."""
        xs = [p[0] for p in self.quad]
        ys = [p[1] for p in self.quad]
        return (min(xs), min(ys), max(xs), max(ys))

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "quad": [list(p) for p in self.quad], "score": self.score}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TextLine:
        return cls(text=data["text"], quad=data["quad"], score=data["score"])


@dataclass(frozen=True)
class SceneGraph:
    """What a scene-graph backend returns for one image.

    Attributes:
        objects: the model's object list (PSGTR: its per-query objects; geometric: the PS segments and
            OWOD detections it used), which ``Relation.subject``/``object`` index.
        relations: every relation the backend emitted.
        predicates: the predicate vocabulary of ``Relation.distribution`` columns 1...
    """

    objects: tuple[Detection, ...]
    relations: tuple[Relation, ...]
    predicates: tuple[str, ...]


@dataclass(frozen=True)
class Perception:
    """Everything the four external models saw in one image (arXiv 2403.07508 §3; docs/perception.md, step 2).

    Attributes:
        image_size: ``(width, height)`` of the canvas the backends ran on (490 × 490 officially); every
            coordinate refers to it and the verbalizers normalise boxes by it.
        segments: panoptic segments in the post-processor's ``segments_info`` order (segment id = index + 1).
        detections: open-world detections in the post-processor's (query) order.
        objects: the scene-graph model's object list; ``Relation.subject``/``object`` index it.
        relations: scene-graph edges, as the SGG backend emitted them (all of them, not only the top-k).
        predicates: the predicate vocabulary of ``Relation.distribution`` columns 1.. (PSG's 56, plus
            the geometric backend's non-PSG ones when it ran).
        text_lines: OCR lines in the reader's order.
        source_size: ``(width, height)`` of the image before resizing to the canvas.
        roles: which roles ran (an empty list for a role that ran means "found nothing").
    """

    image_size: tuple[int, int]
    segments: tuple[Segment, ...] = ()
    detections: tuple[Detection, ...] = ()
    objects: tuple[Detection, ...] = ()
    relations: tuple[Relation, ...] = ()
    predicates: tuple[str, ...] = ()
    text_lines: tuple[TextLine, ...] = ()
    source_size: tuple[int, int] | None = None
    roles: tuple[str, ...] = field(default=ROLES)

    def __post_init__(self) -> None:
        for name in ("segments", "detections", "objects", "relations", "predicates", "text_lines", "roles"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "image_size", (int(self.image_size[0]), int(self.image_size[1])))
        if self.source_size is not None:
            object.__setattr__(self, "source_size", (int(self.source_size[0]), int(self.source_size[1])))
        width, height = self.image_size
        for seg in self.segments:
            if seg.mask.shape != (height, width):
                raise ValueError(
                    f"segment {seg.label!r}: mask shape {seg.mask.shape} != canvas (h, w) {(height, width)}"
                )
        for rel in self.relations:
            if not (0 <= rel.subject < len(self.objects) and 0 <= rel.object < len(self.objects)):
                raise ValueError(
                    f"relation {rel} indexes outside the {len(self.objects)} scene-graph objects"
                )

    def segment_id_map(self) -> np.ndarray:
        """The (H, W) int32 panoptic id map: segment ``i`` painted with id ``i + 1`` in list order, 0 elsewhere.

        For Mask2Former output this is exactly the post-processor's ``segmentation`` map (its segment ids are
        ``1..N`` in ``segments_info`` order and the masks do not overlap). With no segment it is the HF
        "no mask" map (all ``-1``), which the official verbalizer and colour map treat as empty.
        """
        width, height = self.image_size
        if not self.segments:
            return np.full((height, width), -1, dtype=np.int32)
        seg_map = np.zeros((height, width), dtype=np.int32)
        for index, seg in enumerate(self.segments):
            seg_map[seg.mask] = index + 1
        return seg_map

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": JSON_FORMAT,
            "image_size": list(self.image_size),
            "source_size": list(self.source_size) if self.source_size is not None else None,
            "roles": list(self.roles),
            "segments": [s.to_dict() for s in self.segments],
            "detections": [d.to_dict() for d in self.detections],
            "objects": [o.to_dict() for o in self.objects],
            "predicates": list(self.predicates),
            "relations": [r.to_dict() for r in self.relations],
            "text_lines": [t.to_dict() for t in self.text_lines],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Perception:
        if data.get("format", JSON_FORMAT) != JSON_FORMAT:
            raise ValueError(
                f"unsupported Perception JSON format {data.get('format')!r} (expected {JSON_FORMAT})"
            )
        source = data.get("source_size")
        return cls(
            image_size=tuple(data["image_size"]),
            segments=tuple(Segment.from_dict(s) for s in data.get("segments", ())),
            detections=tuple(Detection.from_dict(d) for d in data.get("detections", ())),
            objects=tuple(Detection.from_dict(o) for o in data.get("objects", ())),
            relations=tuple(Relation.from_dict(r) for r in data.get("relations", ())),
            predicates=tuple(data.get("predicates", ())),
            text_lines=tuple(TextLine.from_dict(t) for t in data.get("text_lines", ())),
            source_size=tuple(source) if source is not None else None,
            roles=tuple(data.get("roles", ROLES)),
        )

    def to_json(self, indent: int | None = None) -> str:
        """JSON text; non-ASCII OCR strings are written verbatim (``ensure_ascii=False``)."""
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=indent)

    @classmethod
    def from_json(cls, text: str) -> Perception:
        return cls.from_dict(json.loads(text))
