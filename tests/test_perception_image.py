"""Bad and unusual input images (docs/perception.md, Bad input): each works (RGB, orientation applied) or fails naming file and reason."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from moai.perception import ImageLoadError, load_image, to_canvas


def save(img: Image.Image, path, fmt: str = "PNG", **kwargs) -> str:
    img.save(path, format=fmt, **kwargs)
    return str(path)


def rgb_pattern(width: int = 40, height: int = 30) -> Image.Image:
    arr = np.zeros((height, width, 3), dtype=np.uint8)
    arr[..., 0] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    arr[..., 1] = np.linspace(0, 255, height, dtype=np.uint8)[:, None]
    arr[: height // 2, : width // 2, 2] = 200
    return Image.fromarray(arr)


def refused(path, *args, match: str, **kwargs) -> ImageLoadError:
    with pytest.raises(ImageLoadError) as info:
        load_image(path, *args, **kwargs)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message  # names the file
    assert match in message, message  # and the reason
    return info.value


def test_missing_directory_and_zero_byte(tmp_path):
    refused(tmp_path / "nope.jpg", match="file not found")
    refused(tmp_path, match="is a directory")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    refused(empty, match="empty file (0 bytes)")


def test_non_image_and_truncated(tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("this is not an image\n" * 10)
    refused(text, match="not a recognised image format")
    good = save(rgb_pattern(200, 150), tmp_path / "good.jpg", "JPEG", quality=90)
    data = open(good, "rb").read()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    refused(truncated, match="truncated")
    png = open(save(rgb_pattern(200, 150), tmp_path / "good.png"), "rb").read()
    cut_png = tmp_path / "cut.png"
    cut_png.write_bytes(png[: len(png) // 2])
    refused(cut_png, match="cannot decode image")


def test_decompression_bomb_limit_from_config(tmp_path):
    limit_before = Image.MAX_IMAGE_PIXELS
    path = save(Image.new("L", (400, 300), 128), tmp_path / "big.png")
    assert load_image(path).size == (400, 300)
    err = refused(path, max_pixels=100_000, match="over the limit of 100,000")
    assert "decompression bomb" in err.reason
    refused(path, max_pixels=50_000, match="400x300 = 120,000 pixels, over the limit of 50,000")
    assert Image.MAX_IMAGE_PIXELS == limit_before  # the process-wide limit is restored


def png_bomb(width: int, height: int) -> bytes:
    """A small 1-bit PNG file that decodes to width x height pixels (a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    row = b"\x00" * (1 + (width + 7) // 8)
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * height, 9))
        + chunk(b"IEND", b"")
    )


def test_real_decompression_bomb_refused_at_default_limit(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bomb(10_000, 10_000))
    assert bomb.stat().st_size < 100_000  # 100 M pixels in a tiny file
    refused(bomb, match="10000x10000 = 100,000,000 pixels, over the limit of 89,478,485")


def test_one_by_one_and_min_side(tmp_path):
    path = save(Image.new("RGB", (1, 1), (10, 200, 30)), tmp_path / "dot.png")
    img = load_image(path)
    assert img.size == (1, 1) and img.mode == "RGB"
    canvas = to_canvas(img, (490, 490))
    assert canvas.shape == (490, 490, 3) and (canvas == [10, 200, 30]).all()
    refused(path, min_side=2, match="a side is shorter than min_side=2")


@pytest.mark.parametrize(
    "mode, fill",
    [("L", 77), ("1", 1), ("P", None), ("CMYK", (0, 255, 255, 0)), ("LA", (90, 255)), ("I;16", 65535)],
)
def test_modes_become_rgb(tmp_path, mode, fill):
    if mode == "P":
        img = rgb_pattern().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    else:
        img = Image.new(mode, (20, 10), fill)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    path = save(img, tmp_path / f"img.{fmt.lower()}", fmt)
    out = load_image(path)
    assert out.mode == "RGB"
    assert out.size == img.size
    arr = np.asarray(out)
    if mode == "L":
        assert (arr == 77).all()
    if mode == "CMYK":  # no cyan, full magenta and yellow: red
        assert arr[..., 0].mean() > 200 and arr[..., 1].mean() < 60
    if mode == "I;16":
        assert (arr == 255).all()


def test_sixteen_bit_is_rescaled_not_clipped(tmp_path):
    ramp = (np.arange(256, dtype=np.uint16) * 257).reshape(16, 16)  # the full 16-bit range
    path = save(Image.fromarray(ramp), tmp_path / "ramp16.png")
    assert Image.open(path).mode.startswith("I")
    arr = np.asarray(load_image(path))
    np.testing.assert_array_equal(
        arr[..., 0], np.arange(256).reshape(16, 16)
    )  # PIL's convert would clip to 255


def test_rgba_composited_over_white_or_dropped(tmp_path):
    rgba = np.zeros((10, 10, 4), dtype=np.uint8)
    rgba[..., :3] = 0
    rgba[:, 5:, 3] = 255  # left half transparent black, right half opaque black
    path = save(Image.fromarray(rgba, "RGBA"), tmp_path / "alpha.png")
    arr = np.asarray(load_image(path))
    assert (arr[:, :5] == 255).all() and (arr[:, 5:] == 0).all()
    assert (np.asarray(load_image(path, alpha_background=None)) == 0).all()
    palette_transparent = Image.fromarray(rgba, "RGBA").convert("P")
    palette_transparent.info["transparency"] = 0
    assert load_image(palette_transparent).mode == "RGB"


def test_exif_orientation_applied(tmp_path):
    img = rgb_pattern(40, 30)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    path = save(img, tmp_path / "rotated.jpg", "JPEG", exif=exif, quality=95)
    out = load_image(path)
    assert out.size == (30, 40)
    assert load_image(path, exif_transpose=False).size == (40, 30)
    # the blue-ish top-left quadrant of the stored image ends up top-right after the rotation
    arr = np.asarray(out).astype(int)
    assert arr[:10, -10:, 2].mean() > 150 and arr[:10, :10, 2].mean() < 60


def test_bytes_arrays_and_pil_inputs(tmp_path):
    buf = io.BytesIO()
    rgb_pattern().save(buf, format="PNG")
    assert load_image(buf.getvalue()).size == (40, 30)
    with pytest.raises(ImageLoadError, match=r"^<0 bytes>: empty file"):
        load_image(b"")
    with pytest.raises(ImageLoadError, match="not a recognised image format"):
        load_image(b"GIF89a-not-really")
    assert load_image(np.zeros((5, 6, 3), np.uint8)).size == (6, 5)
    assert load_image(np.zeros((5, 6), np.uint8)).mode == "RGB"
    with pytest.raises(ImageLoadError, match="uint8"):
        load_image(np.zeros((5, 6, 3), np.float32))
    with pytest.raises(ImageLoadError, match="unsupported image type"):
        load_image(42)  # type: ignore[arg-type]
