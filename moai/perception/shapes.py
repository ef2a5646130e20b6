"""ShapesWorld perception backends (``--preset shapesworld``; docs/shapesworld.md, Perception).

Classic image processing on the pixels, nothing learned and nothing read but the image: the ground truth of
a scene is never opened here (tests/test_shapes_perception.py checks the source). From ``moai.worlds`` only
the world's vocabulary is used: the colour names and base RGB, the kinds and the position rule.

``find_items(image)`` does the work for PS and OWOD:

1. **background**: the most common colour of the outer 2 px frame (the world keeps every item 2 px inside
   the canvas, so the frame is background);
2. **shapes**: pixels far from the background (``bg_distance``) and saturated (max - min channel >=
   ``min_saturation``; the background, the white signs, the black border and the antialiased grey text are
   not), each labelled with the nearest base colour of the world; connected components (8-neighbour) per
   colour with at least ``min_area`` pixels are the shapes, their box the tight component box (exclusive
   ``x1``, ``y1``, as the world's boxes);
3. **kind** from the fill ratio of the component in its box: a filled square fills it (1.0), an inscribed
   circle pi/4 = 0.785, the isosceles triangle 1/2; cut at ``square_fill`` (0.9) and ``circle_fill`` (0.65);
4. **signs**: dark pixels (every channel < ``dark_level``) whose component is a closed frame at least
   ``min_sign_side`` px on each side (every edge row / column of its box at least 80 % dark) — the sign's
   2 px black border; the letters inside are separate components and ignored. The sign's box is the frame's.

Backends (each role's ``shapes``):

* PS ``shapes``: one ``Segment`` per shape (its component mask) and per sign (its filled box), labels in the
  closed vocabulary ``circle`` / ``square`` / ``triangle`` / ``sign``, in reading order (top, then left);
* OWOD ``shapes``: one ``Detection`` per shape, named ``"{colour} {kind}"`` (``"red circle"``);
* SGG ``shapes``: reads the OWOD detections; for every ordered pair of objects ``left of`` / ``right of``
  when their box centres differ by at least ``min_offset`` px in x (the world's position rule, 8 px), and
  ``above`` / ``below`` likewise in y; score 0.9 + 0.1 × min(1, offset / 100), so the official verbalizer's
  top-k prefers the clearest relations and its 0.8 threshold keeps them all.

* OCR ``shapes``: the project's ``rapidocr`` (the real PP-OCRv4 models) on the signs found from the pixels:
  by default its recognition model alone on each sign's box (``crops``; about 6.5 times faster than its
  detector on the whole canvas, which upsamples the canvas to 736 px), else the whole canvas, keeping the
  lines inside the signs (a filled square is otherwise now and then read as ``■``).

All scores are 1.0 for PS and OWOD: the rules either find an item or not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..worlds.shapes import COLOURS, KINDS, POSITION_MIN_OFFSET
from .ocr import RapidOcrReader
from .registry import package_version, register_backend
from .scene_graph import DIRECTIONAL_PREDICATES
from .types import Detection, Relation, SceneGraph, Segment, TextLine, box_centre

#: PS vocabulary (label ids are indices).
PS_CLASSES: tuple[str, ...] = (*KINDS, "sign")
#: OWOD vocabulary: every colour-kind name (label ids are indices).
OWOD_CLASSES: tuple[str, ...] = tuple(f"{colour} {kind}" for colour in COLOURS for kind in KINDS)
_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Item:
    """One found item: ``kind`` in ``PS_CLASSES``, ``colour`` (None for a sign), tight box and mask."""

    kind: str
    colour: str | None
    box: tuple[int, int, int, int]
    mask: np.ndarray

    @property
    def name(self) -> str:
        return self.kind if self.colour is None else f"{self.colour} {self.kind}"


def background_colour(image: np.ndarray, frame: int = 2) -> np.ndarray:
    """The most common colour of the outer ``frame`` px of the image."""
    top, bottom = image[:frame].reshape(-1, 3), image[-frame:].reshape(-1, 3)
    left, right = image[:, :frame].reshape(-1, 3), image[:, -frame:].reshape(-1, 3)
    pixels = np.concatenate([top, bottom, left, right])
    colours, counts = np.unique(pixels, axis=0, return_counts=True)
    return colours[int(counts.argmax())].astype(np.int32)


def fill_kind(fill: float, square_fill: float, circle_fill: float) -> str:
    """``square`` / ``circle`` / ``triangle`` from the share of the box a shape fills."""
    if fill >= square_fill:
        return "square"
    return "circle" if fill >= circle_fill else "triangle"


def _is_frame(mask: np.ndarray, edge_dark: float = 0.8) -> bool:
    """Every edge row and column of the (cropped) component mask is at least ``edge_dark`` dark."""
    return bool(min(mask[0].mean(), mask[-1].mean(), mask[:, 0].mean(), mask[:, -1].mean()) >= edge_dark)


def find_items(
    image: np.ndarray,
    *,
    bg_distance: int = 40,
    min_saturation: int = 60,
    min_area: int = 40,
    square_fill: float = 0.9,
    circle_fill: float = 0.65,
    dark_level: int = 110,
    min_sign_side: int = 16,
) -> list[Item]:
    """Shapes and signs of a (H, W, 3) uint8 RGB image, in reading order (module docstring)."""
    pixels = np.asarray(image, dtype=np.int32)
    height, width = pixels.shape[:2]
    background = background_colour(pixels)
    far = np.abs(pixels - background).max(axis=2) >= bg_distance
    saturated = (pixels.max(axis=2) - pixels.min(axis=2)) >= min_saturation
    shape_pixels = far & saturated
    base = np.asarray(list(COLOURS.values()), dtype=np.int32)  # (C, 3)
    nearest = np.full((height, width), -1, dtype=np.int32)
    if shape_pixels.any():
        dists = ((pixels[shape_pixels][:, None, :] - base[None]) ** 2).sum(axis=2)
        nearest[shape_pixels] = dists.argmin(axis=1)
    items: list[Item] = []
    for c, colour in enumerate(COLOURS):
        labels, _ = ndimage.label(nearest == c, structure=_EIGHT)
        for index, found in enumerate(ndimage.find_objects(labels), start=1):
            if found is None:
                continue
            rows, cols = found
            crop = labels[found] == index
            area = int(crop.sum())
            if area < min_area:
                continue
            box = (cols.start, rows.start, cols.stop, rows.stop)
            fill = area / ((cols.stop - cols.start) * (rows.stop - rows.start))
            mask = np.zeros((height, width), dtype=bool)
            mask[found] = crop
            items.append(Item(fill_kind(fill, square_fill, circle_fill), colour, box, mask))
    dark_labels, _ = ndimage.label((pixels < dark_level).all(axis=2), structure=_EIGHT)
    for index, found in enumerate(ndimage.find_objects(dark_labels), start=1):
        if found is None:
            continue
        rows, cols = found
        if rows.stop - rows.start < min_sign_side or cols.stop - cols.start < min_sign_side:
            continue
        if not _is_frame(dark_labels[found] == index):
            continue
        mask = np.zeros((height, width), dtype=bool)
        mask[found] = True
        items.append(Item("sign", None, (cols.start, rows.start, cols.stop, rows.stop), mask))
    return sorted(items, key=lambda item: (item.box[1], item.box[0]))


class _Finder:
    """The options of ``find_items`` shared by the PS and OWOD backends."""

    requires: tuple[str, ...] = ()

    def __init__(
        self,
        *,
        device: str = "cpu",
        bg_distance: int = 40,
        min_saturation: int = 60,
        min_area: int = 40,
        square_fill: float = 0.9,
        circle_fill: float = 0.65,
        dark_level: int = 110,
        min_sign_side: int = 16,
    ) -> None:
        self.options = {
            "bg_distance": bg_distance,
            "min_saturation": min_saturation,
            "min_area": min_area,
            "square_fill": square_fill,
            "circle_fill": circle_fill,
            "dark_level": dark_level,
            "min_sign_side": min_sign_side,
        }

    @classmethod
    def versions(cls) -> dict[str, str]:
        return {"scipy": package_version("scipy")}

    def items(self, image: np.ndarray) -> list[Item]:
        return find_items(image, **self.options)


@register_backend("ps", "shapes")
class ShapesSegmenter(_Finder):
    """ShapesWorld PS: a segment per shape and per sign, classes circle / square / triangle / sign.

    Args (every one an option of ``find_items``; module docstring):
        device: unused (numpy / scipy).
        bg_distance: a shape pixel differs from the background by at least this on some channel.
        min_saturation: a shape pixel's max - min channel is at least this.
        min_area: smaller components are noise.
        square_fill / circle_fill: fill-ratio cuts between square, circle and triangle.
        dark_level: a sign-border pixel has every channel below this.
        min_sign_side: a sign's frame is at least this many px wide and high.
    """

    def __call__(self, images: Sequence[np.ndarray]) -> list[list[Segment]]:
        return [
            [
                Segment.from_mask(item.kind, item.mask, 1.0, label_id=PS_CLASSES.index(item.kind))
                for item in self.items(image)
            ]
            for image in images
        ]


@register_backend("owod", "shapes")
class ShapesDetector(_Finder):
    """ShapesWorld OWOD: a detection per shape named ``"{colour} {kind}"`` (options: ``ShapesSegmenter``)."""

    def __call__(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        out = []
        for image in images:
            shapes = [item for item in self.items(image) if item.colour is not None]
            out.append(
                [
                    Detection(
                        label=item.name,
                        box=tuple(float(v) for v in item.box),
                        score=1.0,
                        label_id=OWOD_CLASSES.index(item.name),
                    )
                    for item in shapes
                ]
            )
        return out


@register_backend("sgg", "shapes")
class ShapesSceneGraph:
    """ShapesWorld SGG: left of / right of / above / below between the OWOD objects (module docstring).

    Args:
        device: unused.
        min_offset: box centres must differ by at least this many px on an axis (the world's 8 px).
        min_object_score: detections below this score are not objects.
    """

    requires: tuple[str, ...] = ("owod",)

    def __init__(
        self, *, device: str = "cpu", min_offset: float = POSITION_MIN_OFFSET, min_object_score: float = 0.5
    ) -> None:
        self.min_offset = min_offset
        self.min_object_score = min_object_score

    def graph(self, detections: Sequence[Detection]) -> SceneGraph:
        objects = tuple(d for d in detections if d.score >= self.min_object_score)
        relations = []
        for i, subj in enumerate(objects):
            (sx, sy) = box_centre(subj.box)
            for j, obj in enumerate(objects):
                if i == j:
                    continue
                (ox, oy) = box_centre(obj.box)
                for offset, before, after in ((sx - ox, "left of", "right of"), (sy - oy, "above", "below")):
                    if abs(offset) >= self.min_offset:
                        score = 0.9 + 0.1 * min(1.0, abs(offset) / 100)
                        predicate = before if offset < 0 else after
                        relations.append(Relation(i, subj.label, predicate, j, obj.label, score))
        return SceneGraph(objects=objects, relations=tuple(relations), predicates=DIRECTIONAL_PREDICATES)

    def __call__(
        self,
        images: Sequence[np.ndarray],
        segments: Sequence[Sequence[Segment]],
        detections: Sequence[Sequence[Detection]],
    ) -> list[SceneGraph]:
        return [self.graph(dets) for dets in detections]


@register_backend("ocr", "shapes")
class ShapesOcrReader(RapidOcrReader):
    """ShapesWorld OCR: the project's ``rapidocr`` backend (the real PP-OCRv4 models) on the signs found from
    the pixels (``find_items``; docs/shapesworld.md, Perception).

    With ``crops`` (default) each sign's box is read by the recognition model alone (no text detector, no
    direction classifier: a sign holds one upright line), one line per sign with the sign's box. Otherwise
    the whole canvas goes through detector and recogniser, and only the lines whose box centre lies inside a
    sign are kept: without that a filled square is sometimes read as ``■``.

    Args: those of ``RapidOcrReader`` (official values), plus
        crops: read each sign's box with the recogniser alone (False: the whole canvas).
        crop_inset: pixels cut from each side of a sign's box before recognition: the world's 2 px frame,
            which the recogniser otherwise now and then reads as a bracket (``[QNE`` for ``IQNE``).
        signs_only: with ``crops`` False, drop lines outside the signs (False: plain ``rapidocr``).
        dark_level / min_sign_side: the sign finder's options (``find_items``).
    """

    def __init__(
        self,
        *,
        device: str = "cpu",
        min_score: float = 0.85,
        use_angle_cls: bool = True,
        text_score: float = 0.5,
        box_thresh: float = 0.5,
        unclip_ratio: float = 1.6,
        bgr: bool = True,
        crops: bool = True,
        crop_inset: int = 2,
        signs_only: bool = True,
        dark_level: int = 110,
        min_sign_side: int = 16,
    ) -> None:
        super().__init__(
            device=device,
            min_score=min_score,
            use_angle_cls=use_angle_cls,
            text_score=text_score,
            box_thresh=box_thresh,
            unclip_ratio=unclip_ratio,
            bgr=bgr,
        )
        self.crops = crops
        self.crop_inset = crop_inset
        self.signs_only = signs_only
        self.sign_options = {"dark_level": dark_level, "min_sign_side": min_sign_side}

    @classmethod
    def versions(cls) -> dict[str, str]:
        return {**RapidOcrReader.versions(), "scipy": package_version("scipy")}

    def read(self, image: np.ndarray) -> list[TextLine]:
        if self.crops:
            return [line for box in self.signs(image) if (line := self.read_sign(image, box)) is not None]
        if self.signs_only and not self.signs(image):  # nothing could be kept: skip the OCR models
            return []
        return self.keep_on_signs(image, super().read(image))

    def read_sign(self, image: np.ndarray, box: tuple[int, int, int, int]) -> TextLine | None:
        """The recogniser's reading of the sign at ``box`` (x0, y0, x1, y1), or None below ``min_score``."""
        x0, y0, x1, y1 = box
        inset = self.crop_inset if min(x1 - x0, y1 - y0) > 4 * self.crop_inset else 0
        crop = image[y0 + inset : y1 - inset, x0 + inset : x1 - inset]  # [h, w, 3] inside the frame
        crop = np.ascontiguousarray(crop[..., ::-1]) if self.bgr else np.ascontiguousarray(crop)
        raw, _ = self.engine(crop, use_det=False, use_cls=False, text_score=self.call_options["text_score"])
        if not raw:
            return None
        text, score = str(raw[0][0]).strip(), float(raw[0][1])
        if not text or score < self.min_score:
            return None
        quad = ((x0, y0), (x1, y0), (x1, y1), (x0, y1))
        return TextLine(text=text, quad=tuple((float(x), float(y)) for x, y in quad), score=score)

    def signs(self, image: np.ndarray) -> list[tuple[int, int, int, int]]:
        """Boxes of the signs found in ``image`` from the pixels (``find_items``)."""
        return [item.box for item in find_items(image, **self.sign_options) if item.kind == "sign"]

    def keep_on_signs(self, image: np.ndarray, lines: list[TextLine]) -> list[TextLine]:
        """The lines whose box centre lies inside a sign found in ``image`` (all of them when not ``signs_only``)."""
        if not self.signs_only or not lines:
            return lines
        signs = self.signs(image)
        return [line for line in lines if any(_inside(box_centre(line.box), box) for box in signs)]


def _inside(point: tuple[float, float], box: tuple[int, int, int, int]) -> bool:
    return box[0] <= point[0] < box[2] and box[1] <= point[1] < box[3]
