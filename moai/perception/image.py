"""Loading images for perception: every input becomes an RGB ``PIL.Image`` or a clear error.

Handled (docs/perception.md, Bad input): EXIF orientation is applied (``ImageOps.exif_transpose``); grayscale, palette,
CMYK, YCbCr, LAB, HSV are converted to RGB; images with transparency (RGBA, LA, PA, palette with a
transparency entry) are composited over ``alpha_background`` (white by default; None drops the alpha
channel like ``convert("RGB")``); 16/32-bit integer images (``I;16*``, ``I``) are rescaled from the 16-bit
range (value / 257) instead of being clipped to white; float images (``F``) are clipped to 0..255.
Animated images use their first frame.

Refused with ``ImageLoadError`` (a ``ValueError`` whose message is ``"<file>: <reason>"``): missing files,
directories, zero-byte files, non-image data, truncated or corrupt data, images with more than
``max_pixels`` pixels (checked from the header before decoding; Pillow's own decompression-bomb warning and
error are turned into the same refusal) and images with a side shorter than ``min_side``.
"""

from __future__ import annotations

import io
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .config import DEFAULT_MAX_PIXELS, RESAMPLE_FILTERS

#: 16-bit full scale -> 8-bit full scale.
_SIXTEEN_BIT_DIVISOR = 257.0
_EIGHT_BIT_MAX = 255
_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
assert set(_RESAMPLE) == set(RESAMPLE_FILTERS)
# PIL.Image.MAX_IMAGE_PIXELS is process-global; it is set per call under this lock.
_PIL_LIMIT_LOCK = threading.Lock()

ImageSource = str | Path | bytes | Image.Image | np.ndarray


class ImageLoadError(ValueError):
    """An input image that cannot be used; the message names the file and the reason."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


def describe_source(source: Any) -> str:
    """A short name for error messages: the path, or ``<bytes>`` / ``<array>`` / ``<PIL image>``."""
    if isinstance(source, str | Path):
        return str(source)
    if isinstance(source, bytes | bytearray):
        return f"<{len(source)} bytes>"
    if isinstance(source, np.ndarray):
        return f"<array {source.shape}>"
    return f"<{type(source).__name__}>"


def _to_rgb(img: Image.Image, alpha_background: tuple[int, int, int] | None) -> Image.Image:
    """Convert any Pillow mode to RGB (module docstring)."""
    mode = img.mode
    if mode.startswith("I") or mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        if mode.startswith("I"):
            arr = arr / _SIXTEEN_BIT_DIVISOR
        gray = np.clip(np.rint(arr), 0, _EIGHT_BIT_MAX).astype(np.uint8)
        return Image.fromarray(np.stack([gray] * 3, axis=-1), mode="RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info)
    if has_alpha and alpha_background is not None:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*alpha_background, _EIGHT_BIT_MAX))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _too_many_pixels(count: str, max_pixels: int) -> str:
    return (
        f"image has {count} pixels, over the limit of {max_pixels:,} "
        "(possible decompression bomb; to allow it, raise the limit: moai perceive --max-pixels N, "
        "or PerceptionConfig(max_pixels=N))"
    )


def _check_size(name: str, width: int, height: int, max_pixels: int, min_side: int) -> None:
    if width * height > max_pixels:
        raise ImageLoadError(name, _too_many_pixels(f"{width}x{height} = {width * height:,}", max_pixels))
    if min(width, height) < min_side:
        raise ImageLoadError(
            name,
            f"image is {width}x{height}, a side is shorter than min_side={min_side} (PerceptionConfig.min_side)",
        )


def _open_encoded(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """Decode bytes fully under the pixel limit; every Pillow failure becomes ``ImageLoadError``."""
    if not data:
        raise ImageLoadError(name, "empty file (0 bytes)")
    with _PIL_LIMIT_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        previous = Image.MAX_IMAGE_PIXELS
        try:
            Image.MAX_IMAGE_PIXELS = None  # read the header unchecked, then check it here with our message
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > max_pixels:  # before decoding a single pixel
                raise ImageLoadError(
                    name, _too_many_pixels(f"{width}x{height} = {width * height:,}", max_pixels)
                )
            Image.MAX_IMAGE_PIXELS = max_pixels  # Pillow's own check for plugins that re-check while decoding
            img.load()
        except ImageLoadError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise ImageLoadError(name, _too_many_pixels(f"more ({err})", max_pixels)) from None
        except UnidentifiedImageError:
            raise ImageLoadError(name, "not a recognised image format") from None
        except (OSError, SyntaxError, ValueError, EOFError) as err:
            reason = str(err) or type(err).__name__
            if "truncated" in reason.lower():
                reason = f"truncated image data ({reason})"
            raise ImageLoadError(name, f"cannot decode image: {reason}") from None
        finally:
            Image.MAX_IMAGE_PIXELS = previous
    return img


def load_image(
    source: ImageSource,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = 1,
    alpha_background: tuple[int, int, int] | None = (255, 255, 255),
    exif_transpose: bool = True,
    name: str | None = None,
) -> Image.Image:
    """Load a path, encoded bytes, a PIL image or an (H, W[, C]) uint8 array as an RGB ``PIL.Image``.

    Args:
        source: the image.
        max_pixels: refuse images with more pixels (decompression bombs).
        min_side: refuse images with a shorter side.
        alpha_background: colour transparent pixels are composited over (None: drop alpha).
        exif_transpose: apply the EXIF orientation tag.
        name: how to name the image in errors (default: the path, or a short description).

    Raises:
        ImageLoadError: with ``"<name>: <reason>"`` for any unusable input (module docstring).
    """
    label = name or describe_source(source)
    if isinstance(source, str | Path):
        path = Path(source)
        if not path.exists():
            raise ImageLoadError(label, "file not found")
        if path.is_dir():
            raise ImageLoadError(label, "is a directory, not an image file")
        try:
            data = path.read_bytes()
        except OSError as err:
            raise ImageLoadError(label, f"cannot read file ({err.strerror or err})") from None
        img = _open_encoded(data, label, max_pixels)
    elif isinstance(source, bytes | bytearray):
        img = _open_encoded(bytes(source), label, max_pixels)
    elif isinstance(source, Image.Image):
        img = source
    elif isinstance(source, np.ndarray):
        arr = source
        if arr.dtype != np.uint8:
            raise ImageLoadError(label, f"array images must be uint8, got {arr.dtype}")
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[..., 0]
        if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
            raise ImageLoadError(
                label, f"array images must be (H, W), (H, W, 3) or (H, W, 4), got {arr.shape}"
            )
        img = Image.fromarray(arr)
    else:
        raise ImageLoadError(label, f"unsupported image type {type(source).__name__}")
    _check_size(label, img.width, img.height, max_pixels, min_side)
    if exif_transpose:
        try:
            img = ImageOps.exif_transpose(img)
        except Exception as err:  # a malformed EXIF block must not abort a data-set run
            raise ImageLoadError(label, f"cannot apply EXIF orientation ({err})") from None
    try:
        return _to_rgb(img, alpha_background)
    except (OSError, ValueError) as err:
        raise ImageLoadError(label, f"cannot convert mode {img.mode} to RGB ({err})") from None


def to_canvas(img: Image.Image, canvas: tuple[int, int] | None, resample: str = "bilinear") -> np.ndarray:
    """The (H, W, 3) uint8 array the backends see: resized to ``canvas`` = (width, height) without keeping
    the aspect ratio (official 490 × 490), or unchanged when ``canvas`` is None."""
    if canvas is not None and img.size != tuple(canvas):
        img = img.resize(tuple(canvas), _RESAMPLE[resample])
    return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))
