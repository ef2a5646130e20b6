"""Picture of a ``Perception`` on its canvas (``moai perceive --show out.png``).

Panoptic masks are blended in their panoptic-map colours (PASCAL colormap by segment id, as the map MoAI
encodes), segment boxes are thin and labelled at the top left, OWOD boxes (score >= ``od_threshold``)
are dashed-looking double lines labelled with their score, relations (score >= ``sgg_threshold``) are
arrows from the subject's box centre to the object's with the predicate a third of the way along, and OCR quads
are outlined with the recognised text under them.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..verbalize.colormap import PANOPTIC_NUM_COLORS, pascal_colormap
from ..verbalize.official import OD_SCORE_THRESHOLD, SGG_SCORE_THRESHOLD, SGG_TOP_K
from .types import Perception, box_centre

MASK_ALPHA = 0.45
OD_COLOR = (255, 140, 0)
REL_COLOR = (220, 20, 60)
OCR_COLOR = (0, 160, 255)
TEXT_COLOR = (255, 255, 255)
FONT_FRACTION = 0.028  # font size relative to the canvas' longer side
ARROW_HEAD = 8.0
LABEL_AT = 1 / 3  # where along a relation arrow its predicate is written


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType
        return ImageFont.load_default()


def _label(
    draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, color: tuple[int, int, int], font
) -> None:
    left, top, right, bottom = draw.textbbox(xy, text, font=font)
    draw.rectangle((left - 1, top - 1, right + 1, bottom + 1), fill=color)
    draw.text(xy, text, fill=TEXT_COLOR, font=font)


def _arrow(
    draw: ImageDraw.ImageDraw, start: tuple[float, float], end: tuple[float, float], width: int
) -> None:
    draw.line((start, end), fill=REL_COLOR, width=width)
    angle = math.atan2(end[1] - start[1], end[0] - start[0])
    for side in (-1, 1):
        theta = angle + math.pi + side * math.pi / 7
        tip = (end[0] + ARROW_HEAD * math.cos(theta), end[1] + ARROW_HEAD * math.sin(theta))
        draw.line((end, tip), fill=REL_COLOR, width=width)


def draw_perception(
    canvas: np.ndarray,
    p: Perception,
    *,
    od_threshold: float = OD_SCORE_THRESHOLD,
    sgg_threshold: float = SGG_SCORE_THRESHOLD,
    max_relations: int = SGG_TOP_K,
) -> Image.Image:
    """Draw ``p`` over ``canvas`` ((H, W, 3) uint8, the image the backends saw); returns an RGB image."""
    height, width = canvas.shape[:2]
    if (width, height) != tuple(p.image_size):
        raise ValueError(
            f"canvas is {width}x{height} but the perception is for {p.image_size[0]}x{p.image_size[1]}"
        )
    base = canvas.astype(np.float32)
    # the panoptic-map colours (by segment id); more segments than the official 134 colours just extend the map
    palette = pascal_colormap(max(PANOPTIC_NUM_COLORS, len(p.segments) + 1))
    if p.segments:
        seg_map = p.segment_id_map()
        painted = seg_map > 0
        base[painted] = (1 - MASK_ALPHA) * base[painted] + MASK_ALPHA * palette[seg_map[painted]].astype(
            np.float32
        )
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    font_size = max(8, round(FONT_FRACTION * max(width, height)))
    font = _font(font_size)
    line = max(1, round(max(width, height) / 300))
    colours = palette[1 : len(p.segments) + 1]
    for seg, colour in zip(p.segments, colours):
        colour = tuple(int(c) for c in colour)
        draw.rectangle(seg.box, outline=colour, width=line)
        _label(draw, (seg.box[0] + 2, seg.box[1] + 2), seg.label, colour, font)
    for det in p.detections:
        if det.score < od_threshold:
            continue
        draw.rectangle(det.box, outline=OD_COLOR, width=line + 1)
        _label(
            draw, (det.box[0] + 2, det.box[3] - font_size - 4), f"{det.label} {det.score:.2f}", OD_COLOR, font
        )
    relations = sorted((r for r in p.relations if r.score >= sgg_threshold), key=lambda r: -r.score)
    for rel in relations[:max_relations]:
        start, end = box_centre(p.objects[rel.subject].box), box_centre(p.objects[rel.object].box)
        _arrow(draw, start, end, line)
        # label a third of the way from the subject, so that a pair's two directions do not overlap
        at = (start[0] + (end[0] - start[0]) * LABEL_AT, start[1] + (end[1] - start[1]) * LABEL_AT)
        _label(draw, at, rel.predicate, REL_COLOR, font)
    for text in p.text_lines:
        draw.polygon(text.quad, outline=OCR_COLOR, width=line + 1)
        _label(draw, (text.box[0], text.box[3] + 2), text.text, OCR_COLOR, font)
    return image


def draw_on_image(image: Image.Image, p: Perception) -> Image.Image:
    """`draw_perception` over a PIL image (converted to RGB)."""
    return draw_perception(np.asarray(image.convert("RGB")), p)
