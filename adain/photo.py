"""Photos as phones and cameras write them: HEIC/HEIF and AVIF files, and colours in their own profile.

An iPhone saves HEIC by default and tags its photos Display P3; cameras and editors write Adobe RGB or
CMYK with an embedded ICC profile. Decoding those pixels as if they were sRGB (what a plain decode does)
gives dull or shifted colours at every alpha, and most visibly where the photo is meant to come back
(alpha 0, regions left unstyled, colour preservation). So a decoded photo is converted from its profile
to sRGB, the space the network and every output are in. Masks and label images are data, not colours:
they are never converted (a label's exact colour is its name).

AVIF is read by Pillow itself (11.3 and later); HEIC/HEIF needs ``pillow-heif`` (``pip install
'adain[heif]'``), an opt-in extra because its binary wheels bundle the x265 encoder and are GPLv2.
Without it a HEIF file is refused with a message that says so. Pillow only (and PyAV, where installed, for
an HDR or wide-gamut AVIF's pixels at their stored depth): the web front end uses this module too, without torch.
"""

from __future__ import annotations

import hashlib
import io
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from functools import cache
from itertools import islice
from typing import TYPE_CHECKING, TypeGuard, cast

from PIL import Image, ImageCms, ImageFile

from adain.errors import install_hint

if TYPE_CHECKING:
    import mmap

    import numpy as np

HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1")  # ISO-BMFF 'ftyp'


EXIF_GPS_IFD = 0x8825
EXIF_ORIENTATION = 0x0112
EXIF_IFD = 0x8769
EXIF_PIXEL_SIZE = (0xA002, 0xA003)  # PixelXDimension, PixelYDimension: the original's, not the output's
# ColorSpace (1: sRGB) and the interoperability IFD (its "R03" index: Adobe RGB): an Adobe RGB camera's 0xFFFF and
# "R03" were kept, and a viewer that reads them showed the output, sRGB without a profile, as Adobe RGB (oversaturated)
EXIF_COLOR_SPACE, EXIF_INTEROP_IFD = 0xA001, 0xA005
# A JPEG's EXIF segment holds 64 KB; a camera's maker note (its private data) is what makes EXIF larger
EXIF_JPEG_MAX = 65527
EXIF_LARGE = (0x927C, 0x9286)  # MakerNote, UserComment
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Pillow reads a PNG's chunks one by one in Python (~3.7 us each): 300,000 empty ones took 1.1 s to open, as many
# 0-byte IDATs or chunks after the pixels 1 s to load. A PNG may have 10,000 and one more per 4 KiB (libpng writes
# 8 KiB IDATs: a 100 MB PNG has 12,800).
MAX_PNG_CHUNKS, PNG_BYTES_PER_CHUNK = 10_000, 4096
# IFD0 tags that describe how a TIFF stores its pixels (size, strips, samples, compression, palette, tiles) and
# its ICC profile: the original file's layout, wrong in any other file (a TIFF written with them is unreadable)
LAYOUT_TAGS = (0x0100, 0x0101, 0x0102, 0x0103, 0x0106, 0x0111, 0x0115, 0x0116, 0x0117, 0x011C, 0x013D, 0x0140,
               0x0142, 0x0143, 0x0144, 0x0145, 0x0152, 0x0153, 0x0154, 0x0155, 0x0201, 0x0202, 0x0211, 0x0212,
               0x8773,
               # and an editor's resources a TIFF keeps there (Photoshop's, its layers, XMP, IPTC): up to megabytes,
               # past the 64 KB a JPEG's EXIF may take
               0x8649, 0x935C, 0x02BC, 0x83BB)


def without_layout(exif: Image.Exif) -> Image.Exif:
    """``exif`` without the original file's layout tags (LAYOUT_TAGS): what describes the photo, not its file."""
    for tag in LAYOUT_TAGS:
        exif.pop(tag, None)
    return exif


def grey_key_in_levels(img: Image.Image) -> None:
    """A 2- or 4-bit grey PNG's colour key (its one transparent level) in the levels Pillow reads (before
    ``load``, while its raw mode says the bit depth): Pillow scales the pixels to 0-255 but keeps the key as
    stored, so a 2-bit image's key 1 (read 85) matched no pixel, and its transparent pixels were grey. A 1-bit
    one's key is scaled by Pillow itself. (Here, without numpy: the thin client sends a caller's PIL image.)"""
    key = img.info.get("transparency")
    # (only a file Pillow opened has tiles, and the format of one)
    if img.format != "PNG" or img.mode != "L" or not isinstance(key, int) or not isinstance(img, ImageFile.ImageFile) \
            or not img.tile:
        return
    args = img.tile[0].args
    raw = args if isinstance(args, str) else args[0] if isinstance(args, tuple) and args else ""
    bits = 2 if raw.startswith("L;2") else 4 if raw.startswith("L;4") else 8
    if bits < 8 and 0 <= key < 2**bits:  # a stored level (one scaled already, by us or a later Pillow, is over it)
        img.info["transparency"] = key * (255 // (2**bits - 1))  # (a caller's unloaded image: as loading it would)


def exif_to_keep(data: bytes) -> bytes | None:
    """The EXIF of an encoded photo to write into its stylized copy (None: it has none, or it cannot be
    read): the date, camera and exposure stay; the GPS location goes (a stylized photo is often shared where
    the original is not); the orientation is upright (decoding applied it); the pixel size, the original
    file's layout and its ICC profile (the output is sRGB, untagged) are dropped."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            exif = _exif_of(img, data)
            if not exif:
                return None
            sub = exif.get_ifd(EXIF_IFD)  # loaded now, so that tobytes writes it
            for tag in EXIF_PIXEL_SIZE:
                sub.pop(tag, None)
            if EXIF_COLOR_SPACE in sub:
                sub[EXIF_COLOR_SPACE] = 1  # sRGB: what the output is, whatever the original was
            sub.pop(EXIF_INTEROP_IFD, None)
            exif.pop(EXIF_INTEROP_IFD, None)
            exif.pop(EXIF_GPS_IFD, None)
            without_layout(exif)  # a TIFF's strips and size, a JPEG's stale IFD0 size, a profile not the output's
            if EXIF_ORIENTATION in exif:
                exif[EXIF_ORIENTATION] = 1
            kept = exif.tobytes()
            if len(kept) > EXIF_JPEG_MAX:  # the date and camera kept without it: a JPEG's was dropped whole
                for tag in EXIF_LARGE:
                    sub.pop(tag, None)
                kept = exif.tobytes()
            return kept
    except Exception:  # noqa: BLE001 - metadata is a nicety: an odd block never fails the image
        return None


def _exif_of(img: Image.Image, data: bytes) -> Image.Exif:
    """``img.getexif()``, without decoding a PNG: Pillow's decodes the whole image to look for an eXIf chunk
    after the pixels where none comes before them (54 ms at 3 MP, for most PNGs, which have none). The chunk is
    looked for here instead; the rest (a raw profile in text, XMP's orientation) is Pillow's own reading."""
    if img.format == "PNG" and "exif" not in img.info:
        limit = png_chunk_limit(len(data))
        found = next((data[at:at + n] for kind, at, n in islice(png_chunks(data), limit) if kind == b"eXIf"), None)
        if found is not None:
            img.info["exif"] = b"Exif\x00\x00" + found  # as Pillow stores it
        return Image.Image.getexif(img)  # the base class's: it reads the info, never the pixels
    return img.getexif()


def png_chunks(data: bytes | mmap.mmap) -> Iterator[tuple[bytes, int, int]]:
    """(type, offset of its data, length) of each chunk of a PNG's bytes, through IEND or as far as they go."""
    at = len(PNG_SIGNATURE)
    while at + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, at)
        yield kind, at + 8, length
        if kind == b"IEND":
            return
        at += 12 + length


def png_chunk_limit(size: int) -> int:
    """How many chunks a PNG of ``size`` bytes may have (see MAX_PNG_CHUNKS)."""
    return MAX_PNG_CHUNKS + size // PNG_BYTES_PER_CHUNK


@cache
def heif_support() -> bool:
    """Register pillow-heif's HEIF opener once, if it is installed; whether HEIF files can be read."""
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return False
    register_heif_opener()
    return True


def is_heif(head: bytes) -> bool:
    """Whether a file's first 12 bytes are those of a HEIF image (an ISO-BMFF file of a HEIF brand)."""
    return head[4:8] == b"ftyp" and head[8:12] in HEIF_BRANDS


def heif_missing(head: bytes) -> str | None:
    """For a file Pillow could not identify: a message when it is a HEIF image and pillow-heif is absent."""
    if is_heif(head) and not heif_support():
        return (f"a HEIC/HEIF image: reading it needs pillow-heif on the server (the 'heif' extra: "
                f"{install_hint('heif')})")
    return None


@cache
def _srgb() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


_PIXELS_LOCK = threading.Lock()


def allow_pixels(max_pixels: int) -> None:
    """Let Pillow open what our own limit allows (checked with our message once the header is read): its guard, a
    DecompressionBombError past twice Image.MAX_IMAGE_PIXELS (179 MP by default), refused a 16K print (268 MP) that
    a server's --max-pixels allowed. Raised to our limit, never lowered and never to None (set once at import, that
    took the guard away from any application that imported this module)."""
    if Image.MAX_IMAGE_PIXELS is None or Image.MAX_IMAGE_PIXELS >= max_pixels:
        return
    with _PIXELS_LOCK:  # two limits raised at once: the lower may not win
        if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels:
            Image.MAX_IMAGE_PIXELS = max_pixels


_SPACE_MODES = {"RGB": "RGB", "GRAY": "L", "CMYK": "CMYK"}  # an ICC colour space -> the PIL mode it describes
SRGB_TOLERANCE = 6  # levels
_GREY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
# Colours an sRGB profile leaves where they are (within a level) and any other moves: greys (a curve other than
# sRGB's: a linear one), primaries and a skin tone (other primaries)
_PROBE = ((0, 0, 0), (255, 255, 255), (64, 64, 64), (128, 128, 128), (192, 192, 192), (255, 0, 0), (0, 255, 0),
          (0, 0, 255), (200, 100, 50))


_SRGB_SEEN: OrderedDict[bytes, bool] = OrderedDict()  # a profile's sha256 -> whether it is sRGB; the last 64
_SRGB_LOCK = threading.Lock()


def _is_srgb(icc: bytes) -> bool:
    """:func:`_probe_srgb`, remembered by the profile's digest (the bytes themselves as keys would hold up to 64
    profiles of up to the message limit each)."""
    key = hashlib.sha256(icc).digest()
    with _SRGB_LOCK:
        if key in _SRGB_SEEN:
            _SRGB_SEEN.move_to_end(key)
            return _SRGB_SEEN[key]
    found = _probe_srgb(icc)
    with _SRGB_LOCK:
        _SRGB_SEEN[key] = found
        while len(_SRGB_SEEN) > 64:
            _SRGB_SEEN.popitem(last=False)
    return found


def _probe_srgb(icc: bytes) -> bool:
    """Whether an RGB profile is sRGB in effect, by what it does to a few colours, not by its name (GIMP's
    "Linear sRGB" was taken as sRGB: its photos came out 43 levels dark): none moves more than SRGB_TOLERANCE
    levels (a gamma-2.2 "sRGB" moves darks by 4-5; Display P3 a skin tone by 16, a linear profile greys by 73)."""
    try:
        probe = Image.frombytes("RGB", (len(_PROBE), 1), bytes(v for rgb in _PROBE for v in rgb))
        out = ImageCms.profileToProfile(probe, ImageCms.ImageCmsProfile(io.BytesIO(icc)), _srgb(), outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return False
    assert out is not None  # (None only inPlace)
    return max(abs(a - b) for a, b in zip(probe.tobytes(), out.tobytes())) <= SRGB_TOLERANCE


HDR_TRANSFERS = (16, 18)  # ISO/IEC 23091-2 transfer_characteristics: PQ, HLG


def converts_code_points(nclx: object) -> TypeGuard[dict]:
    """Whether a photo's 'nclx' code points ask for a conversion: primaries other than sRGB's, or an HDR curve."""
    if not isinstance(nclx, dict):
        return False
    return nclx.get("transfer_characteristics") in HDR_TRANSFERS or nclx.get("color_primaries") not in (None, 1, 2)


def heif_deep_pixels(data: bytes | None, size: tuple[int, int]) -> np.ndarray | None:
    """A HEIF photo's primary image at its stored depth, H x W x 3 uint16 (10 or 12 bits scaled to 16), where it has
    more than 8 bits: pillow-heif's Pillow plugin hands over 8, and an HDR still's curve spreads those over SDR's
    whole range (PQ's reference white is signal 148 of 255: a ramp from black to it came out in 126 levels, steps of
    up to 4: bands across a sky). None for an 8-bit photo, one with alpha, or one that does not decode to the
    plugin's ``size``. (Pillow's own AVIF decoder has no such choice: an AVIF's are :func:`avif_deep_pixels`.)"""
    if data is None or not heif_support():
        return None
    import numpy as np
    from pillow_heif import open_heif

    try:
        heif = open_heif(io.BytesIO(data), convert_hdr_to_8bit=False)
        if heif.mode != "RGB;16":  # 8 bits ("RGB"), or alpha
            return None
        pixels = np.asarray(heif)
    except Exception:  # noqa: BLE001 - the plugin decoded it already: the 8 bits it gave stand
        return None
    return pixels if pixels.shape == (size[1], size[0], 3) and pixels.dtype == np.uint16 else None


def avif_deep_pixels(data: bytes | None, size: tuple[int, int], nclx: dict) -> np.ndarray | None:
    """An AVIF's primary image at its stored depth, H x W x 3 uint16 (10 or 12 bits scaled to 16), decoded by PyAV
    (FFmpeg's dav1d; the 'video' extra) where it has more than 8 bits: Pillow's own AVIF decoder hands over 8, and
    an HDR still's curve then bands as a HEIF's did (:func:`heif_deep_pixels`). Its YUV is read by the file's
    'nclx' box (``nclx``, adain.bmff's: the matrix and range; FFmpeg's frame would take the AV1 stream's own).
    None without PyAV, for an 8-bit image, for one that is not a single coded image (a grid of tiles comes out of
    FFmpeg as one stream a tile; alpha as a second stream), or one that does not decode to Pillow's ``size``."""
    if data is None:
        return None
    try:
        import av
    except ImportError:
        return None
    import numpy as np

    try:
        with av.open(io.BytesIO(data), "r") as container:
            if len(container.streams) != 1 or len(container.streams.video) != 1:
                return None
            stream = container.streams.video[0]
            if (stream.codec_context.width, stream.codec_context.height) != size:  # a tile of a grid, say
                return None
            stream.codec_context.options = {"max_pixels": str(size[0] * size[1])}  # the size Pillow checked
            frame = next(container.decode(stream))
            if frame.format.components[0].bits <= 8 or (frame.width, frame.height) != size:
                return None
            matrix, full = nclx.get("matrix_coefficients"), nclx.get("full_range_flag")
            if matrix not in (None, 2):  # 2: unspecified (ISO/IEC 23091-2): the stream's own
                frame.colorspace = matrix
            if full in (0, 1):
                frame.color_range = 2 if full else 1  # FFmpeg's AVCOL_RANGE_JPEG, AVCOL_RANGE_MPEG
            pixels = frame.to_ndarray(format="rgb48le")
    except Exception:  # noqa: BLE001 - Pillow decoded it already: the 8 bits it gave stand
        return None
    return pixels if pixels.shape == (size[1], size[0], 3) and pixels.dtype == np.uint16 else None


def _from_code_points(
    img: Image.Image, nclx: dict, flatten: Callable[[Image.Image], Image.Image], rgb48: np.ndarray | None = None
) -> Image.Image:
    """A HEIF or AVIF photo that gives its colours as code points (ISO/IEC 23091-2: an 'nclx' box) and no ICC profile:
    primaries other than sRGB's (Display P3, BT.2020) converted, as the video path converts BT.2020 clips (a P3
    orange, 200,100,50, is sRGB's 215,93,31; read as sRGB it was duller). The transfer is taken as sRGB's (the
    SDR curves differ by a few levels in the darks). An HDR still (PQ or HLG, BT.2020 as a rule) is taken to
    SDR as HDR video frames are (``adain.hdr.to_sdr``): read as stored, its reference white came out at ~150 of
    255 and the whole picture flat and dim. ``rgb48``: the pixels at their stored depth (from
    :func:`heif_deep_pixels`, :func:`avif_deep_pixels`), used in place of the 8 bits the decoders hand over."""
    if not converts_code_points(nclx):
        return flatten(img)  # BT.709 (sRGB's) or unspecified
    rgb = flatten(img)
    transfer, primaries = nclx.get("transfer_characteristics"), nclx.get("color_primaries")
    hdr = transfer in HDR_TRANSFERS
    import numpy as np

    from adain.hdr import BT2020, BT2020_TO_709, to_709, to_sdr, wide_to_srgb

    matrix: np.ndarray | None  # (None: primaries that give no matrix)
    matrix = BT2020_TO_709  # BT.2020's, and an HDR still's that names none (HDR is BT.2020 as a rule)
    if primaries not in (BT2020, None, 2):
        try:
            matrix = to_709([(float(nclx[f"color_primary_{c}_x"]), float(nclx[f"color_primary_{c}_y"]))
                             for c in ("red", "green", "blue")])
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            matrix = None
        if matrix is None or not np.isfinite(matrix).all():  # no primaries, or nonsense ones: as stored
            if not hdr:
                return rgb
            matrix = BT2020_TO_709
    pixels = np.asarray(rgb)
    if rgb48 is not None and rgb48.shape != pixels.shape:  # (turned otherwise: never, by its caller)
        rgb48 = None
    out = np.empty_like(pixels)
    for y in range(0, pixels.shape[0], 256):  # in strips: the whole image at once took 40 bytes a pixel
        strip = rgb48[y:y + 256] if rgb48 is not None else pixels[y:y + 256].astype(np.uint16) * np.uint16(257)
        # (hdr: transfer is one of HDR_TRANSFERS)
        sdr = to_sdr(strip, cast(int, transfer), matrix=matrix) if hdr else wide_to_srgb(strip, matrix)
        out[y:y + 256] = np.asarray(sdr)
    return Image.fromarray(out, "RGB")


def code_points_applied(img: Image.Image) -> Image.Image | None:
    """A PIL image whose colours are given as code points that ask for a conversion (a HEIF's, pillow-heif's
    ``nclx_profile``) and no ICC profile, in sRGB as the library reads it (alpha onto white, as its own
    flattening does); None where there is nothing to convert. For the thin client, which sends a PIL image as a
    PNG: a PNG carries no code points, and the server took the pixels as sRGB (a Display P3 photo came out 9
    levels off the library's, an HDR one 50: a pixel-correctness tour's)."""
    nclx = img.info.get("nclx_profile")
    if img.info.get("icc_profile") or not converts_code_points(nclx) or img.mode not in ("RGB", "RGBA"):
        return None

    def flatten(im: Image.Image) -> Image.Image:
        if im.mode == "RGBA":
            return Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im).convert("RGB")
        return im

    return _from_code_points(img, nclx, flatten)


def to_srgb(
    img: Image.Image, flatten: Callable[[Image.Image], Image.Image], rgb48: np.ndarray | None = None
) -> Image.Image:
    """``img`` with its embedded ICC profile applied: an RGB image in sRGB. Without a profile, with an
    sRGB one, or with one that is unreadable or describes another colour space than the pixels (as
    browsers do, the pixels are then taken as sRGB), ``flatten(img)`` alone: the caller's conversion of
    any mode to 8-bit RGB, also used first on modes a profile cannot be applied to directly (alpha onto
    white, 16-bit scaled down). ``rgb48``: a HEIF's or AVIF's pixels at their stored depth, for its code points."""
    icc = img.info.get("icc_profile")
    if not icc:
        nclx = img.info.get("nclx_profile")  # colours by code points instead: pillow-heif's, or adain.bmff's (AVIF)
        return _from_code_points(img, nclx, flatten, rgb48) if isinstance(nclx, dict) else flatten(img)
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        space = profile.profile.xcolor_space.strip()
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return flatten(img)
    mode = _SPACE_MODES.get(space)
    if mode is None or (space == "RGB" and _is_srgb(icc)):
        return flatten(img)
    if img.mode != mode:
        if mode == "CMYK" or (mode == "L") != (img.mode in _GREY_MODES):
            # a CMYK or grey profile on colour pixels, or an RGB one on grey pixels (an outside tester's grey JPEG
            # tagged ProPhoto came out 17 levels lighter; Photoshop ignores such a profile): not this image's
            return flatten(img)
        img = flatten(img)
        if mode == "L":
            img = img.convert("L")
    try:
        out = ImageCms.profileToProfile(img, profile, _srgb(), outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError):
        return flatten(img)
    assert out is not None  # (None only inPlace)
    return out
