"""Open-world object detection (OWOD) with OWLv2 (arXiv 2403.07508 §3; docs/perception.md).

Official settings: ``google/owlv2-base-patch16-ensemble`` queried with 1,847 raw class names (ADE20K-847
then ImageNet-1k, shipped as ``moai/perception/data/owlv2_queries_1847.json``; names repeat, so a detection's
``label_id`` is the authoritative query index), processor defaults, then
``post_process_object_detection(threshold=0.1, target_sizes=[canvas])``; no NMS, no de-duplication. The
verbalizer keeps ``score >= 0.5``.

Query-embedding cache. The official code passes all 1,847 queries with every image, so the text tower
re-encodes them per image. Here (``cache_queries=True``) they are encoded once per model with
``get_text_features`` and normalised exactly as ``Owlv2Model.forward`` does; each image then runs only the
image embedder and the class / box / objectness heads (the same calls ``Owlv2ForObjectDetection.forward``
makes), and the usual post-processor. tests/test_perception_backends.py checks that both paths give the
same detections; bench/perception.py measures the speed-up.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ._hf import from_pretrained, hf_versions, import_torch, torch_dtype
from .registry import register_backend
from .types import Detection
from .vocab import owlv2_queries

DEFAULT_CHECKPOINT = "google/owlv2-base-patch16-ensemble"
#: ``queries="official"`` selects the 1,847 official OWLv2 queries.
OFFICIAL_QUERIES = "official"


@register_backend("owod", "owlv2")
class Owlv2Detector:
    """OWLv2 text-queried detection (transformers ``Owlv2ForObjectDetection``).

    Args:
        device: torch device.
        checkpoint: HF id or local directory (model + processor with tokenizer).
        revision: HF revision to pin.
        queries: ``"official"`` (the 1,847 official names) or a list of query strings.
        threshold: score threshold of the post-processor (official 0.1).
        cache_queries: encode the queries once per model instead of once per image (same detections).
        query_batch_size: queries per text-tower call when filling the cache.
        dtype: model dtype.
    """

    requires: tuple[str, ...] = ()

    def __init__(
        self,
        *,
        device: str = "cpu",
        checkpoint: str = DEFAULT_CHECKPOINT,
        revision: str | None = None,
        queries: str | Sequence[str] = OFFICIAL_QUERIES,
        threshold: float = 0.1,
        cache_queries: bool = True,
        query_batch_size: int = 512,
        dtype: str = "float32",
    ) -> None:
        self.torch = import_torch("owlv2")
        from transformers import AutoProcessor, Owlv2ForObjectDetection

        if isinstance(queries, str):
            if queries != OFFICIAL_QUERIES:
                raise ValueError(
                    f"owlv2: queries must be {OFFICIAL_QUERIES!r} or a list of strings, got {queries!r}"
                )
            self.queries = owlv2_queries()
        else:
            self.queries = tuple(str(q) for q in queries)
        if not self.queries:
            raise ValueError("owlv2: the query list is empty")
        self.device = device
        self.threshold = threshold
        self.cache_queries = cache_queries
        self.query_batch_size = query_batch_size
        self.processor = from_pretrained(AutoProcessor, checkpoint, revision, "owlv2", "owod")
        model = from_pretrained(Owlv2ForObjectDetection, checkpoint, revision, "owlv2", "owod")
        self.model = model.to(device=device, dtype=torch_dtype(dtype, "owlv2")).eval()
        self._query_cache: tuple[Any, Any] | None = None

    @classmethod
    def versions(cls) -> dict[str, str]:
        return hf_versions()

    # --- the two forward paths ----------------------------------------------------------------------------------

    def query_embeddings(self) -> tuple[Any, Any]:
        """``(embeds [Q, D], mask [Q])``: the normalised text embeddings and the padded-query mask, computed once.

        Normalisation and mask follow ``Owlv2Model.forward`` / ``Owlv2ForObjectDetection.forward``
        (``text_embeds / ||text_embeds||``; a query is valid when its first token id is > 0).
        """
        if self._query_cache is None:
            torch = self.torch
            tokens = self.processor(text=list(self.queries), return_tensors="pt")
            chunks = []
            with torch.inference_mode():
                for start in range(0, len(self.queries), self.query_batch_size):
                    stop = start + self.query_batch_size
                    features = self.model.owlv2.get_text_features(
                        input_ids=tokens["input_ids"][start:stop].to(self.device),
                        attention_mask=tokens["attention_mask"][start:stop].to(self.device),
                    )
                    embeds = getattr(features, "pooler_output", features)
                    chunks.append(embeds / torch.linalg.norm(embeds, ord=2, dim=-1, keepdim=True))
            self._query_cache = (torch.cat(chunks), tokens["input_ids"][:, 0].to(self.device) > 0)
        return self._query_cache

    def _forward_cached(self, pixel_values: Any) -> Any:
        """``Owlv2ForObjectDetection.forward`` with the text tower replaced by the cached query embeddings."""
        from transformers.models.owlv2.modeling_owlv2 import Owlv2ObjectDetectionOutput

        model = self.model
        query_embeds, query_mask = self.query_embeddings()
        feature_map, _ = model.image_embedder(pixel_values=pixel_values)  # [B, h, w, D]
        batch, height, width, dim = feature_map.shape
        image_feats = feature_map.reshape(batch, height * width, dim)  # [B, h*w, D]
        queries = query_embeds.unsqueeze(0).expand(batch, -1, -1)  # [B, Q, D_text]
        mask = query_mask.unsqueeze(0).expand(batch, -1)  # [B, Q]
        logits, _ = model.class_predictor(image_feats, queries, mask)  # [B, h*w, Q]
        return Owlv2ObjectDetectionOutput(
            logits=logits,
            pred_boxes=model.box_predictor(image_feats, feature_map),  # [B, h*w, 4] cxcywh in [0, 1]
            objectness_logits=model.objectness_predictor(image_feats),
            image_embeds=feature_map,
            text_embeds=queries,
        )

    def raw_outputs(self, images: Sequence[np.ndarray], cache_queries: bool | None = None) -> Any:
        """Model outputs for a batch, through the cached path or the plain (official) forward."""
        torch = self.torch
        use_cache = self.cache_queries if cache_queries is None else cache_queries
        dtype = next(self.model.parameters()).dtype
        with torch.inference_mode():
            if use_cache:
                pixels = self.processor.image_processor(images=list(images), return_tensors="pt")[
                    "pixel_values"
                ]
                return self._forward_cached(pixels.to(self.device, dtype))
            inputs = self.processor(
                text=[list(self.queries)] * len(images), images=list(images), return_tensors="pt"
            )
            return self.model(
                input_ids=inputs["input_ids"].to(self.device),
                attention_mask=inputs["attention_mask"].to(self.device),
                pixel_values=inputs["pixel_values"].to(self.device, dtype),
            )

    def __call__(
        self, images: Sequence[np.ndarray], cache_queries: bool | None = None
    ) -> list[list[Detection]]:
        if not images:
            return []
        outputs = self.raw_outputs(images, cache_queries)
        outputs.logits = outputs.logits.float()
        outputs.pred_boxes = outputs.pred_boxes.float()
        results = self.processor.image_processor.post_process_object_detection(
            outputs, threshold=self.threshold, target_sizes=[img.shape[:2] for img in images]
        )
        detections = []
        for result in results:
            boxes = result["boxes"].cpu().numpy().astype(np.float32)
            scores = result["scores"].cpu().numpy().astype(np.float32)
            labels = result["labels"].cpu().numpy()
            detections.append(
                [
                    Detection(label=self.queries[int(q)], box=tuple(box), score=float(s), label_id=int(q))
                    for box, s, q in zip(boxes.tolist(), scores.tolist(), labels.tolist())
                ]
            )
        return detections
