"""Image I/O: every supported format and mode decodes to upright RGB; every bad input is refused."""

from __future__ import annotations

import io
import os
import shlex
import shutil
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adain.errors import InvalidInputError
from adain.image import MAX_JPEG_MARKERS, MAX_JPEG_SCANS, encode_image, header_size, load_image
from adain.photo import exif_to_keep, heif_support
from adain.wire import Limits
from helpers import needs_torch
from synth import P3_D50, SRGB_D50, encoded, icc_rgb, jpeg_scan_bomb, photo_with_exif, synth_image

IMG = synth_image(40, 30, seed=7)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF", "AVIF", "HEIF"])
def test_formats_decode_from_bytes_and_paths(fmt: str, tmp_path) -> None:
    data = encoded(IMG, fmt)  # AVIF: Pillow itself; HEIF (an iPhone's HEIC): pillow-heif, the heif extra
    out = load_image(data)
    assert out.mode == "RGB" and out.size == (40, 30)
    if fmt in ("AVIF", "HEIF"):  # lossy, as phones write them: near the image, not equal
        assert np.abs(np.asarray(out, int) - np.asarray(load_image(encoded(IMG, "PNG")), int)).mean() < 20
    path = tmp_path / f"img.{fmt.lower()}"
    path.write_bytes(data)
    assert load_image(path).size == (40, 30)
    assert load_image(str(path)).size == (40, 30)


@needs_torch
def test_to_image_rounds_and_clamps_each_pixel() -> None:
    """A tensor's bytes, made where the tensor is: clamped to [0, 1], rounded to the nearest level, in RGB
    order, whatever its memory layout (the decoder's is channels_last)."""
    import torch

    from adain.image import to_image

    t = torch.rand(1, 3, 7, 5) * 1.2 - 0.1
    want = np.rint(np.clip(t[0].permute(1, 2, 0).numpy(), 0, 1) * 255).astype(np.uint8)
    for x in (t, t.contiguous(memory_format=torch.channels_last), t[0]):
        img = to_image(x)
        assert img.mode == "RGB" and img.size == (5, 7) and np.array_equal(np.asarray(img), want)


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


def test_a_premultiplied_pil_image_is_read_as_its_straight_twin() -> None:
    """A caller's La image (grey, premultiplied alpha) raised Pillow's ValueError: it has no La -> RGBA."""
    assert load_image(Image.new("La", (8, 8), (100, 128))).getpixel((0, 0)) == \
        load_image(Image.new("LA", (8, 8), (199, 128))).getpixel((0, 0))


def _sixteen_bit() -> Image.Image:
    arr = np.linspace(0, 65535, 40 * 30).reshape(30, 40).astype(np.uint16)
    return Image.frombytes("I;16", (40, 30), arr.tobytes())


def test_sixteen_bit_is_scaled_not_clipped() -> None:
    out = np.asarray(load_image(encoded(_sixteen_bit(), "PNG")))
    assert out.min() == 0 and out.max() == 255 and 100 < out.mean() < 155


SWAPPED = icc_rgb((SRGB_D50[1], SRGB_D50[0], SRGB_D50[2]), name="red and green swapped")


def _tagged(colour: tuple, icc: bytes, fmt: str = "PNG", mode: str = "RGB") -> bytes:
    return encoded(Image.new(mode, (8, 6), colour), fmt, icc_profile=icc)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF", "WEBP"])
def test_embedded_profiles_are_converted_to_srgb(fmt: str) -> None:
    # A profile whose red is sRGB's green: read right, a red pixel is green.
    r, g, b = load_image(_tagged((255, 0, 0), SWAPPED, fmt)).getpixel((3, 3))
    assert g > 240 and r < 15 and b < 15, (r, g, b)


def test_greyscale_profile_is_applied_to_photos_not_masks() -> None:
    linear = icc_rgb(gamma=1.0, grey=True, name="linear grey")  # level 50 is 0.196 of the light: sRGB 122
    for mode, value in (("L", 50), ("LA", (50, 255))):
        assert load_image(encoded(Image.new(mode, (4, 4), value), "PNG", icc_profile=linear)).getpixel((0, 0)) == (
            122, 122, 122)
    assert load_image(encoded(Image.new("L", (4, 4), 50), "PNG", icc_profile=linear), mode="L").getpixel((0, 0)) == 50


def test_display_p3_photo_is_more_saturated_in_srgb() -> None:
    # What a phone's P3 photo looks like in a colour-managed viewer: sRGB needs a stronger red for it.
    r, g, b = load_image(_tagged((200, 60, 40), icc_rgb(P3_D50, name="Display P3"))).getpixel((0, 0))
    assert r > 210 and g < 50 and b < 30, (r, g, b)


def test_profiles_that_change_nothing_or_cannot_be_used_leave_the_pixels() -> None:
    colour = (200, 60, 40)
    for icc in (icc_rgb(SRGB_D50, name="sRGB IEC61966-2.1"), b"not a profile" * 20):
        assert load_image(_tagged(colour, icc)).getpixel((0, 0)) == colour  # sRGB already; unreadable: as browsers
    # Masks and label images are data: a label's colour is its name, never converted.
    assert load_image(_tagged(colour, SWAPPED), mode="raw").getpixel((0, 0)) == colour
    assert load_image(_tagged(90, SWAPPED, mode="L"), mode="L").getpixel((0, 0)) == 90
    # A profile and transparency: composited onto white, then converted (white stays white).
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))
    out = load_image(encoded(rgba, "PNG", icc_profile=SWAPPED))
    assert out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((1, 1))[1] > 240


def test_a_profile_is_judged_by_what_it_does_not_by_its_name() -> None:
    # GIMP's linear profile has "sRGB" in its name: its mid grey 128 is sRGB's 188, not 128
    linear = icc_rgb(SRGB_D50, gamma=1.0, name="GIMP built-in Linear sRGB")
    assert load_image(_tagged((128, 128, 128), linear)).getpixel((0, 0)) == (188, 188, 188)
    # a grey profile on colour pixels is not theirs: they are kept (they were made grey)
    grey = icc_rgb(gamma=2.2, name="Gray gamma 2.2", grey=True)
    assert load_image(_tagged((200, 60, 40), grey)).getpixel((0, 0)) == (200, 60, 40)
    r, g, b = load_image(_tagged(90, grey, mode="L")).getpixel((0, 0))  # on grey pixels it applies
    assert r == g == b
    # and an RGB profile on grey pixels is not theirs either (a grey JPEG tagged ProPhoto came out lighter)
    for fmt in ("JPEG", "PNG"):
        assert load_image(_tagged(90, linear, fmt, mode="L")).getpixel((0, 0)) == (90, 90, 90), fmt


def test_float_images_read_as_0_to_1_whatever_a_stray_pixel_says() -> None:
    levels = np.full((6, 8), 0.5, dtype=np.float32)
    levels[0, 0] = 1.0000001  # rounding in an editor: the whole image read as 0-255 (black)
    levels[0, 1] = np.nan
    out = np.asarray(load_image(encoded(Image.fromarray(levels, "F"), "TIFF")))
    assert abs(int(out[3, 3, 0]) - 128) <= 1 and out[0, 1, 0] == 0 and out[0, 0, 0] == 255
    assert np.asarray(load_image(encoded(Image.fromarray(levels * 255, "F"), "TIFF")))[3, 3, 0] in (127, 128)


def test_a_heif_photo_tagged_by_code_points_is_converted_to_srgb(tmp_path) -> None:
    """No ICC profile, colours as code points (nclx): Display P3 primaries are converted (read as sRGB, a P3
    orange came out duller); sRGB's are left as they are."""
    pillow_heif = pytest.importorskip("pillow_heif")
    flat = Image.new("RGB", (32, 32), (200, 100, 50))
    got = {}
    for name, primaries in (("p3", 12), ("srgb", 1)):
        pillow_heif.from_pillow(flat).save(tmp_path / f"{name}.heic", quality=-1, color_primaries=primaries,
                                           transfer_characteristics=13, matrix_coefficients=6, full_range_flag=1)
        got[name] = np.asarray(load_image(tmp_path / f"{name}.heic"), dtype=int)[16, 16]
    assert np.abs(got["p3"] - (215, 93, 31)).max() <= 3, got  # P3's orange in sRGB
    assert np.abs(got["srgb"] - (200, 100, 50)).max() <= 3, got


def test_an_hdr_heif_still_is_taken_to_sdr(tmp_path) -> None:
    """PQ and HLG stills (BT.2020) go to SDR as HDR clips' frames do: HDR reference white (203 cd/m2: PQ's
    signal 0.58, HLG's 0.75) lands near 245 of 255, where read as stored it was 148 or 191, flat and dim."""
    pillow_heif = pytest.importorskip("pillow_heif")
    from adain.hdr import REFERENCE_WHITE

    m1, m2, c1, c2, c3 = 2610 / 16384, 2523 / 4096 * 128, 3424 / 4096, 2413 / 4096 * 32, 2392 / 4096 * 32
    y = (REFERENCE_WHITE / 10000) ** m1
    pq_white = round(((c1 + c2 * y) / (1 + c3 * y)) ** m2 * 255)  # SMPTE ST 2084's inverse EOTF
    got = {}
    for name, transfer, level in (("pq", 16, pq_white), ("hlg", 18, round(0.75 * 255))):
        pillow_heif.from_pillow(Image.new("RGB", (32, 32), (level,) * 3)).save(
            tmp_path / f"{name}.heic", quality=-1, color_primaries=9, transfer_characteristics=transfer,
            matrix_coefficients=9, full_range_flag=1)
        got[name] = (level, np.asarray(load_image(tmp_path / f"{name}.heic"), dtype=int)[16, 16])
    for name, (stored, out) in got.items():
        assert out.max() - out.min() <= 2 and 235 <= out.mean() <= 252, (name, stored, out)  # a grey, bright
    # a colour by its own primaries: the same signal in Display P3 is less saturated in sRGB than in BT.2020
    for name, primaries in (("bt2020", 9), ("p3", 12)):
        pillow_heif.from_pillow(Image.new("RGB", (32, 32), (pq_white, 120, 110))).save(
            tmp_path / f"{name}.heic", quality=-1, color_primaries=primaries, transfer_characteristics=16,
            matrix_coefficients=9, full_range_flag=1)
        got[name] = np.asarray(load_image(tmp_path / f"{name}.heic"), dtype=int)[16, 16]
    assert got["p3"][1] > got["bt2020"][1] + 10, got  # by their own primaries: 253,116,103 and 249,139,113


def test_an_hdr_heif_is_read_at_its_stored_depth() -> None:
    """pillow-heif's Pillow plugin hands over 8 of a HEIF's 10 bits, and PQ puts SDR's whole range in its lower 148
    levels: a smooth ramp from black to reference white came out in 126 levels with steps of up to 4 and up to 2
    off the curve. Decoded at its depth it is the curve's, level for level."""
    pillow_heif = pytest.importorskip("pillow_heif")
    from adain.hdr import to_sdr

    w, h = 1024, 4
    ramp = np.repeat(np.repeat((np.linspace(0, 0.58, w) * 65535).round().astype(np.uint16)[None, :, None], h, 0), 3, 2)
    buf = io.BytesIO()
    pillow_heif.from_bytes(mode="RGB;16", size=(w, h), data=ramp.tobytes()).save(
        buf, format="HEIF", quality=-1, color_primaries=9, transfer_characteristics=16, matrix_coefficients=9,
        full_range_flag=1)
    stored = np.asarray(pillow_heif.open_heif(io.BytesIO(buf.getvalue()), convert_hdr_to_8bit=False))
    assert len(np.unique(stored)) > 500  # 10 bits kept by the lossless encode
    row = np.asarray(load_image(buf.getvalue()), dtype=int)[h // 2, :, 1]
    assert np.array_equal(row, np.asarray(to_sdr(stored, 16), dtype=int)[h // 2, :, 1])  # the curve's, exactly
    eight = np.asarray(to_sdr((stored >> 8) * np.uint16(257), 16), dtype=int)[h // 2, :, 1]  # as read before
    assert np.abs(np.diff(eight)).max() >= 3 and len(np.unique(eight)) < 130  # bands
    assert np.abs(np.diff(row)).max() <= 1 and len(np.unique(row)) > 240


def _avif_10bit(rgb48: np.ndarray, primaries: int, transfer: int, matrix: int, full: bool) -> bytes:
    """A 10-bit AVIF of ``rgb48`` (H x W x 3 uint16) by FFmpeg's SVT-AV1 encoder, its 'nclx' box as given."""
    av = pytest.importorskip("av")
    if "libsvtav1" not in av.codecs_available:
        pytest.skip("this PyAV has no SVT-AV1 encoder")
    from fractions import Fraction

    buf = io.BytesIO()
    with av.open(buf, "w", format="avif") as out:
        stream = out.add_stream("libsvtav1", rate=1, options={"crf": "2", "preset": "8"})
        stream.width, stream.height, stream.pix_fmt = rgb48.shape[1], rgb48.shape[0], "yuv420p10le"
        cc = stream.codec_context
        cc.color_primaries, cc.color_trc, cc.colorspace, cc.color_range = primaries, transfer, matrix, 2 if full else 1
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb48), format="rgb48le")
        frame = frame.reformat(format="yuv420p10le", dst_color_range=2 if full else 1)
        frame.pts, frame.time_base = 0, Fraction(1)
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return buf.getvalue()


@pytest.mark.parametrize("full", [True, False])
def test_an_hdr_avif_is_read_at_its_stored_depth(full: bool) -> None:
    """Pillow's AVIF decoder hands over 8 of an AVIF's 10 bits, and an HDR still's curve bands them as a HEIF's did
    (a ramp from black to PQ's reference white in ~126 levels, steps of up to 4). PyAV decodes it at its depth, its
    YUV read by the file's code points (full or limited range): the curve's, level for level."""
    from adain.hdr import to_sdr
    from adain.photo import avif_deep_pixels

    w, h = 1024, 64
    ramp = np.repeat(np.repeat((np.linspace(0, 0.58, w) * 65535).round().astype(np.uint16)[None, :, None], h, 0), 3, 2)
    data = _avif_10bit(ramp, 9, 16, 9, full)
    stored = avif_deep_pixels(data, (w, h), {"matrix_coefficients": 9, "full_range_flag": int(full)})
    assert stored is not None and len(np.unique(stored[h // 2, :, 1])) > 400  # 10 bits' worth of levels
    assert np.abs(stored[h // 2, :, 1].astype(int) - ramp[h // 2, :, 1]).mean() < 0.003 * 65535  # as encoded
    row = np.asarray(load_image(data), dtype=int)[h // 2, :, 1]
    assert np.array_equal(row, np.asarray(to_sdr(stored, 16), dtype=int)[h // 2, :, 1])  # the curve's, exactly
    eight = np.asarray(to_sdr((stored >> 8) * np.uint16(257), 16), dtype=int)[h // 2, :, 1]  # as read before
    assert np.abs(np.diff(eight)).max() >= 4  # bands (here 126-157 levels with the encoder's noise)
    assert np.abs(np.diff(row)).max() <= 2 and len(np.unique(row)) > max(230, len(np.unique(eight)) + 60)  # 244-246
    # what it does not take: an 8-bit AVIF (Pillow's 8 are all), or bytes that are no AVIF
    assert avif_deep_pixels(encoded(Image.new("RGB", (64, 64)), "AVIF"), (64, 64), {}) is None
    assert avif_deep_pixels(data, (w, h + 2), {}) is None and avif_deep_pixels(data[:300], (w, h), {}) is None


def _avif_tagged(img: Image.Image, primaries: int, transfer: int) -> bytes:
    """An AVIF whose 'nclx' colour box names other primaries and transfer than the sRGB ones Pillow writes
    (the pixels' matrix kept, so they decode as written)."""
    data = bytearray(encoded(img, "AVIF", quality=100))
    at = data.index(b"colrnclx") + 8
    assert data[at : at + 4] == bytes([0, 1, 0, 13]), bytes(data[at : at + 6])  # sRGB: the box is found
    data[at : at + 4] = primaries.to_bytes(2, "big") + transfer.to_bytes(2, "big")
    return bytes(data)


def test_an_avif_tagged_by_code_points_is_converted(tmp_path) -> None:
    """Pillow does not hand over an AVIF's colour box: a Display P3 AVIF was read as sRGB (duller) and a PQ one
    flat and dim. Its code points are read from the file (adain.bmff), as pillow-heif gives a HEIF's."""
    from adain.bmff import nclx_profile
    from adain.hdr import REFERENCE_WHITE

    orange = Image.new("RGB", (32, 32), (200, 100, 50))
    p3 = _avif_tagged(orange, 12, 13)
    assert nclx_profile(p3)["color_primaries"] == 12 and nclx_profile(p3)["color_primary_red_x"] == 0.68
    (tmp_path / "p3.avif").write_bytes(p3)
    for source in (p3, tmp_path / "p3.avif"):
        assert np.abs(np.asarray(load_image(source), dtype=int)[16, 16] - (215, 93, 31)).max() <= 4
    srgb = np.asarray(load_image(encoded(orange, "AVIF", quality=100)), dtype=int)[16, 16]
    assert np.abs(srgb - (200, 100, 50)).max() <= 4, srgb
    raw = np.asarray(load_image(p3, mode="raw"), dtype=int)[16, 16]  # a label image: as stored
    assert np.abs(raw - (200, 100, 50)).max() <= 4, raw

    m1, m2, c1, c2, c3 = 2610 / 16384, 2523 / 4096 * 128, 3424 / 4096, 2413 / 4096 * 32, 2392 / 4096 * 32
    y = (REFERENCE_WHITE / 10000) ** m1
    pq_white = round(((c1 + c2 * y) / (1 + c3 * y)) ** m2 * 255)
    out = np.asarray(load_image(_avif_tagged(Image.new("RGB", (32, 32), (pq_white,) * 3), 9, 16)), dtype=int)[16, 16]
    assert out.max() - out.min() <= 3 and 235 <= out.mean() <= 252, (pq_white, out)  # read as stored: ~148
    for broken in (p3[:60], p3.replace(b"ipco", b"ipcX"), p3.replace(b"meta", b"mexa"), b"", b"\0" * 64):
        nclx_profile(broken)  # never an error: a file whose boxes do not parse is read as stored
    assert nclx_profile(p3.replace(b"ipco", b"ipcX")) is None
    assert nclx_profile(p3[: p3.index(b"ipma")])["color_primaries"] == 12  # a head that cuts the meta box short


def test_heif_without_pillow_heif_says_what_is_missing(tmp_path) -> None:
    path = tmp_path / "IMG_0001.HEIC"
    path.write_bytes(encoded(IMG, "HEIF"))
    code = f"""
import sys
sys.modules["pillow_heif"] = None  # as where the heif extra is not installed
from adain.errors import InvalidInputError
from adain.image import load_image
try:
    load_image({str(path)!r}, field="content")
except InvalidInputError as e:
    print(e.field, "|", e)
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.stdout.startswith("content | ") and "pip install -e '.[heif]'" in run.stdout, run.stdout + run.stderr


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


def test_a_masks_transparent_pixels_cover_nothing() -> None:
    """White painted on a transparent layer: the painted pixel is covered, the transparent ones are not (black),
    for a mask, a label image and a palette mask alike (composited onto white they covered everything)."""
    layer = Image.new("RGBA", (8, 8), (255, 255, 255, 0))
    layer.putpixel((0, 0), (255, 255, 255, 255))
    mask = load_image(encoded(layer, "PNG"), mode="L")
    assert mask.getpixel((0, 0)) == 255 and mask.getpixel((1, 1)) == 0
    labels = load_image(encoded(layer, "PNG"), mode="raw")
    assert labels.getpixel((0, 0)) == (255, 255, 255) and labels.getpixel((1, 1)) == (0, 0, 0)
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([255, 255, 255, 255, 255, 255])
    assert load_image(encoded(pal, "PNG", transparency=0), mode="L").getpixel((0, 0)) == 0


def test_a_cutout_given_as_a_mask_covers_its_whole_subject() -> None:
    """A background remover's cutout: a coloured subject on a transparent background. Its alpha is the mask;
    read by brightness, the subject's dark red coat got a seventh of the style (35 levels). Grey paint
    on a transparent layer keeps its level (50% grey, half of the style)."""
    cutout = np.zeros((8, 8, 4), np.uint8)
    cutout[2:6, 2:6] = (90, 10, 20, 255)  # the subject: a dark red coat
    cutout[2:6, 6] = (240, 200, 150, 128)  # its edge, half transparent
    mask = np.asarray(load_image(encoded(Image.fromarray(cutout, "RGBA"), "PNG"), mode="L"))
    assert (mask[2:6, 2:6] == 255).all() and (mask[2:6, 6] == 128).all() and mask[0, 0] == 0
    paint = np.zeros((8, 8, 4), np.uint8)
    paint[2:6, 2:6] = (128, 128, 128, 255)
    mask = np.asarray(load_image(encoded(Image.fromarray(paint, "RGBA"), "PNG"), mode="L"))
    assert (mask[2:6, 2:6] == 128).all() and mask[0, 0] == 0
    opaque = Image.fromarray(np.dstack([np.full((8, 8, 3), (90, 10, 20), np.uint8), np.full((8, 8), 255, np.uint8)]))
    assert np.asarray(load_image(encoded(opaque, "PNG"), mode="L")).max() < 60  # no transparency: its brightness


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
    # past Pillow's own guard too (twice our limit), the sides are said: it raised with a count only
    with pytest.raises(InvalidInputError, match=f"image is 50000 x 50000 = 2500000000 pixels, over the limit of "
                                                f"max_pixels={Limits().max_pixels}"):
        load_image(bomb)
    with pytest.raises(InvalidInputError, match="image is 100000 x 100000 = 10000000000 pixels"):
        header_size(_png_header_only(100_000, 100_000))
    with pytest.raises(InvalidInputError, match="1200 pixels, over the limit of max_pixels=1000"):
        load_image(encoded(IMG, "PNG"), max_pixels=1000)


def test_a_jpeg_of_thousands_of_scans_is_refused_before_decoding(tmp_path) -> None:
    # 3,000 scans of 2000 x 2000 in 40 kB: seconds to minutes of a decode worker, within the pixel limit
    bomb = jpeg_scan_bomb(2000, 2000, 3000)
    t0 = time.perf_counter()
    with pytest.raises(InvalidInputError, match=rf"30\d\d scans, over the limit of {MAX_JPEG_SCANS}") as err:
        load_image(bomb, field="styles[0]")
    assert err.value.field == "styles[0]" and time.perf_counter() - t0 < 5
    (tmp_path / "bomb.jpg").write_bytes(bomb)
    with pytest.raises(InvalidInputError, match="scans, over the limit"):
        load_image(tmp_path / "bomb.jpg")
    assert load_image(jpeg_scan_bomb(64, 48, 50)).size == (64, 48)  # a few repeats more than usual still decode
    mpo = jpeg_scan_bomb(2000, 2000, 3000, mpo=True)  # Pillow calls it MPO: the limit was for "JPEG" alone
    assert Image.open(io.BytesIO(mpo)).format == "MPO"
    with pytest.raises(InvalidInputError, match="scans, over the limit"):
        load_image(mpo)


MEASURE_16_BIT = """
import io, resource
import numpy as np
from PIL import Image
from adain.image import load_image
buf = io.BytesIO()
Image.fromarray(np.full((4000, 4000), 30000, np.uint16)).save(buf, "PNG")
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
load_image(buf.getvalue())
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)
"""


def test_a_16_bit_image_decodes_in_bounded_memory() -> None:
    # In float64 with its temporaries a 16-MP 16-bit PNG (a few kB) took 430 MB to become 8-bit; now ~150.
    run = subprocess.run([sys.executable, "-c", MEASURE_16_BIT], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert int(run.stdout) < 250, f"{run.stdout.strip()} MB"


MEASURE_THIN = """
import resource
from PIL import Image
from adain.image import resize_longest
img = Image.new("RGB", (1, 60_000_000))  # a 233-kB PNG decodes to this, within max_pixels
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(resize_longest(img, 16384).size, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)
"""


def test_a_thin_image_is_scaled_down_in_bounded_memory() -> None:
    # An outside tester's 1 x 60,000,000 PNG: Lanczos alone wanted a coefficient a source row an output row (GBs:
    # a MemoryError, INTERNAL from the server); by whole factors first, then Lanczos
    run = subprocess.run([sys.executable, "-c", MEASURE_THIN], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    size, mb = run.stdout.rsplit(" ", 1)
    assert size == "(1, 16384)" and int(mb) < 400, run.stdout


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
    if fmt == "png":  # lossless, with zlib's run-length strategy as with its default
        assert np.array_equal(np.asarray(load_image(data)), np.asarray(IMG.convert("RGB")))
    else:
        assert len(encode_image(IMG, fmt, quality=10)) < len(encode_image(IMG, fmt, quality=95))
    if fmt == "jpeg":  # colour at full resolution: 4:2:0 smeared every stroke's colour edge
        from PIL import JpegImagePlugin

        assert JpegImagePlugin.get_sampling(Image.open(io.BytesIO(data))) == 0
    with pytest.raises(InvalidInputError, match="quality"):
        encode_image(IMG, fmt, quality=0)
    with pytest.raises(InvalidInputError, match="format"):
        encode_image(IMG, "gif")


def test_jpeg_encoded_through_a_descriptor_is_the_bytes_a_buffer_gets(monkeypatch: pytest.MonkeyPatch) -> None:
    """JPEG replies are encoded into an in-memory file with a descriptor (Pillow's encoder then lets go of the
    GIL: benchmarks/gil.py); where the OS has none, into a buffer. The bytes are the same, EXIF and all."""
    import os

    kept = exif_to_keep(photo_with_exif(64, 48))
    images = [IMG, synth_image(1031, 17), synth_image(3, 700)]  # wider than one write, a tall thin one

    def encodes() -> list[bytes]:
        return [encode_image(im, "jpeg", quality=q, exif=e) for im in images for q in (5, 90) for e in (None, kept)]

    through_fd = encodes()

    def none_left(*_: object) -> int:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(os, "memfd_create", none_left)
    through_buffer = encodes()
    assert through_fd == through_buffer
    assert all(load_image(data).size == im.size for data, im in zip(through_buffer[::4], images))


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_exif_kept_without_the_location(fmt: str) -> None:
    """A photo's date and camera survive into its stylized copy; its GPS location and its pixel size do not,
    and it is upright (decoding turned the pixels)."""
    kept = exif_to_keep(photo_with_exif(64, 48))
    exif = Image.open(io.BytesIO(encode_image(IMG, fmt, quality=90, exif=kept))).getexif()
    assert exif[0x010F] == "TestCam" and exif[0x0112] == 1
    assert exif.get_ifd(0x8769) == {0x9003: "2026:07:14 10:11:12"}
    assert exif.get_ifd(0x8825) == {} and 0x8825 not in exif
    assert exif_to_keep(encode_image(IMG, "png")) is None  # nothing to keep
    assert exif_to_keep(b"not an image") is None  # an odd block never fails the image
    assert not Image.open(io.BytesIO(encode_image(IMG, fmt, quality=90))).getexif()  # none unless asked
    # a TIFF's layout (strips, samples, size, compression) and profile describe its file, not the photo
    tiff = io.BytesIO()
    exif = Image.Exif()
    exif[0x010F] = "TestCam"
    synth_image(40, 30).save(tiff, "TIFF", exif=exif, icc_profile=icc_rgb(P3_D50))
    kept = Image.open(io.BytesIO(encode_image(IMG, fmt, quality=90, exif=exif_to_keep(tiff.getvalue())))).getexif()
    assert kept[0x010F] == "TestCam" and not {0x0100, 0x0101, 0x0103, 0x0111, 0x0117, 0x8773} & set(kept)


def test_a_large_maker_note_is_dropped_not_the_whole_exif() -> None:
    """An EXIF over a JPEG's 64 KB (a camera's 100-kB maker note) kept the date and camera in a PNG and lost
    everything in a JPEG, without a word: the maker note goes, the rest is kept in every format."""
    exif = Image.Exif()
    exif[0x010F] = "TestCam"
    sub = exif.get_ifd(0x8769)
    sub[0x927C] = b"\x01" * 100_000
    sub[0x9003] = "2024:05:01 10:00:00"
    kept = exif_to_keep(encoded(IMG, "PNG", exif=exif.tobytes()))
    assert kept is not None and len(kept) < 65527
    for fmt in ("jpeg", "png"):
        back = Image.open(io.BytesIO(encode_image(IMG, fmt, quality=90, exif=kept))).getexif()
        assert back[0x010F] == "TestCam" and back.get_ifd(0x8769) == {0x9003: "2024:05:01 10:00:00"}, fmt


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF F", "TIFF I", "TIFF"])
def test_the_client_sends_a_pil_image_as_the_library_reads_it(fmt: str) -> None:
    """A PIL image given to the thin client arrives as the library reads that image: upright by its EXIF
    orientation (the client dropped the EXIF: sideways) and with float and 32-bit greys at their levels (black
    and near white)."""
    from adain.client._client import image_bytes

    fmt, _, mode = fmt.partition(" ")
    rng = np.random.default_rng(0)
    if mode == "F":
        pixels = rng.random((40, 30)).astype("float32")
    elif mode == "I":
        pixels = (rng.random((40, 30)) * 60000).astype("int32")
    else:
        pixels = (rng.random((40, 30, 3)) * 255).astype("uint8")
    exif = Image.Exif()
    exif[0x0112] = 6  # turned: the camera was held upright
    stored = io.BytesIO()
    Image.fromarray(pixels, mode or "RGB").save(stored, fmt, exif=exif, **({"quality": 95} if fmt != "TIFF" else {}))
    image = Image.open(io.BytesIO(stored.getvalue()))
    sent = np.asarray(load_image(image_bytes(image)), dtype=float)
    if fmt != "TIFF":  # (Pillow turns a TIFF as it opens it)
        assert image.getexif().get(0x0112) == 6  # the caller's image is left as it was
    library = np.asarray(load_image(image), dtype=float)
    assert library.shape == sent.shape == (30, 40, 3) and np.abs(library - sent).max() == 0


def _exif_with_text(tag: int) -> bytes:
    """A little-endian EXIF block: Orientation 6, and ``tag`` (a number by the standard) stored as text."""
    entries = [(0x0112, 3, 1, struct.pack("<HH", 6, 0)), (tag, 2, 4, b"abc\0")]
    ifd = struct.pack("<H", 2) + b"".join(struct.pack("<HHI", t, kind, n) + v for t, kind, n, v in sorted(entries))
    return b"Exif\0\0II*\0" + struct.pack("<I", 8) + ifd + bytes(4)


@pytest.mark.parametrize("tag", [0x0101, 0x011A])  # ImageLength (struct.error), XResolution (TypeError)
def test_an_odd_exif_tag_does_not_fail_the_turn(tag: int) -> None:
    """exif_transpose wrote the EXIF again to drop the orientation, and failed on a tag stored as text: a photo
    that decodes fine was answered INTERNAL. The turn is ours now; the pixels are those of a plain orientation 6."""
    odd = encoded(IMG, "JPEG", quality=95, exif=_exif_with_text(tag))
    plain = encoded(IMG, "JPEG", quality=95, exif=photo_exif_orientation(6))
    out = load_image(odd)
    assert out.size == (30, 40) and np.array_equal(np.asarray(out), np.asarray(load_image(plain)))
    assert not out.getexif()  # turned: no orientation left to apply twice where the image is decoded again
    assert load_image(out).size == (30, 40)
    # the thin client, given it as a PIL image, sends its orientation alone (a TypeError or struct.error came out)
    from adain.client._client import image_bytes

    sent = load_image(image_bytes(Image.open(io.BytesIO(odd))))
    assert sent.size == (30, 40) and np.abs(np.asarray(sent, float) - np.asarray(out, float)).max() <= 1


def photo_exif_orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()


def _garbled_after(data: bytes, box: bytes) -> bytes:
    """``data`` with every byte after ``box``'s header changed (a box's payload garbled; its length kept)."""
    at = data.index(box) + len(box)
    return data[:at] + bytes((b * 7 + 13) & 0xFF for b in data[at:])


def test_corrupt_avif_and_heif_are_invalid_input(tmp_path) -> None:
    """A plugin's own errors on hostile data (RuntimeError, EOFError) were answered INTERNAL."""
    avif = encoded(IMG, "AVIF")
    pitm = avif.index(b"pitm")
    bad = {"garbled avif": _garbled_after(avif, b"mdat"),  # RuntimeError as it decodes
           "avif without its primary item": avif[:pitm + 8] + b"\0\x63" + avif[pitm + 10:]}  # RuntimeError as it opens
    if heif_support():
        bad["garbled heif"] = _garbled_after(encoded(IMG, "HEIF"), b"mdat")  # EOFError
    for name, data in bad.items():
        with pytest.raises(InvalidInputError, match="corrupt|cannot read") as err:
            load_image(data, field="content")
        assert err.value.field == "content", name
        (tmp_path / "bad").write_bytes(data)
        with pytest.raises(InvalidInputError):
            load_image(tmp_path / "bad")
    with pytest.raises(InvalidInputError, match="cannot read image header"):
        header_size(bad["avif without its primary item"])


@pytest.mark.parametrize("fmt", ["WEBP", "PNG", "JPEG", "GIF", "TIFF", "AVIF"])
def test_a_cut_header_names_the_format_it_began_as(fmt: str) -> None:
    """A soak tour's: a WebP cut short was "cannot read image header: could not create decoder object" from the
    server and "not an image this service reads (JPEG, PNG, WebP, ...)" from adain-web."""
    from adain.web.checks import BadInput, image

    data = encoded(synth_image(96, 64, seed=3, kind="noise"), fmt)[:30]
    name = {"WEBP": "WebP"}.get(fmt, fmt)
    with pytest.raises(InvalidInputError, match=f"cannot read image header: a truncated or corrupt {name} file"):
        load_image(data, field="content")
    with pytest.raises(BadInput, match=f"a truncated or corrupt {name} file"):
        image(data, "content", Limits())
    with pytest.raises(InvalidInputError, match=r"not a decodable image \(supported"):
        load_image(b"not an image at all, whatever it says", field="content")


def test_a_motion_photo_is_one_jpeg_and_its_video(tmp_path) -> None:
    """A Pixel's or Samsung's motion photo has an MP4 after the JPEG's end: 0xFFDA in its bytes (128 in 8 MiB by
    chance) counted as scans and refused the photo. Scans are counted to the end of the image, segments skipped
    whole (an EXIF thumbnail's own scan is not the photo's), and a scan bomb is still one."""
    photo = encoded(synth_image(64, 48), "JPEG", progressive=True)
    video = b"\0\0\0\x18ftypmp42" + np.random.default_rng(0).bytes(8 << 20)
    assert (photo + video).count(b"\xff\xda") > MAX_JPEG_SCANS
    t0 = time.perf_counter()
    assert load_image(photo + video).size == (64, 48)
    assert time.perf_counter() - t0 < 1
    (tmp_path / "PXL_MP.jpg").write_bytes(photo + video)
    assert load_image(tmp_path / "PXL_MP.jpg").size == (64, 48)
    thumbnail = encoded(synth_image(16, 12), "JPEG", progressive=True)
    app1 = b"\xff\xe1" + struct.pack(">H", 2 + len(thumbnail) * 20) + thumbnail * 20  # 20 thumbnails' scans in one
    assert load_image(photo[:2] + app1 + photo[2:]).size == (64, 48)
    with pytest.raises(InvalidInputError, match="scans, over the limit"):
        load_image(jpeg_scan_bomb(64, 48, 200) + video)


def _png_chunk(kind: bytes, body: bytes = b"") -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def test_jpeg_fill_and_png_chunk_floods_are_refused_before_pillow_parses_them(tmp_path) -> None:
    """Pillow parses a JPEG's header a byte at a time and a PNG's chunks one by one, in Python: 8 MiB of 0xFF fill
    took 4.4 s to open, 300,000 empty PNG chunks 1.1 s (and as many after the pixels 1 s to load)."""
    jpeg = encoded(IMG, "JPEG")
    comments = b"\xff\xfe\x00\x02" * (MAX_JPEG_MARKERS + 1)  # empty COM segments
    png = encoded(IMG, "PNG")
    idat = png.index(b"IDAT") - 4
    floods = {"fill": (jpeg[:2] + b"\xff" * (8 << 20) + jpeg[2:], "bytes of fill"),
              "markers": (jpeg[:2] + comments + jpeg[2:], f"over {MAX_JPEG_MARKERS} markers"),
              "chunks": (png[:idat] + _png_chunk(b"zzZz") * 300_000 + png[idat:], "chunks"),
              "chunks after": (png[:-12] + _png_chunk(b"zzZz") * 300_000 + png[-12:], "chunks")}
    for name, (data, what) in floods.items():
        t0 = time.perf_counter()
        with pytest.raises(InvalidInputError, match=f"{what}.*save it again") as err:
            header_size(data, field="content")
        assert err.value.field == "content" and time.perf_counter() - t0 < 1, name
        (tmp_path / name).write_bytes(data)
        with pytest.raises(InvalidInputError, match="save it again"):
            load_image(tmp_path / name)
    # what cameras and editors write stays: a few segments and a little fill; libpng's 8 KiB IDATs
    assert load_image(jpeg[:2] + b"\xff\xfe\x00\x02" * 100 + b"\xff" * 1000 + jpeg[2:]).size == (40, 30)
    assert load_image(png[:idat] + _png_chunk(b"zzZz") * 1000 + png[idat:]).size == (40, 30)


@pytest.mark.parametrize("mode,key", [("RGB", (10, 20, 30)), ("L", 7), ("I;16", 300)])
def test_a_colour_key_is_transparency(mode: str, key) -> None:
    """A PNG's tRNS on an RGB, grey or 16-bit image (one value that is transparent) was ignored: the keyed pixels
    kept their colour in a photo and covered everything in a mask. They are white and uncovered, as alpha's are."""
    img = Image.new(mode, (4, 4), key)
    img.putpixel((0, 0), (250, 250, 250) if mode == "RGB" else 250 if mode == "L" else 60000)
    level = 233 if mode == "I;16" else 250  # 60000 of 65535
    data = encoded(img, "PNG", transparency=key)
    assert Image.open(io.BytesIO(data)).info["transparency"] == key
    content, mask, labels = load_image(data), load_image(data, mode="L"), load_image(data, mode="raw")
    assert content.getpixel((1, 1)) == (255, 255, 255) and mask.getpixel((1, 1)) == 0
    assert labels.getpixel((1, 1)) == (0, 0, 0)
    assert content.getpixel((0, 0)) == (level,) * 3 and mask.getpixel((0, 0)) == level  # the rest as stored
    assert load_image(encoded(img, "PNG")).getpixel((1, 1)) != (255, 255, 255)  # without a key: as stored


@pytest.mark.parametrize("bits,row,key", [(2, 0b00011011, 1), (4, 0x0123, 2)])
def test_a_low_bit_grey_pngs_colour_key_is_its_stored_level(bits: int, row: int, key: int) -> None:
    """Pillow reads a 2- or 4-bit grey PNG's levels scaled to 0-255 (level 1 of 2 bits: 85) and keeps its tRNS key
    as stored (1): the key matched no pixel, and the transparent one was grey in a photo and covered in a mask."""
    ihdr = struct.pack(">IIBBBBB", 4, 1, bits, 0, 0, 0, 0)
    raw = b"\0" + row.to_bytes(1 if bits == 2 else 2, "big")  # one row of levels 0, 1, 2, 3 (filter byte first)
    data = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"tRNS", struct.pack(">H", key))
            + _png_chunk(b"IDAT", zlib.compress(raw)) + _png_chunk(b"IEND"))
    step = 255 // (2**bits - 1)
    content, mask = np.asarray(load_image(data))[0, :, 0], np.asarray(load_image(data, mode="L"))[0]
    want = [255 if level == key else level * step for level in range(4)]
    assert content.tolist() == want and mask.tolist() == [0 if level == key else level * step for level in range(4)]
    from adain.client._client import image_bytes  # a caller's PIL image of it, through the thin client

    assert np.asarray(load_image(image_bytes(Image.open(io.BytesIO(data)))))[0, :, 0].tolist() == want


def test_kept_exif_says_srgb() -> None:
    """An Adobe RGB camera's ColorSpace (0xFFFF, uncalibrated) and interoperability index ("R03") were kept, so a
    viewer that reads them took the output, sRGB without a profile, as Adobe RGB."""
    exif = Image.Exif()
    exif[0x010F] = "TestCam"
    sub = exif.get_ifd(0x8769)
    sub[0x9003], sub[0xA001], sub[0xA005] = "2026:07:14 10:11:12", 0xFFFF, {1: "R03"}
    original = encoded(IMG, "JPEG", exif=exif.tobytes())
    assert Image.open(io.BytesIO(original)).getexif().get_ifd(0xA005) == {1: "R03"}
    kept = Image.open(io.BytesIO(encode_image(IMG, "jpeg", exif=exif_to_keep(original)))).getexif()
    assert kept.get_ifd(0x8769) == {0x9003: "2026:07:14 10:11:12", 0xA001: 1}
    assert 0xA005 not in kept  # (get_ifd(0xA005) of a file without one raises KeyError in Pillow 12)


def test_a_pngs_exif_is_read_without_decoding_it() -> None:
    """Pillow's getexif decodes a whole PNG to look for an eXIf chunk after its pixels (54 ms at 3 MP, for most
    PNGs, which have none). Read without decoding: found after pixels that cannot be decoded at all."""
    exif = Image.Exif()
    exif[0x010F] = "TestCam"
    png = encoded(IMG, "PNG")
    iend = len(png) - 12
    idat = png.index(b"IDAT") + 4
    garbled = png[:idat] + bytes(20) + png[idat + 20:]  # (its CRC wrong too)
    late = garbled[:iend] + _png_chunk(b"eXIf", exif.tobytes()) + garbled[iend:]
    kept = exif_to_keep(late)
    assert kept is not None
    assert Image.open(io.BytesIO(encode_image(IMG, "png", exif=kept))).getexif()[0x010F] == "TestCam"
    assert exif_to_keep(encoded(IMG, "PNG", exif=exif.tobytes())) is not None  # before the pixels, as Pillow writes
    assert exif_to_keep(garbled) is None


PILLOW_GUARD = """
from PIL import Image
default = Image.MAX_IMAGE_PIXELS
import adain.image
print(Image.MAX_IMAGE_PIXELS == default)
"""


def test_pillows_bomb_guard_is_raised_to_our_limit_not_removed(monkeypatch) -> None:
    """Importing adain.image set Image.MAX_IMAGE_PIXELS = None, taking the guard from any application that
    imported it. It is left, and raised to a limit above it: --max-pixels of a 16K print (268 MP) still opens."""
    run = subprocess.run([sys.executable, "-c", PILLOW_GUARD], capture_output=True, text=True, timeout=60)
    assert run.stdout.strip() == "True", run.stdout + run.stderr
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 89_478_485)  # Pillow's default, restored after the test
    bomb = _png_header_only(16384, 16384)  # 268 MP: past twice Pillow's limit
    over = f"268435456 pixels, over the limit of max_pixels={Limits().max_pixels}"
    with pytest.raises(InvalidInputError, match=over):
        header_size(bomb)
    assert header_size(bomb, max_pixels=16384 * 16384) == (16384, 16384)
    assert Image.MAX_IMAGE_PIXELS == 16384 * 16384
    with pytest.raises(InvalidInputError, match="over the limit of max_pixels=1000"):
        header_size(bomb, max_pixels=1000)
    assert Image.MAX_IMAGE_PIXELS == 16384 * 16384  # never lowered


def test_jpeg_side_limit_is_libjpegs() -> None:
    """libjpeg writes at most 65,500 px a side: 65,501-65,535 was let through and failed after rendering."""
    assert load_image(encode_image(Image.new("RGB", (65500, 1)), "jpeg")).size == (65500, 1)
    with pytest.raises(InvalidInputError, match="65,500 px a side"):
        encode_image(Image.new("RGB", (65501, 1)), "jpeg")


def test_atomic_path_leaves_nothing_when_the_rename_fails(tmp_path) -> None:
    """A folder where the output goes: the rename failed outside the cleanup and left the .part file."""
    from adain.files import atomic_path

    (tmp_path / "out.png").mkdir()
    with pytest.raises(OSError):
        with atomic_path(tmp_path / "out.png") as tmp:
            tmp.write_bytes(b"image")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_a_signal_just_as_the_temporary_file_appears_leaves_nothing(tmp_path: Path) -> None:
    """SIGTERM sent the moment the .part file appeared (a CI run's CLI test) came as its lock was taken, outside the
    cleanup: the file stayed (38 to 299 writes of 300 here). A writer signalled at once, 300 times, leaves nothing."""
    import signal

    child = ("import signal, sys, time\nfrom pathlib import Path\nfrom adain.commands import on_sigterm, on_signals\n"
             "from adain.files import atomic_path\non_signals({signal.SIGTERM: on_sigterm})\nout = Path(sys.argv[1])\n"
             "while sys.stdin.readline():\n    try:\n        with atomic_path(out, sweep=True):\n"
             "            while True:\n                time.sleep(0.05)\n"  # (a signal just before a sleep's
             "    except KeyboardInterrupt:\n        pass\n"  # syscall is handled only once it ends: 60 s at a time)
             "    print(len(list(out.parent.iterdir())), flush=True)\n")
    folder = tmp_path / "out"
    folder.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", child, str(folder / "k.mp4")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        left = 0
        for _ in range(300):
            proc.stdin.write("go\n")
            proc.stdin.flush()
            deadline = time.monotonic() + 30
            while not os.listdir(folder) and time.monotonic() < deadline:
                pass  # (no sleep: the signal as close to the file's making as can be)
            proc.send_signal(signal.SIGTERM)
            left += int(proc.stdout.readline()) > 0
            for p in folder.iterdir():
                p.unlink()
        assert left == 0, f"{left} of 300 writes left their .part file"
    finally:
        proc.kill()
        proc.wait()


def test_images_opened_in_threads_leave_the_warning_filters_as_they_were() -> None:
    """Each open ignores Pillow's warnings on odd tags. warnings.catch_warnings puts back the process's one filter
    list, so two threads' opens interleaved left an "ignore everything" filter for good (2 runs of 3 with 4
    threads): every later warning of a server was silenced."""
    import threading
    import warnings

    data = encoded(synth_image(64, 48), "JPEG")
    before = list(warnings.filters)

    def opens() -> None:
        for _ in range(300):
            load_image(data)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # threads switch often, inside the blocks too: each round caught the fault
    try:
        for _ in range(3):
            threads = [threading.Thread(target=opens) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert warnings.filters == before
    finally:
        sys.setswitchinterval(interval)
        warnings.filters[:] = before


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="a read-only bind mount needs root and unshare")
def test_a_missing_folder_on_a_read_only_mount_says_read_only(tmp_path: Path) -> None:
    """Asked for access, a read-only mount said "Permission denied" for an output in a folder still to be made
    (an outside tester's); the error making the folder would meet is said now."""
    ro = tmp_path / "ro"
    ro.mkdir()
    code = ("from adain.files import check_writable\n"
            "for p in ('ro/sub/out.png', 'ro/out.png'):\n"
            "    try:\n        check_writable(p)\n    except OSError as e:\n        print(e.strerror)\n")
    proc = subprocess.run(["unshare", "-m", "sh", "-c", f"mount --bind ro ro && mount -o remount,ro,bind ro && "
                           f"{shlex.quote(sys.executable)} -c {shlex.quote(code)}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0 and "mount" in proc.stderr:
        pytest.skip(f"no bind mount here: {proc.stderr.strip()[:100]}")
    assert proc.stdout.splitlines() == ["Read-only file system"] * 2, (proc.stdout, proc.stderr)
    assert list(ro.iterdir()) == []  # nothing left behind


def test_temporary_names_fit_the_file_systems_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A review's: a name fitted to a file system of a short NAME_MAX (eCryptfs: 143 bytes) got a temporary name
    ~15 bytes longer, and its write (and check_writable's probe) failed. Both are cut to the folder's limit."""
    from adain.files import check_writable, create_beside

    real = os.pathconf
    monkeypatch.setattr(os, "pathconf", lambda p, n: 143 if n == "PC_NAME_MAX" else real(p, n))
    made: list[str] = []
    monkeypatch.setattr(os, "open", lambda p, *a, real=os.open: (made.append(os.path.basename(p)), real(p, *a))[1])
    monkeypatch.setattr(os, "mkdir", lambda p, *a, real=os.mkdir: (made.append(os.path.basename(p)), real(p, *a))[1])
    import pathlib

    if hasattr(pathlib, "_normal_accessor"):  # Python 3.10: Path.mkdir calls its accessor's, not os.mkdir
        monkeypatch.setattr(pathlib._normal_accessor, "mkdir", os.mkdir, raising=False)
    name = "é" * 68 + ".png"  # 140 bytes
    create_beside(tmp_path / name).unlink()
    check_writable(tmp_path / "new" / name)  # its folder still to be made: a probe folder beside it
    assert len(made) == 2 and all(len(os.fsencode(m)) <= 143 for m in made), [len(os.fsencode(m)) for m in made]


def test_a_killed_writers_temporary_file_is_removed_by_the_next_write_of_its_output(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process killed while it wrote a clip (SIGKILL; a library caller's worker stopped by SIGTERM, which Python
    does not turn into an exception) left its hidden .part file for good (hundreds of MB). The next write of the same
    output removes it; a living writer's and another output's are kept."""
    import signal

    from adain.files import atomic_path

    out = tmp_path / "clip.mp4"
    write = ("import os, signal, sys\nfrom pathlib import Path\nfrom adain.files import atomic_path\n"
             "with atomic_path(Path(sys.argv[1]), sweep=True) as tmp:\n    tmp.write_bytes(b'x' * 100_000)\n"
             "    print('in', flush=True)\n    if sys.argv[2] == 'kill':\n"
             "        os.kill(os.getpid(), signal.SIGKILL)\n"
             "    sys.stdin.readline()\n")
    killed = subprocess.run([sys.executable, "-c", write, str(out), "kill"], capture_output=True, text=True, timeout=60)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    left = list(tmp_path.glob(".clip.mp4.*.part"))
    assert len(left) == 1 and left[0].stat().st_size == 100_000
    for name in ("other.mp4", "clip.mp4.gif"):  # other outputs' (one whose name goes on from this one's)
        other = subprocess.run([sys.executable, "-c", write, str(tmp_path / name), "kill"], timeout=60)
        assert other.returncode == -signal.SIGKILL
    os.mkfifo(tmp_path / ".clip.mp4.deadbeef.part")  # (opened to be locked, a pipe waited for a writer for ever)
    living = subprocess.Popen([sys.executable, "-c", write, str(out), "wait"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert living.stdout.readline() == "in\n"
        alive = set(tmp_path.glob(".clip.mp4.????????.part")) - set(left) - {tmp_path / ".clip.mp4.deadbeef.part"}
        assert len(alive) == 1
        for part in tmp_path.glob(".*.part"):  # written a while ago (a part written this instant is left)
            os.utime(part, (time.time() - 60, time.time() - 60))
        def write_clip() -> None:
            with atomic_path(out, sweep=True) as tmp:  # (as adain.media writes a clip)
                tmp.write_bytes(b"whole")

        writer = threading.Thread(target=write_clip, daemon=True)
        writer.start()
        writer.join(30)
        assert not writer.is_alive(), "the write hung"
        assert out.read_bytes() == b"whole"
        assert not left[0].exists(), "the killed writer's temporary file is still there"
        assert all(p.exists() for p in alive), "a living writer's temporary file was removed"
        for name in ("other.mp4", "clip.mp4.gif"):  # another output's: its own next write removes it
            assert len(list(tmp_path.glob(f".{name}.*.part"))) == 1, name
        assert (tmp_path / ".clip.mp4.deadbeef.part").exists()  # not a file: left
        living.communicate("\n", timeout=60)
        assert living.returncode == 0
    finally:
        living.kill()
    assert out.read_bytes() == b"x" * 100_000  # the living writer finished: its file renamed into place
    # run again at once after a kill (a retry loop): the killed part is too recent as the write begins, and is
    # removed as it ends (a clip's write takes longer than PART_QUIET_S)
    monkeypatch.setattr("adain.files.PART_QUIET_S", 0.3)
    def parts() -> list[Path]:
        return [p for p in tmp_path.glob(".clip.mp4.????????.part") if p.name != ".clip.mp4.deadbeef.part"]

    again = subprocess.run([sys.executable, "-c", write, str(out), "kill"], timeout=60)
    assert again.returncode == -signal.SIGKILL and len(parts()) == 1
    with atomic_path(out, sweep=True) as tmp:
        time.sleep(0.4)
        tmp.write_bytes(b"again")
    assert out.read_bytes() == b"again" and not parts(), parts()
    assert sorted(p.name for p in tmp_path.glob(".clip.mp4.*") if ".gif." not in p.name) == [".clip.mp4.deadbeef.part"]


@needs_torch
def test_to_tensor_copies_the_pixels_without_tobytes_and_gives_the_same_tensor(monkeypatch: pytest.MonkeyPatch) -> None:
    """``np.asarray(img)`` copies the pixels with ``Image.tobytes``, which holds the GIL for the whole copy (0.3-0.4 ms
    in one piece a 512-px image): serial work beside a server's event loop and render thread. to_tensor copies them
    with Pillow's PPM writer into an in-memory file, without it: the same values and layout (channels last)."""
    import torch

    from adain.image import image_key, to_tensor

    def reference(img: Image.Image) -> torch.Tensor:
        arr = np.asarray(img, dtype=np.uint8)
        arr = arr[:, :, None] if arr.ndim == 2 else arr
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)

    rng = np.random.default_rng(5)
    cases = [Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)) for shape in
             ((37, 53, 3), (37, 53), (1, 1, 3), (1, 7000, 3), (2600, 1700, 3))]  # (the last in several blocks)
    cases.append(Image.open(io.BytesIO(encoded(cases[0], "jpeg"))))  # not loaded yet
    cases.append(Image.open(io.BytesIO(encoded(cases[0], "jpeg"))).crop((3, 5, 40, 30)))
    expected = [reference(img) for img in cases]
    keys = [image_key(img, "content") for img in cases[:2]]  # (a coloured job's content key: its pixels hashed)
    monkeypatch.setattr(Image.Image, "tobytes", lambda *a, **k: pytest.fail("copied with tobytes"))
    assert [image_key(img, "content") for img in cases[:2]] == keys  # the same keys, off the GIL too
    for img, want in zip(cases, expected):
        got = to_tensor(img)
        assert got.dtype == torch.float32 and got.shape == want.shape and torch.equal(got, want), img
        assert got.is_contiguous(memory_format=torch.channels_last), got.stride()


def _regex_layout(data: bytes) -> tuple[int, int, int]:
    """The JPEG walk as it was made with regular expressions (the oracle of the numpy search that replaced them)."""
    import re

    from adain.image import _STANDALONE, MAX_JPEG_FILL

    scans = markers = fill = 0
    at, pattern = 2, re.compile(rb"\xff[\x01-\xfe]")
    while markers <= MAX_JPEG_MARKERS and fill <= MAX_JPEG_FILL and (found := pattern.search(data, at)):
        if not scans:
            fill += found.start() - at
        markers += 1
        kind, at = data[found.start() + 1], found.end()
        if kind == 0xD9 and scans:
            break
        if kind in _STANDALONE:
            continue
        at += int.from_bytes(data[at:at + 2], "big")
        if kind == 0xDA:
            scans += 1
            pattern = re.compile(rb"\xff[\x01-\xcf\xd8-\xfe]")
    return scans, markers, fill


def test_the_jpeg_walk_finds_what_the_regular_expressions_found(tmp_path: Path) -> None:
    """The walk's search of coded data for the next marker is numpy's: ``re`` held the GIL for the whole search (2-3 ms
    in one piece for a 4-MB photo, beside a server's other threads). The same layout as the regular expressions' on
    random streams of markers, stuffing, restarts, fill and long runs across the search's 4-KiB first step, on real
    JPEGs, and on a mapped file (which must close after)."""
    import mmap

    from adain.image import _jpeg_layout, check_layout

    rng = np.random.default_rng(19)
    pieces = [b"\xff", b"\x00", b"\xd9", b"\xda", b"\xd0", b"\xd7", b"\xd8", b"\xc4", b"\xcf", b"\xfe", b"\x01",
              b"\x00\x04", b"\x00\x02", b"\xff\xda\x00\x02", b"\xff\xd9", b"\xff\x00", b"\xff\xff", b"ab",
              b"\x00" * 4090, b"\xff" * 4095, b"\x13" * 70_000]
    for _ in range(3000):
        data = b"\xff\xd8\xff" + b"".join(pieces[i] for i in rng.integers(0, len(pieces), rng.integers(0, 60)))
        assert tuple(_jpeg_layout(data)) == _regex_layout(data), data[:80]
    for img in (synth_image(64, 48), synth_image(700, 500)):
        for save in ({}, {"progressive": True}, {"restart_marker_blocks": 1}):
            data = encoded(img, "JPEG", **save)
            assert tuple(_jpeg_layout(data)) == _regex_layout(data)
    for data in (jpeg_scan_bomb(64, 48, 200), jpeg_scan_bomb(64, 48, 50) + b"\xff\xda" * 300):
        assert tuple(_jpeg_layout(data)) == _regex_layout(data)
    path = tmp_path / "photo.jpg"
    path.write_bytes(encoded(synth_image(300, 200), "JPEG"))
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
        assert tuple(_jpeg_layout(view)) == _regex_layout(path.read_bytes())
        check_layout(view, "content")


def test_a_large_jpeg_is_decoded_at_a_smaller_scale_when_it_is_downscaled_after() -> None:
    """A phone's photo (10+ MP) decoded whole and then downscaled to 512 px took 2.5x the time of a decode at the DCT
    scale that keeps twice the side asked for (libjpeg's scaled decode, as Pillow's thumbnail does). The pixels are
    the whole decode's within what a downscale's filter moves; turned upright by its EXIF as before; the stored size
    still counts for max_pixels; other formats, and a JPEG not that much larger, decode whole."""
    from adain.image import resize_longest

    def psnr(a: Image.Image, b: Image.Image) -> float:
        d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
        return float(10 * np.log10(255**2 / max((d**2).mean(), 1e-12)))

    photo = encoded(synth_image(2400, 1800, seed=3), "JPEG", quality=92)
    whole = resize_longest(load_image(photo), 512)
    smaller = load_image(photo, longest=512)
    assert smaller.size == whole.size == (512, 384) and psnr(smaller, whole) > 40
    turned = photo_with_exif(2400, 1800)  # orientation 6: upright it is 1800 x 2400
    assert load_image(turned, longest=512).size == (384, 512)
    assert psnr(load_image(turned, longest=512), resize_longest(load_image(turned), 512)) > 40
    # A DCT scale rounds its sides up (2000 x 1113 at 1/4: 500 x 279, 317 px long: 177 where the stored size gives
    # 176): the size is the whole decode's, to the pixel, whatever the rounding
    for (w, h), side in (((2000, 1113), 317), ((5727, 3846), 1402), ((3648, 7594), 609), ((3105, 94), 512)):
        odd = encoded(synth_image(w, h, seed=1), "JPEG")
        assert load_image(odd, longest=side).size == resize_longest(load_image(odd), side).size, (w, h, side)
    mine = Image.open(io.BytesIO(photo))  # a caller's own image: decoded whole, not changed (a draft is in place)
    assert load_image(mine, longest=512).size == (2400, 1800) and mine.size == (2400, 1800)
    with pytest.raises(InvalidInputError, match="max_pixels"):
        load_image(photo, max_pixels=2400 * 1800 - 1, longest=512)
    assert load_image(photo, longest=700).size == (2400, 1800)  # under 2 x DRAFT_GAP larger: whole
    assert load_image(encoded(synth_image(2400, 1800, seed=3), "PNG"), longest=512).size == (2400, 1800)


def test_a_callers_lazy_image_is_read_once_and_a_failed_read_is_said_each_time() -> None:
    """A caller's ``Image.open`` is loaded once under a lock (threads sharing it raced). WebP's reader makes its
    tiles in load(), so its image looked loaded and was not locked (7 of 240 calls of 8 threads failed, "unrecognized
    data stream"). A load that failed left the image looking loaded with half its pixels, and later calls stylized
    those: each is refused as the first was."""
    from adain.image import _unloaded

    webp = Image.open(io.BytesIO(encoded(synth_image(64, 48, seed=3), "WEBP")))
    assert _unloaded(webp)
    assert load_image(webp).size == (64, 48) and not _unloaded(webp)
    buf = io.BytesIO()  # a PNG whose compressed pixels are garbled mid-way, its checksum right
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    at = data.find(b"IDAT")
    n = struct.unpack(">I", data[at - 4:at])[0]
    data[at + 4 + n // 2:at + 4 + n // 2 + 40] = b"\0" * 40
    data[at + 4 + n:at + 8 + n] = struct.pack(">I", zlib.crc32(bytes(data[at:at + 4 + n])))
    broken = Image.open(io.BytesIO(bytes(data)))
    for _ in range(3):
        with pytest.raises(InvalidInputError, match=r"^content: image data is truncated or corrupt: broken data"):
            load_image(broken, field="content")


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK"])
def test_an_uncompressed_tiff_turned_by_its_orientation_reads_the_same_by_path(mode: str, tmp_path: Path) -> None:
    """A pixel-correctness tour's: Pillow memory-maps an uncompressed image opened by name, and mapped a TIFF of
    orientation 5-8 at its turned size: sideways and scrambled, no error, where its bytes read right."""
    upright = Image.fromarray(np.arange(160 * 240, dtype=np.uint32).reshape(160, 240).astype(np.uint8) * 7)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored a quarter turn away: shown turned back
    path = tmp_path / "turned.tif"
    upright.convert(mode).transpose(Image.Transpose.ROTATE_90).save(path, exif=exif.tobytes())
    by_path, by_bytes = load_image(path), load_image(path.read_bytes())
    assert by_path.size == by_bytes.size == (240, 160)
    assert np.array_equal(np.asarray(by_path), np.asarray(by_bytes))


def test_an_encode_in_memory_is_whole_under_a_file_size_limit() -> None:
    """A filesystem tour's: under ``ulimit -f`` (systemd's LimitFSIZE=) the in-memory encodes, Linux memfds and so
    files, came back cut at the limit without an error (a PPM of 24,590 bytes as 8,192): a clip's frames were
    "truncated or corrupt" inputs, a server's photos INTERNAL. Such a process encodes into a buffer."""
    import resource

    code = ("import io, numpy as np\n"
            "from PIL import Image\n"
            "from adain.files import bytes_written\n"
            "im = Image.fromarray((np.random.default_rng(0).random((64, 128, 3)) * 255).astype('uint8'))\n"
            "ref = io.BytesIO(); im.save(ref, 'PPM')\n"
            "print(len(ref.getvalue()), len(bytes_written(lambda f: im.save(f, 'PPM'))))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True,
                         preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192)))
    expected, got = out.stdout.split()
    assert got == expected == "24590", out


def test_a_pil_images_colour_code_points_are_part_of_its_cache_key() -> None:
    """A pixel-correctness tour's: a HEIF's colours given as code points (``info["nclx_profile"]``, no profile)
    were left out of the key, so a Display P3 style and its pixels copied shared one, the second getting the
    first's statistics."""
    from adain.image import image_key

    plain = synth_image(32, 24)
    p3 = plain.copy()
    p3.info["nclx_profile"] = {"color_primaries": 12, "transfer_characteristics": 13, "matrix_coefficients": 6,
                               "full_range_flag": 1}
    assert image_key(p3, "styles[0]") != image_key(plain, "styles[0]")
    assert image_key(p3, "styles[0]") == image_key(p3.copy(), "styles[0]")


def test_an_output_that_cannot_be_written_is_named_as_asked(tmp_path: Path) -> None:
    """A filesystem tour's: a write that failed (a full disk, a read-only or missing folder) named the hidden
    temporary file ``.out.png.2fd52425.part``, already removed (or never made) when the caller read it."""
    from adain.files import write_whole

    missing = tmp_path / "no-such-folder" / "out.png"
    with pytest.raises(FileNotFoundError) as e:
        write_whole(missing, b"x")
    assert e.value.filename == str(missing)
    small = tmp_path / "small"
    small.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(small)],
                                           capture_output=True).returncode != 0:
        return  # (a full disk needs root to mount a small one: the rest is checked where it can be)
    try:
        with pytest.raises(OSError) as e:
            write_whole(small / "out.png", b"x" * 100_000)
        assert e.value.errno == 28 and e.value.filename == str(small / "out.png") and not list(small.iterdir())
    finally:
        subprocess.run(["umount", str(small)], check=False)


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
@needs_torch
def test_the_clients_bytes_of_a_pil_image_with_code_points_read_as_the_library_reads_it(mode: str) -> None:
    """A pixel-correctness tour's: a PIL image whose colours are code points (a HEIF's ``nclx_profile``, no ICC
    profile) was sent as a PNG, which carries none, and the server took its pixels as sRGB: a Display P3 photo 9
    levels off the library's (max 54), an HDR one 50. The client converts it as the library does."""
    from adain.client._client import image_bytes
    from adain.image import to_tensor

    img = synth_image(48, 32).convert(mode)
    img.info["nclx_profile"] = {"color_primaries": 12, "transfer_characteristics": 13, "matrix_coefficients": 6,
                                "full_range_flag": 1, "color_primary_red_x": 0.68, "color_primary_red_y": 0.32,
                                "color_primary_green_x": 0.265, "color_primary_green_y": 0.69,
                                "color_primary_blue_x": 0.15, "color_primary_blue_y": 0.06}  # Display P3
    library = to_tensor(load_image(img))
    plain = to_tensor(load_image(Image.fromarray(np.asarray(img))))  # the pixels alone, taken as sRGB
    sent = to_tensor(load_image(image_bytes(img)))
    assert (library - plain).abs().max() * 255 > 10  # the conversion matters
    assert (sent - library).abs().max() * 255 <= 1, (sent - library).abs().max() * 255
