"""Panoptic segmentation (PS) with Mask2Former (arXiv 2403.07508 §3; docs/perception.md).

Official settings: checkpoint ``facebook/mask2former-swin-base-coco-panoptic`` (133 COCO-panoptic
classes) through ``AutoImageProcessor`` defaults, then ``post_process_panoptic_segmentation(threshold=0.5,
mask_threshold=0.95, label_ids_to_fuse=(), target_sizes=[canvas])`` with the HF default overlap threshold
(0.8). Boxes come from the masks as detectron2 ``BitMasks.get_bounding_boxes`` computes them in the
official ``make_seg_prompt``: ``(x_min, y_min, x_max + 1, y_max + 1)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ._hf import from_pretrained, hf_versions, import_torch, torch_dtype
from .registry import missing_extra, package_version, register_backend
from .types import Segment

DEFAULT_CHECKPOINT = "facebook/mask2former-swin-base-coco-panoptic"


def segments_from_panoptic(result: Mapping[str, Any], id2label: Mapping[int, str]) -> list[Segment]:
    """Turn one ``post_process_panoptic_segmentation`` result into ``Segment``s in ``segments_info`` order.

    The HF post-processor returns a float map of -1 and no ``segments_info`` when no query passes the
    threshold (and an int32 map otherwise); both give an empty list here. A segment whose mask is empty
    (possible only in hand-made results) keeps an all-zero box, like ``BitMasks``.
    """
    seg_map = result["segmentation"]
    seg_map = seg_map.cpu().numpy() if hasattr(seg_map, "cpu") else np.asarray(seg_map)
    segments = []
    for info in result.get("segments_info", ()):
        label_id = int(info["label_id"])
        mask = seg_map == info["id"]
        label = id2label.get(label_id, id2label.get(str(label_id), str(label_id)))  # type: ignore[call-overload]
        segments.append(
            Segment.from_mask(label=label, mask=mask, score=float(info["score"]), label_id=label_id)
        )
    return segments


@register_backend("ps", "mask2former")
class Mask2FormerSegmenter:
    """Mask2Former panoptic segmentation (transformers ``Mask2FormerForUniversalSegmentation``; needs scipy).

    Args:
        device: torch device.
        checkpoint: HF id or local directory (model + image-processor config).
        revision: HF revision to pin.
        threshold: class-score threshold of the post-processor (official 0.5).
        mask_threshold: binarisation threshold of the mask probabilities (official 0.95).
        overlap_mask_area_threshold: HF default 0.8 (the official code leaves it at the default).
        label_ids_to_fuse: class ids fused into one segment (official: none).
        dtype: model dtype.
    """

    requires: tuple[str, ...] = ()

    def __init__(
        self,
        *,
        device: str = "cpu",
        checkpoint: str = DEFAULT_CHECKPOINT,
        revision: str | None = None,
        threshold: float = 0.5,
        mask_threshold: float = 0.95,
        overlap_mask_area_threshold: float = 0.8,
        label_ids_to_fuse: Sequence[int] = (),
        dtype: str = "float32",
    ) -> None:
        self.check_dependencies()
        self.torch = import_torch("mask2former")
        from transformers import AutoImageProcessor, Mask2FormerForUniversalSegmentation

        self.device = device
        self.threshold = threshold
        self.mask_threshold = mask_threshold
        self.overlap_mask_area_threshold = overlap_mask_area_threshold
        self.label_ids_to_fuse = set(int(i) for i in label_ids_to_fuse)
        self.processor = from_pretrained(AutoImageProcessor, checkpoint, revision, "mask2former", "ps")
        model = from_pretrained(
            Mask2FormerForUniversalSegmentation, checkpoint, revision, "mask2former", "ps"
        )
        self.model = model.to(device=device, dtype=torch_dtype(dtype, "mask2former")).eval()
        self.id2label = dict(self.model.config.id2label)

    @classmethod
    def check_dependencies(cls) -> None:
        import_torch("mask2former")
        try:
            import scipy  # noqa: F401  (Mask2Former's matcher imports it when the model is built)
        except ImportError:
            raise missing_extra("mask2former", "scipy", None) from None

    @classmethod
    def versions(cls) -> dict[str, str]:
        return {**hf_versions(), "scipy": package_version("scipy")}

    def __call__(self, images: Sequence[np.ndarray]) -> list[list[Segment]]:
        if not images:
            return []
        torch = self.torch
        inputs = self.processor(images=list(images), return_tensors="pt")
        dtype = next(self.model.parameters()).dtype
        kwargs = {"pixel_values": inputs["pixel_values"].to(self.device, dtype)}
        if "pixel_mask" in inputs:
            kwargs["pixel_mask"] = inputs["pixel_mask"].to(self.device)
        with torch.inference_mode():
            outputs = self.model(**kwargs)
        outputs.class_queries_logits = outputs.class_queries_logits.float()
        outputs.masks_queries_logits = outputs.masks_queries_logits.float()
        results = self.processor.post_process_panoptic_segmentation(
            outputs,
            threshold=self.threshold,
            mask_threshold=self.mask_threshold,
            overlap_mask_area_threshold=self.overlap_mask_area_threshold,
            label_ids_to_fuse=self.label_ids_to_fuse,
            target_sizes=[img.shape[:2] for img in images],
        )
        return [segments_from_panoptic(r, self.id2label) for r in results]
