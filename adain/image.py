"""Image I/O: bytes or paths -> RGB PIL images -> tensors, and back to encoded bytes.

Every problem with an input image raises :class:`adain.errors.InvalidInputError` naming the field.
Decoding is guarded: the header is checked (format, zero size, pixel limit) before any pixel is
decoded, so a decompression bomb costs nothing; truncated data is an error, never a grey half-image.
Alpha is composited onto white (a transparent PNG looks as it does in a viewer on a white page).
Photos come out in sRGB whatever profile they carry, and HEIC/AVIF are read (``adain.photo``).
"""

from __future__ import annotations

import hashlib
import io
import warnings
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from PIL import Image, ImageOps

from adain.bmff import HEAD_BYTES, nclx_profile
from adain.errors import InvalidInputError
from adain.photo import heif_missing, heif_support, to_srgb
from adain.wire import DEFAULT_QUALITY, INPUT_FORMATS, Limits, format_cannot_hold, format_name

if TYPE_CHECKING:
    import torch


class KeyedImage(NamedTuple):
    """Encoded image bytes whose key (the sha256 hex of the bytes) the caller already knows, such as a
    style registered with the server: its id is its cache key, so its bytes are not hashed again."""

    key: str
    data: bytes


ImageSource = bytes | bytearray | memoryview | str | Path | Image.Image | KeyedImage

DEFAULT_MAX_PIXELS = Limits.max_pixels  # 40 MP: a 6000 x 6000 photo is fine, a 50k x 50k bomb is not

# A progressive JPEG's scans are each a pass over the whole image: a small file that repeats one scan
# thousands of times (15 bytes each) held a decode worker for minutes. libjpeg's own progressive script has
# 10 scans, tuned encoders a few more.
MAX_JPEG_SCANS = 100

# We check the pixel count ourselves, before decoding, with our own limit and message.
Image.MAX_IMAGE_PIXELS = None
heif_support()  # HEIC/HEIF photos, where pillow-heif is installed


def image_key(source: ImageSource, field: str) -> str:
    """sha256 hex of an image's encoded bytes (of a PIL image's mode, size and pixels): a cache key."""
    if isinstance(source, KeyedImage):
        return source.key
    h = hashlib.sha256()
    if isinstance(source, Image.Image):
        # what decoding it takes besides the pixels: the palette, a profile, the transparent index, a turn
        # (two palette images of the same indices once shared a key, and the second got the first's colours)
        orientation = source.getexif().get(0x0112, 1) if hasattr(source, "getexif") else 1
        h.update(f"{source.mode}{source.size}{source.info.get('transparency')!r}{orientation}".encode())
        h.update(source.tobytes())
        if source.mode in ("P", "PA") and source.palette is not None:
            h.update(source.palette.tobytes())
        h.update(source.info.get("icc_profile") or b"")
    elif isinstance(source, (bytes, bytearray, memoryview)):
        h.update(source)
    elif isinstance(source, (str, PathLike)):
        try:
            with open(source, "rb") as f:
                h.update(f.read())
        except OSError as e:
            raise InvalidInputError(field, f"cannot read image file {source}: {e.strerror}") from e
    else:
        raise InvalidInputError(field, f"expected image bytes, a path or a PIL image, got {type(source).__name__}")
    return h.hexdigest()


def _open(source: ImageSource, field: str) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, KeyedImage):
        source = source.data
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise InvalidInputError(field, "image data is empty")
        fp: io.BytesIO | Path = io.BytesIO(bytes(source))
    elif isinstance(source, (str, Path)):
        fp = Path(source)
        if not fp.exists():
            raise InvalidInputError(field, f"no such image file: {fp}")
        if not fp.is_file():  # a folder, or a device or pipe whose read may never end
            raise InvalidInputError(field, f"{fp} is not a regular file (a folder, a device or a pipe)")
        if fp.stat().st_size == 0:
            raise InvalidInputError(field, f"image file is empty: {fp}")
    else:
        raise InvalidInputError(field, f"expected image bytes, a path or a PIL image, got {type(source).__name__}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL warns on odd EXIF/TIFF tags; errors still raise
            return Image.open(fp, formats=input_formats())
    except Image.UnidentifiedImageError as e:
        if isinstance(fp, io.BytesIO):
            head = fp.getvalue()[:16]
        else:
            with fp.open("rb") as f:
                head = f.read(16)
        why = heif_missing(head) or f"not a decodable image (supported: {', '.join(INPUT_FORMATS)})"
        raise InvalidInputError(field, why) from e
    except (OSError, ValueError, SyntaxError) as e:
        raise InvalidInputError(field, f"cannot read image header: {e}") from e


def _jpeg_scans(source: ImageSource) -> int:
    """How many scans (start-of-scan markers) a JPEG's bytes hold: 0xFF 0xDA occurs nowhere else, for the
    coded data escapes every 0xFF (a few in an embedded thumbnail or profile count too, harmlessly)."""
    data = _stored_bytes(source)
    return 0 if data is None else data.count(b"\xff\xda")  # None: a PIL image, already the caller's


def _stored_bytes(source: ImageSource, limit: int = -1) -> bytes | None:
    """The bytes an image is stored as (the first ``limit`` of them); None for a PIL image."""
    if isinstance(source, KeyedImage):
        source = source.data
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source if limit < 0 else memoryview(source).cast("B")[:limit])
    if isinstance(source, (str, Path)):
        try:
            with open(source, "rb") as f:
                return f.read(limit)
        except OSError:  # gone or unreadable since it was opened: the caller's decode says so
            return None
    return None


def input_formats() -> list[str]:
    """The input formats this Pillow can open (HEIF only with pillow-heif, AVIF from Pillow 11.3)."""
    Image.init()
    return [f for f in INPUT_FORMATS if f in Image.OPEN]


def _to_rgb(
    img: Image.Image, background: tuple[int, int, int] = (255, 255, 255), *, numbers: bool = False
) -> Image.Image:
    """Any mode to 8-bit RGB: 16-bit and float scaled down, CMYK converted, alpha onto ``background``.
    ``numbers``: 16- and 32-bit values up to 255 are kept as they are (a label image's labels 3 and 7 in a
    16-bit PNG read as 0), not scaled from 65535."""
    # float32 and in place: float64 and its temporaries took 1.47 GB for a 140 kB 16-bit PNG
    arr = None
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float32)
        top = arr.max()
        peak = 255.0 if top <= 255 and (numbers or not img.mode.startswith("I;16")) else 65535.0
        arr *= 255.0 / peak
    elif img.mode == "F":
        arr = np.nan_to_num(np.array(img, dtype=np.float32), copy=False, nan=0.0, posinf=255.0, neginf=0.0)
        # levels in [0, 1] as float images store them, unless more than a few pixels say 0-255: one pixel at
        # 1.0000001 (or a NaN) read a whole 0-1 image as 0-255, black
        if np.count_nonzero(arr > 1.0) <= max(1, arr.size // 1000):
            arr *= 255.0
    if arr is not None:
        arr += 0.5
        np.clip(arr, 0, 255, out=arr)
        img = Image.fromarray(arr.astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        rgba = img.convert("RGBA")
        under = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(under, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def load_image(
    source: ImageSource, *, field: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS, mode: str = "RGB"
) -> Image.Image:
    """Decode ``source`` to an upright 8-bit image in ``mode``: "RGB" (a photo, in sRGB whatever profile
    it carries), "L" (a mask) or "raw" (RGB as stored, no colour conversion: a label image).

    Raises InvalidInputError for empty, undecodable, truncated, zero-size or over-limit images.
    """
    img = _open(source, field)
    w, h = _checked_size(img, field, max_pixels)
    if img.format == "AVIF" and mode == "RGB" and not {"nclx_profile", "icc_profile"} & img.info.keys():
        # Pillow leaves the code points unread (an ICC profile comes first anyway)
        nclx = nclx_profile(_stored_bytes(source, HEAD_BYTES) or b"")
        if nclx:
            img.info["nclx_profile"] = nclx
    if img.format in ("JPEG", "MPO") and (scans := _jpeg_scans(source)) > MAX_JPEG_SCANS:  # MPO: JPEGs in one
        raise InvalidInputError(field, f"JPEG with {scans} scans, over the limit of {MAX_JPEG_SCANS} (a progressive "
                                "JPEG has about 10; save it again)")
    try:
        img.load()
        img = ImageOps.exif_transpose(img) or img
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise InvalidInputError(field, f"image data is truncated or corrupt: {e}") from e
    # A mask's or label image's transparent pixels are black (no coverage; label 0), as a mask painted on a
    # transparent layer means; a photo's are white, as it would look on a white page.
    if mode == "L":
        if img.mode in ("L", "RGB", "CMYK", "1"):
            return img.convert("L")
        return _to_rgb(img, (0, 0, 0), numbers=True).convert("L")  # a 16-bit mask of 0s and 1s: numbers
    return _to_rgb(img, (0, 0, 0), numbers=True) if mode == "raw" else to_srgb(img, _to_rgb)


def stored_format(source: ImageSource, *, field: str = "image") -> str | None:
    """The format the image is stored in ("JPEG", "PNG", ...), from its header: a label image's colours drift
    where it is JPEG. None for a PIL image made in memory (``convert`` of a JPEG's included)."""
    img = _open(source, field)
    if img is source:  # a caller's own image: not ours to close
        return img.format
    with img:
        return img.format


def header_size(source: ImageSource, *, field: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(w, h) as stored (before an EXIF turn, which keeps the pixel count), read from the header alone: what a
    server needs to plan a job's memory before decoding it. Raises InvalidInputError as load_image does for an
    unreadable, zero-size or over-limit image."""
    img = _open(source, field)
    if img is source:  # a caller's own image: not ours to close
        return _checked_size(img, field, max_pixels)
    with img:
        return _checked_size(img, field, max_pixels)


def _checked_size(img: Image.Image, field: str, max_pixels: int) -> tuple[int, int]:
    w, h = img.size
    if w <= 0 or h <= 0:
        raise InvalidInputError(field, f"image has zero size ({w} x {h})")
    if w * h > max_pixels:
        raise InvalidInputError(field, f"image is {w} x {h} = {w * h} pixels, over the limit of {max_pixels}")
    return w, h


def longest_size(w: int, h: int, limit: int | None) -> tuple[int, int]:
    """(w, h) scaled down (never up) so that the longest side is at most ``limit``, aspect kept: the one
    rule for images and for clips scaled while decoding (``adain.media``), so the two agree to the pixel."""
    if limit is None or max(w, h) <= limit:
        return w, h
    scale = limit / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def resize_longest(img: Image.Image, limit: int | None) -> Image.Image:
    """Downscale (never upscale) so that the longest side is at most ``limit``; keeps the aspect ratio."""
    size = longest_size(img.width, img.height, limit)
    return img if size == img.size else img.resize(size, Image.Resampling.LANCZOS)


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB (or L) PIL image -> float32 tensor 1 x C x H x W in [0, 1]."""
    import torch

    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)


def to_image(tensor: torch.Tensor) -> Image.Image:
    """Tensor (1 x) 3 x H x W in [0, 1] -> RGB PIL image (clamped, rounded)."""
    t = tensor.detach().float().squeeze(0).clamp(0, 1).mul(255).round().to("cpu")
    arr = t.byte().permute(1, 2, 0).numpy()
    return Image.fromarray(arr, "RGB")


def encode_image(
    img: Image.Image, fmt: str = "png", quality: int = DEFAULT_QUALITY, exif: bytes | None = None
) -> bytes:
    """Encode to PNG, JPEG or WebP bytes; ``quality`` (1-100) applies to JPEG and WebP; ``exif`` (from
    :func:`adain.photo.exif_to_keep`) is written into any of the three."""
    name = format_name(fmt)
    if name is None:
        raise InvalidInputError("format", f"unsupported output format {fmt!r} (png, jpeg, webp)")
    if not 1 <= quality <= 100:
        raise InvalidInputError("quality", f"must be in [1, 100], got {quality}")
    if why := format_cannot_hold(name, *img.size):
        raise InvalidInputError("format", why)
    buf = io.BytesIO()
    meta = {"exif": exif} if exif else {}
    if name == "jpeg" and exif and len(exif) > 65527:  # a JPEG's EXIF segment holds 64 KB: kept EXIF is a nicety
        meta = {}
    if name == "png":
        img.save(buf, "PNG", compress_level=6, **meta)
    elif name == "jpeg":
        # full-resolution colour (4:4:4): a stylized image's colour changes at every stroke, and halved colour
        # (4:2:0, the encoder's default) smeared it; at any quality 4:4:4 gives 0.5-3 dB more for the same bytes
        # (3 examples at 512 px: q90 36.5 dB in 85 kB, where 4:2:0 gave 32.9 in 62 and 34.4 at q95 in 87)
        img.save(buf, "JPEG", quality=quality, subsampling=0, **meta)
    else:
        img.save(buf, name.upper(), quality=quality, **meta)
    return buf.getvalue()
