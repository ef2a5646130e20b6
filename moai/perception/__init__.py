"""Perception: the four external CV models of MoAI and their cache (arXiv 2403.07508 §3; docs/perception.md).

MoAI first runs panoptic segmentation (PS), open-world detection (OWOD), scene-graph generation (SGG) and
OCR on the 490 × 490 resized image; their outputs, verbalized, become the auxiliary tokens. This package
produces those outputs as plain frozen dataclasses; it imports no model until a backend is built.

Public API::

    from moai.perception import PerceptionConfig, perceive, verbalize_perception, panoptic_map

    config = PerceptionConfig.from_preset("default")      # or "official"; .only(["ps", "ocr"])
    [p] = perceive(["photo.jpg"], config)                  # list[Perception]; models built for this call
    perceiver = Perceiver(config)                          # keeps its models: perceiver(["a.jpg", "b.png"])
    aux_text = verbalize_perception(p)                     # the official aux string ("v2": new models)
    aux_map = panoptic_map(p)                              # official panoptic colour map (H, W, 3)

Types (``types.py``): ``Segment`` (label, box, mask, score), ``Detection`` (label, box, score),
``Relation`` (subject/object index + label, predicate, score, full predicate distribution),
``TextLine`` (text, quad, score), ``SceneGraph`` and ``Perception`` (all four + canvas size), with a
JSON round trip (``Perception.to_json`` / ``from_json``; masks as COCO run-length encoding).

Images: ``load_image(path | bytes | PIL | array)`` (``moai.io``, the loader the processor and the training
data use too) returns RGB with EXIF orientation applied, or raises ``ImageLoadError("<file>: <reason>")``.

Cache (``cache.py``), written by ``moai perceive --data DATA --out CACHE_DIR`` (or ``precompute``) and read
by training::

    cache = PerceptionCache("CACHE_DIR")            # PerceptionCache(dir, config=cfg) also checks the config
    p = cache.get("images/0001.jpg")                # by path or encoded bytes -> Perception | None
    cache.config                                    # the PerceptionConfig it was written with

Backends register per role in ``registry.py`` (``register_backend``); built in: ``mask2former`` (PS),
``owlv2`` (OWOD), ``geometric`` / ``psgtr`` (SGG), ``rapidocr`` / ``paddleocr`` (OCR), and ``shapes`` (PS, OWOD,
SGG; ShapesWorld, ``moai/perception/shapes.py``).
"""

from ..io import ImageLoadError, load_image
from .cache import CacheMismatchError, PerceptionCache, content_hash
from .config import BackendConfig, PerceptionConfig
from .dataset import BadImageError, BadRecordError, RunSummary, list_images, precompute, scan_data
from .image import to_canvas
from .registry import MissingExtraError, backend_names, build_backend, register_backend
from .run import Perceiver, perceive
from .types import Detection, Perception, Relation, SceneGraph, Segment, TextLine
from .verbalize import official_parts, panoptic_map, verbalize_perception

__all__ = [
    "BackendConfig",
    "BadImageError",
    "BadRecordError",
    "CacheMismatchError",
    "Detection",
    "ImageLoadError",
    "MissingExtraError",
    "Perceiver",
    "Perception",
    "PerceptionCache",
    "PerceptionConfig",
    "Relation",
    "RunSummary",
    "SceneGraph",
    "Segment",
    "TextLine",
    "backend_names",
    "build_backend",
    "content_hash",
    "list_images",
    "load_image",
    "official_parts",
    "panoptic_map",
    "perceive",
    "precompute",
    "register_backend",
    "scan_data",
    "to_canvas",
    "verbalize_perception",
]
