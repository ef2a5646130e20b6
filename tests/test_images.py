"""One image loader (``moai.io.load_image``): the processor, perception and the training data see the same RGB.

A rotated-EXIF photo must reach CLIP (processor pixels), the perception canvas and the training batch in the
same frame; every Pillow mode must become the same RGB on every path; the decompression-bomb guard refuses
with one line naming the file on every path.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from moai.io import MAX_PIXELS_ENV, ImageLoadError, load_image
from moai.perception import Perceiver, PerceptionConfig, register_backend, to_canvas
from moai.train.data import Collator, DataError, Example, _open_rgb, check_image

ORIENTATION = 0x0112
#: EXIF orientation -> the transpose that shows the stored pixels upright (6: rotate 90° clockwise).
UPRIGHT = {6: Image.Transpose.ROTATE_270, 8: Image.Transpose.ROTATE_90}


@register_backend("ocr", "test-images-recorder")
class CanvasRecorder:
    """An OCR backend that reads nothing and keeps the canvases perception hands it."""

    seen: list[np.ndarray] = []

    def __init__(self, *, device: str = "cpu") -> None:
        pass

    def __call__(self, images: list[np.ndarray]) -> list[list]:
        CanvasRecorder.seen.extend(np.array(img) for img in images)
        return [[] for _ in images]


def perception_canvas(source: object, canvas: tuple[int, int] | None = None) -> np.ndarray:
    """What the perception backends see for ``source`` (``Perceiver`` with the recording backend)."""
    CanvasRecorder.seen.clear()
    config = PerceptionConfig(ocr="test-images-recorder", device="cpu", canvas=canvas)
    Perceiver(config)(source)
    [seen] = CanvasRecorder.seen
    return seen


def pattern(height: int, width: int) -> np.ndarray:
    """An (H, W, 3) uint8 image that is not symmetric under any rotation or flip."""
    arr = np.zeros((height, width, 3), dtype=np.uint8)
    arr[..., 0] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    arr[..., 1] = np.linspace(0, 255, height, dtype=np.uint8)[:, None]
    arr[: height // 3, : width // 4, 2] = 220
    return arr


def exif_jpeg(path: Path, orientation: int) -> tuple[np.ndarray, np.ndarray]:
    """Write a 64 x 40 JPEG whose EXIF says ``orientation``; return its stored pixels (40, 64, 3) and the
    upright image (64, 40, 3), as arrays (a PIL copy would carry the EXIF tag along)."""
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    Image.fromarray(pattern(40, 64)).save(path, "JPEG", exif=exif, quality=95)
    with Image.open(path) as raw:  # the stored pixels, decoded once, orientation not applied
        stored = raw.convert("RGB")
    return np.asarray(stored), np.asarray(stored.transpose(UPRIGHT[orientation]))


def training_pixels(processor, image: Path) -> torch.Tensor:
    """``pixel_values`` of a training batch of one example with this image (the collator's path)."""
    example = Example("x", image, (("<image>\nWhat is it?", "a pattern"),), "", None, "data.jsonl", 1)
    return Collator(processor, max_length=512, use_aux_map=False)([example])["pixel_values"]


@pytest.mark.parametrize("orientation", [6, 8])
def test_rotated_exif_photo_is_upright_for_processor_perception_and_training(
    processor, tmp_path, orientation
):
    path = tmp_path / "photo.jpg"
    stored, expected = exif_jpeg(path, orientation)
    assert stored.shape == (40, 64, 3) and expected.shape == (64, 40, 3)
    pixels = processor.preprocess_images([expected])
    assert not torch.equal(pixels, processor.preprocess_images([stored]))  # a missed rotation would show

    # the processor: a path and an in-memory PIL image with the EXIF tag give the upright pixels
    assert torch.equal(processor.preprocess_images([path]), pixels)
    with Image.open(path) as opened:
        assert opened.size == (64, 40)
        assert torch.equal(processor.preprocess_images([opened]), pixels)
    # perception: the canvas the backends see is the upright image (as loaded, and resized to 490 x 490)
    assert np.array_equal(perception_canvas(str(path)), expected)
    assert np.array_equal(
        perception_canvas(str(path), (490, 490)), to_canvas(Image.fromarray(expected), (490, 490))
    )
    # ... and the processor encodes what perception loaded the same as the file
    loaded = Perceiver(PerceptionConfig(ocr="test-images-recorder", device="cpu")).load(str(path))
    assert torch.equal(processor.preprocess_images([loaded]), pixels)
    # the training data: the check passes and the collator's batch has the upright pixels
    assert check_image(path) is None
    assert torch.equal(training_pixels(processor, path), pixels)


def mode_images() -> dict[str, Image.Image]:
    """One image per Pillow mode the loader converts, each with varying content."""
    base = Image.fromarray(pattern(16, 24))
    alpha = Image.fromarray(np.tile(np.linspace(0, 255, 24, dtype=np.uint8), (16, 1)))
    wide = np.tile(np.linspace(0, 65535, 24), (16, 1))
    rgba = base.copy()
    rgba.putalpha(alpha)
    la = base.convert("L")
    la.putalpha(alpha)
    palette = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    transparent = palette.copy()
    transparent.info["transparency"] = 0
    pa = palette.copy()
    pa.putalpha(alpha)
    return {
        "1": base.convert("1"),
        "L": base.convert("L"),
        "LA": la,
        "P": palette,
        "P+transparency": transparent,
        "PA": pa,
        "RGBA": rgba,
        "CMYK": base.convert("CMYK"),
        "I;16": Image.fromarray(wide.astype(np.uint16)),
        "I": Image.fromarray(wide.astype(np.int32)),
        "F": Image.fromarray((wide / 200).astype(np.float32)),
        "RGB": base,
    }


#: Lossless formats that keep the mode on disk (PA has none: in memory only).
FILE_FORMAT = {"I": "TIFF", "F": "TIFF", "CMYK": "TIFF", "PA": None}


@pytest.mark.parametrize("mode", list(mode_images()))
def test_every_mode_becomes_the_same_rgb_on_every_path(processor, tmp_path, mode):
    image = mode_images()[mode]
    expected = np.asarray(load_image(image))
    assert expected.shape == (16, 24, 3) and expected.dtype == np.uint8
    pixels = processor.preprocess_images([expected])
    assert torch.equal(processor.preprocess_images([image]), pixels)  # in-memory PIL, this mode
    assert np.array_equal(perception_canvas(image), expected)
    fmt = FILE_FORMAT.get(mode, "PNG")
    if fmt is None:
        return
    path = tmp_path / f"image.{fmt.lower()}"
    image.save(path, fmt)
    with Image.open(path) as reread:
        assert reread.mode == image.mode
    assert np.array_equal(np.asarray(load_image(path)), expected)
    assert torch.equal(processor.preprocess_images([path]), pixels)
    assert np.array_equal(perception_canvas(str(path)), expected)
    example = Example("x", path, (), "", None, "data.jsonl", 1)
    assert np.array_equal(np.asarray(_open_rgb(path, example)), expected)
    assert torch.equal(training_pixels(processor, path), pixels)


def test_mode_conversion_is_not_pillows_convert():
    images = mode_images()
    assert (np.asarray(load_image(images["RGBA"]))[:, 0] == 255).all()  # alpha 0 -> the white background
    sixteen = np.asarray(load_image(images["I;16"]))[0, :, 0]
    assert sixteen[0] == 0 and sixteen[-1] == 255 and 0 < sixteen[12] < 255  # /257, not clipped to white


def test_bomb_guard_is_one_line_naming_the_file_on_every_path(processor, tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.fromarray(pattern(300, 400)).save(path)
    reason = "image has 400x300 = 120,000 pixels, over the limit of 100,000 (possible decompression bomb"
    monkeypatch.setenv(MAX_PIXELS_ENV, "100000")
    for load in (lambda: processor(images=[path], text=["hi"]), lambda: load_image(path)):
        with pytest.raises(ValueError) as raised:
            load()
        message = str(raised.value)
        assert "\n" not in message and str(path) in message and reason in message
        assert f"{MAX_PIXELS_ENV}=N" in message
    assert check_image(path).startswith(f"bad image: {path}: {reason}")
    with pytest.raises(
        DataError, match=rf"^data\.jsonl:3: bad image: {re.escape(str(path))}: image has 400x300"
    ):
        _open_rgb(path, Example("x", path, (), "", None, "data.jsonl", 3))
    with pytest.raises(ImageLoadError, match="over the limit of 100,000"):  # an in-memory image too
        load_image(Image.open(path))
    # perception takes its limit from its config, not the environment
    assert perception_canvas(str(path)).shape == (300, 400, 3)
    config = PerceptionConfig(ocr="test-images-recorder", device="cpu", max_pixels=1000)
    with pytest.raises(ImageLoadError) as raised:
        Perceiver(config)(str(path))
    assert str(raised.value).startswith(
        f"{path}: image has 400x300 = 120,000 pixels, over the limit of 1,000 ("
    )
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(ValueError, match=rf"^{MAX_PIXELS_ENV}='lots': not an integer >= 1$"):
        load_image(path)
    monkeypatch.delenv(MAX_PIXELS_ENV)
    assert load_image(path).size == (400, 300)
