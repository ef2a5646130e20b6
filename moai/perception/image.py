"""Images for perception: ``moai.io.load_image`` with a ``PerceptionConfig``'s limits, and the canvas resize.

Loading (EXIF orientation, mode conversion, the decompression-bomb guard, one-line ``ImageLoadError``) is
``moai.io``'s, the same loader the processor and the training data use, so perception sees the image in the
frame the model's pixels are in.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..io import ImageSource, load_image
from .config import RESAMPLE_FILTERS, PerceptionConfig

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
assert set(_RESAMPLE) == set(RESAMPLE_FILTERS)


def load_for(config: PerceptionConfig, source: ImageSource, name: str | None = None) -> Image.Image:
    """``load_image`` with ``config``'s ``max_pixels``, ``min_side`` and ``alpha_background``."""
    return load_image(
        source,
        max_pixels=config.max_pixels,
        min_side=config.min_side,
        alpha_background=config.alpha_background,
        name=name,
    )


def to_canvas(img: Image.Image, canvas: tuple[int, int] | None, resample: str = "bilinear") -> np.ndarray:
    """The (H, W, 3) uint8 array the backends see: resized to ``canvas`` = (width, height) without keeping
    the aspect ratio (official 490 × 490), or unchanged when ``canvas`` is None."""
    if canvas is not None and img.size != tuple(canvas):
        img = img.resize(tuple(canvas), _RESAMPLE[resample])
    return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))
