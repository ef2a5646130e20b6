"""Running the configured backends over images: ``Perceiver`` and ``perceive`` (docs/perception.md, The official perception stage, steps 1–2).

Data flow per batch::

    load_image (RGB, EXIF applied, checked) -> canvas (490 × 490 resize) -> PS, OWOD -> SGG (reads PS/OWOD)
                                                                         -> OCR
                                                                         -> Perception

A role that the SGG backend needs (``geometric`` reads ``ps`` and ``owod``) but that was not requested
(``--only sgg``) is run when it has a backend configured, and left out of the result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from ..io import ImageSource
from .config import PerceptionConfig
from .image import load_for, to_canvas
from .registry import backend_requires, backend_versions, build_backend, check_backend, resolve_options
from .types import ROLES, Perception, SceneGraph


def resolve_device(device: str = "auto") -> str:
    """``"auto"``: ``"cuda"`` when torch sees a GPU, else ``"cpu"``; any other value is returned as is."""
    if device != "auto":
        return device
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def run_roles(config: PerceptionConfig) -> tuple[str, ...]:
    """The roles that run for ``config``: the requested ones plus those its SGG backend reads."""
    needed = set(config.roles)
    if config.sgg is not None:
        needed |= {r for r in backend_requires("sgg", config.sgg.name) if getattr(config, r) is not None}
    return tuple(role for role in ROLES if role in needed)


def check_config(config: PerceptionConfig, skip: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Validate ``config`` without loading a model; returns the roles that will run.

    Raises ``ValueError`` for an empty config, an SGG backend without its inputs or an unknown backend
    option, and ``MissingExtraError`` for every backend whose dependencies are missing, before anything
    loads.
    """
    if not config.roles:
        raise ValueError("PerceptionConfig has no role to run (all of ps, owod, sgg, ocr are None)")
    if config.sgg is not None:
        reads = backend_requires("sgg", config.sgg.name)
        if reads and not any(getattr(config, r) is not None for r in reads):
            raise ValueError(
                f"sgg backend {config.sgg.name!r} reads the {' / '.join(reads)} outputs; configure at least one"
            )
    roles = run_roles(config)
    for role in roles:
        if role not in skip:
            spec = getattr(config, role)
            resolve_options(role, spec.name, spec.options)
            check_backend(role, spec.name)
    return roles


class Perceiver:
    """The backends of one ``PerceptionConfig``, built once (models load in ``__init__``) and reused.

    Args:
        config: which backends, options and canvas.
        backends: already built backends by role, to share models between perceivers (optional).
    """

    def __init__(self, config: PerceptionConfig, backends: dict[str, Any] | None = None) -> None:
        if config.device == "auto":
            config = replace(config, device=resolve_device())
        self.config = config
        self.requested = config.roles
        self.backends: dict[str, Any] = dict(backends or {})
        self.run_roles = check_config(config, skip=tuple(self.backends))
        for role in self.run_roles:
            if role not in self.backends:
                spec = getattr(config, role)
                self.backends[role] = build_backend(role, spec.name, spec.options, device=config.device)

    def versions(self) -> dict[str, str]:
        """Package versions of every backend that runs (part of the cache key)."""
        out: dict[str, str] = {}
        for role in self.run_roles:
            out.update(backend_versions(role, getattr(self.config, role).name))
        return dict(sorted(out.items()))

    def load(self, source: ImageSource, name: str | None = None) -> Any:
        """``moai.io.load_image`` with this config's limits."""
        return load_for(self.config, source, name)

    def perceive_loaded(self, images: Sequence[Any]) -> list[Perception]:
        """Perceive already-loaded RGB ``PIL.Image``s (one backend call per role and batch)."""
        out: list[Perception] = []
        step = self.config.batch_size
        for start in range(0, len(images), step):
            out.extend(self._batch(images[start : start + step]))
        return out

    def _batch(self, images: Sequence[Any]) -> list[Perception]:
        canvases = [to_canvas(img, self.config.canvas, self.config.resample) for img in images]
        n = len(canvases)
        segments = self.backends["ps"](canvases) if "ps" in self.run_roles else [[] for _ in range(n)]
        detections = self.backends["owod"](canvases) if "owod" in self.run_roles else [[] for _ in range(n)]
        empty_graph = SceneGraph(objects=(), relations=(), predicates=())
        graphs = (
            self.backends["sgg"](canvases, segments, detections)
            if "sgg" in self.run_roles
            else [empty_graph] * n
        )
        texts = self.backends["ocr"](canvases) if "ocr" in self.run_roles else [[] for _ in range(n)]
        for role, result in (("ps", segments), ("owod", detections), ("sgg", graphs), ("ocr", texts)):
            if len(result) != n:
                raise RuntimeError(f"{role} backend returned {len(result)} results for {n} images")
        keep = set(self.requested)
        results = []
        for img, canvas, segs, dets, graph, lines in zip(
            images, canvases, segments, detections, graphs, texts
        ):
            results.append(
                Perception(
                    image_size=(canvas.shape[1], canvas.shape[0]),
                    segments=tuple(segs) if "ps" in keep else (),
                    detections=tuple(dets) if "owod" in keep else (),
                    objects=graph.objects if "sgg" in keep else (),
                    relations=graph.relations if "sgg" in keep else (),
                    predicates=graph.predicates if "sgg" in keep else (),
                    text_lines=tuple(lines) if "ocr" in keep else (),
                    source_size=img.size,
                    roles=self.requested,
                )
            )
        return results

    def __call__(self, images: Sequence[ImageSource] | ImageSource) -> list[Perception]:
        """Load (see ``load_image``) and perceive; raises ``ImageLoadError`` on the first bad image."""
        if not isinstance(images, list | tuple):
            images = [images]
        return self.perceive_loaded([self.load(image) for image in images])


def perceive(
    images: Sequence[ImageSource] | ImageSource, config: PerceptionConfig | str = "default"
) -> list[Perception]:
    """Run the configured backends on images (paths, bytes, PIL images or uint8 arrays), once.

    ``config`` is a ``PerceptionConfig`` or a preset name. The backends are built for this call and freed
    after it; to perceive more images with the same models, build a ``Perceiver`` and keep it.
    """
    cfg = PerceptionConfig.from_preset(config) if isinstance(config, str) else config
    return Perceiver(cfg)(images)
