"""Reading input files: the one JSON reader and the one image loader of every package (lowest layer).

Nothing here imports another ``moai`` module, so ``moai.model``, ``moai.verbalize``, ``moai.perception``,
``moai.train``, ``moai.compat`` and the CLI all read their inputs through it (docs/architecture.md).

JSON (``read_text``, ``read_json``): UTF-8 text that is not empty, parsed, or a ``ValueError`` whose one
line is ``"<file>: <reason> (expected <what>)"``; an unreadable file is the ``OSError`` of ``open``.

Images (``load_image``): a path, encoded bytes, a PIL image or an (H, W[, C]) uint8 array becomes an RGB
``PIL.Image`` the same way everywhere (docs/perception.md, Bad input): EXIF orientation is applied
(``ImageOps.exif_transpose``, PIL images included); grayscale, palette, CMYK, YCbCr, LAB, HSV are converted
to RGB; images with transparency (RGBA, LA, PA, palette with a transparency entry) are composited over
``alpha_background`` (white by default; None drops the alpha channel like ``convert("RGB")``); 16/32-bit
integer images (``I;16*``, ``I``) are rescaled from the 16-bit range (value / 257) instead of being clipped
to white; float images (``F``) are clipped to 0..255. Animated images use their first frame.

Refused with ``ImageLoadError`` (a ``ValueError`` whose message is ``"<file>: <reason>"``): missing files,
directories, zero-byte files, non-image data, truncated or corrupt data, images with more than
``max_pixels`` pixels (checked from the header before decoding; Pillow's own decompression-bomb warning and
error are turned into the same refusal) and images with a side shorter than ``min_side``. Where no
``max_pixels`` is given (the processor, training data) the limit is ``MOAI_MAX_PIXELS`` or Pillow's default.
"""

from __future__ import annotations

import io
import json
import os
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# --- JSON ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """A bad record of an input file, reported (and skipped, or fatal under ``--strict``) by its line."""

    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


def read_text(path: Path, what: str) -> str:
    """The UTF-8 text of ``path``; ``ValueError`` if it is not UTF-8 or is empty (blank), naming ``what``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a UTF-8 text file (expected {what})") from None
    if not text.strip():
        raise ValueError(f"{path}: empty file (expected {what})")
    return text


def parse_json(text: str, path: Path, what: str) -> Any:
    """``json.loads(text)``; ``ValueError("PATH: not valid JSON (...; expected WHAT)")`` if it does not parse."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno}; expected {what})"
        ) from None
    except RecursionError:
        raise ValueError(f"{path}: JSON nested too deeply (expected {what})") from None


def read_json(path: Path, what: str) -> Any:
    """A JSON file (``read_text`` then ``parse_json``); ``OSError`` if it cannot be opened."""
    return parse_json(read_text(path, what), path, what)


# --- images --------------------------------------------------------------------------------------------------

#: Pillow's own default decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``), the default here.
DEFAULT_MAX_PIXELS = 89_478_485
#: Environment variable that sets the limit where no ``max_pixels`` is passed (processor, training data).
MAX_PIXELS_ENV = "MOAI_MAX_PIXELS"
#: 16-bit full scale -> 8-bit full scale.
_SIXTEEN_BIT_DIVISOR = 257.0
_EIGHT_BIT_MAX = 255
# PIL.Image.MAX_IMAGE_PIXELS is process-global; it is set per decode under this lock and restored.
_PIL_LIMIT_LOCK = threading.RLock()

ImageSource = str | Path | bytes | Image.Image | np.ndarray


class ImageLoadError(ValueError):
    """An input image that cannot be used; the message names the file and the reason."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


def default_max_pixels() -> int:
    """``MOAI_MAX_PIXELS`` when set, else ``DEFAULT_MAX_PIXELS``; ``ValueError`` for a value that is not >= 1."""
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{MAX_PIXELS_ENV}={text!r}: not an integer >= 1")
    return value


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
        f"image has {count} pixels, over the limit of {max_pixels:,} (possible decompression bomb; to allow it, "
        "raise the limit: moai perceive --max-pixels N or PerceptionConfig(max_pixels=N) for perception, "
        f"{MAX_PIXELS_ENV}=N for the processor and training data)"
    )


def _check_size(name: str, width: int, height: int, max_pixels: int, min_side: int) -> None:
    if width * height > max_pixels:
        raise ImageLoadError(name, _too_many_pixels(f"{width}x{height} = {width * height:,}", max_pixels))
    if min(width, height) < min_side:
        raise ImageLoadError(
            name,
            f"image is {width}x{height}, a side is shorter than min_side={min_side} (PerceptionConfig.min_side)",
        )


@contextmanager
def open_guarded(
    file: str | Path | IO[bytes], name: str, max_pixels: int | None = None
) -> Iterator[Image.Image]:
    """``Image.open`` under the decompression-bomb guard: the header is checked against ``max_pixels`` before
    any pixel is decoded, and Pillow's own bomb check (for plugins that re-check while decoding) refuses at the
    same limit inside the block. A refusal is ``ImageLoadError``; Pillow's other errors pass through."""
    limit = default_max_pixels() if max_pixels is None else max_pixels
    with _PIL_LIMIT_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        previous = Image.MAX_IMAGE_PIXELS
        try:
            Image.MAX_IMAGE_PIXELS = None  # read the header unchecked, then check it here with our message
            with Image.open(file) as img:
                _check_size(name, img.width, img.height, limit, 1)
                Image.MAX_IMAGE_PIXELS = limit
                yield img
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise ImageLoadError(name, _too_many_pixels(f"more ({err})", limit)) from None
        finally:
            Image.MAX_IMAGE_PIXELS = previous


def _open_encoded(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """Decode bytes fully under the pixel limit; every Pillow failure becomes ``ImageLoadError``."""
    if not data:
        raise ImageLoadError(name, "empty file (0 bytes)")
    try:
        with open_guarded(io.BytesIO(data), name, max_pixels) as img:
            img.load()
            return img
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError(name, "not a recognised image format") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        reason = str(err) or type(err).__name__
        if "truncated" in reason.lower():
            reason = f"truncated image data ({reason})"
        raise ImageLoadError(name, f"cannot decode image: {reason}") from None


def _from_array(arr: np.ndarray, label: str) -> Image.Image:
    if arr.dtype != np.uint8:
        raise ImageLoadError(label, f"array images must be uint8, got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise ImageLoadError(label, f"array images must be (H, W), (H, W, 3) or (H, W, 4), got {arr.shape}")
    return Image.fromarray(arr)


def _read_file(path: Path, label: str) -> bytes:
    if not path.exists():
        raise ImageLoadError(label, "file not found")
    if path.is_dir():
        raise ImageLoadError(label, "is a directory, not an image file")
    try:
        return path.read_bytes()
    except OSError as err:
        raise ImageLoadError(label, f"cannot read file ({err.strerror or err})") from None


def load_image(
    source: ImageSource,
    *,
    max_pixels: int | None = None,
    min_side: int = 1,
    alpha_background: tuple[int, int, int] | None = (255, 255, 255),
    exif_transpose: bool = True,
    name: str | None = None,
) -> Image.Image:
    """Load a path, encoded bytes, a PIL image or an (H, W[, C]) uint8 array as an RGB ``PIL.Image``.

    Args:
        source: the image.
        max_pixels: refuse images with more pixels (decompression bombs); None: ``default_max_pixels()``.
        min_side: refuse images with a shorter side.
        alpha_background: colour transparent pixels are composited over (None: drop alpha).
        exif_transpose: apply the EXIF orientation tag.
        name: how to name the image in errors (default: the path, or a short description).

    Raises:
        ImageLoadError: with ``"<name>: <reason>"`` for any unusable input (module docstring).
    """
    label = name or describe_source(source)
    limit = default_max_pixels() if max_pixels is None else max_pixels
    if isinstance(source, str | Path):
        img = _open_encoded(_read_file(Path(source), label), label, limit)
    elif isinstance(source, bytes | bytearray):
        img = _open_encoded(bytes(source), label, limit)
    elif isinstance(source, Image.Image):
        img = source
    elif isinstance(source, np.ndarray):
        img = _from_array(source, label)
    else:
        raise ImageLoadError(label, f"unsupported image type {type(source).__name__}")
    _check_size(label, img.width, img.height, limit, min_side)
    if exif_transpose:
        try:
            img = ImageOps.exif_transpose(img)
        except Exception as err:  # a malformed EXIF block must not abort a data-set run
            raise ImageLoadError(label, f"cannot apply EXIF orientation ({err})") from None
    try:
        return _to_rgb(img, alpha_background)
    except (OSError, ValueError) as err:
        raise ImageLoadError(label, f"cannot convert mode {img.mode} to RGB ({err})") from None
