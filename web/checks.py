"""The checks adain-web makes before anything reaches the server (the form, the live camera's messages):
cheap ones, naming the field as the proto does; the server checks the rest."""

from __future__ import annotations

import errno
import io
import logging
import math
import re
import unicodedata
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import quote

import grpc
from PIL import Image
from starlette.concurrency import run_in_threadpool

from adain.client import StyleRef, StyleTransferError
from adain.errors import InvalidInputError, warnings_ignored
from adain.image import check_layout, claimed_format, cut_short, longest_size
from adain.photo import is_heif
from adain.wire import (
    COLOR_MODES,
    INPUT_FORMATS,
    INPUT_NAMES,
    LIBRARY_NAME_RULE,
    STYLE_ID_PREFIX,
    STYLE_ID_RE,
    TEMPORAL_MODES,
    Limits,
    library_name,
    plural,
    style_too_small,
)

# adain-web reads only images' headers here and compares their size with the server's max_pixels itself, so
# PIL's own guard (a warning past ~89 MP, DecompressionBombError past ~179 MP) would only turn a huge image's
# "W x H is over the limit" into "not an image" or log noise: off in adain-web's own process (the library,
# adain.image, only raises it to its limit, leaving it to the applications that import it).
Image.MAX_IMAGE_PIXELS = None

log = logging.getLogger("adain.web")
# A file name's longest, in bytes of UTF-8: ext4's (APFS's and NTFS's, 255 characters, take any name that short)
MAX_NAME_BYTES = 255
BROWSER_ESCAPES = {"%22": '"', "%0D": "\r", "%0A": "\n"}  # what browsers send for these in a multipart file name
BROWSER_ESCAPE_RE = re.compile("|".join(BROWSER_ESCAPES))
T = TypeVar("T")
# What the public is told instead of a failed call's transport details (the backend's address, gRPC's words).
UNREACHABLE = {
    grpc.StatusCode.UNAVAILABLE: "the stylization server is not available right now; try again in a moment",
    grpc.StatusCode.DEADLINE_EXCEEDED: "the stylization server did not answer in time; try again in a moment",
    grpc.StatusCode.CANCELLED: "the call to the stylization server was cut off; try again in a moment",
    grpc.StatusCode.UNKNOWN: "the call to the stylization server was cut off; try again in a moment",
}
# A server that checks tokens refusing this page's (none given, or not listed): every photo was a 502 with the
# server's words about bearer tokens, and nothing in this page's log
REFUSED_PAGE = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
REFUSED_PAGE_SAID = "the stylization server refused this page's calls; the site's operator has been told"
TRANSPORT_RE = re.compile(r"ipv[46]:|unix:|dns:|\d+\.\d+\.\d+\.\d+|\[[0-9a-f]*:[0-9a-f:]*\]|failed to connect|"
                          r"backends? failing|socket|connection|stream removed|goaway|rst_stream|deadline exceeded|"
                          r"^cancelled$", re.I)


FRAME_FIELD_RE = re.compile(r"frames\[\d+\]")  # the server names a stream's frames by index
# What a full, over-quota or read-only disk is said to be (adain-web's temporary folder: uploads, clips)
STORAGE_ERRNOS = {errno.ENOSPC: "is full", errno.EDQUOT: "is over its quota", errno.EROFS: "is read-only"}
MAX_ERROR_TEXT = 500  # characters of a message or description: a 100,000-character field came back twice


def _clipped(text: str) -> str:
    return text if len(text) <= MAX_ERROR_TEXT else text[: MAX_ERROR_TEXT - 1] + "…"


def error_json(code: str, message: str, violations: list[tuple[str, str]] | tuple = ()) -> dict[str, Any]:
    """Every error this front answers, over HTTP or a WebSocket: {"error": {code, message, violations}}; the
    texts at most MAX_ERROR_TEXT characters (they may quote what the caller sent)."""
    return {"error": {"code": code, "message": _clipped(message),
                      "violations": [{"field": _clipped(f), "description": _clipped(d)} for f, d in violations]}}


BACKEND_FAILED = "the backend call failed"  # a log line's start (adain-web throttles it)


def public_error(e: StyleTransferError, level: int = logging.WARNING) -> tuple[str, list[tuple[str, str]]]:
    """(message, violations) of a failed backend call as the public may see them: a backend that cannot be
    reached (UNAVAILABLE; a deadline or a cut-off whose details are gRPC's transport words) gets a fixed
    message, and its details, which name the backend's internal address, go to this process's log only."""
    if e.code in REFUSED_PAGE:  # the operator's wiring, not the visitor's doing: said in the log, where it was not
        log.error("the server refused this page's calls (%s: %s): give adain-web --token-file with a token the "
                  "server's --auth-tokens-file lists (a front token)", e.code.name, e.details)
        return REFUSED_PAGE_SAID, []
    fixed = UNREACHABLE.get(e.code)
    if fixed and (e.code == grpc.StatusCode.UNAVAILABLE or not e.details or TRANSPORT_RE.search(e.details)):
        log.log(level, BACKEND_FAILED + ": %s: %s", e.code.name, e.details)
        return fixed, []
    return e.details, list(e.violations)


def stream_error(e: StyleTransferError, frame: str) -> tuple[str, list[tuple[str, str]]]:
    """:func:`public_error` of a video stream, its fields named as the page names them: the stream's options
    are its first message ("options.alpha" is "alpha"), and a frame ("frames[3]") is ``frame``: the live
    camera's "frame", a clip's "content"."""
    message, violations = public_error(e)

    def page(text: str) -> str:
        return FRAME_FIELD_RE.sub(frame, text.removeprefix("options."), count=1)

    return page(message), [(page(f), d) for f, d in violations]


class BadInput(Exception):
    """A problem with what the caller sent, naming the field; ``problems``: all of a form's (this one first)."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.field, self.description = field, description
        self.problems: list[BadInput] = [self]

    @property
    def violations(self) -> list[tuple[str, str]]:
        return [(p.field, p.description) for p in self.problems]


class Problems:
    """Checks run one after another, each problem kept: a form's every mistake comes back in one answer,
    as the server answers (a form with a bad alpha and a bad format got the first only)."""

    def __init__(self) -> None:
        self.found: list[BadInput] = []

    def check(self, fn: Callable[..., T], *args: Any) -> T | None:
        """``fn(*args)``, or None when it raises BadInput (kept)."""
        try:
            return fn(*args)
        except BadInput as e:
            self.found.append(e)
            return None

    async def wait(self, work: Awaitable[T]) -> T | None:
        """``await work``, or None when it raises BadInput (kept)."""
        try:
            return await work
        except BadInput as e:
            self.found.append(e)
            return None

    def add(self, field: str, description: str) -> None:
        self.found.append(BadInput(field, description))

    def raise_any(self) -> None:
        """Raise the first problem found, carrying them all, its message naming each."""
        if self.found:
            first = self.found[0]
            first.problems = list(self.found)
            if len(self.found) > 1:
                first.args = ("; ".join(f"{e.field}: {e.description}" for e in self.found),)
            raise first


def image(data: bytes, field: str, limits: Limits, style: bool = False) -> bytes:
    """``data``, once its header decodes as an image of a known format within the pixel limit (the name and
    the declared type are not trusted; the backend decodes it fully). The server's guards against headers that
    Pillow spends seconds on (JPEG fill and markers, PNGs of a million chunks) come first: a 19-MB one held
    adain-web's event loop, and every visitor with it, for 3-9 s. ``style``: also refused where too small to carry a
    style at the server's style_size, as the server would (a clip's job was taken, 202, to fail at its first frame).
    Blocking: see :func:`image_checked`."""
    if not data:
        raise BadInput(field, "the file is empty")
    try:
        check_layout(data, field)
    except InvalidInputError as e:
        raise BadInput(field, e.description) from None
    try:
        with warnings_ignored(), Image.open(io.BytesIO(data)) as img:  # (odd EXIF/TIFF tags: stderr noise)
            fmt, (w, h) = img.format, img.size
    except Exception as e:
        if is_heif(data[:12]):  # a phone's photo, and no pillow-heif here: the server reads it, or says why not
            return data
        if kind := claimed_format(data[:16]):  # (a cut WebP was "not an image this service reads")
            if cut_short(e):
                raise BadInput(field, f"a truncated or corrupt {kind} file") from None
            raise BadInput(field, f"a {kind} file this service cannot read ({_clipped(str(e))})") from None
        raise BadInput(field, f"not an image this service reads ({INPUT_NAMES})") from None
    if fmt not in INPUT_FORMATS and fmt != "MPO":  # MPO: a JPEG with more pictures after it (cameras; a JPEG plugin)
        raise BadInput(field, f"{fmt} images are not read ({INPUT_NAMES})")
    if w * h > limits.max_pixels:
        raise BadInput(field, f"{w} x {h} is over the limit of max_pixels={limits.max_pixels}")
    if style and (why := style_too_small(*longest_size(w, h, limits.style_size), limits.style_size)):
        raise BadInput(field, why)
    return data


async def image_checked(data: bytes, field: str, limits: Limits, style: bool = False) -> bytes:
    """:func:`image` on a worker thread, off the event loop."""
    return await run_in_threadpool(image, data, field, limits, style)


def display_name(text: str) -> str:
    """``text`` without control and format characters (Unicode Cc, Cf), for a file name this page hands back
    (Content-Disposition, a job's state): a right-to-left override made "clip\u202e4pm.exe" show as
    "clipexe.mp4"; a line break could split a header."""
    return "".join(c for c in text if unicodedata.category(c) not in ("Cc", "Cf")).strip()


def fit_name(stem: str, tail: str, limit: int = MAX_NAME_BYTES) -> str:
    """``stem + tail``, the stem cut on a character's boundary so that the whole is at most ``limit`` bytes of
    UTF-8: a 250-byte clip's name made a 259-byte one, which no file system takes ("File name too long")."""
    room = max(0, limit - len(tail.encode()))
    return stem.encode()[:room].decode(errors="ignore") + tail  # (a character cut in two is dropped whole)


def clip_result_name(filename: str | None) -> str:
    """A stylized clip's file name, ``STEM_stylized.mp4``, from the name its upload was sent with: the escapes
    browsers write for '"', CR and LF in a multipart file name (%22, %0D, %0A, the HTML standard's) decoded (a
    'quo"te.mp4' from Chrome came back "quo%22te_stylized.mp4"), only the part after the last / or \\ (a Windows
    path kept its backslashes), NFC, and no hidden file: ".mp4" made ".mp4_stylized.mp4"; an empty stem is
    "clip". At most MAX_NAME_BYTES."""
    name = BROWSER_ESCAPE_RE.sub(lambda m: BROWSER_ESCAPES[m[0]], filename or "")
    name = unicodedata.normalize("NFC", display_name(re.split(r"[/\\]", name)[-1]))
    stem = name.rsplit(".", 1)[0] if "." in name else name  # (".mp4": all suffix, no stem)
    return fit_name(stem.lstrip(". ") or "clip", "_stylized.mp4")


def attachment(name: str) -> str:
    """A Content-Disposition for a download named ``name``: with ``filename*`` (RFC 6266, UTF-8) where it is not
    plain ASCII, beside a ``filename`` of ASCII for the clients that read no other (curl -OJ saved "東京_stylized.mp4"
    as "result", the URL's last part): accents dropped (NFKD), what is left of the rest, or "stylized.EXT"."""
    if name.isascii() and name.isprintable() and not set(name) & {'"', "\\"}:
        return f'attachment; filename="{name}"'
    stem, dot, ext = name.rpartition(".")
    if not dot:
        stem, ext = name, ""
    plain = "".join(c for c in unicodedata.normalize("NFKD", stem) if " " <= c <= "~" and c not in '"\\')
    # the spaces a dropped word leaves: "東京 夜景_stylized" is " _stylized", then "stylized"
    plain = re.sub(r" +(?=[ _.])", "", plain).strip(" ._-")
    ext = "".join(c for c in ext if c.isascii() and c.isalnum())
    fallback = f"{plain or 'stylized'}.{ext}" if ext else plain or "stylized"
    return f"attachment; filename=\"{fallback}\"; filename*=utf-8''{quote(name, safe='')}"


def style_name(text: Any, field: str) -> StyleRef:
    """"id:NAME", a style of the server's library (the server says whether it has that name)."""
    text = str(text)
    if not text.startswith(STYLE_ID_PREFIX):
        raise BadInput(field, f"expected an image file or id:NAME (a style of the server's library), got {text[:80]!r}")
    rest = text[len(STYLE_ID_PREFIX):]
    if STYLE_ID_RE.fullmatch(rest.lower()):  # a style's id (ListStyles' style_id, or one registered): the server's
        return StyleRef(rest)
    name = library_name(rest)
    if name is None:  # an id:NAME, of no name a library can have: as the CLI says it
        raise BadInput(field, f"no style named {text[3:83]!r}: a style name is {LIBRARY_NAME_RULE}")
    return StyleRef(name)


def number(text: Any, field: str) -> float:
    try:
        value = float(text)
    except OverflowError:  # a JSON integer of 400 digits: it ended the live socket with a traceback
        raise BadInput(field, f"must be a finite number, got {str(text)[:40]}...") from None
    except (TypeError, ValueError):
        raise BadInput(field, f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise BadInput(field, f"must be a finite number, got {text!r}")
    return value


def fraction(text: Any, field: str) -> float:
    """A number in [0, 1] (an alpha): what the server refuses, refused here, where a clip's job was taken (202) to
    fail at its first frame."""
    value = number(text, field)
    if not 0 <= value <= 1:
        raise BadInput(field, f"must be a number in [0, 1], got {value}")
    return value


def whole(text: Any, field: str, least: int, most: tuple[str, int] | None = None) -> int:
    """A whole number >= ``least`` and, where ``most`` = (the limit's name, its value) is given, at most that
    (checked here: past int32 the client could not even send it)."""
    value = number(text, field)
    if value != int(value) or value < least:
        raise BadInput(field, f"must be a whole number >= {least}, got {text!r}")
    if most is not None and value > most[1]:
        raise BadInput(field, f"{str(text)[:40]} is over the limit of {most[0]}={most[1]}")
    return int(value)


def style_count(count: int, limits: Limits, what: str) -> None:
    """At least one style and at most max_styles; ``what`` says what a style may be, where none came."""
    if not count:
        raise BadInput("styles", f"at least 1 style ({what}) is required")
    if count > limits.max_styles:
        raise BadInput("styles", f"{count} styles, over the limit of max_styles={limits.max_styles}")


def weights(values: list[Any], styles: int) -> list[float]:
    if len(values) != styles:
        raise BadInput("weights", f"{plural(len(values), 'weight')} for {plural(styles, 'style')} (one per style)")
    out = [number(w, f"styles[{i}].weight") for i, w in enumerate(values)]
    # what the server refuses, refused here: a clip's job was taken (202), to fail once its frames went out
    for i, w in enumerate(out):
        if w < 0:
            raise BadInput(f"styles[{i}].weight", f"must be a finite number >= 0, got {values[i]!r}")
    if out and sum(out) <= 0:
        raise BadInput("styles.weight", "all style weights are zero; at least one must be > 0")  # as the server
    return out


def color(value: Any) -> str | None:
    """A preserve_color ("none" or empty: None)."""
    text = value or "none"
    if text not in ("none", *COLOR_MODES):
        raise BadInput("preserve_color", f"must be one of none, {', '.join(COLOR_MODES)}; got {text!r}")
    return None if text == "none" else text


def temporal(value: Any) -> str | None:
    """A temporal mode (empty: None, the server's default)."""
    if value and value not in TEMPORAL_MODES:
        raise BadInput("temporal", f"must be one of {', '.join(TEMPORAL_MODES)}; got {value!r}")
    return value or None
