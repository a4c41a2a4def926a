"""The service's vocabulary, once: output formats, colour modes, defaults and limits (no torch).

The library, the server, the thin client and the CLI all take their names from here, and the proto's
enums are mapped onto these names by their naming convention (``IMAGE_FORMAT_<NAME>``,
``PRESERVE_COLOR_<NAME>``), so adding a value to the .proto and to a tuple below is all it takes.
"""

from __future__ import annotations

import difflib
import numbers
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from adain.v1 import style_transfer_pb2 as pb

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["StyleTransfer"].full_name
REQUEST_ID_KEY = "x-request-id"
# A caller's request id that is passed on, logged and sent back: printable ASCII, no spaces (a newline in one
# forged a log line, and gRPC failed the reply that echoed it)
REQUEST_ID_RE = re.compile(r"[\x21-\x7e]{1,128}")
TOKEN_RE = re.compile(r"[\x21-\x7e]+")  # a bearer token: printable ASCII, what a gRPC header carries
AUTH_KEY = "authorization"  # "Bearer <token>", where the server asks for tokens
END_USER_KEY = "x-adain-end-user"  # the person a front end (a "front" token) calls for: a caller of their own
SERVED_BY_KEY = "x-served-by"  # which replica answered (reply metadata), for per-replica counts
TRACEPARENT_KEY = "traceparent"  # W3C Trace Context, as OpenTelemetry's instrumentation sends it
_TRACEPARENT_RE = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")


def trace_id_of(traceparent: object) -> str | None:
    """The trace id of a W3C ``traceparent`` header, so a call's log line can be found from the caller's trace;
    None for none, a malformed one or the all-zero (invalid) id."""
    if not isinstance(traceparent, str):
        return None
    found = _TRACEPARENT_RE.fullmatch(traceparent.strip().lower())
    return found.group(1) if found and found.group(1) != "0" * 32 else None
# ServerInfo.features: the parts of adain.v1 this server implements (the proto names each one's fields), also sent
# with every reply (FEATURES_KEY, comma-separated): a field an older server does not know is dropped unread (proto3),
# so a client that sent one checks the reply came from a server that has it (a mixed fleet mid-upgrade answered
# masks with a plain blend, exit 0). A name stays while the package is v1.
FEATURES = ("video", "progress", "refine", "regions", "library", "keep_exif", "tiling")
FEATURES_KEY = "x-adain-features"
DEFAULT_HOST = "127.0.0.1"  # the server listens on loopback unless told otherwise
DEFAULT_PORT = 50051
DEFAULT_ADDRESS = f"{DEFAULT_HOST}:{DEFAULT_PORT}"


def bare_host(host: str) -> str:
    """An address without the brackets an IPv6 one may be given in ("[::1]" -> "::1"; uvicorn and getaddrinfo take
    it bare)."""
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def host_port(host: str, port: int) -> str:
    """``host:port`` as gRPC and people read it: a bare IPv6 address in brackets (gRPC failed "::1:50051" after the
    server's model loaded, as a misformatted name)."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"

DEFAULT_QUALITY = 90
STYLE_ID_PREFIX = "id:"  # "id:<sha256>" names a registered style where a path could stand
PRESET_PREFIX = "preset:"  # "preset:<name>" names a preset of the server's library in place of the styles
# A library style's or preset's name (the server's --styles-dir): a plain file name, no folder and no "..", so
# that a client may save a style's thumbnail as NAME.jpg; the client checks a server's names against it too.
LIBRARY_NAME_RULE = ("1-64 letters or digits of any script, '.', '_' or '-' (no spaces), starting with a letter or "
                     "digit")
LIBRARY_NAME_MAX_BYTES = 200  # of UTF-8: NAME.jpeg within a file system's 255-byte file names


def library_name(text: str) -> str | None:
    """``text`` as a library style's or preset's name (LIBRARY_NAME_RULE), or None where it cannot be one. Any
    script's letters (a tester's "ゴッホ.png" failed the start, and "id:ゴッホ" was refused as no name), in their
    composed form (NFC): a Mac's folder stores "Mönch" decomposed, as o and a combining mark, and a keyboard types it
    composed; marks may follow a letter (Devanagari's vowel signs). No separators, spaces, controls or format
    characters (a right-to-left override would print a name backwards), and not 64 hex digits (a registered id)."""
    name = unicodedata.normalize("NFC", text)
    if not 1 <= len(name) <= 64 or len(name.encode("utf-8", "surrogatepass")) > LIBRARY_NAME_MAX_BYTES:
        return None
    if not name[0].isalnum() or STYLE_ID_RE.fullmatch(name):
        return None
    if not all(c.isalnum() or c in "._-" or unicodedata.category(c) in ("Mn", "Mc") for c in name):
        return None
    return name

# one PEM certificate of a file that may hold several (a CA bundle, whose comments between them may be any text)
PEM_CERTIFICATE_RE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)
STYLE_ID_RE = re.compile(r"[0-9a-f]{64}")  # a registered style's id (sha256 hex): a library name may not look like one

# --- output formats -------------------------------------------------------------------------------
FORMATS = ("png", "jpeg", "webp")
_FORMAT_ALIASES = {"jpg": "jpeg"}
FORMAT_SUFFIXES = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}  # what a written file is named
_SUFFIX_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}
FORMAT_ENUM = {name: pb.ImageFormat.Value(f"IMAGE_FORMAT_{name.upper()}") for name in FORMATS}
FORMAT_BY_ENUM = {value: name for name, value in FORMAT_ENUM.items()}

# --- inputs ---------------------------------------------------------------------------------------
# PIL's names of what is decoded (GIF: its 1st frame; HEIF where pillow-heif is installed: adain.photo)
INPUT_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "AVIF", "HEIF")
INPUT_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".avif", ".heic",
                  ".heif", ".mpo")  # MPO: a 3D or multi-shot camera's JPEG (its first picture)
INPUT_NAMES = "JPEG, PNG, WebP, BMP, TIFF, GIF, AVIF or HEIC"  # for messages


def listing(names: Sequence[str], most: int = 160) -> str:
    """The first names that fit in ``most`` characters, and how many more (an error message lists them: it
    travels in a trailer, with every other violation's)."""
    shown: list[str] = []
    for name in names:
        if shown and len(", ".join([*shown, name])) > most:
            break
        shown.append(name)
    more = len(names) - len(shown)
    return (", ".join(shown) or "none") + (f" and {more} more" if more else "")


def no_library_style(name: str, names: Sequence[str] | None) -> str:
    """A style name (not a registered style's id) that the library ``names`` lacks, or None: no library at all. The
    server's words, and adain-web's for a clip it refuses before its job starts."""
    if names is None:
        return f"unknown style {name!r}: not a registered style's id, and this server has no style library"
    return f"no style named {name!r} in this server's library (it has: {listing(names)}; see ListStyles)"


def not_an_image(source: object) -> str:
    """The library's and the client's words for an image argument of no kind they take; an array (OpenCV's frames,
    NumPy's) is told how to make it one, in which channel order (OpenCV's is BGR: a photo's blues came back red)."""
    said = f"expected image bytes, a path or a PIL image, got {type(source).__name__}"
    if hasattr(source, "__array_interface__") or hasattr(source, "__array__"):
        said += (" (an H x W x 3 uint8 array: PIL.Image.fromarray(a) for RGB; OpenCV's BGR frames: "
                 "PIL.Image.fromarray(a[..., ::-1]))")
    return said
# The containers a clip is written as (adain.media); here, where the thin client's CLI can read them without numpy
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".gif")
# What a folder of contents is searched for: the above, and containers FFmpeg reads that are not written.
READ_VIDEO_SUFFIXES = VIDEO_SUFFIXES + (".avi", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts", ".wmv", ".flv", ".3gp",
                                       ".ogv")
# the fewest frames a second a clip is read at (a frame each 1,000 s): a rate kept as a fraction over at most
# 1001 (NTSC's) rounded anything under 1/2002 to 0, and the reader divided by it
MIN_FPS = 0.001

# --- region labels --------------------------------------------------------------------------------
COLOUR_LABEL = 1 << 24  # marks a colour label under 256: pure blues (0, 0, b) were the grey levels b's labels


def label_value(value: object) -> int | None:
    """A region label as an int: 0-255 (a grey pixel's level), 0xRRGGBB, or "#rrggbb"; None if invalid. A grey
    colour is its level (#464646 is 70: a colour-coded map's grey pixels are read as levels, so named by its hex
    it matched none). A colour (0, 0, b) is ``COLOUR_LABEL | b``: as 0x0000bb it was grey level b's label too,
    and a segmentation's navy car (0, 0, 142) took the grey 142's pixels (``COLOUR_LABEL | rgb`` is taken too)."""
    found = None
    if isinstance(value, str) and len(value) == 7 and value.startswith("#"):
        digits = value[1:]
        if all(c in "0123456789abcdefABCDEF" for c in digits):  # no "+f0000"
            found = int(digits, 16)
            if 0 < found < 256:
                found |= COLOUR_LABEL
    elif (isinstance(value, numbers.Integral) and not isinstance(value, bool)
          and 0 <= int(value) <= COLOUR_LABEL | 0xFFFFFF):
        found = int(value)  # a NumPy integer too
        if found & COLOUR_LABEL:
            rgb = found & 0xFFFFFF
            found = rgb if rgb >= 256 else found if rgb else None  # the flag is needed below 256 alone
        elif found > 0xFFFFFF:
            found = None
    if found is not None and 0xFF < found <= 0xFFFFFF and found >> 16 == (found >> 8) & 0xFF == found & 0xFF:
        return found & 0xFF
    return found


# --- colour modes ---------------------------------------------------------------------------------
COLOR_MODES = ("coral", "luminance")  # besides None: the output takes the style's colours
COLOR_ENUM: dict[str | None, pb.PreserveColor] = {None: pb.PRESERVE_COLOR_NONE}
COLOR_ENUM.update({name: pb.PreserveColor.Value(f"PRESERVE_COLOR_{name.upper()}") for name in COLOR_MODES})
COLOR_BY_ENUM = {value: name for name, value in COLOR_ENUM.items()}


# --- video: how frames are kept stable in time ---------------------------------------------------
# none: each frame alone; smooth: the content statistics are a running average over the frames;
# flow: the previous frame's AdaIN target and output, warped by the optical flow, are blended in where
# the flow is consistent (see adain.video).
TEMPORAL_MODES = ("none", "smooth", "flow", "smooth-flow")
DEFAULT_TEMPORAL = "flow"  # benchmarks/video.py: the most stable for its cost (see the README)
DEFAULT_TEMPORAL_STRENGTH = 0.95
TEMPORAL_ENUM = {name: pb.Temporal.Value(f"TEMPORAL_{name.upper().replace('-', '_')}") for name in TEMPORAL_MODES}
TEMPORAL_BY_ENUM = {value: name for name, value in TEMPORAL_ENUM.items()}


# --- the optimisation method (adain.optimize) ---------------------------------------------------
# adain: refine the decoder's output; content: the classic method of Gatys et al. from the content.
REFINE_INITS = ("adain", "content")
OPTIMIZERS = ("lbfgs", "adam")  # benchmarks/refine.py: L-BFGS reaches a lower loss per second here
STYLE_LOSSES = ("gram", "meanstd")
DEFAULT_CONTENT_WEIGHT = 1.0  # the classic method's (from the content)
# A refine starts from the decoder's output, whose style is already close and whose content is the
# decoder's error: it weighs content 5x (benchmarks/refine.py; at 256 px, 4 pairs, 10 iterations reach the
# classic method's 100-iteration content and Gram losses in 0.12x its time, where weight 1 never did).
REFINE_CONTENT_WEIGHT = 5.0
MAX_LOSS_WEIGHT = 1e9  # content/style/tv weights: beyond, the loss overflows float32 (3e38 gave NaN, black pixels)
DEFAULT_STYLE_WEIGHT = 10.0  # the ratio style/content is the knob; see the README's refine table
# A refine's pixels gather a fine speckle (in flat areas a faint diagonal grid) that raised the image's
# high-frequency energy 1.6-2x (384 px, 30 iterations). Total variation at 1e3 takes most of it back for 1-4% of the
# objective; 3e3 cost a busy style a fifth of its Gram gain, 1e4 blurred (README, "the optimisation method").
# The classic method keeps Gatys et al.'s objective: 1e3 tripled its Gram loss on a busy style. A refine at a
# reduced working size (refine_size) has none by default: its change is upsampled, which smooths the speckle
# away (+5% high-frequency energy at 256 px of 512, 20 iterations), and total variation there smoothed the
# style's texture itself (Gram loss at 512 px 16.5 against 9.4 without; sailboat x goeritz).
REFINE_TV_WEIGHT = 1e3
DEFAULT_TV_WEIGHT = 0.0  # the classic method's
REFINE_INIT_ENUM = {name: pb.RefineInit.Value(f"REFINE_INIT_{name.upper()}") for name in REFINE_INITS}
REFINE_INIT_BY_ENUM = {value: name for name, value in REFINE_INIT_ENUM.items()}
OPTIMIZER_ENUM = {name: pb.Optimizer.Value(f"OPTIMIZER_{name.upper()}") for name in OPTIMIZERS}
OPTIMIZER_BY_ENUM = {value: name for name, value in OPTIMIZER_ENUM.items()}


def format_name(text: str) -> str | None:
    """An output format's canonical name ("JPG" -> "jpeg"), or None when it is not one."""
    key = str(text).lower()
    key = _FORMAT_ALIASES.get(key, key)
    return key if key in FORMATS else None


MAX_SIDE_BY_FORMAT = {"webp": 16383, "jpeg": 65500}  # what encoders write (PNG: 2**31); libjpeg: 65500, not 65535


def format_cannot_hold(fmt: str, width: int, height: int) -> str | None:
    """Why an output of ``width`` x ``height`` cannot be written as ``fmt`` (a canonical name), or None: said
    before rendering (a 16,384-px WebP failed as an internal error after minutes of tiles)."""
    limit = MAX_SIDE_BY_FORMAT.get(fmt)
    if limit is None or max(width, height) <= limit:
        return None
    return (f"a {fmt.upper()} image is at most {limit:,} px a side; the output is {width:,} x {height:,}: ask for PNG"
            f"{' or JPEG' if fmt == 'webp' else ''}, or a smaller content_size")


def format_from_suffix(suffix: str) -> str | None:
    """The output format a file suffix (".jpeg") asks for, or None."""
    return _SUFFIX_FORMATS.get(suffix.lower())


def color_mode(value: str | bool | None) -> str | None:
    """A preserve_color value as a mode name: True means "coral" (the AdaIN paper's way); False, None,
    "none" and "" mean None. Anything else is returned as a string, for the caller's check of the names to refuse
    (a list as given raised TypeError in a dict's lookup, an array ValueError in a comparison)."""
    if value is True:
        return "coral"
    try:
        if value is None or value in (False, "none", ""):  # (NumPy's False and 0 too)
            return None
    except (TypeError, ValueError):  # an array: its comparison has no one truth value
        pass
    return value if isinstance(value, str) else repr(value)


# A style's shorter side, as used (scaled to its style_size), at least: a 1 x 1 or 4 x 4 style gave a flat grey
# picture; a 6000 x 90 one (512 x 8 as used) streaks. One rule for the Stylizer and the server's library.
MIN_STYLE_SIDE = 16


def style_too_small(width: int, height: int, style_size: int) -> str | None:
    """Why a style ``width`` x ``height`` px as used (already scaled to ``style_size``) cannot carry a style,
    or None where it can."""
    if min(width, height) >= MIN_STYLE_SIDE:
        return None
    return (f"{width} x {height} px as used (style_size {style_size}) is too small to carry a style: its shorter "
            f"side needs {MIN_STYLE_SIDE} px")


def plural(count: int, word: str) -> str:
    """"1 style", "2 styles": a count in a message (the web page's and the CLI's)."""
    return f"{count} {word}{'' if count == 1 else 's'}"


@dataclass(frozen=True)
class Limits:
    """What one stylization may ask for: enforced by the Stylizer, set by the server's flags and
    reported by GetServerInfo, all from this one value."""

    # any input image, checked from its header before decoding: 8K square (raise it for 16K prints)
    max_pixels: int = 8192 * 8192
    # the content is downscaled to this; also bounds content_size, style_size (large ones render in tiles)
    max_content_side: int = 16384
    style_size: int = 512  # longest side of the styles when a request does not say
    max_styles: int = 8
    max_refine_steps: int = 500  # optimisation iterations of one request (refine or the classic method)

    def __post_init__(self) -> None:
        # 0 made every output 1 x 1 (max_content_side), every style one pixel (style_size), or refused all
        low = {"max_pixels": 1, "max_content_side": 1, "style_size": 1, "max_styles": 1, "max_refine_steps": 0}
        for name, least in low.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
                raise ValueError(f"Limits.{name} must be an integer >= {least}, got {value!r}")


def refuse_unknown(
    caller: str, given: Iterable[str], names: Sequence[str], renamed: dict[str, str] | None = None
) -> None:
    """A TypeError naming ``caller`` and the nearest of its ``names`` for the first option given that is not one
    of them (the library and both clients alike: the client's said "_fill_options() got an unexpected keyword
    argument 'alhpa'", an internal function's name and no hint); ``renamed``: another API's names for these."""
    for name in given:
        if name not in names:
            near = [renamed[name]] if renamed and name in renamed else difflib.get_close_matches(name, names, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else f"; its options: {', '.join(names)}"
            raise TypeError(f"{caller}() got an unexpected keyword argument {name!r}{hint}")
