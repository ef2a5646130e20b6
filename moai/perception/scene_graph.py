"""Scene-graph generation (SGG): ``geometric`` (default) and ``psgtr`` (official, extra ``psgtr``).

MoAI runs OpenPSG's PSGTR (docs/perception.md, The official perception stage): 100 queries, 133 object classes, a
57-column relation distribution per pair (column 0 background, then the 56 PSG predicates); the
verbalizer takes the top ``min(10, #objects)`` pairs by their best non-background score and keeps those
``>= 0.8``. A ``Relation`` keeps that full distribution (``Relation.from_distribution``), so the official
verbalizer is fed exactly what PSGTR produced.

``geometric`` decides relations from the PS segments and OWOD detections instead (no model). It uses the
PSG predicates that 2-D layout can decide and four directional ones that are *not* PSG predicates:

* ``in`` (PSG): the subject's box lies inside the object's box (>= ``contain_fraction`` of its area)
  and the object's box is at least ``size_ratio`` times larger ("bird in sky", "car in road");
* ``enclosing`` (PSG): the inverse of ``in`` ("sky enclosing bird");
* ``on`` (PSG): the subject rests on top of the object: they overlap horizontally (>= ``min_overlap`` of
  the narrower width), the subject's top is above the object's top, its bottom edge falls in the upper
  half of the object's box and its box is not the larger one ("cup on table", "person on grass");
* ``over`` (PSG): the subject is entirely above the object, overlapping horizontally ("sky over road");
* ``beside`` (PSG): the boxes are side by side: vertical overlap >= ``min_overlap`` of the smaller
  height, disjoint horizontally with a gap <= ``near_fraction`` of the narrower width;
* ``left of`` / ``right of`` / ``above`` / ``below`` (not PSG; added because every pair has a
  direction): the fallback, along the axis where the box centres are further apart relative to the boxes'
  sizes (``|centre offset| / mean extent`` along that axis).

The other 51 PSG predicates (actions such as ``holding``, ``riding``, ``looking at``; depth such as
``in front of``) need appearance or 3-D cues and are never emitted. Each ordered pair gets exactly one
relation (the first rule that holds, in the order above), so N objects give N(N - 1) relations, which is
>= ``min(10, N)``: the official verbalizer's top-k never runs short. Score = min(subject score, object
score) × strength, where strength is the containment fraction (``in``, ``enclosing``), the overlap fraction (``on``,
``over``, ``beside``) or the centre separation relative to the boxes' half-extents, clipped to 1
(directional). The top ``top_k`` by score are returned, ties kept in pair order. Boxes are used for every
object (segments through their mask boxes). The verbalizer's 0.8 threshold then keeps relations between
confident objects that are clearly laid out.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..verbalize.official import psg_predicates
from .registry import missing_extra, package_version, register_backend
from .types import Box, Detection, Relation, SceneGraph, Segment, box_area, box_iou, mask_box
from .vocab import coco_panoptic_classes

#: Non-PSG predicates of the geometric backend (appended after the 56 PSG ones in its vocabulary).
DIRECTIONAL_PREDICATES: tuple[str, ...] = ("left of", "right of", "above", "below")
#: PSG predicates the geometric backend can emit.
GEOMETRIC_PSG_PREDICATES: tuple[str, ...] = ("in", "enclosing", "on", "over", "beside")


def geometric_predicates() -> tuple[str, ...]:
    """The geometric backend's predicate vocabulary: the 56 PSG predicates, then the directional ones."""
    return psg_predicates() + DIRECTIONAL_PREDICATES


def _overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


def geometric_relation(
    subject: Box,
    obj: Box,
    *,
    contain_fraction: float,
    size_ratio: float,
    min_overlap: float,
    near_fraction: float,
) -> tuple[str, float]:
    """``(predicate, strength in [0, 1])`` of ``subject`` relative to ``obj`` (module docstring rules)."""
    sx1, sy1, sx2, sy2 = subject
    ox1, oy1, ox2, oy2 = obj
    sw, sh, ow, oh = sx2 - sx1, sy2 - sy1, ox2 - ox1, oy2 - oy1
    s_area, o_area = box_area(subject), box_area(obj)
    x_overlap = _overlap(sx1, sx2, ox1, ox2)
    y_overlap = _overlap(sy1, sy2, oy1, oy2)
    min_w, min_h = min(sw, ow), min(sh, oh)
    x_frac = x_overlap / min_w if min_w > 0 else 0.0
    y_frac = y_overlap / min_h if min_h > 0 else 0.0

    if s_area > 0 and o_area >= size_ratio * s_area:
        inside = x_overlap * y_overlap / s_area
        if inside >= contain_fraction:
            return "in", inside
    if o_area > 0 and s_area >= size_ratio * o_area:
        inside = x_overlap * y_overlap / o_area
        if inside >= contain_fraction:
            return "enclosing", inside
    if x_frac >= min_overlap and sy1 < oy1 and oy1 <= sy2 <= oy1 + oh / 2 and s_area <= o_area:
        return "on", x_frac
    if x_frac >= min_overlap and sy2 <= oy1:
        return "over", x_frac
    gap = max(ox1 - sx2, sx1 - ox2)
    if y_frac >= min_overlap and gap >= 0 and gap <= near_fraction * min_w:
        return "beside", y_frac

    dx = (sx1 + sx2 - ox1 - ox2) / 2  # centre offsets
    dy = (sy1 + sy2 - oy1 - oy2) / 2
    half_w = (sw + ow) / 2
    half_h = (sh + oh) / 2
    sep_x = abs(dx) / half_w if half_w > 0 else 0.0
    sep_y = abs(dy) / half_h if half_h > 0 else 0.0
    if sep_x >= sep_y:  # the axis of the larger (unclipped) separation
        return ("left of" if dx < 0 else "right of"), min(1.0, sep_x)
    return ("above" if dy < 0 else "below"), min(1.0, sep_y)


@register_backend("sgg", "geometric")
class GeometricSceneGraph:
    """Relations from the layout of PS segments and OWOD detections (module docstring).

    Args:
        device: unused (pure numpy); accepted like every backend.
        use_segments: take the PS segments as objects.
        use_detections: take the OWOD detections as objects.
        min_object_score: objects with a lower score are ignored (the verbalizer's OWOD threshold, 0.5).
        duplicate_iou: a detection whose box has at least this IoU with an object already taken is a
            duplicate and ignored (segments come first).
        contain_fraction: ``in``: share of the subject's box inside the object's box.
        size_ratio: ``in``: the object's box must be this many times larger.
        min_overlap: ``on``/``over``/``beside``: overlap along the shared axis, relative to the smaller box.
        near_fraction: ``beside``: largest gap, relative to the narrower width.
        top_k: relations kept per image (PSGTR also emits 100).
    """

    requires: tuple[str, ...] = ("ps", "owod")

    def __init__(
        self,
        *,
        device: str = "cpu",
        use_segments: bool = True,
        use_detections: bool = True,
        min_object_score: float = 0.5,
        duplicate_iou: float = 0.7,
        contain_fraction: float = 0.9,
        size_ratio: float = 2.0,
        min_overlap: float = 0.3,
        near_fraction: float = 0.5,
        top_k: int = 100,
    ) -> None:
        self.use_segments = use_segments
        self.use_detections = use_detections
        self.min_object_score = min_object_score
        self.duplicate_iou = duplicate_iou
        self.rule_options = {
            "contain_fraction": contain_fraction,
            "size_ratio": size_ratio,
            "min_overlap": min_overlap,
            "near_fraction": near_fraction,
        }
        self.top_k = top_k
        self.predicates = geometric_predicates()

    def objects(self, segments: Sequence[Segment], detections: Sequence[Detection]) -> list[Detection]:
        """The object list: confident segments (as boxes), then confident non-duplicate detections."""
        objects: list[Detection] = []
        if self.use_segments:
            for seg in segments:
                if seg.score >= self.min_object_score:
                    objects.append(
                        Detection(label=seg.label, box=seg.box, score=seg.score, label_id=seg.label_id)
                    )
        if self.use_detections:
            for det in detections:
                if det.score < self.min_object_score:
                    continue
                if any(box_iou(det.box, o.box) >= self.duplicate_iou for o in objects):
                    continue
                objects.append(det)
        return objects

    def graph(self, segments: Sequence[Segment], detections: Sequence[Detection]) -> SceneGraph:
        objects = self.objects(segments, detections)
        candidates = []
        for i, subj in enumerate(objects):
            for j, obj in enumerate(objects):
                if i == j:
                    continue
                predicate, strength = geometric_relation(subj.box, obj.box, **self.rule_options)
                score = min(subj.score, obj.score) * strength
                candidates.append(Relation(i, subj.label, predicate, j, obj.label, score))
        order = sorted(range(len(candidates)), key=lambda k: -candidates[k].score)[: self.top_k]
        relations = tuple(candidates[k] for k in order)
        return SceneGraph(objects=tuple(objects), relations=relations, predicates=self.predicates)

    def __call__(
        self,
        images: Sequence[np.ndarray],
        segments: Sequence[Sequence[Segment]],
        detections: Sequence[Sequence[Detection]],
    ) -> list[SceneGraph]:
        return [self.graph(segs, dets) for segs, dets in zip(segments, detections)]


# --- PSGTR (OpenPSG) -------------------------------------------------------------------------------------------


def scene_graph_from_psgtr(
    labels: Sequence[int] | np.ndarray,
    rel_pairs: Sequence[Sequence[int]] | np.ndarray,
    rel_dists: Sequence[Sequence[float]] | np.ndarray,
    masks: np.ndarray | None = None,
    object_scores: Sequence[float] | np.ndarray | None = None,
) -> SceneGraph:
    """Convert a PSGTR result (OpenPSG ``Result``: ``labels``, ``rel_pair_idxes``, ``rel_dists``, ``masks``).

    ``labels`` are 1-based COCO-panoptic indices (the official verbalizer uses ``labels - 1``), each
    ``rel_dists`` row has 1 + 56 columns (background first); every row becomes a ``Relation`` through
    ``Relation.from_distribution`` (argmax over the non-background columns), all rows kept in order. Object
    boxes come from ``masks`` (N, H, W) when given (``x2 = last column + 1``), else zeros.
    """
    coco = coco_panoptic_classes()
    predicates = psg_predicates()
    names = [coco[int(label) - 1] for label in np.asarray(labels).reshape(-1)]
    scores = np.ones(len(names)) if object_scores is None else np.asarray(object_scores, dtype=np.float64)
    boxes: list[Box] = [(0.0, 0.0, 0.0, 0.0)] * len(names)
    if masks is not None:
        boxes = [mask_box(m) for m in np.asarray(masks, dtype=bool)]
    objects = tuple(
        Detection(label=name, box=box, score=float(score), label_id=coco.index(name))
        for name, box, score in zip(names, boxes, scores)
    )
    dists = np.asarray(rel_dists, dtype=np.float32).reshape(-1, 1 + len(predicates))
    pairs = np.asarray(rel_pairs, dtype=np.int64).reshape(-1, 2)
    relations = tuple(
        Relation.from_distribution(int(s), int(o), names, dist, predicates)
        for (s, o), dist in zip(pairs, dists)
    )
    return SceneGraph(objects=objects, relations=relations, predicates=predicates)


@register_backend("sgg", "psgtr")
class PsgtrSceneGraph:
    """OpenPSG PSGTR through mmdet (extra ``psgtr``). UNTESTED here: its mmdet/mmcv stack cannot be installed
    with current torch without patching installed packages, which this project never does.

    The call follows the official ``moai/arch_moai.py``: ``inference_detector(model, image)`` on the
    canvas array, then ``scene_graph_from_psgtr`` (tested on synthetic arrays) on the result.

    Args:
        device: torch device.
        config_file: OpenPSG ``configs/psgtr/psgtr_r50_psg_inference.py``.
        checkpoint: ``psgtr_r50_epoch_60.pth`` (not distributed on the HF hub; see docs/perception.md).
    """

    requires: tuple[str, ...] = ()

    def __init__(self, *, device: str = "cpu", config_file: str = "", checkpoint: str = "") -> None:
        self.check_dependencies()
        from mmdet.apis import inference_detector, init_detector

        for option, value in (("config_file", config_file), ("checkpoint", checkpoint)):
            if not value or not Path(value).is_file():
                raise FileNotFoundError(f"psgtr: option {option} must name an existing file, got {value!r}")
        self._inference = inference_detector
        self.model = init_detector(config_file, checkpoint, device=device)

    @classmethod
    def check_dependencies(cls) -> None:
        try:
            import mmdet.apis  # noqa: F401
        except ImportError:
            raise missing_extra(
                "psgtr", "mmdet", "psgtr", instead="--preset default (geometric scene graph)"
            ) from None

    @classmethod
    def versions(cls) -> dict[str, str]:
        return {name: package_version(name) for name in ("torch", "mmdet", "mmcv", "mmengine")}

    def __call__(
        self, images: Sequence[np.ndarray], segments: Any = None, detections: Any = None
    ) -> list[SceneGraph]:
        graphs = []
        for image in images:
            result = self._inference(self.model, image)
            graphs.append(
                scene_graph_from_psgtr(
                    result.labels,
                    result.rel_pair_idxes,
                    result.rel_dists,
                    masks=getattr(result, "masks", None),
                )
            )
        return graphs
