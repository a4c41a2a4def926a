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
import math
import mmap
import re
import struct
import threading
import zlib
from collections.abc import Iterator
from itertools import islice
from os import PathLike, fsdecode
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from PIL import Image, ImageFile

from adain.bmff import HEAD_BYTES, nclx_profile
from adain.errors import InvalidInputError, warnings_ignored
from adain.files import bytes_written
from adain.photo import (
    PNG_SIGNATURE,
    allow_pixels,
    avif_deep_pixels,
    converts_code_points,
    grey_key_in_levels,
    heif_deep_pixels,
    heif_missing,
    heif_support,
    png_chunk_limit,
    png_chunks,
    to_srgb,
)
from adain.wire import DEFAULT_QUALITY, INPUT_FORMATS, Limits, format_cannot_hold, format_name, not_an_image

if TYPE_CHECKING:
    import torch


class KeyedImage(NamedTuple):
    """Encoded image bytes whose key (the sha256 hex of the bytes) the caller already knows, such as a
    style registered with the server: its id is its cache key, so its bytes are not hashed again."""

    key: str
    data: bytes


ImageSource = bytes | bytearray | memoryview | str | PathLike | Image.Image | KeyedImage

DEFAULT_MAX_PIXELS = Limits.max_pixels  # 67 MP: a 6000 x 6000 photo is fine, a 50k x 50k bomb is not

# A progressive JPEG's scans are each a pass over the whole image: a small file that repeats one scan
# thousands of times (15 bytes each) held a decode worker for minutes. libjpeg's own progressive script has
# 10 scans, tuned encoders a few more.
MAX_JPEG_SCANS = 100
# Pillow reads a JPEG's segments before the first scan in Python, and what lies between them a byte at a time:
# 8 MiB of 0xFF fill took 4.4 s to open (0.5 us a byte). A camera's JPEG has 10-30 segments (with a 1 MB profile or
# extended XMP a few hundred) and no fill; 4096 segments cost Pillow ~10 ms and 64 KiB of fill ~35 ms.
MAX_JPEG_MARKERS = 4096
MAX_JPEG_FILL = 64 * 1024

# Markers in a JPEG: 0xFF then anything but 0x00 (a stuffed 0xFF in coded data) or 0xFF (fill before a marker);
# within a scan's coded data its restart markers (0xFFD0-D7) do not end it either.
_MARKER = re.compile(rb"\xff[\x01-\xfe]")
_MARKER_IN_SCAN = re.compile(rb"\xff[\x01-\xcf\xd8-\xfe]")
_STANDALONE = frozenset((0x01, *range(0xD0, 0xDA)))  # TEM, RSTn, SOI, EOI: no length follows
_TURNS = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
          5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
          8: Image.Transpose.ROTATE_90}  # EXIF orientation -> the turn that makes the pixels upright
heif_support()  # HEIC/HEIF photos, where pillow-heif is installed


def image_key(source: ImageSource, field: str) -> str:
    """sha256 hex of an image's encoded bytes (of a PIL image's mode, size and pixels): a cache key."""
    if isinstance(source, KeyedImage):
        return source.key
    h = hashlib.sha256()
    if isinstance(source, Image.Image):
        _load_shared(source, field, None)  # (getexif and the pixels below load it: not from two threads at once)
        # what decoding it takes besides the pixels: the palette, a profile, the transparent index, a turn
        # (two palette images of the same indices once shared a key, and the second got the first's colours)
        orientation = source.getexif().get(0x0112, 1) if hasattr(source, "getexif") else 1
        h.update(f"{source.mode}{source.size}{source.info.get('transparency')!r}{orientation}".encode())
        h.update(pixel_bytes(source))  # (a coloured job's content, every call: off the GIL)
        if source.mode in ("P", "PA") and source.palette is not None:
            h.update(source.palette.tobytes())
        h.update(source.info.get("icc_profile") or b"")
        # a HEIF's colours given as code points (no profile): a P3 one and its pixels copied shared a key, and the
        # second got the first's statistics (a pixel-correctness tour's)
        h.update(repr(sorted((source.info.get("nclx_profile") or {}).items())).encode())
    elif isinstance(source, (bytes, bytearray, memoryview)):
        h.update(source)
    elif isinstance(source, (str, PathLike)):
        try:
            with open(_path(source, field), "rb") as f:
                h.update(f.read())
        except OSError as e:
            raise InvalidInputError(field, f"cannot read image file {source}: {e.strerror}") from e
    else:
        raise InvalidInputError(field, not_an_image(source))
    return h.hexdigest()


def _path(source: str | PathLike, field: str) -> Path:
    """A path given as a str or any os.PathLike (os.scandir's entries too); an empty one is refused as such
    (Path("") is ".", and was said to be a folder)."""
    name = fsdecode(source)
    if not name:
        raise InvalidInputError(field, "the path is empty")
    return Path(name)


_SHARED_LOAD = threading.Lock()
_LOAD_FAILED = "_adain_load_failed"  # a caller's image whose load failed carries the error (Pillow forgets it)


def _unloaded(img: Image.Image) -> bool:
    """Whether a file Pillow opened has pixels still to read: tiles left (JPEG, PNG...), or none yet and no pixels
    (WebP's and pillow-heif's readers make their tiles in load(): read as loaded, 7 of 240 calls sharing one WebP
    still raced)."""
    return bool(getattr(img, "tile", None)) or (isinstance(img, ImageFile.ImageFile) and getattr(img, "_im", 0) is None)


def _load_shared(img: Image.Image, field: str, max_pixels: int | None) -> None:
    """A caller's image opened lazily (``Image.open``, its pixels not yet read) is decoded here, once, under a lock:
    Pillow's loading of one image is not thread-safe, and one such image given to calls in several threads (the
    Stylizer is) had one thread's load close the file under another's: "image data is truncated or corrupt: I/O
    operation on closed file" for a good photo, or Pillow's own AssertionError or "broken PNG file" from a style.
    A loaded image, or one made in memory, takes no lock. A load that failed is said again to every later call:
    Pillow leaves such an image looking loaded, half its pixels decoded, and the calls after the first (or waiting
    beside it) stylized those. ``max_pixels``: checked first, where given (not decoded over the limit)."""
    failed = getattr(img, _LOAD_FAILED, None)
    if failed is None and not _unloaded(img):
        return
    if max_pixels is not None:
        _checked_size(img, field, max_pixels)
    with _SHARED_LOAD:
        failed = getattr(img, _LOAD_FAILED, None)
        if failed is not None:
            raise InvalidInputError(field, f"image data is truncated or corrupt: {failed}")
        if not _unloaded(img):  # loaded by another thread while this one waited
            return
        try:
            img.load()
        except MemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - as load_image: the file's fault, said as such
            setattr(img, _LOAD_FAILED, _why(e))
            raise InvalidInputError(field, f"image data is truncated or corrupt: {_why(e)}") from e


def _open(source: ImageSource, field: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    if isinstance(source, Image.Image):
        if type(getattr(source, "_im", None)).__name__ == "DeferredError":  # Pillow's mark of a closed image
            # (its "Operation on closed image" was said as "image data is truncated or corrupt")
            raise InvalidInputError(field, "the PIL image is closed (its close() was called, or its with block "
                                           "ended): pass one still open, or a copy made before")
        _load_shared(source, field, max_pixels)
        return source
    if isinstance(source, KeyedImage):
        source = source.data
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise InvalidInputError(field, "image data is empty")
        data = bytes(source)
        check_layout(data, field)
        fp: io.BytesIO | Path = io.BytesIO(data)
    elif isinstance(source, (str, PathLike)):
        fp = _path(source, field)
        if not fp.exists():
            raise InvalidInputError(field, f"no such image file: {fp}")
        if not fp.is_file():  # a folder, or a device or pipe whose read may never end
            raise InvalidInputError(field, f"{fp} is not a regular file (a folder, a device or a pipe)")
        if fp.stat().st_size == 0:
            raise InvalidInputError(field, f"image file is empty: {fp}")
        _check_file_layout(fp, field)
    else:
        raise InvalidInputError(field, not_an_image(source))
    allow_pixels(max_pixels)
    try:
        with warnings_ignored():  # PIL warns on odd EXIF/TIFF tags; errors still raise
            img = Image.open(fp, formats=input_formats())
        # Read through the open file, never memory-mapped (Pillow maps an uncompressed image opened by name): an
        # uncompressed TIFF turned by its orientation 5-8 was mapped at its turned size, sideways and scrambled,
        # with no error (Pillow 13), where the same file as bytes was right (a pixel-correctness tour's)
        img.filename = ""
        return img
    except Image.UnidentifiedImageError as e:
        head = _head(fp)
        if kind := claimed_format(head):  # a PNG cut after its signature: no plugin took it (cut_short)
            raise InvalidInputError(field, f"cannot read image header: a truncated or corrupt {kind} file") from e
        why = heif_missing(head) or f"not a decodable image (supported: {', '.join(INPUT_FORMATS)})"
        raise InvalidInputError(field, why) from e
    except Image.DecompressionBombError as e:  # over twice our own limit: Pillow's guard, raised to it, says first
        if size := _declared_size(fp):  # (with a count only: the sides are what a caller can act on)
            raise InvalidInputError(field, _over_limit(*size, max_pixels)) from e
        pixels = re.search(r"\((\d+) pixels\)", str(e))
        raise InvalidInputError(field, f"image is {pixels[1] + ' pixels, over' if pixels else 'over'} the limit of "
                                f"max_pixels={max_pixels}") from e
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - any header a plugin cannot parse is the file's fault, not ours: a
        # RuntimeError (an AVIF whose primary item is missing, HEIF's security limits) was answered INTERNAL
        said = _why(e)
        if (kind := claimed_format(_head(fp))) and cut_short(e):  # (a cut WebP: "could not create decoder object")
            said = f"a truncated or corrupt {kind} file ({said})"
        raise InvalidInputError(field, f"cannot read image header: {said}") from e


def _declared_size(fp: io.BytesIO | Path) -> tuple[int, int] | None:
    """The sides a header declares, read by the plugin that takes it, without Image.open's pixel guard (which
    raised before the size could be asked); None where no plugin reads it."""
    for fmt in _taking(_head(fp)):
        try:
            with warnings_ignored(), (fp.open("rb") if isinstance(fp, Path) else io.BytesIO(fp.getvalue())) as f:
                return Image.OPEN[fmt][0](f, "").size
        except Exception:  # noqa: BLE001, S112 - a plugin that cannot read it: the next one may
            continue
    return None


def _over_limit(w: int, h: int, max_pixels: int) -> str:
    return f"image is {w} x {h} = {w * h} pixels, over the limit of max_pixels={max_pixels}"


def _why(e: Exception) -> str:
    return str(e) or type(e).__name__


def _head(fp: io.BytesIO | Path) -> bytes:
    if isinstance(fp, io.BytesIO):
        return fp.getvalue()[:16]
    try:
        with fp.open("rb") as f:
            return f.read(16)
    except OSError:
        return b""


_FORMAT_NAMES = {"WEBP": "WebP", "HEIF": "HEIF/HEIC"}  # Pillow's format ids, as people write them


def cut_short(e: BaseException) -> bool:
    """Whether an error while opening a file whose signature names a format is what a file cut short gives: no
    plugin took it, or its plugin ran out of bytes (not a variant it does not read, such as a BMP with JPEG
    compression, which says so itself)."""
    text = str(e).lower()
    return isinstance(e, (EOFError, struct.error, Image.UnidentifiedImageError)) or any(
        w in text for w in ("truncated", "could not create decoder", "not enough data", "premature end"))


def claimed_format(head: bytes) -> str | None:
    """The input format whose signature ``head`` (a file's first 16 bytes) has, by Pillow's own test, as a reader
    would call it ("WebP"), or None: what a file that fails to open meant to be."""
    fmt = next(_taking(head), None)
    return _FORMAT_NAMES.get(fmt, fmt) if fmt else None


def _taking(head: bytes) -> Iterator[str]:
    """The input formats (Pillow's ids) whose plugin's signature test takes ``head``, in Pillow's order."""
    for fmt in input_formats():
        accept = Image.OPEN[fmt][1]
        try:
            if accept is not None and accept(head):
                yield fmt
        except Exception:  # noqa: BLE001, S112 - a plugin's test that cannot read 16 bytes: not that format
            continue


def _check_file_layout(path: Path, field: str) -> None:
    """:func:`check_layout` of a file, mapped (a walk of a PNG's chunks reads only their headers)."""
    try:
        with open(path, "rb") as f:
            view = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):  # gone, unreadable or empty since it was checked: Image.open says so
        return
    with view:
        check_layout(view, field)


def check_layout(data: bytes | mmap.mmap, field: str) -> None:
    """Refuse, before Pillow opens it, a JPEG or PNG whose header Pillow would spend seconds parsing in Python, or a
    JPEG whose scans would hold a decode worker for minutes (its segments walked once, here: the scans were walked
    again from the start at decode time, and a path read whole into memory for it)."""
    if data[:3] == b"\xff\xd8\xff":
        layout = _jpeg_layout(data)
        if layout.fill > MAX_JPEG_FILL:
            raise InvalidInputError(field, f"JPEG with {layout.fill} bytes of fill or junk between its segments (over "
                                    f"{MAX_JPEG_FILL}), which no camera or editor writes; save it again")
        if layout.scans > MAX_JPEG_SCANS:
            at_least = "at least " if layout.markers > MAX_JPEG_MARKERS else ""
            raise InvalidInputError(field, f"JPEG with {at_least}{layout.scans} scans, over the limit of "
                                    f"{MAX_JPEG_SCANS} (a progressive JPEG has about 10; save it again)")
        if layout.markers > MAX_JPEG_MARKERS:
            where = "" if layout.scans else " before its image data"
            raise InvalidInputError(field, f"JPEG with over {MAX_JPEG_MARKERS} markers{where}, which no camera or "
                                    "editor writes; save it again")
    elif data[:8] == PNG_SIGNATURE:
        limit = png_chunk_limit(len(data))
        if sum(1 for _ in islice(png_chunks(data), limit + 1)) > limit:
            raise InvalidInputError(field, f"PNG of over {limit} chunks ({len(data)} bytes), which no camera or "
                                    "editor writes; save it again")


class JpegLayout(NamedTuple):
    scans: int  # start-of-scan markers
    markers: int  # markers walked (past MAX_JPEG_MARKERS: the walk stopped there)
    fill: int  # bytes between segments before the first scan (0xFF fill, junk)


def _jpeg_layout(data: bytes | mmap.mmap) -> JpegLayout:
    """Walk a JPEG's segments, each skipped by its length (an EXIF thumbnail's own scans and end lie inside one)
    and a scan's coded data to the next marker, up to its first end-of-image marker: a motion photo (Pixel,
    Samsung) has a video after it, whose bytes held 0xFFDA by chance often enough to refuse the photo as a scan
    bomb. At most MAX_JPEG_MARKERS steps in Python; the coded data is searched by :func:`_next_in_scan`."""
    scans = markers = fill = 0
    at = 2  # after the start-of-image marker
    pixels = np.frombuffer(data, np.uint8)
    try:
        while markers <= MAX_JPEG_MARKERS and fill <= MAX_JPEG_FILL:
            if scans:
                start = _next_in_scan(data, pixels, at)
            else:
                found = _MARKER.search(data, at)
                start = found.start() if found else -1
            if start < 0:
                break
            if not scans:
                fill += start - at
            markers += 1
            kind, at = data[start + 1], start + 2
            if kind == 0xD9 and scans:  # end of image (before any scan Pillow reads on, and so do we)
                break
            if kind in _STANDALONE:
                continue
            at += int.from_bytes(data[at:at + 2], "big")  # the length counts itself, not the marker
            if kind == 0xDA:
                scans += 1
    except BaseException as e:  # (the search's frames, kept by a traceback, hold views of a mapped file: its close
        raise e.with_traceback(None)  # noqa: B904 - would fail ("cannot close exported pointers exist") in its place)
    finally:
        del pixels  # (a mapped file's view: mmap cannot close while an array holds it)
    return JpegLayout(scans, markers, fill)


SCAN_NEAR = 256  # bytes searched by the regular expression first: markers close together (a table's, a scan's)
SCAN_CHUNK = 1 << 20  # then numpy's chunks, 4 KiB first, 4x larger each time up to this (its arrays' memory)


def _next_in_scan(data: bytes | mmap.mmap, pixels: np.ndarray, at: int) -> int:
    """Where the first marker at or after ``at`` in a scan's coded data is (``_MARKER_IN_SCAN``: 0xFF and a byte
    that is not 0x00, stuffing, 0xD0-0xD7, a restart, nor 0xFF, fill), or -1. Near ``at`` by the regular
    expression, then by numpy (``pixels``: ``data`` as uint8): a regular expression held the GIL for the whole
    search, which runs to the end of a scan's data (2-3 ms in one piece a 4-MB photo: a server's other threads
    waited), where numpy lets go of it; markers close together cost numpy a chunk each (25x the regex's time)."""
    near = _MARKER_IN_SCAN.search(data, at, at + SCAN_NEAR + 1)
    if near:
        return near.start()
    at, size, last = at + SCAN_NEAR, 4096, len(pixels) - 1
    while at < last:
        end = min(last, at + size)
        after = pixels[at + 1 : end + 1]
        hit = (pixels[at:end] == 0xFF) & (after != 0) & (after != 0xFF) & ((after < 0xD0) | (after > 0xD7))
        first = int(hit.argmax())
        if hit[first]:
            return at + first
        at, size = end, min(size * 4, SCAN_CHUNK)
    return -1


def stored_bytes(source: ImageSource, limit: int = -1) -> bytes | None:
    """The bytes an image is stored as (the first ``limit`` of them); None for a PIL image."""
    if isinstance(source, KeyedImage):
        source = source.data
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source if limit < 0 else memoryview(source).cast("B")[:limit])
    if isinstance(source, (str, PathLike)):
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


_WIDE_GREYS = ("I;16", "I;16B", "I;16L", "I;16N", "I")


CUTOUT_SPREAD = 8  # channel levels apart: a visible pixel this coloured is no grey paint (see _cutout_alpha)


def _to_rgb(
    img: Image.Image, background: tuple[int, int, int] = (255, 255, 255), *, numbers: bool = False
) -> Image.Image:
    """Any mode to 8-bit RGB: 16-bit and float scaled down, CMYK converted, alpha onto ``background``.
    ``numbers``: 16- and 32-bit values up to 255 are kept as they are (a label image's labels 3 and 7 in a
    16-bit PNG read as 0), not scaled from 65535."""
    img = _levels(img, numbers=numbers)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        rgba = (img.convert("LA") if img.mode == "La" else img).convert("RGBA")  # (Pillow has no La -> RGBA)
        under = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(under, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def _levels(img: Image.Image, *, numbers: bool) -> Image.Image:
    """A 16-bit, 32-bit or float image as 8-bit "L" (see :func:`_to_rgb`); any other as it is."""
    # float32 and in place: float64 and its temporaries took 1.47 GB for a 140 kB 16-bit PNG
    arr = None
    if img.mode in _WIDE_GREYS:
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
    if arr is None:
        return img
    arr += 0.5
    np.clip(arr, 0, 255, out=arr)
    return Image.fromarray(arr.astype(np.uint8), "L")


def _key_as_alpha(img: Image.Image, *, numbers: bool) -> Image.Image:
    """An image with a colour key (a PNG's tRNS on a grey, RGB or 16-bit image: the one value that is transparent)
    with an alpha channel instead, so that its transparent pixels go the way an RGBA image's do (white in a photo,
    nothing covered in a mask): the key was ignored, and a logo's keyed background kept its stored colour."""
    key = img.info.get("transparency")
    if img.mode == "RGB" and isinstance(key, tuple) and len(key) == 3:
        return img.convert("RGBA")
    if img.mode in ("1", "L") and isinstance(key, int):
        return img.convert("LA")
    if img.mode in _WIDE_GREYS and isinstance(key, int):
        # from the stored values: Pillow's convert compares the key with them clipped to 8 bits (a key of 300 made
        # no pixel transparent) and clips the levels too
        alpha = Image.fromarray(np.where(np.asarray(img) == key, 0, 255).astype(np.uint8), "L")
        keyed = Image.merge("LA", (_levels(img, numbers=numbers), alpha))
        keyed.info = {k: v for k, v in img.info.items() if k != "transparency"}  # its profile still applies
        return keyed
    return img


def _upright(img: Image.Image) -> Image.Image:
    """``img`` turned as its EXIF orientation says. Not ImageOps.exif_transpose: it writes the EXIF again without
    the tag, which failed for a photo that decodes fine where another tag is odd (ImageLength or XResolution
    stored as text: struct.error, TypeError). The turned image has no EXIF or XMP left (an orientation decoding it
    again would apply twice); what an output keeps is read from the file (``adain.photo.exif_to_keep``)."""
    orientation = img.getexif().get(0x0112)
    turn = _TURNS.get(orientation) if isinstance(orientation, int) else None
    if turn is None:
        return img
    out = img.transpose(turn)
    for key in ("exif", "Raw profile type exif", "XML:com.adobe.xmp", "xmp"):
        out.info.pop(key, None)
    return out


def load_image(
    source: ImageSource, *, field: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS, mode: str = "RGB",
    longest: int | None = None,
) -> Image.Image:
    """Decode ``source`` to an upright 8-bit image in ``mode``: "RGB" (a photo, in sRGB whatever profile
    it carries), "L" (a mask) or "raw" (RGB as stored, no colour conversion: a label image).

    ``longest``: the longest side the caller downscales the image to next (``resize_longest``). A JPEG at least
    ``2 * DRAFT_GAP`` times larger is decoded at a smaller DCT scale (1/2, 1/4 or 1/8: libjpeg's scaled decode,
    Pillow's ``draft``) that keeps at least ``DRAFT_GAP`` times that side, then downscaled to it here: it comes
    back at the size ``resize_longest`` gives from the stored size, to the pixel, not at its full size, which is
    why a caller that must know that (a mask must match it) leaves ``longest`` out. ``max_pixels`` still counts
    the stored pixels. A caller's own PIL image is decoded whole (a draft would change it).

    Raises InvalidInputError for empty, undecodable, truncated, zero-size or over-limit images.
    """
    img = _open(source, field, max_pixels)
    w, h = _checked_size(img, field, max_pixels)
    drafted = None  # the size a whole decode downscaled to ``longest`` has, where a JPEG is decoded smaller
    if (longest and img is not source and img.format in ("JPEG", "MPO") and mode == "RGB"  # (a caller's own image
            and max(w, h) >= 2 * DRAFT_GAP * longest):  # is not changed: draft works in place)
        keep = DRAFT_GAP * longest / max(w, h)
        img.draft(None, (math.ceil(w * keep), math.ceil(h * keep)))
        drafted = longest_size(w, h, longest)
    if img.format == "AVIF" and mode == "RGB" and not {"nclx_profile", "icc_profile"} & img.info.keys():
        # Pillow leaves the code points unread (an ICC profile comes first anyway)
        nclx = nclx_profile(stored_bytes(source, HEAD_BYTES) or b"")
        if nclx:
            img.info["nclx_profile"] = nclx
    grey_key_in_levels(img)
    img, rgb48 = _at_depth(img, source) if mode == "RGB" else (img, None)
    try:
        img.load()
        if drafted is not None and img.size != drafted:  # the DCT scale's sides are rounded up: not in proportion,
            img = img.resize(drafted, Image.Resampling.LANCZOS)  # so to the whole decode's size here, to the pixel
        upright = _upright(img)
        if upright is not img:  # turned by its EXIF (pillow-heif turns a HEIF itself: not met); deep pixels are not
            rgb48 = None
        img = upright
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - a decoder's failure on hostile data is the file's fault, not ours:
        # an AVIF's or HEIF's garbled data (RuntimeError, EOFError) was answered INTERNAL
        raise InvalidInputError(field, f"image data is truncated or corrupt: {_why(e)}") from e
    img = _key_as_alpha(img, numbers=mode != "RGB")
    # A mask's or label image's transparent pixels are black (no coverage; label 0), as a mask painted on a
    # transparent layer means; a photo's are white, as it would look on a white page.
    if mode == "L":
        if img.mode in ("L", "RGB", "CMYK", "1"):
            out = img.convert("L")
        elif (alpha := _cutout_alpha(img)) is not None:
            out = alpha
        else:
            out = _to_rgb(img, (0, 0, 0), numbers=True).convert("L")  # a 16-bit mask of 0s and 1s: numbers
    else:
        out = _to_rgb(img, (0, 0, 0), numbers=True) if mode == "raw" else to_srgb(img, _to_rgb, rgb48)
    return out.copy() if out is source else out  # a caller's PIL image is never handed back to be changed


def stored_rgba(
    source: ImageSource, *, field: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray | None:
    """An image with transparency as stored, upright, H x W x 4 uint8, its colours not composited (a label
    layer's half-opaque red is red); None where it has no alpha. For a source :func:`load_image` has checked."""
    img = _open(source, field, max_pixels)
    if img.mode not in ("RGBA", "RGBa", "LA", "La", "PA") and "transparency" not in img.info:
        return None
    grey_key_in_levels(img)
    img.load()
    img = _key_as_alpha(_upright(img), numbers=True)
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode not in ("RGBA", "RGBa", "LA", "La", "PA"):
        return None
    return np.asarray((img.convert("LA") if img.mode == "La" else img).convert("RGBA"), dtype=np.uint8)


def _at_depth(img: Image.Image, source: ImageSource) -> tuple[Image.Image, np.ndarray | None]:
    """A HEIF or AVIF photo whose code points ask for a conversion (an HDR curve, wide primaries), decoded once
    more at its stored depth (:func:`adain.photo.heif_deep_pixels`, :func:`adain.photo.avif_deep_pixels`): its
    8-bit image (for everything but the colours) and its 16-bit pixels; else ``img`` as it is, and None."""
    nclx = img.info.get("nclx_profile")
    if (img.format not in ("HEIF", "AVIF") or img.mode != "RGB" or "icc_profile" in img.info
            or not converts_code_points(nclx)):
        return img, None
    if img.format == "HEIF":
        rgb48 = heif_deep_pixels(stored_bytes(source), img.size)
    else:
        rgb48 = avif_deep_pixels(stored_bytes(source), img.size, nclx)
    if rgb48 is None:
        return img, None
    shallow = Image.fromarray((rgb48 >> 8).astype(np.uint8), "RGB")
    shallow.info = dict(img.info)  # its EXIF, its code points
    img.close()  # (ours: a caller's own image has no bytes to read again, so never gets here)
    return shallow, rgb48


def _cutout_alpha(img: Image.Image) -> Image.Image | None:
    """A mask given as a cutout (a photo's subject on a transparent background, as background removers save
    it): its alpha channel, "L". Read as paint on a transparent layer (brightness times alpha), the subject's
    dark parts (hair, a dark coat) got a fraction of the style. Told from paint by colour: a mask's levels are
    grey, so a visible pixel with colour (over 1% of them, channels over ``CUTOUT_SPREAD`` apart) means the
    alpha is the mask; grey paint on a transparent layer stays brightness times alpha. None where it is not one."""
    if img.mode not in ("RGBA", "RGBa", "P", "PA"):
        return None
    rgba = img if img.mode == "RGBA" else img.convert("RGBA")
    alpha = rgba.getchannel("A")
    if alpha.getextrema()[0] == 255:  # opaque throughout: a plain mask, read by its brightness
        return None
    # colour judged on at most ~1 MP of pixels (nearest): a 48-MP cutout took 549 MB in arrays, now 61
    step = max(1, math.isqrt(rgba.width * rgba.height // 1_000_000))
    sample = np.asarray(rgba.resize((max(1, rgba.width // step), max(1, rgba.height // step)),
                                    Image.Resampling.NEAREST) if step > 1 else rgba)
    rgb = sample[..., :3][sample[..., 3] > 0]
    spread = rgb.max(axis=1).astype(np.int16) - rgb.min(axis=1)
    return alpha if np.count_nonzero(spread > CUTOUT_SPREAD) > 0.01 * max(len(rgb), 1) else None


def stored_format(source: ImageSource, *, field: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS) -> str | None:
    """The format the image is stored in ("JPEG", "PNG", ...), from its header: a label image's colours drift
    where it is JPEG. None for a PIL image made in memory (``convert`` of a JPEG's included)."""
    img = _open(source, field, max_pixels)
    if img is source:  # a caller's own image: not ours to close
        return img.format
    with img:
        return img.format


def header_size(source: ImageSource, *, field: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(w, h) as stored (before an EXIF turn, which keeps the pixel count), read from the header alone: what a
    server needs to plan a job's memory before decoding it. Raises InvalidInputError as load_image does for an
    unreadable, zero-size or over-limit image."""
    img = _open(source, field, max_pixels)
    if img is source:  # a caller's own image: not ours to close
        return _checked_size(img, field, max_pixels)
    with img:
        return _checked_size(img, field, max_pixels)


def _checked_size(img: Image.Image, field: str, max_pixels: int) -> tuple[int, int]:
    w, h = img.size
    if w <= 0 or h <= 0:
        raise InvalidInputError(field, f"image has zero size ({w} x {h})")
    if w * h > max_pixels:
        raise InvalidInputError(field, _over_limit(w, h, max_pixels))
    return w, h


REDUCING_GAP = 8.0  # a downscale by 16x or more is done in two steps; below it, by Lanczos alone (as always)
# load_image(longest=...): a JPEG decoded at a DCT scale keeps at least twice the side asked for, so that Lanczos
# does the last 2x or more (Pillow's thumbnail does the same). A 10-MP photo to 512 px: decode and resize 251 -> 101
# ms (AMX Xeon), 56 dB from the full decode's pixels; at worst (noise, a fine grating) 45-48 dB, max 3-5 levels,
# where keeping 1x (4.2x faster) fell to 32-39 dB.
DRAFT_GAP = 2.0


def longest_size(w: int, h: int, limit: int | None) -> tuple[int, int]:
    """(w, h) scaled down (never up) so that the longest side is at most ``limit``, aspect kept: the one
    rule for images and for clips scaled while decoding (``adain.media``), so the two agree to the pixel."""
    if limit is None or max(w, h) <= limit:
        return w, h
    scale = limit / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def resize_longest(img: Image.Image, limit: int | None) -> Image.Image:
    """Downscale (never upscale) so that the longest side is at most ``limit``; keeps the aspect ratio. Past 16x
    smaller, by whole factors first (Pillow's ``reducing_gap``): Lanczos alone holds a coefficient a source
    pixel an output pixel along each side, and a 1 x 60,000,000 PNG (within max_pixels) was a MemoryError."""
    size = longest_size(img.width, img.height, limit)
    return img if size == img.size else img.resize(size, Image.Resampling.LANCZOS, reducing_gap=REDUCING_GAP)


PPM_MODES = ("RGB", "L")  # the modes whose bytes Pillow's PPM writer writes as ``tobytes`` gives them


def pixel_bytes(img: Image.Image) -> bytes | memoryview:
    """``img.tobytes()``, copied off the GIL for RGB and L images (a writable buffer): by Pillow's PPM writer into an
    in-memory file (``bytes_written``), during which Pillow lets go of it, where ``tobytes`` held it for the whole
    copy, 0.3-0.4 ms in one piece a 512-px image and ~1 ms at 1024 (AMX Xeon): serial work beside a server's event
    loop, render thread and other preparing threads. The same bytes."""
    if img.mode not in PPM_MODES or not (img.width and img.height):  # (Pillow writes no empty image)
        return img.tobytes()
    data = bytes_written(lambda f: img.save(f, "PPM"), writable=True)  # a header, then the H x W x C bytes
    return memoryview(data)[len(data) - img.width * img.height * len(img.mode):]


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB (or L) PIL image -> float32 tensor 1 x C x H x W in [0, 1] (channels last in memory), its pixels copied
    out of Pillow off the GIL (:func:`pixel_bytes`; ``np.asarray(img)`` held it)."""
    import torch

    if img.mode in PPM_MODES:
        pixels = np.frombuffer(pixel_bytes(img), np.uint8).reshape(1, img.height, img.width, len(img.mode))
        return torch.from_numpy(pixels).to(torch.float32).div_(255.0).permute(0, 3, 1, 2)
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)


def to_image(tensor: torch.Tensor) -> Image.Image:
    """Tensor (1 x) 3 x H x W in [0, 1] -> RGB PIL image (clamped, rounded). The bytes and their H x W x 3 order
    are made where the tensor is: on a GPU the host then copies a quarter of the float image and does no
    arithmetic (a server's batcher thread converts every image of a batch in turn: on an H200's host that was
    serial work of milliseconds an image beside a render of ~3 ms an image); on a CPU it is a little faster too
    (3.0 against 4.0 ms a 512-px image here, the same bytes)."""
    import torch

    t = tensor.detach().float().squeeze(0).clamp(0, 1).mul(255).round().to(torch.uint8)
    return Image.fromarray(t.permute(1, 2, 0).contiguous().cpu().numpy(), "RGB")


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
    meta = {"exif": exif} if exif else {}
    if name == "jpeg" and exif and len(exif) > 65527:  # a JPEG's EXIF segment holds 64 KB: kept EXIF is a nicety
        meta = {}
    if name == "jpeg":
        # full-resolution colour (4:4:4): a stylized image's colour changes at every stroke, and halved colour
        # (4:2:0, the encoder's default) smeared it; at any quality 4:4:4 gives 0.5-3 dB more for the same bytes
        # (3 examples at 512 px: q90 36.5 dB in 85 kB, where 4:2:0 gave 32.9 in 62 and 34.4 at q95 in 87).
        # Into a file with a descriptor: Pillow's JPEG encoder holds the GIL otherwise (adain.files.bytes_written)
        return bytes_written(lambda f: img.save(f, "JPEG", quality=quality, subsampling=0, **meta))
    buf = io.BytesIO()
    if name == "png":
        # zlib's fastest level: half the time of level 6 for 8-9% more bytes (stylized 512-px images, 23-33 ms
        # against 45-78 here); on a GPU server the PNG encode was the work (96 of a call's 135 ms on an H200's
        # host), and a small file is what JPEG and WebP are for. Run-length matching only (Z_RLE): a stylized
        # image's strokes rarely repeat exactly, so zlib's search for longer matches costs and gains nothing
        # (11 eval photos stylized at 512 px, AMD EPYC: 14.3 ms against 18.8 a 512-px image, 8% fewer bytes)
        img.save(buf, "PNG", compress_level=1, compress_type=zlib.Z_RLE, **meta)
    else:
        img.save(buf, name.upper(), quality=quality, **meta)
    return buf.getvalue()
