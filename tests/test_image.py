"""Image I/O: every supported format and mode decodes to upright RGB; every bad input is refused."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from adain.errors import InvalidInputError
from adain.image import encode_image, load_image
from adain.wire import Limits
from synth import encoded, synth_image

IMG = synth_image(40, 30, seed=7)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF"])
def test_formats_decode_from_bytes_and_paths(fmt: str, tmp_path) -> None:
    data = encoded(IMG, fmt)
    out = load_image(data)
    assert out.mode == "RGB" and out.size == (40, 30)
    path = tmp_path / f"img.{fmt.lower()}"
    path.write_bytes(data)
    assert load_image(path).size == (40, 30)
    assert load_image(str(path)).size == (40, 30)


def test_exif_orientation_is_honoured() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees clockwise: the upright image is 30 x 40
    data = encoded(IMG, "JPEG", exif=exif)
    assert Image.open(io.BytesIO(data)).size == (40, 30)
    assert load_image(data).size == (30, 40)


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "1", "LA", "I;16", "I"])
def test_modes_become_rgb(mode: str) -> None:
    fmt = "TIFF" if mode in ("CMYK", "I") else "PNG"
    out = load_image(encoded(IMG.convert(mode) if mode != "I;16" else _sixteen_bit(), fmt))
    assert out.mode == "RGB"


def _sixteen_bit() -> Image.Image:
    arr = np.linspace(0, 65535, 40 * 30).reshape(30, 40).astype(np.uint16)
    return Image.frombytes("I;16", (40, 30), arr.tobytes())


def test_sixteen_bit_is_scaled_not_clipped() -> None:
    out = np.asarray(load_image(encoded(_sixteen_bit(), "PNG")))
    assert out.min() == 0 and out.max() == 255 and 100 < out.mean() < 155


def test_alpha_is_composited_onto_white() -> None:
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    out = load_image(encoded(rgba, "PNG"))
    assert out.getpixel((1, 1)) == (255, 255, 255)
    assert out.getpixel((0, 0)) == (255, 0, 0)
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([0, 0, 0, 0, 255, 0])
    pal.info["transparency"] = 0
    assert load_image(encoded(pal, "PNG", transparency=0)).getpixel((0, 0)) == (255, 255, 255)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height with almost no pixel data behind it (a bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda kind, body: (  # noqa: E731
        struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    )
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _bmp_zero_width() -> bytes:
    data = bytearray(encoded(Image.new("RGB", (4, 4)), "BMP"))
    data[18:22] = struct.pack("<i", 0)  # biWidth
    return bytes(data)


BAD = {
    "empty": b"",
    "garbage": b"this is not an image at all",
    "truncated jpeg": encoded(synth_image(64, 64), "JPEG")[:400],
    "truncated png": encoded(synth_image(64, 64), "PNG")[:300],
    "zero-size png": _png_header_only(0, 10),
    "zero-size bmp": _bmp_zero_width(),
    "ico (unsupported)": encoded(IMG, "ICO"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_images_raise_invalid_input(name: str) -> None:
    with pytest.raises(InvalidInputError) as err:
        load_image(BAD[name], field="content")
    assert err.value.field == "content"


def test_pixel_limit_is_checked_before_decoding() -> None:
    bomb = _png_header_only(50_000, 50_000)  # 2.5 gigapixels claimed in under 100 bytes
    with pytest.raises(InvalidInputError, match=f"over the limit of {Limits().max_pixels}"):
        load_image(bomb)
    with pytest.raises(InvalidInputError, match="1200 pixels, over the limit of 1000"):
        load_image(encoded(IMG, "PNG"), max_pixels=1000)


def test_missing_and_empty_files(tmp_path) -> None:
    with pytest.raises(InvalidInputError, match="no such image file"):
        load_image(tmp_path / "nope.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InvalidInputError, match="empty"):
        load_image(tmp_path / "empty.png")
    with pytest.raises(InvalidInputError, match="expected image bytes"):
        load_image(12345)  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt,magic", [("png", b"\x89PNG"), ("jpeg", b"\xff\xd8"), ("webp", b"RIFF")])
def test_encode(fmt: str, magic: bytes) -> None:
    data = encode_image(IMG, fmt, quality=80)
    assert data.startswith(magic)
    assert load_image(data).size == IMG.size
    if fmt != "png":
        assert len(encode_image(IMG, fmt, quality=10)) < len(encode_image(IMG, fmt, quality=95))
    with pytest.raises(InvalidInputError, match="quality"):
        encode_image(IMG, fmt, quality=0)
    with pytest.raises(InvalidInputError, match="format"):
        encode_image(IMG, "gif")
