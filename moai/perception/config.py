"""``PerceptionConfig``: which backend runs each role, with which options, on what canvas.

Presets (``PerceptionConfig.from_preset``; docs/perception.md, Presets and The official perception stage):

* ``official``: Mask2Former (Swin-B COCO-panoptic; threshold 0.5, mask threshold 0.95, no label fusing),
  OWLv2 (base-patch16-ensemble, the 1,847 official queries, threshold 0.1), PSGTR (extra ``psgtr``),
  PaddleOCR (extra ``paddleocr``; angle classifier, ``lang='ch'``), every model on the 490 × 490 resized
  image. Building it stops with a one-line message naming the missing extra.
* ``default``: the same Mask2Former and OWLv2, the ``geometric`` scene graph (relations decided from the
  PS/OWOD masks and boxes instead of PSGTR, which needs an mmdet/mmcv stack current torch cannot install)
  and ``rapidocr`` (the PaddleOCR PP-OCRv4 detector + recogniser shipped inside the rapidocr-onnxruntime
  wheel; lines with confidence >= 0.85). Installable everywhere; docs/perception.md lists the differences.
* ``shapesworld``: the ShapesWorld backends (``moai/perception/shapes.py``: classic image processing, pixels
  only) for PS, OWOD and SGG, and ``rapidocr`` restricted to the signs found (OCR ``shapes``), on the
  world's 224 × 224 canvas (docs/shapesworld.md).

The verbalization thresholds (OWOD 0.5, SGG top-10 and 0.8, OCR 0.85) are the verbalizer's, not the
backends' (``moai.verbalize.official``).

``fingerprint()`` hashes the resolved config (every backend option, defaults filled in) and is the
config part of the cache key; ``device`` and ``batch_size`` are excluded since they do not select
different models or thresholds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from ..io import DEFAULT_MAX_PIXELS
from .registry import resolve_options
from .types import ROLES, canonical_role

#: Official canvas (docs/perception.md, The official perception stage, step 1): every external model runs on the 490 × 490 resized image.
OFFICIAL_CANVAS_SIZE = (490, 490)
#: Resampling filters accepted for the canvas resize (detectron2 ``T.Resize`` uses PIL bilinear).
RESAMPLE_FILTERS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")
#: Fields that do not change what is computed and are therefore left out of the fingerprint.
UNHASHED_FIELDS = ("device", "batch_size", "preset")


@dataclass(frozen=True)
class BackendConfig:
    """One role's backend: its registered ``name`` and option overrides (defaults: official values)."""

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "options": dict(self.options)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | str) -> BackendConfig:
        if isinstance(data, str):
            return cls(name=data)
        unknown = set(data) - {"name", "options"}
        if unknown:
            raise ValueError(f"unknown backend config key(s): {', '.join(sorted(unknown))}")
        return cls(name=data["name"], options=dict(data.get("options", {})))


PRESETS: dict[str, dict[str, BackendConfig]] = {
    "official": {
        "ps": BackendConfig("mask2former"),
        "owod": BackendConfig("owlv2"),
        "sgg": BackendConfig("psgtr"),
        "ocr": BackendConfig("paddleocr"),
    },
    "default": {
        "ps": BackendConfig("mask2former"),
        "owod": BackendConfig("owlv2"),
        "sgg": BackendConfig("geometric"),
        "ocr": BackendConfig("rapidocr"),
    },
    "shapesworld": {
        "ps": BackendConfig("shapes"),
        "owod": BackendConfig("shapes"),
        "sgg": BackendConfig("shapes"),
        "ocr": BackendConfig("shapes"),
    },
}
#: Fields other than the backends that a preset sets (ShapesWorld's backends run on its 224 × 224 canvas).
PRESET_FIELDS: dict[str, dict[str, Any]] = {"shapesworld": {"canvas": (224, 224)}}


@dataclass(frozen=True)
class PerceptionConfig:
    """Configuration of the perception stage (see the module docstring for the presets)."""

    ps: BackendConfig | None = None
    """Panoptic segmentation backend (None: not run)."""
    owod: BackendConfig | None = None
    """Open-world object detection backend."""
    sgg: BackendConfig | None = None
    """Scene-graph generation backend."""
    ocr: BackendConfig | None = None
    """OCR backend."""
    canvas: tuple[int, int] | None = OFFICIAL_CANVAS_SIZE
    """``(width, height)`` every backend runs on; no aspect-ratio preservation, no padding (official).
    None runs on the image as loaded."""
    resample: str = "bilinear"
    """Filter of the canvas resize (PIL; the official eval mappers use detectron2 ``T.Resize`` = PIL bilinear)."""
    max_pixels: int = DEFAULT_MAX_PIXELS
    """Images with more pixels are refused before decoding (decompression-bomb guard)."""
    min_side: int = 1
    """Images with a side shorter than this are refused (1 accepts every decodable image; the canvas
    resize makes a 1 × 1 image a uniform 490 × 490 one)."""
    alpha_background: tuple[int, int, int] | None = (255, 255, 255)
    """Transparent images are composited over this colour; None drops alpha like ``convert("RGB")``."""
    batch_size: int = 4
    """Images per backend call."""
    device: str = "auto"
    """torch device of the neural backends; ``auto``: CUDA when available (under ``accelerate launch``: the
    rank's device), else CPU. The OCR backends run on CPU, as the official PaddleOCR."""
    preset: str | None = None
    """The preset this config came from (informational)."""

    def __post_init__(self) -> None:
        for role in ROLES:
            value = getattr(self, role)
            if isinstance(value, str | Mapping):
                object.__setattr__(self, role, BackendConfig.from_dict(value))
            elif value is not None and not isinstance(value, BackendConfig):
                raise TypeError(
                    f"PerceptionConfig.{role} must be a BackendConfig, name or None, got {value!r}"
                )
        if self.canvas is not None:
            canvas = tuple(int(v) for v in self.canvas)
            if len(canvas) != 2 or min(canvas) < 1:
                raise ValueError(f"PerceptionConfig.canvas must be (width, height) >= 1, got {self.canvas!r}")
            object.__setattr__(self, "canvas", canvas)
        if self.alpha_background is not None:
            object.__setattr__(self, "alpha_background", tuple(int(v) for v in self.alpha_background))
        if self.resample not in RESAMPLE_FILTERS:
            raise ValueError(
                f"PerceptionConfig.resample must be one of {RESAMPLE_FILTERS}, got {self.resample!r}"
            )
        if self.max_pixels < 1 or self.min_side < 1 or self.batch_size < 1:
            raise ValueError("PerceptionConfig.max_pixels, min_side and batch_size must be >= 1")

    # --- construction ------------------------------------------------------------------------------------------

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> PerceptionConfig:
        """``official``, ``default`` or ``shapesworld`` (module docstring), with field overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown perception preset {name!r} (available: {', '.join(PRESETS)})")
        return cls(**{**PRESETS[name], **PRESET_FIELDS.get(name, {}), "preset": name, **overrides})

    def only(self, roles: Iterable[str]) -> PerceptionConfig:
        """Keep only these roles (aliases ``seg``/``od`` accepted); the others are set to None."""
        keep = {canonical_role(r) for r in roles}
        return replace(self, **{role: (getattr(self, role) if role in keep else None) for role in ROLES})

    @property
    def roles(self) -> tuple[str, ...]:
        """Roles with a backend, in the official order."""
        return tuple(role for role in ROLES if getattr(self, role) is not None)

    # --- serialisation and identity ----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, BackendConfig):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PerceptionConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown PerceptionConfig key(s): {', '.join(unknown)}")
        values = dict(data)
        for role in ROLES:
            if values.get(role) is not None:
                values[role] = BackendConfig.from_dict(values[role])
        for key in ("canvas", "alpha_background"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        return cls(**values)

    def resolved(self) -> dict[str, Any]:
        """``to_dict`` with every backend's options filled in from its defaults (what the fingerprint hashes)."""
        out = {k: v for k, v in self.to_dict().items() if k not in UNHASHED_FIELDS}
        for role in self.roles:
            backend: BackendConfig = getattr(self, role)
            out[role] = {
                "name": backend.name,
                "options": resolve_options(role, backend.name, backend.options),
            }
        return out

    def fingerprint(self) -> str:
        """sha256 (hex, 16 chars) of the resolved config."""
        text = json.dumps(self.resolved(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]
