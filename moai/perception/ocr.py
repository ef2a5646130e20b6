"""OCR backends: ``rapidocr`` (default) and ``paddleocr`` (official, extra ``paddleocr``).

MoAI runs ``PaddleOCR(use_angle_cls=True, lang='ch', use_gpu=False, show_log=False)`` on CPU, one image
at a time, and its verbalizer keeps lines with confidence >= 0.85 (docs/perception.md, The official perception stage).

``rapidocr`` runs the PaddleOCR PP-OCRv4 Chinese/English detector and recogniser (plus the PP-OCR
mobile angle classifier) that ship inside the ``rapidocr-onnxruntime`` wheel, through onnxruntime,
offline. Lines come in the reader's top-to-bottom, left-to-right order (the same sorting as PaddleOCR);
lines with confidence below ``min_score`` (0.85, the official verbalizer threshold) are dropped.

Channel order: both engines expect OpenCV's BGR for arrays. ``rapidocr`` converts the RGB canvas to
BGR. The official code hands PaddleOCR the RGB array as is [inferred from the official call on the
torchvision image]; the ``paddleocr`` adapter does the same by default (``bgr=False``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .registry import missing_extra, package_version, register_backend
from .types import TextLine


def _text_lines(raw: Sequence[Any] | None, min_score: float) -> list[TextLine]:
    """``[[quad, text, score], ...]`` (rapidocr) or ``[[quad, (text, score)], ...]`` (PaddleOCR) -> lines."""
    lines = []
    for item in raw or ():
        if len(item) == 3:
            quad, text, score = item
        else:
            quad, (text, score) = item
        if float(score) >= min_score:
            lines.append(TextLine(text=str(text), quad=tuple(tuple(p) for p in quad), score=float(score)))
    return lines


@register_backend("ocr", "rapidocr")
class RapidOcrReader:
    """PP-OCRv4 through rapidocr-onnxruntime (CPU).

    Args:
        device: ignored (onnxruntime CPU build), accepted like every backend.
        min_score: keep lines with at least this recognition confidence (official 0.85).
        use_angle_cls: run the 0/180-degree text-direction classifier (official ``use_angle_cls=True``).
        text_score: rapidocr's own recognition-score cut applied before ``min_score`` (its default 0.5).
        box_thresh: detector box threshold (rapidocr / PaddleOCR default 0.5).
        unclip_ratio: detector box expansion (default 1.6).
        bgr: convert the RGB canvas to BGR, the channel order the models were trained with.
    """

    requires: tuple[str, ...] = ()

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
    ) -> None:
        self.check_dependencies()
        from rapidocr_onnxruntime import RapidOCR

        self.engine = RapidOCR()
        self.min_score = min_score
        self.use_angle_cls = use_angle_cls
        self.call_options = {"text_score": text_score, "box_thresh": box_thresh, "unclip_ratio": unclip_ratio}
        self.bgr = bgr

    @classmethod
    def check_dependencies(cls) -> None:
        try:
            import rapidocr_onnxruntime  # noqa: F401
        except ImportError:
            raise missing_extra("rapidocr", "rapidocr-onnxruntime", None) from None

    @classmethod
    def versions(cls) -> dict[str, str]:
        return {
            name: package_version(name) for name in ("rapidocr-onnxruntime", "onnxruntime", "opencv-python")
        }

    def read(self, image: np.ndarray) -> list[TextLine]:
        """OCR one (H, W, 3) uint8 RGB image."""
        array = np.ascontiguousarray(image[..., ::-1]) if self.bgr else image
        raw, _ = self.engine(array, use_cls=self.use_angle_cls, **self.call_options)
        return _text_lines(raw, self.min_score)

    def __call__(self, images: Sequence[np.ndarray]) -> list[list[TextLine]]:
        return [self.read(image) for image in images]


@register_backend("ocr", "paddleocr")
class PaddleOcrReader:
    """PaddleOCR itself, as the official code builds it (extra ``paddleocr``; 2.x ``.ocr`` API). UNTESTED here:
    paddlepaddle is not installed in this project's environment.

    Args:
        device: ignored; the official runs PaddleOCR on CPU (``use_gpu=False``).
        min_score: keep lines with at least this confidence (0: keep all, the verbalizer applies 0.85).
        lang: PaddleOCR language (official ``'ch'``: Chinese + English).
        use_angle_cls: official True.
        bgr: convert the RGB canvas to BGR (official: False, the RGB array is passed as is).
    """

    requires: tuple[str, ...] = ()

    def __init__(
        self,
        *,
        device: str = "cpu",
        min_score: float = 0.0,
        lang: str = "ch",
        use_angle_cls: bool = True,
        bgr: bool = False,
    ) -> None:
        self.check_dependencies()
        from paddleocr import PaddleOCR

        self.engine = PaddleOCR(use_angle_cls=use_angle_cls, lang=lang, use_gpu=False, show_log=False)
        self.min_score = min_score
        self.bgr = bgr

    @classmethod
    def check_dependencies(cls) -> None:
        try:
            import paddleocr  # noqa: F401
        except ImportError:
            raise missing_extra(
                "paddleocr",
                "paddleocr",
                "paddleocr",
                instead="--preset default (rapidocr: the same PP-OCR models)",
            ) from None

    @classmethod
    def versions(cls) -> dict[str, str]:
        return {name: package_version(name) for name in ("paddleocr", "paddlepaddle")}

    def __call__(self, images: Sequence[np.ndarray]) -> list[list[TextLine]]:
        out = []
        for image in images:
            array = np.ascontiguousarray(image[..., ::-1]) if self.bgr else image
            result = self.engine.ocr(array)
            out.append(_text_lines(result[0] if result else None, self.min_score))
        return out
