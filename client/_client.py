"""The thin client: no torch, only grpcio, protobuf and Pillow."""

from __future__ import annotations

import array
import contextlib
import contextvars
import inspect
import io
import ipaddress
import json
import math
import numbers
import os
import re
import stat
import struct
import sys
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import TYPE_CHECKING, Any, SupportsFloat, SupportsIndex, TypedDict, TypeVar
from urllib.parse import quote

import grpc
from PIL import Image

from adain.files import write_whole
from adain.photo import EXIF_ORIENTATION, code_points_applied, grey_key_in_levels, without_layout
from adain.v1 import style_transfer_pb2 as pb
from adain.v1 import style_transfer_pb2_grpc as pb_grpc
from adain.wire import (
    AUTH_KEY,
    COLOR_BY_ENUM,
    COLOR_ENUM,
    DEFAULT_ADDRESS,
    DEFAULT_HOST,
    DEFAULT_PORT,
    DEFAULT_QUALITY,
    END_USER_KEY,
    FEATURES_KEY,
    FORMAT_BY_ENUM,
    FORMAT_ENUM,
    FORMAT_SUFFIXES,
    OPTIMIZER_ENUM,
    PEM_CERTIFICATE_RE,
    PRESET_PREFIX,
    REFINE_INIT_ENUM,
    REQUEST_ID_KEY,
    SERVED_BY_KEY,
    SERVICE_NAME,
    STYLE_ID_PREFIX,
    TEMPORAL_ENUM,
    TOKEN_RE,
    color_mode,
    format_from_suffix,
    format_name,
    label_value,
    not_an_image,
    plural,
    refuse_unknown,
)

if sys.version_info >= (3, 11):  # (at run time too: typing.get_type_hints reads it)
    from typing import Unpack
elif TYPE_CHECKING:
    from typing_extensions import Unpack

_T = TypeVar("_T")
DEFAULT_TARGET = DEFAULT_ADDRESS


class _DefaultTimeout(float):
    """The client's ``timeout`` where its maker gave none: an image's call given no timeout of its own has this
    much and as much more as its work needs (:func:`work_seconds`: a fixed 120 s cut a 300-step refine off at
    step 231, its work lost, where the CLI's deadline grew with the work). A timeout the caller gives is kept."""


DEFAULT_TIMEOUT: float = _DefaultTimeout(120.0)
# An image's work on a CPU, for its deadline (the CLI's and the clients' default): print-size photos render in
# tiles for minutes (a 24-MP one took 112 s of the 120 a call had, and failed at 120 s on a busier machine) and a
# refine takes seconds a step.
PER_MEGAPIXEL_S = 10.0
PER_REFINE_STEP_S = 3.0
NO_DEADLINE_S = 1e9  # a timeout this long or longer (31 years; inf too) is no deadline: see no_deadline_past
DEFAULT_MAX_MESSAGE_MB = 32
# A connection with calls in flight (an idle channel's health Watch is one) is pinged after a minute without a
# frame, and closed when 20 s pass without the answer: a call on a dead link (black-holed, a frozen host) fails
# UNAVAILABLE in ~80 s, where a clip or a refine with no deadline waited for ever. adain-server takes pings this
# often (--keepalive-s); gRPC's default server refuses them under every 5 minutes, so a server older than
# 2026-12-05 closes a quiet connection after 3 pings.
PING_TIMEOUT_S = 20  # how long a ping's answer is waited for (the CLI says it when a link is found dead)
KEEPALIVE_OPTIONS = (("grpc.keepalive_time_ms", 60_000), ("grpc.keepalive_timeout_ms", PING_TIMEOUT_S * 1000),
                     # (what gRPC 1.85 waits on: keepalive_timeout_ms is not)
                     ("grpc.http2.ping_timeout_ms", PING_TIMEOUT_S * 1000),
                     ("grpc.http2.max_pings_without_data", 0))  # (else 2 pings, then none, on a quiet call)
FLOAT32_MAX = 3.4028234663852886e38  # the largest finite value of a float field on the wire
FLOAT32_TINY = 1.401298464324817e-45  # its smallest above 0

ImageInput = str | os.PathLike | bytes | bytearray | memoryview | Image.Image


class ImageOptions(TypedDict, total=False):
    """The options an image and a clip share (``_fill_options``'s), for type checkers: ``**options`` was Any,
    and mypy took ``alhpa=0.8`` or ``alpha="high"`` without a word (the call refuses them when it runs)."""

    # numbers as any real number (NumPy's float32 and int64 too, as the call takes them), lists as any iterable of
    # them (a NumPy array): typed float and Sequence, mypy refused what runs
    weights: Iterable[SupportsFloat] | None
    alpha: SupportsFloat | None
    preserve_color: str | bool | None
    mask: ImageInput | None
    masks: Sequence[ImageInput] | None
    labels: ImageInput | None
    label_values: Iterable[SupportsIndex | str] | None
    region_alphas: Iterable[SupportsFloat] | None
    content_size: SupportsIndex
    style_size: SupportsIndex
    format: str
    quality: SupportsIndex


class StylizeOptions(ImageOptions, total=False):
    """:meth:`StyleTransferClient.stylize`'s options (``stylize_request``'s)."""

    refine_steps: SupportsIndex
    refine_init: str
    content_weight: SupportsFloat | None
    style_weight: SupportsFloat | None
    tv_weight: SupportsFloat | None
    refine_size: SupportsIndex
    optimizer: str
    keep_exif: bool


class VideoStreamOptions(ImageOptions, total=False):
    """:meth:`StyleTransferClient.stylize_video`'s options (``video_options``')."""

    temporal: str | None
    temporal_strength: SupportsFloat | None


REMEMBERED_STYLES = 64  # registered styles whose bytes a client keeps for replicas that lack them
CLOSE_WAIT_S = 2.0  # how long close() waits for gRPC to let go of the channel (see close)


class StyleTransferError(Exception):
    """Every failure of a client call: an RPC that failed, or an input that could not be read.

    ``code`` is the ``grpc.StatusCode`` (INVALID_ARGUMENT for a local input that cannot be read);
    ``details`` is the server's message (``"styles[1].weight: must be ..."``); ``violations`` lists the
    (field, description) pairs of a google.rpc.BadRequest when the server sent one (and
    googleapis-common-protos is installed); ``request_id`` is the call's x-request-id when known;
    ``retry_after`` the seconds the server asks a caller to wait before trying again (its google.rpc.RetryInfo:
    a full queue's), else None.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        details: str,
        *,
        request_id: str | None = None,
        violations: Sequence[tuple[str, str]] = (),
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.request_id = request_id
        self.violations = list(violations)
        self.retry_after = retry_after

    # True on a reply refused for a feature its replica lacks (:func:`_unserved`): the call is sent again
    unserved: bool = False

    def __reduce__(self) -> tuple:  # pickle rebuilt it from args, one message where __init__ takes two (a pool broke)
        return type(self), (self.code, self.details), self.__dict__


@dataclass(frozen=True)
class StyleRef:
    """A style registered on the server (``StyleTransferClient.register_style`` returns its id).

    A plain string style is a file path, unless it starts with ``"id:"``: ``"id:<sha256 hex>"`` is the
    same as ``StyleRef("<sha256 hex>")``. A style of the server's library is named the same way:
    ``StyleRef("mosaic")`` or ``"id:mosaic"`` (see :meth:`StyleTransferClient.list_styles`).
    """

    id: str


@dataclass(frozen=True)
class LibraryStyle:
    """A style of the server's library (``adain-server --styles-dir``), as ListStyles reports it."""

    name: str  # what a request names it by: StyleRef(name) or "id:" + name
    style_id: str  # sha256 hex of the image file (changes when the file is replaced)
    width: int
    height: int
    thumbnail: bytes = b""  # a JPEG, when asked for

    @property
    def ref(self) -> StyleRef:
        return StyleRef(self.name)

    def __repr__(self) -> str:  # the thumbnail's size, not its bytes: a printed list was 10 kB a style
        thumb = f", thumbnail=<{len(self.thumbnail)} bytes>" if self.thumbnail else ""
        return (f"LibraryStyle(name={self.name!r}, style_id={self.style_id!r}, width={self.width}, "
                f"height={self.height}{thumb})")


@dataclass(frozen=True)
class Preset:
    """A preset of the server's library, named in place of the styles: ``client.stylize(photo,
    Preset("vintage"))`` (or ``"preset:vintage"``) takes its styles and weights, and its alpha and colour mode
    unless the call gives them."""

    name: str


StyleItem = ImageInput | StyleRef | tuple[ImageInput | StyleRef, float]  # a style, or (a style, its weight)
# a call's ``styles``: one style, a list of them, or a preset (alone: it has its own styles and weights)
Styles = StyleItem | Preset | Sequence[StyleItem]


@dataclass(frozen=True)
class LibraryPreset:
    """A preset as ListStyles reports it."""

    name: str
    styles: tuple[tuple[str, float], ...]  # (library style name, weight)
    alpha: float
    preserve_color: str | None  # None, "coral" or "luminance"

    @property
    def ref(self) -> Preset:
        return Preset(self.name)


def library_styles(reply: pb.ListStylesResponse) -> list[LibraryStyle]:
    return [LibraryStyle(s.name, s.style_id, s.width, s.height, s.thumbnail) for s in reply.styles]


def library_presets(reply: pb.ListStylesResponse) -> list[LibraryPreset]:
    # float32 on the wire: 0.8 comes back as 0.800000011920929
    return [LibraryPreset(p.name, tuple((s.style, round(s.weight, 6)) for s in p.styles), round(p.alpha, 6),
                          COLOR_BY_ENUM.get(p.preserve_color)) for p in reply.presets]


@dataclass(frozen=True)
class Timings:
    queue_ms: float
    inference_ms: float
    prepare_ms: float
    encode_ms: float
    batch_size: int
    refine_ms: float = 0.0  # the optimisation method's time (refine_steps > 0)
    refine_steps: int = 0


@dataclass(frozen=True)
class RefineProgress:
    """One step of a long call done, as StylizeWithProgress reports it: a refine's iteration, or a statistics box
    or tile of a content over the server's tile threshold (loss 0)."""

    step: int
    steps: int
    loss: float
    elapsed_ms: float


@dataclass(frozen=True)
class StylizeResult:
    """A stylized image as the server encoded it (``format``: "png", "jpeg" or "webp")."""

    image: bytes = dataclass_field(repr=False)  # (print(result) showed hundreds of KB of it)
    width: int
    height: int
    format: str
    timings: Timings
    request_id: str
    served_by: str = ""  # the replica that answered (its x-served-by), when the server says

    def to_pil(self) -> Image.Image:
        return _decoded(self.image, self.width, self.height, self.format)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        return _shown_in_a_notebook(self)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the encoded bytes as they are, whole or not at all (see :func:`adain.files.write_whole`). A
        path whose extension names another output format is a ValueError: ``save("out.jpg")`` on a PNG result
        wrote PNG bytes under .jpg (ask for ``format="jpeg"``, or name it .png)."""
        path = Path(os.fsdecode(path))
        named = format_from_suffix(path.suffix)
        if named is not None and named != self.format:
            raise ValueError(f"{path}: this result is {self.format.upper()} and {path.suffix} names "
                             f"{named.upper()}: ask for format={named!r}, or save it as {FORMAT_SUFFIXES[self.format]}")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            write_whole(path, self.image)
        except OSError as e:
            if e.filename is not None:
                raise
            # (a full disk's error named no file: the write into the temporary file beside it failed)
            raise OSError(e.errno, e.strerror, str(path)) from None
        return path


@dataclass(frozen=True)
class VideoFrameResult:
    """One stylized frame of a StylizeVideo stream (``index`` counts from 0, in the order sent)."""

    image: bytes = dataclass_field(repr=False)
    index: int
    width: int
    height: int
    format: str
    timings: Timings

    def to_pil(self) -> Image.Image:
        return _decoded(self.image, self.width, self.height, self.format)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        return _shown_in_a_notebook(self)


def _shown_in_a_notebook(result: StylizeResult | VideoFrameResult) -> dict[str, Any]:
    """A result as a notebook shows it (IPython's display protocol): the picture, where it showed only the
    dataclass's line (the library's PIL images show themselves); its own bytes for PNG and JPEG, and WebP, which
    a notebook need not show, as PNG."""
    if result.format in ("png", "jpeg"):
        picture = {f"image/{result.format}": result.image}
    else:
        buf = io.BytesIO()
        result.to_pil().save(buf, "PNG", compress_level=1)
        picture = {"image/png": buf.getvalue()}
    return {**picture, "text/plain": repr(result)}


def _decoded(data: bytes, width: int, height: int, fmt: str) -> Image.Image:
    """The server's image, decoded by its format's own Pillow reader: a print it made for us can be over Pillow's
    decompression-bomb guard (16K: 268 MP), which ``Image.open`` applies and which is process-wide (raising it to
    the size a reply claimed lowered it for the whole application, a thread-safety review found: any
    upload it then checked). The image must be the size the reply says."""
    reader = _READERS.get(fmt)
    img = reader(io.BytesIO(data)) if reader is not None else Image.open(io.BytesIO(data))
    if img.size != (width, height):
        raise ValueError(f"the server's {fmt.upper()} is {img.size[0]}x{img.size[1]}, and its reply says "
                         f"{width}x{height}")
    img.load()
    return img


def _readers() -> dict[str, Callable[[io.BytesIO], Image.Image]]:
    from PIL import JpegImagePlugin, PngImagePlugin

    readers: dict[str, Callable[[io.BytesIO], Image.Image]] = {
        "png": PngImagePlugin.PngImageFile, "jpeg": JpegImagePlugin.JpegImageFile}
    try:
        from PIL import WebPImagePlugin

        readers["webp"] = WebPImagePlugin.WebPImageFile
    except ImportError:  # a Pillow without WebP: Image.open says so
        pass
    return readers


_READERS = _readers()


def _local_error(
    field: str, message: str, code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT
) -> StyleTransferError:
    """An input the client refuses itself, named as the server would (its field among the violations too)."""
    return StyleTransferError(code, f"{field}: {message}", violations=[(field, message)])


def _refused(violations: list[tuple[str, str]]) -> StyleTransferError:
    """Inputs the client refuses itself, several at once: each (field, description) among the violations, and the
    message all of them, as the server words one."""
    return StyleTransferError(grpc.StatusCode.INVALID_ARGUMENT, "; ".join(f"{f}: {m}" for f, m in violations),
                              violations=violations)


def _over_message_limit(field: str, message: str) -> StyleTransferError:
    """A request over the message limit: RESOURCE_EXHAUSTED, the server's code for one (refused here, it was
    INVALID_ARGUMENT, and a caller's handling of the server's code missed it)."""
    return _local_error(field, message, grpc.StatusCode.RESOURCE_EXHAUSTED)


# The refusals found so far of the request being built, where it is built under _every_problem
_FOUND: contextvars.ContextVar[list[StyleTransferError] | None] = contextvars.ContextVar("adain_found", default=None)


@contextlib.contextmanager
def _checked() -> Iterator[None]:
    """One check of a request's arguments: under :func:`_every_problem` its refusal is kept and the next check
    made (elsewhere it is raised)."""
    try:
        yield
    except StyleTransferError as e:
        found = _FOUND.get()
        if found is None or e.code != grpc.StatusCode.INVALID_ARGUMENT or not e.violations:
            raise
        found.append(e)


@contextlib.contextmanager
def _every_problem() -> Iterator[None]:
    """Build a request, then raise one error naming every problem its checks found, as the library and the server
    do (the client named the first only: alpha=1.00000001 with weights=[1] for two styles told of the weights,
    the alpha once they were right)."""
    found: list[StyleTransferError] = []
    token = _FOUND.set(found)
    try:
        yield
    finally:
        _FOUND.reset(token)
    if len(found) == 1:
        raise found[0]
    if found:
        raise _refused([v for e in found for v in e.violations])


@contextlib.contextmanager
def _options_of_video() -> Iterator[None]:
    """The client's own refusals of a video's options named as the server names them, fields of the stream's
    first message (``options.alpha``: they were ``alpha`` here and ``options.alpha`` from the server)."""
    try:
        yield
    except StyleTransferError as e:
        if e.code != grpc.StatusCode.INVALID_ARGUMENT or not e.violations:
            raise
        raise _refused([(f"options.{field}", message) for field, message in e.violations]) from None


def _frames_not_a_file(frames: Any) -> None:
    """stylize_video's frames are images; one path (a clip's) was read a character at a time ("frames[0]: no such
    file: r")."""
    if isinstance(frames, (str, os.PathLike)):
        said = f"one {type(frames).__name__} ({os.fspath(frames)!r})"
    elif isinstance(frames, (bytes, bytearray)):
        said = "one bytes object"
    else:
        return
    raise _local_error("frames", f"an iterable of images, not {said}: a video file goes through "
                       "adain.client.video.stylize_video_file(client, source, output, styles)")


def _mib(n: int) -> str:
    return f"{n / 2**20:.3g} MiB"


def _too_big(field: str, what: str, size: int, max_bytes: int) -> StyleTransferError:
    return _over_message_limit(
        field, f"{what} is {_mib(size)}, more than the {_mib(max_bytes)} a message to the server may hold (the "
        "client's max_message_mb; the server has its own, adain-server --max-message-mb)")


def _as_i16(image: Image.Image) -> Image.Image:
    """A 16-bit grey image in another byte order (I;16B, I;16N, I;16L) as Pillow's little-endian I;16."""
    data = image.tobytes()
    if image.mode == "I;16B" or (image.mode == "I;16N" and sys.byteorder == "big"):
        swapped = array.array("H", data)
        swapped.byteswap()
        data = swapped.tobytes()
    return Image.frombytes("I;16", image.size, data)


def image_bytes(image: ImageInput, field: str = "image", max_bytes: int | None = None) -> bytes:
    """Bytes to send for an image: a file's bytes, the bytes themselves, or a PIL image as PNG (CMYK, and
    32-bit int or float greys, as TIFF), its ICC profile and EXIF kept so that the server reads it as the
    library reads the same image: colours as its file has them, upright by its EXIF orientation.
    A path must name a regular file (a device such as /dev/zero or a FIFO is refused before it is read), and
    no image may be larger than ``max_bytes`` (the client's message limit: a file is measured before it is
    read)."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        if not data:  # sent, it is the field left unset: an empty mask was no mask, and the result unmasked
            raise _local_error(field, "image data is empty")
    elif isinstance(image, Image.Image):
        kept: dict[str, Any] = {}
        grey_key_in_levels(image)  # a 2- or 4-bit grey PNG's key in the levels loading reads (it matched none)
        image.load()  # (saving loads it anyway; a TIFF is turned by its orientation as it loads, the tag then gone)
        if icc := image.info.get("icc_profile"):
            kept["icc_profile"] = icc
        if image.getexif():  # the orientation: turned upright, as the library does; a copy (not the caller's)
            try:
                exif = Image.Exif()
                exif.load(image.getexif().tobytes())
                without_layout(exif)
            except Exception:  # noqa: BLE001 - a tag Pillow cannot write again (text where a number goes): a
                exif = Image.Exif()  # TypeError out of the client; the orientation alone is what the server reads
                if (turn := image.getexif().get(EXIF_ORIENTATION)) in range(2, 9):
                    exif[EXIF_ORIENTATION] = turn
            if exif:
                kept["exif"] = exif
        if (converted := code_points_applied(image)) is not None:  # its colours as code points: in sRGB here
            image = converted
        if image.mode in ("PA", "RGBa"):  # alpha kept (PA became RGB, its transparent pixels coloured)
            image = image.convert("RGBA")
        elif image.mode == "La":
            image = image.convert("LA")
        elif image.mode.startswith("I;16") and image.mode != "I;16":  # other byte orders (TIFFs, >u2 arrays): as
            image = _as_i16(image)  # a 16-bit PNG's levels (as "I", a dark one's were read as 0-255: 250x brighter)
        buf = io.BytesIO()
        encoding = "TIFF" if image.mode in ("CMYK", "I", "F") else "PNG"
        if encoding == "TIFF":  # as they are: the server reads them as the library does
            image.save(buf, "TIFF", compression="tiff_deflate", **kept)
        elif image.mode in ("1", "L", "LA", "I;16", "P", "RGB", "RGBA"):
            image.save(buf, "PNG", compress_level=1, **kept)
        else:  # other modes are converted here, so the profile no longer describes the pixels
            kept.pop("icc_profile", None)
            image.convert("RGB").save(buf, "PNG", compress_level=1, **kept)
        data = buf.getvalue()
        if max_bytes is not None and len(data) > max_bytes:
            raise _over_message_limit(
                field, f"the PIL image is {_mib(len(data))} as {encoding} (lossless), more than the "
                f"{_mib(max_bytes)} a message to the server may hold: pass its file's path or bytes (their own "
                "encoding) instead, or save it as JPEG yourself")
    elif isinstance(image, (str, os.PathLike)):  # (one whose path is bytes too: os.scandir(b"photos")'s entries)
        return _file_bytes(Path(os.fsdecode(image)), field, max_bytes)
    else:
        raise _local_error(field, not_an_image(image))
    if max_bytes is not None and len(data) > max_bytes:
        raise _too_big(field, "the image", len(data), max_bytes)
    return data


@contextlib.contextmanager
def _reading(field: str, path: str | os.PathLike) -> Iterator[None]:
    """A file that cannot be read, in the block, as a StyleTransferError naming ``field`` and the file."""
    try:
        yield
    except FileNotFoundError:
        raise _local_error(field, f"no such file: {os.fspath(path)}") from None
    except OSError as e:
        raise _local_error(field, f"cannot read {os.fspath(path)}: {e.strerror or e}") from None


def _file_bytes(path: Path, field: str, max_bytes: int | None) -> bytes:
    with _reading(field, path):
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise _local_error(field, f"{path} is not a regular file (a folder, a device or a pipe)")
        if max_bytes is not None and st.st_size > max_bytes:
            raise _too_big(field, str(path), st.st_size, max_bytes)
        with open(path, "rb") as f:  # read no more than the limit allows, should the file grow meanwhile
            data = f.read() if max_bytes is None else f.read(max_bytes + 1)
    if not data:  # (as empty bytes: not sent as no image; the server's words, which the CLI puts after the path)
        raise _local_error(field, "image data is empty")
    if max_bytes is not None and len(data) > max_bytes:
        raise _too_big(field, str(path), len(data), max_bytes)
    return data


def no_deadline_past(timeout: float | None) -> float | None:
    """A timeout as gRPC takes it: over NO_DEADLINE_S (inf too) none; gRPC counts a deadline in int64
    nanoseconds, and ~7.4e9 s or more overflowed into one already past (DEADLINE_EXCEEDED at once, which told
    the caller to give a longer --timeout). One <= 0, NaN or no number is refused: 0 came back as "the deadline
    passed while the request was queued", -1 as a bare "Deadline Exceeded"."""
    if timeout is not None and not (_real(timeout) and timeout > 0):
        raise _local_error("timeout", f"must be a number of seconds > 0 (None: no deadline), got {timeout!r}")
    return None if timeout is not None and timeout >= NO_DEADLINE_S else timeout


def check_request_size(request: Any, max_bytes: int) -> None:
    """A request larger than the client's message limit as a StyleTransferError naming its largest parts
    (gRPC would say only "Sent message larger than max"); each image alone was checked as it was read."""
    size = request.ByteSize()
    if size <= max_bytes:
        return
    parts = [(name, len(getattr(request, name))) for name in ("content", "mask", "labels") if hasattr(request, name)]
    for i, style in enumerate(getattr(request, "styles", ())):
        parts += [(f"styles[{i}]", len(style.image)), (f"styles[{i}].mask", len(style.mask))]
    largest = ", ".join(f"{name} {_mib(n)}" for name, n in sorted(parts, key=lambda p: -p[1])[:3] if n)
    raise _over_message_limit(
        "request", f"{_mib(size)} in all ({largest}), more than the {_mib(max_bytes)} a message to the server may "
        "hold (the client's max_message_mb; the server has its own, adain-server --max-message-mb)")


def _style_message(style: Any, weight: float | None, i: int, max_bytes: int | None = None) -> pb.Style:
    msg = pb.Style()
    if isinstance(style, StyleRef):
        msg.style_id = style.id
    elif isinstance(style, str) and style.startswith(STYLE_ID_PREFIX):
        msg.style_id = style[len(STYLE_ID_PREFIX) :]
    else:
        msg.image = image_bytes(style, f"styles[{i}]", max_bytes)
    if weight is not None:
        msg.weight = _float32(weight, f"styles[{i}].weight", zero_differs=True)
    return msg


def _per_style(values: Any, name: str) -> list[Any] | None:
    """A per-style argument (weights, masks, label_values, region_alphas) as a list: a string was taken apart
    character by character (weights="10" ran as [1, 0], without a word), a float raised TypeError."""
    if values is None:
        return None
    if isinstance(values, (str, bytes, bytearray, memoryview, Image.Image, AbstractSet, Mapping)) or \
            not isinstance(values, Iterable):  # a set's or a dict's order is not the styles': {20, 10} ran as [10, 20]
        raise _local_error(name, f"must be a list, one per style; got a {type(values).__name__}")
    return list(values)


def _is_preset(style: Any) -> bool:
    return isinstance(style, Preset) or (isinstance(style, str) and style.startswith(PRESET_PREFIX))


def _styles(
    styles: Any, weights: Sequence[float] | None, max_bytes: int | None = None
) -> tuple[list[pb.Style], bool]:
    """The styles' messages, and whether each was taken (a style's problem kept by :func:`_checked`)."""
    if isinstance(styles, (str, os.PathLike, bytes, bytearray, memoryview, Image.Image, StyleRef, tuple)) or \
            not isinstance(styles, Iterable):  # one style (None or a number: named as styles[0] below)
        styles = [styles]
    items = list(styles)
    weights = _per_style(weights, "weights")
    if weights is not None and len(weights) != len(items):
        raise _local_error("weights", f"{plural(len(weights), 'weight')} for {plural(len(items), 'style')}")
    if any(_is_preset(item) for item in items):  # (it was "styles[0]: no such file: preset:calm-sea")
        raise _local_error("preset", "a preset stands alone: it has its own styles and weights; give it by itself, "
                           "not in a list with styles")
    out = []
    for i, item in enumerate(items):
        with _checked():  # (each style's problem said, where several have one)
            weight = None if weights is None else weights[i]
            if isinstance(item, tuple):
                if len(item) != 2:
                    raise _local_error(f"styles[{i}]", "a tuple style must be (style, weight)")
                if weights is not None:
                    raise _local_error(f"styles[{i}]", "give weights either in (style, weight) tuples or in weights=")
                item, weight = item
            out.append(_style_message(item, weight, i, max_bytes))
    return out, len(out) == len(items)


def _parse_details(metadata: Iterable[tuple[str, Any]] | None) -> tuple[list[tuple[str, str]], float | None]:
    """A failure's rich details: its BadRequest's (field, description) pairs and its RetryInfo's delay in seconds."""
    try:
        from google.rpc import error_details_pb2, status_pb2
    except ImportError:  # googleapis-common-protos is optional for the client
        return [], None
    out: list[tuple[str, str]] = []
    retry: float | None = None
    for key, value in metadata or ():
        if key != "grpc-status-details-bin":
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except Exception:
            return [], None
        for detail in status.details:
            bad, info = error_details_pb2.BadRequest(), error_details_pb2.RetryInfo()
            if detail.Is(bad.DESCRIPTOR) and detail.Unpack(bad):
                out.extend((v.field, v.description) for v in bad.field_violations)
            elif detail.Is(info.DESCRIPTOR) and detail.Unpack(info):
                retry = info.retry_delay.ToMilliseconds() / 1000
    return out, retry


def _metadata_value(metadata: Iterable[tuple[str, Any]] | None, key: str) -> str | None:
    for k, v in metadata or ():
        if k == key:
            return v if isinstance(v, str) else v.decode(errors="replace")
    return None


def _reply_ids(initial: Any, trailing: Any, request_id: str | None) -> tuple[str | None, str]:
    """A reply's (request id, the replica that answered) from its metadata."""
    rid = _metadata_value(trailing, REQUEST_ID_KEY) or _metadata_value(initial, REQUEST_ID_KEY) or request_id
    served_by = _metadata_value(initial, SERVED_BY_KEY) or _metadata_value(trailing, SERVED_BY_KEY) or ""
    return rid, served_by


def _unlisted(initial: Any, trailing: Any, needed: Sequence[str]) -> list[str] | None:
    """The features of ``needed`` (:func:`needed_features`) that the reply's server does not list in its
    x-adain-features; None where the reply carries no list (a server older than it: ask its GetServerInfo)."""
    if not needed:
        return []
    listed = _metadata_value(initial, FEATURES_KEY) or _metadata_value(trailing, FEATURES_KEY)
    return None if listed is None else [f for f in needed if f not in listed.split(",")]


def _unserved(missing: Sequence[str], served_by: str, rid: str | None) -> StyleTransferError:
    """A reply refused: its server does not have ``missing``, which an older server drops unread and answers
    without (StyleTransferError UNIMPLEMENTED)."""
    e = StyleTransferError(grpc.StatusCode.UNIMPLEMENTED, (
        f"the server that answered{f' ({served_by})' if served_by else ''} does not list "
        f"{' or '.join(repr(m) for m in missing)} in its features, which this call uses "
        f"({'; '.join(FEATURE_FIELDS[m] for m in missing)}): a server older than a feature drops its fields unread "
        "and answers without them, and one older than the list (before 2026-12-05) cannot say, so its result was "
        "not taken. Upgrade that server, or leave the option out"), request_id=rid)
    e.unserved = True  # (sent once more: over several replicas the next may have it)
    return e


# A call refused for a feature its replica lacks is sent again, up to this many times in all: over a fleet
# mid-upgrade, round robin sends the next try to another replica (the page failed every other photo with keep_exif
# ticked). Round robin only picks among replicas already connected, so a client whose other replicas were still
# connecting was answered by the old one every time (1 in 12 calls of a loaded test): the tries after the second
# wait UNSERVED_PAUSES_S first, time for the others to connect.
UNSERVED_TRIES = 4
UNSERVED_PAUSES_S = (0.0, 0.0, 0.2, 0.5)  # before each try


def unserved_retry(e: StyleTransferError, tries_left: int) -> float | None:
    """Seconds to wait before sending once more a call that raised ``e``, or None to raise it: only a reply
    refused for a feature its replica lacks (:func:`_unserved`) is sent again."""
    if not tries_left or not getattr(e, "unserved", False):
        return None
    return UNSERVED_PAUSES_S[UNSERVED_TRIES - tries_left]


NO_FEATURES_HINT = " (its reply lists no features: "  # how _rpc_error's hint begins (the CLI keeps it)
FEATURES_KEPT = 64  # replicas whose GetServerInfo.features a client keeps (servers older than x-adain-features)
FEATURES_ASK_S = 5.0  # each GetServerInfo that learns them (a call that does nothing: milliseconds)
FEATURES_ASKS = 24  # GetServerInfo calls one reply may make to reach the replica that answered it
FEATURES_FOR_S = 60.0  # how long what a replica's GetServerInfo said is taken as what it implements


# What each feature a request may need is in the client's terms (the options of stylize and stylize_video).
FEATURE_FIELDS = {"regions": "masks, labels or region_alphas", "keep_exif": "keep_exif",
                  "library": "a preset (preset:NAME)"}


def needed_features(msg: pb.StylizeRequest | pb.VideoOptions) -> list[str]:
    """The features of :data:`adain.wire.FEATURES` a request uses that servers before them dropped without a word
    (the others were answered with an error, or came with the first video and refine)."""
    needed = []
    if msg.labels or any(s.mask or s.HasField("label") or s.HasField("alpha") for s in msg.styles):
        needed.append("regions")
    if isinstance(msg, pb.StylizeRequest) and msg.keep_exif:
        needed.append("keep_exif")
    if msg.preset:  # (a server with presets but before preserve_color's presence ignored a NONE given beside one)
        needed.append("library")
    return needed


# gRPC's own refusal of a request over the server's receive limit (no handler of the server's runs to name a field);
# "CLIENT: Received ..." is a reply over this client's own
REQUEST_OVER_RE = re.compile(r"SERVER: Received message larger than max \((\d+) vs\. (\d+)\)")


def work_seconds(width: int, height: int, content_size: int, refine_steps: int) -> float:
    """Seconds an image's call needs beyond the base deadline: its pixels as rendered (at ``content_size``,
    never scaled up) and its refine steps."""
    longest = max(width, height)
    scale = content_size / longest if 0 < content_size < longest else 1.0  # (a 400-digit size: no float division)
    steps = min(max(refine_steps, 0), 2**31)
    return PER_MEGAPIXEL_S * width * height * scale**2 / 1e6 + PER_REFINE_STEP_S * steps


def image_size(data: bytes) -> tuple[int, int]:
    """An encoded image's width and height from its header, (0, 0) where it has none Pillow reads (the server
    says what is wrong with it)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except Exception:  # noqa: BLE001
        return 0, 0


def _rpc_error(e: grpc.RpcError, request_id: str | None, needed: Sequence[str] = ()) -> StyleTransferError:
    """``needed``: the features the call used (:func:`needed_features`); a refusal of bad input whose reply lists
    no features says the server, if older, did not read them (a preset sent to one before the library was refused
    "at least 1 style is required")."""
    code = e.code() if callable(getattr(e, "code", None)) else grpc.StatusCode.UNKNOWN
    details = " ".join(((e.details() if callable(getattr(e, "details", None)) else None) or str(code.name)).split())
    trailing = e.trailing_metadata() if callable(getattr(e, "trailing_metadata", None)) else None
    rid = _metadata_value(trailing, REQUEST_ID_KEY) or request_id
    violations, retry_after = _parse_details(trailing)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and (over := REQUEST_OVER_RE.search(details)):
        details += (f": the request, {int(over[1]):,} bytes, is over the server's message limit of {int(over[2]):,} "
                    "bytes (its --max-message-mb; GetServerInfo's limits.max_message_bytes): send smaller images")
    if needed and code == grpc.StatusCode.INVALID_ARGUMENT and _metadata_value(trailing, FEATURES_KEY) is None:
        details += (f"{NO_FEATURES_HINT}if the server is older than what this call uses, "
                    f"{'; '.join(FEATURE_FIELDS[f] for f in needed)}, it did not read them)")
    return StyleTransferError(code, details, request_id=rid, violations=violations, retry_after=retry_after)


MAX_RETRIES = 4  # gRPC's retry policy allows at most 5 attempts; more would be cut to that silently
MAX_RECONNECT_BACKOFF_MS = 5000  # the longest wait between a channel's tries to reach a server that is down


def service_config(retries: int) -> str:
    """The channel's service config: round-robin over every address the target resolves to, gRPC
    client-side health checking (a replica reporting NOT_SERVING, e.g. draining, gets no new calls), and
    retries of UNAVAILABLE up to ``retries`` times (gRPC caps at 4), which go to another replica."""
    config: dict[str, Any] = {
        "loadBalancingConfig": [{"round_robin": {}}],
        "healthCheckConfig": {"serviceName": SERVICE_NAME},
    }
    if retries > 0:
        policy = {
            "maxAttempts": retries + 1,
            "initialBackoff": "0.1s",
            "maxBackoff": "2s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        }
        config["methodConfig"] = [{"name": [{"service": SERVICE_NAME}], "retryPolicy": policy}]
    return json.dumps(config)


# gRPC's own target schemes (grpc/doc/naming.md) besides dns:, ipv4: and ipv6: (whose ports are checked)
_PASSED_SCHEMES = ("unix", "unix-abstract", "vsock", "xds")
_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_EXAMPLE = f"e.g. {DEFAULT_ADDRESS}, [::1]:{DEFAULT_PORT}, dns:///NAME:PORT or unix:/PATH"


def target_problem(target: str, tls: bool = False) -> str | None:
    """What is wrong with a target that gRPC would take and then fail every call on, or None. gRPC reads
    ``http://host:port`` as a host name ("Misformatted domain name"), takes a missing port as 443 (never
    adain-server's, but TLS's: with ``tls`` it may be left out, as behind an ingress) and a port over 65535
    modulo 65536. The forms: HOST:PORT, [IPV6]:PORT, a comma-separated list of IP:PORT (empty items skipped, as
    a list built in a shell may end with a comma), dns:[//DNS/]NAME:PORT, ipv4:/ipv6: lists, and unix:,
    unix-abstract:, vsock:, xds: as they are."""
    if not isinstance(target, str):  # (a port number alone: an AttributeError from strip)
        return f"must be a string HOST:PORT ({_EXAMPLE}), not the {type(target).__name__} {target!r}"
    text = target.strip()
    if not text:
        return f"empty: give the server's HOST:PORT ({_EXAMPLE})"
    m = _SCHEME_RE.match(text)
    scheme, rest = (m.group(1).lower(), text[m.end() :]) if m else ("", text)
    if scheme in _PASSED_SCHEMES:
        return None if rest.strip("/") else f"{text} names nothing ({_EXAMPLE})"
    if scheme == "dns":
        if rest.startswith("//"):  # dns://RESOLVER/NAME:PORT; dns:///NAME:PORT: the system's resolver
            resolver, slash, rest = rest[2:].partition("/")
            if not slash:
                return f"{text}: names no host: dns:///NAME:PORT (three slashes) for the system's resolver"
        problem = _host_port(rest, tls=tls)
        return f"{text}: {problem}" if problem else None
    if m and rest.startswith("//"):  # http://, https://, grpc://: gRPC reads the whole as a host name
        netloc = rest[2:].split("/")[0] or DEFAULT_HOST
        if ":" not in netloc.rpartition("]")[2]:
            netloc += f":{DEFAULT_PORT}"
        return (f"{text}: a URL, not a gRPC address: give HOST:PORT ({netloc}); TLS is chosen by the client's "
                "tls or root_certificates (adain-stylize --tls, --ca-cert), not by a scheme")
    listed = scheme in ("ipv4", "ipv6")
    parts = [p.strip() for p in (rest if listed else text).split(",") if p.strip()] or [""]
    for part in parts:
        problem = _host_port(part, ip=listed or len(parts) > 1, tls=tls)
        if problem:
            return f"{text}: {problem}" if len(parts) == 1 and not listed else f"{text}: {part!r}: {problem}"
    return None


def _host_port(text: str, ip: bool = False, tls: bool = False) -> str | None:
    """The problem with one HOST:PORT, or None (``ip``: the host must be an IP address, as in a list; ``tls``:
    no port means 443)."""
    if not text:
        return f"an empty address ({_EXAMPLE})"
    if text.startswith("["):
        host, bracket, port = text[1:].partition("]")
        if not bracket or (port and not port.startswith(":")):
            return f"malformed; an IPv6 address is [ADDRESS]:PORT, e.g. [::1]:{DEFAULT_PORT}"
        has_port, port = bool(port), port[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return f"[{host}] is no IPv6 address"
    else:
        if text.count(":") > 1:
            return f"an IPv6 address goes in brackets, e.g. [::1]:{DEFAULT_PORT}"
        host, sep, port = text.rpartition(":")
        has_port = bool(sep)
        if not sep:
            host, port = text, ""
    if (not has_port and not tls) or (has_port and not port):  # gRPC would take 443
        shown = f"[{host}]" if text.startswith("[") else host
        return f"no port: give HOST:PORT, e.g. {shown}:{DEFAULT_PORT} (adain-server's default)"
    if not host:
        return f"no host before the port ({_EXAMPLE})"
    if port and (not port.isdigit() or not 1 <= int(port) <= 65535):
        return f"the port must be a number in 1-65535, got {port!r}"
    if ip:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return ("a list of addresses must be IP addresses; for names use one dns:///NAME:PORT target whose "
                    "name resolves to every replica")
    return None


def channel_target(target: str, tls: bool = False) -> str:
    """What gRPC is given: ``host:port`` and any URI gRPC accepts (``dns:///name:port`` for a Kubernetes
    headless Service) as they are; a comma-separated list of IP addresses (``127.0.0.1:50051,
    127.0.0.1:50052``) as one ``ipv4:``/``ipv6:`` target, so the calls are balanced over them. A target gRPC
    would misread (:func:`target_problem`) is a StyleTransferError naming ``server``."""
    problem = target_problem(target, tls)
    if problem is not None:
        raise _local_error("server", problem)
    text = target.strip()
    parts = [p.strip() for p in text.split(",") if p.strip()]
    m = _SCHEME_RE.match(text)
    if m and m.group(1).lower() in ("dns", "ipv4", "ipv6", *_PASSED_SCHEMES):
        return text
    if len(parts) <= 1:  # one address, less a list's trailing comma (gRPC failed to parse "host:port,")
        return parts[0] if parts else text
    ipv6 = all(p.startswith("[") for p in parts)
    return ("ipv6:" if ipv6 else "ipv4:") + ",".join(parts)


def one_server(target: str) -> bool:
    """Whether a channel target (:func:`channel_target`'s) names one server alone: one IP address or localhost (also
    as dns:, or a list of one), or a socket path. Another host name may resolve to several replicas."""
    scheme = (m.group(1).lower() if (m := _SCHEME_RE.match(target)) else "")
    if scheme in ("unix", "unix-abstract", "vsock"):
        return True
    if scheme in _PASSED_SCHEMES:  # xds:
        return False
    if scheme not in ("ipv4", "ipv6", "dns"):  # (HOST:PORT: the host read as a scheme)
        scheme = ""
    rest = target[len(scheme) + 1:] if scheme else target
    if scheme == "dns" and rest.startswith("//"):  # dns://RESOLVER/NAME:PORT
        rest = rest[2:].partition("/")[2]
    parts = [p.strip() for p in rest.split(",") if p.strip()]
    if len(parts) != 1:
        return False
    host = parts[0][1:].partition("]")[0] if parts[0].startswith("[") else parts[0].rpartition(":")[0] or parts[0]
    if host.lower() == "localhost":
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _pem(value: bytes | str | os.PathLike | None, field: str) -> bytes | None:
    """PEM bytes, or a file's; a file that cannot be read is a StyleTransferError naming ``field``."""
    if value is None or isinstance(value, bytes):
        return value
    with _reading(field, value):
        return Path(os.fsdecode(value)).read_bytes()


def _check_tls(root: bytes | None, chain: bytes | None, key: bytes | None, chain_file: Any, key_file: Any) -> None:
    """TLS material that gRPC would take and then fail every call with (adain-web started, its health 503 for
    good, blaming "Connection refused"): a CA file that holds no certificate, a client certificate or key that
    is no PEM, a key that is not the certificate's (checked where both are files: Python's ssl reads files)."""
    import ssl

    if root is not None:
        # the certificates alone: a bundle's comments may be any text (a CA's name with accents was refused)
        blocks = PEM_CERTIFICATE_RE.findall(root)
        try:
            if not blocks:
                raise ValueError("no -----BEGIN CERTIFICATE----- block")
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(
                cadata=b"\n".join(blocks).decode("ascii", "replace"))
        except (ssl.SSLError, ValueError) as e:
            raise _local_error("root_certificates", f"holds no PEM certificate that reads ({_ssl_why(e)})") from None
    if chain is not None and b"-----BEGIN CERTIFICATE-----" not in chain:
        raise _local_error("client_certificate", "holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    if key is not None and b"PRIVATE KEY-----" not in key:
        raise _local_error("client_key", "holds no PEM private key (-----BEGIN PRIVATE KEY-----)")
    if key is not None and b"ENCRYPTED" in key.split(b"-----END", 1)[0]:  # (OpenSSL would ask for its pass phrase)
        raise _local_error("client_key", "is encrypted: gRPC takes no pass phrase (write it out unencrypted, e.g. "
                                         "openssl pkey -in KEY -out KEY.plain, and keep that file private)")
    if isinstance(chain_file, (str, os.PathLike)) and isinstance(key_file, (str, os.PathLike)):
        try:  # (a pass phrase asked for all the same is none: never a prompt on the terminal)
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(chain_file, key_file, password=lambda: b"")
        except ssl.SSLError as e:
            raise _local_error("client_key", f"is not the key of the client certificate, or either does not read "
                                             f"({_ssl_why(e)})") from None


def _ssl_why(e: Exception) -> str:
    return getattr(e, "reason", None) or str(e)


# adain.wire.TOKEN_RE: a token outside it failed every call with "INTERNAL: Invalid metadata"
TOKEN_RULE = "a token is printable ASCII without spaces (what an HTTP/2 header carries)"


def _token_file_problem(line: str) -> str:
    """Why a token file's first line is no token: the server's tokens file (``NAME TOKEN`` lines, adain-server
    --auth-tokens-file) given to a client was refused as "printable ASCII without spaces", which did not say
    what to give instead."""
    fields = line.split()
    if len(fields) == 2 and all(TOKEN_RE.fullmatch(f) for f in fields):
        return ("this looks like the server's --auth-tokens-file (NAME TOKEN lines); give the client a file that "
                "holds the token alone")
    return f"the file's first line must be the token alone: {TOKEN_RULE}"


class _TokenSource:
    """The bearer token: given, or the first line of a file read again when it changes."""

    def __init__(self, token: str | None, path: str | os.PathLike | None) -> None:
        if token is not None and path is not None:
            raise ValueError("give token or token_file, not both")
        self._token = token.strip() if token else None
        if self._token is not None and not TOKEN_RE.fullmatch(self._token):
            raise _local_error("token", TOKEN_RULE)
        self._path = path
        self._seen: tuple[int, int] | None = None
        if path is not None:  # a missing, unreadable or empty file is an error now, not at the first call
            try:
                with _reading("token_file", path):
                    self()
            except UnicodeDecodeError:
                raise _local_error("token_file", f"{os.fspath(path)} is not UTF-8 text") from None
            except ValueError as e:
                raise _local_error("token_file", str(e)) from None

    def __call__(self) -> str | None:
        if self._path is None:
            return self._token
        try:
            st = os.stat(self._path)
            if (st.st_mtime_ns, st.st_size) != self._seen:
                lines = [x.strip() for x in Path(self._path).read_text(encoding="utf-8-sig").splitlines()]
                token = next((x for x in lines if x and not x.startswith("#")), None)
                if token is None:
                    raise ValueError(f"{os.fspath(self._path)} holds no token")
                if not TOKEN_RE.fullmatch(token):
                    raise ValueError(f"{os.fspath(self._path)}: {_token_file_problem(token)}")
                self._token, self._seen = token, (st.st_mtime_ns, st.st_size)
        except (OSError, ValueError, UnicodeDecodeError):
            if self._token is None:  # at first: say so; later, a file being rewritten keeps the last token
                raise
        return self._token


def header_value(text: str) -> str:
    """``text`` as a header can carry it: as it is where it is printable ASCII without spaces, else with the
    characters that are not (and ``%``) percent-encoded as UTF-8. A service passing on its caller's request id
    or user name ("café-42", "José") got gRPC's own exception from the asyncio client, and INTERNAL "Invalid
    metadata" from the blocking one; encoded, distinct names stay distinct (the server takes turns by them)."""
    if text.isascii() and text.isprintable() and " " not in text and "%" not in text:
        return text  # (with a "%" it is encoded too: "Jos%C3%A9" was sent as "José" is)
    return "".join(c if c.isascii() and c.isprintable() and c not in " %" else quote(c, safe="") for c in text)


class _ClientBase:
    """What the blocking and the asyncio client share: the channel's settings, the token, the styles this
    client registered. A subclass opens the channel (``_open``) and makes the calls."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        tls: bool = False,
        root_certificates: bytes | str | os.PathLike | None = None,
        retries: int = 3,
        max_message_mb: float = DEFAULT_MAX_MESSAGE_MB,
        options: Sequence[tuple[str, Any]] = (),
        token: str | None = None,
        token_file: str | os.PathLike | None = None,
        client_certificate: bytes | str | os.PathLike | None = None,
        client_key: bytes | str | os.PathLike | None = None,
    ) -> None:
        if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= MAX_RETRIES:
            raise ValueError(f"retries must be a whole number in [0, {MAX_RETRIES}] (gRPC's limit), got {retries!r}")
        try:
            no_deadline_past(timeout)
        except StyleTransferError as e:
            raise ValueError(e.details) from None
        self.target = target
        self.timeout = timeout
        self._registered: OrderedDict[str, bytes] = OrderedDict()  # styles this client registered, by id
        self._inline: set[str] = set()  # registered ids some replica did not know: sent as bytes from then on
        # replica (x-served-by) -> its GetServerInfo.features, for servers that list them there alone
        self._features: OrderedDict[str, tuple[float, tuple[str, ...]]] = OrderedDict()  # (when learned, features)
        self._lock = threading.Lock()  # the three above, shared by the threads (or tasks) of one client
        limit = int(max_message_mb * 1024 * 1024)
        self.max_message_bytes = limit  # what one request may hold: larger images are refused before reading
        opts: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.enable_retries", 1 if retries > 0 else 0),
            # A request bigger than the retry buffer is never retried: let whole images be retried.
            ("grpc.per_rpc_retry_buffer_size", limit),
            # gRPC's reconnect backoff grows to 120 s: a server back after a 2-minute outage was not called for up
            # to a minute more (adain-web answered 503 for 50-69 s after it served). A try every few seconds costs
            # nothing beside a call.
            ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
            *KEEPALIVE_OPTIONS,
        ]
        opts.append(("grpc.service_config", service_config(retries)))
        opts = [*options, *opts]  # gRPC takes a key's first value: the caller's win (they were ignored after ours)
        secure = bool(tls or root_certificates is not None or client_certificate is not None)
        target = channel_target(target, secure)
        # one server behind the target: a refused reply sent again would reach it again (a balancer in front of one
        # address balances connections, not calls)
        self._unserved_tries = 1 if one_server(target) else UNSERVED_TRIES
        if (client_certificate is None) != (client_key is None):
            raise ValueError("client_certificate and client_key go together")
        self._token = _TokenSource(token, token_file)
        creds = None
        if secure:
            root, key, chain = (_pem(root_certificates, "root_certificates"), _pem(client_key, "client_key"),
                                _pem(client_certificate, "client_certificate"))
            _check_tls(root, chain, key, client_certificate, client_key)
            creds = grpc.ssl_channel_credentials(root_certificates=root, private_key=key, certificate_chain=chain)
        self._closed = False  # set by close(): a call after it is a StyleTransferError, not gRPC's ValueError
        self._connect(target, creds, opts)

    def _keep_features(self, reply: pb.ServerInfo, initial: Any, trailing: Any) -> str:
        """A GetServerInfo answer's features, kept by the replica that gave it (returned)."""
        _, replica = _reply_ids(initial, trailing, None)
        with self._lock:
            self._features[replica] = (time.monotonic(), tuple(reply.features))
            self._features.move_to_end(replica)
            while len(self._features) > FEATURES_KEPT:
                self._features.popitem(last=False)
        return replica

    def _known_features(self, replica: str) -> tuple[str, ...] | None:
        """A replica's features as learned within FEATURES_FOR_S, else None (to be asked again: a replica rolled
        back or replaced under its name kept the first answer for the client's life)."""
        with self._lock:
            known = self._features.get(replica)
        return known[1] if known is not None and time.monotonic() - known[0] < FEATURES_FOR_S else None

    def _served_by_list(self, initial: Any, trailing: Any, needed: Sequence[str], request_id: str | None
                        ) -> tuple[str | None, str, bool]:
        """A reply's (request id, replica, whether it carries no list to check ``needed`` by); refused where the
        list it carries lacks a needed feature."""
        rid, served_by = _reply_ids(initial, trailing, request_id)
        missing = _unlisted(initial, trailing, needed)
        if missing:
            raise _unserved(missing, served_by, rid)
        return rid, served_by, missing is None

    def _to_ask(self, unlisted: bool, served_by: str) -> bool:
        """Whether the replica's GetServerInfo is to be asked: its reply had no list, it has a name to match, and its
        features are not known yet."""
        return unlisted and bool(served_by) and self._known_features(served_by) is None

    @staticmethod
    def _asked_enough(served_by: str, replica: str, asked: int) -> bool:
        """Whether asking GetServerInfo can stop: ``replica`` (the one that answered the ``asked``-th call) is the
        one looked for, or FEATURES_ASKS calls were made. (Three turns of the round robin were the bound: other
        threads' calls take turns of the same channel between this call's asks, and good results were refused as
        not learned.)"""
        return replica == served_by or asked >= FEATURES_ASKS

    @staticmethod
    def _not_learned(served_by: str, rid: str | None, why: str) -> StyleTransferError:
        return StyleTransferError(grpc.StatusCode.UNAVAILABLE, (
            f"could not learn what the server that answered ({served_by}) implements: its reply lists no features, "
            f"and {why}; its result was not taken (try again)"), request_id=rid)

    def _served_by_info(self, needed: Sequence[str], unlisted: bool, served_by: str, rid: str | None
                        ) -> tuple[str | None, str]:
        """(request id, replica), refused where a reply without the list came from a replica whose features (its
        GetServerInfo's) lack a needed one, or could not be learned (UNAVAILABLE: not the same as lacking)."""
        known = self._known_features(served_by) if unlisted and served_by else ()
        if known is None:
            raise self._not_learned(served_by, rid, "GetServerInfo reached only other replicas")
        missing = [f for f in needed if f not in known] if unlisted else []
        if missing:
            raise _unserved(missing, served_by, rid)
        return rid, served_by

    def _connect(self, target: str, creds: grpc.ChannelCredentials | None, options: list[tuple[str, Any]]) -> None:
        self._channel = self._open(target, creds, options)
        self._stub = pb_grpc.StyleTransferStub(self._channel)

    def _open(self, target: str, creds: grpc.ChannelCredentials | None, options: list[tuple[str, Any]]) -> Any:
        raise NotImplementedError

    def _metadata(
        self, request_id: str | None, end_user: str | None = None
    ) -> tuple[str, tuple[tuple[str, str], ...]]:
        """(the call's request id, what it sends besides its request): the id (a new one where the caller gave
        none), the end user (for a front end's calls) and the token, when there is one. Every call asks for it
        first, so a closed client refuses here."""
        self._check_open()
        for name, value in (("request_id", request_id), ("end_user", end_user)):
            if value is not None and not isinstance(value, str):
                raise _local_error(name, f"must be a str, got a {type(value).__name__}")
        request_id = request_id or new_request_id()
        metadata: tuple[tuple[str, str], ...] = ((REQUEST_ID_KEY, header_value(request_id)),)
        if end_user:
            metadata += ((END_USER_KEY, header_value(end_user)),)
        token = self._token()
        if token:
            metadata += ((AUTH_KEY, f"Bearer {token}"),)
        return request_id, metadata

    def _check_open(self) -> None:
        if self._closed:
            raise StyleTransferError(grpc.StatusCode.FAILED_PRECONDITION, "this client is closed (close() or the end "
                                     "of its with block); make a new one")

    def _deadline(self, timeout: float | None) -> float | None:
        return no_deadline_past(self.timeout if timeout is None else timeout)

    def _image_timeout(self, request: pb.StylizeRequest, timeout: float | None) -> float | None:
        """An image call's timeout: the caller's (the call's or the client's), else the default grown with the
        work (:class:`_DefaultTimeout`)."""
        if timeout is not None or not isinstance(self.timeout, _DefaultTimeout):
            return timeout
        w, h = image_size(request.content)
        return float(self.timeout) + work_seconds(w, h, request.content_size, request.refine_steps)

    def _remember(self, style_id: str, data: bytes) -> str:
        """Keep a registered style's bytes (the last REMEMBERED_STYLES) for replicas that lack it."""
        with self._lock:  # (two threads: one's move_to_end found its style evicted by the other, a KeyError)
            self._registered[style_id] = data
            self._registered.move_to_end(style_id)
            while len(self._registered) > REMEMBERED_STYLES:
                self._inline.discard(self._registered.popitem(last=False)[0])
        return style_id

    @contextlib.contextmanager
    def _unless_closed(self) -> Iterator[None]:
        """gRPC's ValueError for a call on a channel that close() closed after the call's own check (another
        thread's close): the same StyleTransferError FAILED_PRECONDITION as a call after close()."""
        try:
            yield
        except ValueError:
            if self._closed:
                self._check_open()
            raise

    def _inline_unknown_styles(self, request: pb.StylizeRequest, error: StyleTransferError) -> bool:
        """Replace the registered styles the server did not know by their bytes, where this client has
        them; True if any was replaced (then the call is worth one more try)."""
        if error.code != grpc.StatusCode.INVALID_ARGUMENT:
            return False
        replaced = False
        for field, description in error.violations:
            m = re.fullmatch(r"styles\[(\d+)\]\.style_id", field)
            if not m or "unknown style id" not in description or int(m.group(1)) >= len(request.styles):
                continue
            style = request.styles[int(m.group(1))]
            data = self._registered.get(style.style_id)
            if data is not None:
                self._inline.add(style.style_id)
                style.image = data  # the oneof: clears style_id
                replaced = True
        if replaced:
            check_request_size(request, self.max_message_bytes)
        return replaced

    def _with_known_bytes(self, request: pb.StylizeRequest | pb.VideoOptions, every: bool = False) -> None:
        """Send as bytes the registered styles that a replica was found not to know: with round-robin
        balancing that replica would otherwise fail the id on every turn. ``every``: each one this client
        registered (a video stream's: it is not sent again once its frames are read, so a replica that
        lacks one would end it for good; the bytes go once per stream)."""
        for style in request.styles:
            if style.WhichOneof("source") == "style_id" and (every or style.style_id in self._inline):
                data = self._registered.get(style.style_id)  # (another thread may have let it go since)
                if data is not None:
                    style.image = data
                    check_request_size(request, self.max_message_bytes)


class _Gate:
    """Holds a stream's frames until its replica is checked: open, they go; refused, none is read."""

    def __init__(self) -> None:
        self._decided = threading.Event()
        self._open = False

    def open(self) -> None:
        self._open = True
        self._decided.set()

    def close(self) -> None:
        """Refuse, unless opened already."""
        self._decided.set()

    def passed(self) -> bool:
        """Wait until decided: whether the frames may go."""
        self._decided.wait()
        return self._open


def _cancel_when(call: Any, stop: Callable[[], bool], ended: threading.Event, said: list[Any] | None = None) -> None:
    """Cancel ``call`` once ``stop()`` says so, asking at once (a caller gone before the call began was asked first
    a quarter of a second later, the server rendering meanwhile), then four times a second until the call has ended;
    ``said`` gets True, or what ``stop()`` raised (which cancels it too), before the cancel."""
    while not ended.is_set():
        try:
            stopped: Any = stop()
        except Exception as e:  # noqa: BLE001 - the caller's: raised in its own thread (:func:`_stoppable`)
            stopped = e
        if stopped:
            if said is not None:
                said.append(stopped if isinstance(stopped, Exception) else True)
            call.cancel()
            return
        ended.wait(0.25)


@contextlib.contextmanager
def _stoppable(call: Any, stop: Callable[[], bool], request_id: str | None) -> Iterator[None]:
    """Around waiting for ``call``: cancelled once ``stop()`` says so (:func:`_cancel_when`, on a thread of its
    own), which raises StyleTransferError CANCELLED here, however the cancel surfaced; a ``stop()`` that raised
    cancels it and its error is raised here."""
    ended = threading.Event()
    said: list[bool | Exception] = []  # (see _cancel_when)
    threading.Thread(target=_cancel_when, args=(call, stop, ended, said), name="call-stop", daemon=True).start()
    try:
        yield
    except (grpc.RpcError, grpc.FutureCancelledError):
        if not said:  # (not this thread's cancel: as it is)
            raise
        if isinstance(said[0], Exception):
            raise said[0] from None
        raise StyleTransferError(grpc.StatusCode.CANCELLED, "the call was stopped (stop() said so)",
                                 request_id=request_id) from None
    finally:
        ended.set()


class StyleTransferClient(_ClientBase):
    """A blocking client of ``adain.v1.StyleTransfer``; thread-safe (share one across threads).
    (:class:`adain.client.aio.AsyncStyleTransferClient` is the same for asyncio.)

    ``target`` is ``host:port``, a comma-separated list of IP:port (replicas), or any gRPC target
    (``dns:///name:port``, ``unix:/path``); a port is required (gRPC would take 443), and a URL
    (``http://...``) is refused (TLS is ``tls``'s choice): a StyleTransferError naming ``server``. Calls are
    balanced round-robin over every address, skipping replicas whose gRPC health is not SERVING.
    ``timeout`` (seconds) is the default deadline of each call. ``tls=True`` (or giving
    ``root_certificates``, PEM bytes or a file path) uses a TLS channel. ``retries`` is how many times a
    call that fails with UNAVAILABLE is retried, with backoff, by gRPC's retry policy, on another replica
    where there are several (0 disables; at most 4, gRPC's limit: more is a ValueError). ``options``: gRPC channel
    arguments, which take the place of the client's own of the same name (keepalive, message sizes, retries).
    Message size limits default to 32 MiB each way, like the server's (``max_message_mb``): a file larger
    than that is refused before it is read, and a request larger than that before it is sent, naming the
    file or the largest parts.

    A server that wants callers to prove who they are takes ``token`` (sent as ``authorization: Bearer``
    on every call; prefer TLS, the token is a password) or ``token_file`` (its first line, read again when
    the file changes, for long-lived clients whose token is rotated), and for mutual TLS a
    ``client_certificate`` chain and its ``client_key`` (PEM bytes or file paths).

    Every failure raises :class:`StyleTransferError`. Use as a context manager, or call :meth:`close`.
    """

    def _open(self, target: str, creds: grpc.ChannelCredentials | None, options: list[tuple[str, Any]]) -> Any:
        if creds is not None:
            return grpc.secure_channel(target, creds, options=options)
        return grpc.insecure_channel(target, options=options)

    # -- context manager ---------------------------------------------------------------------
    def close(self) -> None:
        """Close the channel, cancelling the calls in flight. gRPC's own close waits until every streaming call
        has let go, and one that a signal (Ctrl-C, SIGTERM) interrupted as gRPC was starting it never does: the
        thread that would see it end was never started (a moment grpc/grpc#19973's fix does not cover; grpcio
        1.85). The CLI then hung on exit, 4 times in 160 SIGTERMs under load. So the close runs on a thread of
        its own and gets CLOSE_WAIT_S: past that it is left to the process's exit (the channel takes no new
        calls either way)."""
        self._closed = True
        closer = threading.Thread(target=self._channel.close, name="adain-client-close", daemon=True)
        closer.start()
        closer.join(CLOSE_WAIT_S)

    def __enter__(self) -> StyleTransferClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- calls -------------------------------------------------------------------------------
    def _check_served(self, initial: Any, trailing: Any, needed: Sequence[str], request_id: str | None
                      ) -> tuple[str | None, str]:
        """The reply's (request id, replica), refused (:func:`_unserved`) where its server lacks a feature the call
        used: by the list the reply carries, else (a server from before that list) by the replica's own
        GetServerInfo.features, asked of the replicas until it answers (a server with the list in GetServerInfo
        alone had every call with masks refused)."""
        rid, served_by, unlisted = self._served_by_list(initial, trailing, needed, request_id)
        asked = 0
        while self._to_ask(unlisted, served_by):
            try:
                with self._unless_closed():
                    reply, call = self._stub.GetServerInfo.with_call(
                        pb.GetServerInfoRequest(), timeout=FEATURES_ASK_S, metadata=self._metadata(None)[1])
            except grpc.RpcError as e:
                raise self._not_learned(served_by, rid, f"GetServerInfo failed ({_rpc_error(e, None)})") from None
            asked += 1
            if self._asked_enough(served_by, self._keep_features(reply, call.initial_metadata(),
                                                                 call.trailing_metadata()), asked):
                break
        return self._served_by_info(needed, unlisted, served_by, rid)

    def _call(self, method: Any, request: Any, timeout: float | None, request_id: str | None) -> tuple[Any, str | None]:
        reply, rid, _ = self._call_from(method, request, timeout, request_id)
        return reply, rid

    def _call_from(
        self, method: Any, request: Any, timeout: float | None, request_id: str | None, end_user: str | None = None,
        needed: Sequence[str] = (), stop: Callable[[], bool] | None = None,
    ) -> tuple[Any, str | None, str]:
        """(reply, request id, the replica that answered); ``needed``: the features the call used, checked against
        the reply (:meth:`_check_served`); ``stop``: as :meth:`stylize`'s."""
        request_id, metadata = self._metadata(request_id, end_user)
        try:
            with self._unless_closed():
                if stop is None:
                    reply, call = method.with_call(request, timeout=self._deadline(timeout), metadata=metadata)
                else:
                    call = method.future(request, timeout=self._deadline(timeout), metadata=metadata)
                    with _stoppable(call, stop, request_id):
                        reply = call.result()
        except grpc.RpcError as e:
            raise _rpc_error(e, request_id, needed) from None
        return (reply, *self._check_served(call.initial_metadata(), call.trailing_metadata(), needed, request_id))

    def _until_served(self, send: Callable[[], _T]) -> _T:
        """``send()``, sent again where its replica lacked what it used (:func:`unserved_retry`)."""
        for tries_left in reversed(range(self._unserved_tries)):
            try:
                return send()
            except StyleTransferError as e:
                if (pause := unserved_retry(e, tries_left)) is None:
                    raise
                time.sleep(pause)
        raise AssertionError("unreachable")

    def stylize(
        self,
        content: ImageInput,
        styles: Styles,
        *,
        on_progress: Callable[[RefineProgress], None] | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
        end_user: str | None = None,
        stop: Callable[[], bool] | None = None,
        **options: Unpack[StylizeOptions],
    ) -> StylizeResult:
        """Stylize ``content`` (a path, bytes or a PIL image) with one or more styles.

        ``styles`` is one style or a list. A style is an image (path, bytes or PIL image), a registered
        style (``StyleRef(id)`` or the string ``"id:<id>"``; any other string is a file path), or a
        ``(style, weight)`` tuple; alternatively give ``weights=[...]``, one per style. Weights are
        relative (normalised by the server); default 1 each. The options below are keywords (their
        defaults: :func:`_fill_options` and :func:`stylize_request`, which build the request for this client
        and the asyncio one).

        ``alpha`` in [0, 1] (None: the server's default, 1, or a preset's). ``preserve_color``: "coral" (the
        AdaIN paper's colour-statistics matching; True means this), "luminance", "none" (the styles' colours
        even with a preset that keeps the content's) or None (unset, as False is: none, or a preset's). ``mask``:
        an image of the content's size, with exactly 2 styles (white takes styles[0], black styles[1]). Regions (any
        number): ``masks``, one greyscale image per style, or ``labels``, an image whose pixel values
        name regions, with ``label_values``, one per style (0-255 for a grey pixel, or a colour 0xRRGGBB
        or "#rrggbb"); ``region_alphas``: each region's strength. Uncovered pixels keep the content.
        ``content_size``: longest side the content is rendered at (0 keeps it); ``style_size``: longest
        side of the styles (0: the server's default, 512). ``format``: "png", "jpeg" or "webp";
        ``quality`` 1..100 for JPEG/WebP. ``keep_exif``: the output carries the content's EXIF (date taken,
        camera; never its GPS location). ``request_id`` is sent as x-request-id (else the server makes one).
        ``end_user``: for a front end that serves many people (its token marked ``front`` on the server),
        the person this call is for (an address, an account id): the server's queue then gives each one
        their own turn and share.

        The optimisation method: ``refine_steps`` iterations (0: off) from the decoder's output
        (``refine_init="adain"``) or from the content (``"content"``: the classic method of Gatys et al.),
        with the loss weights ``content_weight``, ``style_weight``, ``tv_weight`` (None: the server's
        defaults: content 5 for a refine and 1 for the classic method, style 10, total variation 1000 for
        a full-size refine, else 0), at ``refine_size`` px (0: full size), by ``optimizer``
        "lbfgs" or "adam". ``on_progress``
        gets a :class:`RefineProgress` after every iteration, and after each statistics box and tile of a content
        the server renders in tiles (the call then uses StylizeWithProgress; a call rendered whole reports none).
        Such calls take seconds to minutes: give a ``timeout`` to match. ``stop()`` (from another thread's point of
        view: a front end's "has my visitor gone?") is asked four times a second while the call runs: True cancels
        it, the server's work included (StyleTransferError CANCELLED here; an exception it raises cancels it too,
        and is raised here); the asyncio client's call is cancelled with its task.
        """
        request = stylize_request(content, styles, max_bytes=self.max_message_bytes, **options)
        timeout = self._image_timeout(request, timeout)
        self._with_known_bytes(request)
        needed = needed_features(request)

        def send() -> tuple[Any, str | None, str]:
            if on_progress is None:
                return self._call_from(self._stub.Stylize, request, timeout, request_id, end_user, needed, stop)
            return self._call_with_progress(request, on_progress, timeout, request_id, end_user, needed, stop)

        try:
            reply, rid, served_by = self._until_served(send)
        except StyleTransferError as e:
            # A replica that does not know a style this client registered (registries are per replica):
            # send that style's bytes instead, once.
            if not self._inline_unknown_styles(request, e):
                raise
            reply, rid, served_by = self._until_served(send)
        return stylize_result(reply, rid, served_by)

    def _call_with_progress(
        self,
        request: pb.StylizeRequest,
        on_progress: Callable[[RefineProgress], None],
        timeout: float | None,
        request_id: str | None,
        end_user: str | None = None,
        needed: Sequence[str] = (),
        stop: Callable[[], bool] | None = None,
    ) -> tuple[pb.StylizeResponse, str | None, str]:
        request_id, metadata = self._metadata(request_id, end_user)
        with self._unless_closed():
            call = self._stub.StylizeWithProgress(request, timeout=self._deadline(timeout), metadata=metadata)
        reply = None
        try:
            with _stoppable(call, stop, request_id) if stop is not None else contextlib.nullcontext():
                for event in call:
                    if event.WhichOneof("event") == "progress":
                        on_progress(_progress(event.progress))
                    else:
                        reply = event.result
        except grpc.RpcError as e:
            raise _rpc_error(e, request_id, needed) from None
        finally:
            call.cancel()  # a no-op once ended; stops the server's job if on_progress raised
        if reply is None:
            raise _no_result(request_id)
        return reply, *self._check_served(call.initial_metadata(), None, needed, request_id)  # (served_by too)

    def stylize_video(
        self,
        frames: Iterable[ImageInput],
        styles: Styles,
        *,
        timeout: float | None = None,
        request_id: str | None = None,
        end_user: str | None = None,
        stop: Callable[[], bool] | None = None,
        **options: Unpack[VideoStreamOptions],
    ) -> Generator[VideoFrameResult, None, None]:
        """Stylize a video's frames in order over one StylizeVideo stream; yields each stylized frame as
        it comes back, in order.

        ``frames`` is an iterable of images (paths, bytes or PIL images), read lazily as the stream goes:
        gRPC's flow control holds it back while the server has a window of frames in flight. The other
        options are :meth:`stylize`'s, plus ``temporal`` ("none", "smooth", "flow" or "smooth-flow"; None:
        the server's default) and ``temporal_strength`` in [0, 1) (None: the server's default); ``end_user``
        as in :meth:`stylize`. ``timeout`` bounds the whole stream (None: no deadline; the instance default is
        not used, since a clip may take far longer than one image). An exception raised while reading ``frames`` cancels
        the stream and is raised here. ``stop()`` is asked four times a second while the stream runs: True cancels
        it (StyleTransferError CANCELLED here; an exception it raises cancels it too, and is raised here), also
        while no reply comes (a caller that stops between replies
        waited for the next one, for ever where the server or the network had gone silent).
        """
        _frames_not_a_file(frames)
        first = video_options(styles, max_bytes=self.max_message_bytes, **options)
        self._with_known_bytes(first, every=True)
        needed = needed_features(first)
        failure: list[Exception] = []
        request_id, metadata = self._metadata(request_id, end_user)
        tries = self._unserved_tries if needed else 1
        call, ended = None, threading.Event()
        stopped_by: list[bool | Exception] = []
        try:
            for tries_left in reversed(range(tries)):
                # A stream using a feature sends its frames once the replica that took it is known to have it:
                # refused (its headers name the replica), it is opened again elsewhere as a photo's call is sent
                # again, no frame read yet (over a fleet mid-upgrade every other clip failed at its first frame).
                gate = _Gate() if needed else None
                call, ended = self._open_video(first, frames, failure, timeout, metadata, gate), threading.Event()
                try:
                    if stop is not None:
                        threading.Thread(target=_cancel_when, args=(call, stop, ended, stopped_by),
                                         name="video-stop", daemon=True).start()
                    if gate is None:
                        break
                    headers = call.initial_metadata()  # (returns at the call's end too: refused before its headers)
                    if not call.done():  # (ended: its error is raised below, no frame read)
                        self._check_served(headers, None, needed, request_id)
                        gate.open()
                except StyleTransferError as e:
                    ended.set()
                    call.cancel()
                    if (pause := unserved_retry(e, tries_left)) is None:
                        raise
                    time.sleep(pause)
                    continue
                finally:
                    if gate is not None:
                        gate.close()  # (once open, nothing: else its frames are never read, its thread let go)
                break
            assert call is not None  # (the loop above opens it at least once, or raises)
            for reply in call:
                yield frame_result(reply)
        except grpc.RpcError as e:
            if failure:
                raise failure[0] from None
            if stopped_by and isinstance(stopped_by[0], Exception):  # a stop() that raised: the caller's error
                raise stopped_by[0] from None
            raise _rpc_error(e, request_id, needed) from None
        finally:
            ended.set()
            if call is not None:
                call.cancel()  # a no-op once the stream has ended; frees the server's state if we stopped early
        if failure:
            raise failure[0]

    def _open_video(self, first: pb.VideoOptions, frames: Iterable[ImageInput], failure: list[Exception],
                    timeout: float | None, metadata: Any, gate: _Gate | None) -> Any:
        """A StylizeVideo call sending ``first``, then ``frames`` (once ``gate`` opens, where there is one); an
        exception raised reading them cancels the call and is kept in ``failure``."""
        holder: list[Any] = []
        held = threading.Event()  # the call is in holder

        def requests() -> Iterator[pb.VideoRequest]:
            yield pb.VideoRequest(options=first)
            if gate is not None and not gate.passed():
                return  # refused: the frames stay unread, for the next replica
            try:
                for i, frame in enumerate(frames):
                    yield pb.VideoRequest(frame=image_bytes(frame, f"frames[{i}]", self.max_message_bytes))
            except Exception as e:  # noqa: BLE001 - raised again in the caller's thread (GeneratorExit is
                failure.append(e)  # not caught: it is gRPC closing the iterator at the end of the call)
                held.wait(5)  # (a frame that failed at once: the caller's thread had not kept the call yet)
                if holder:
                    holder[0].cancel()

        with self._unless_closed():
            call = self._stub.StylizeVideo(requests(), timeout=no_deadline_past(timeout), metadata=metadata)
        holder.append(call)
        held.set()
        return call

    def register_style(self, image: ImageInput, *, timeout: float | None = None, request_id: str | None = None) -> str:
        """Store a style image on the server; returns its id (sha256 hex of the bytes sent).

        Use it as ``StyleRef(id)`` or ``"id:" + id``. The server keeps a bounded number of styles (least
        recently used dropped first), and each replica of a service its own: this client remembers the
        styles it registered (the last 64), so a call that lands on a replica that does not know one is
        sent once more with that style's bytes, and later calls send that style's bytes too. An id this
        client did not register stays an INVALID_ARGUMENT where unknown: register it again then.
        """
        data = image_bytes(image, "image", self.max_message_bytes)
        reply, _ = self._call(self._stub.RegisterStyle, pb.RegisterStyleRequest(image=data), timeout, request_id)
        return self._remember(reply.style_id, data)

    def health(self, *, timeout: float | None = 5.0) -> str:
        """The server's gRPC health status of the StyleTransfer service: "SERVING", "NOT_SERVING" (e.g.
        draining) or "UNKNOWN"; raises StyleTransferError when the server cannot be reached."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        self._check_open()
        stub = health_pb2_grpc.HealthStub(self._channel)
        try:
            with self._unless_closed():
                reply = stub.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME),
                                   timeout=no_deadline_past(timeout))
        except grpc.RpcError as e:
            raise _rpc_error(e, None) from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def server_info(self, *, timeout: float | None = None) -> dict[str, Any]:
        """The server's model, weights version, device, backend, precision, CPU, limits and batching settings,
        as a dict; ``served_by``: the replica that answered, where it says (over several, they may differ)."""
        reply, _, served_by = self._call_from(self._stub.GetServerInfo, pb.GetServerInfoRequest(), timeout, None)
        return server_info_dict(reply, served_by)

    def library(
        self, *, thumbnail_size: int = 0, timeout: float | None = None
    ) -> tuple[list[LibraryStyle], list[LibraryPreset]]:
        """The server's library in one call: its styles and its presets (``presets.json`` beside them), by
        name (empty where it has none), the styles with JPEG thumbnails of at most ``thumbnail_size`` px (0:
        none; at most 512). Every replica of a service reads the same folder, so a name works wherever a call
        lands."""
        request = pb.ListStylesRequest(thumbnail_size=_uint(thumbnail_size, "thumbnail_size"))
        def send() -> Any:
            with _no_library():
                return self._call(self._stub.ListStyles, request, timeout, None)[0]

        reply = self._until_served(send)
        return library_styles(reply), library_presets(reply)

    def list_styles(self, *, thumbnail_size: int = 0, timeout: float | None = None) -> list[LibraryStyle]:
        """The styles of the server's library (see :meth:`library`)."""
        return self.library(thumbnail_size=thumbnail_size, timeout=timeout)[0]

    def list_presets(self, *, timeout: float | None = None) -> list[LibraryPreset]:
        """The presets of the server's library (see :meth:`library`)."""
        return self.library(timeout=timeout)[1]


@contextlib.contextmanager
def _no_library() -> Iterator[None]:
    """ListStyles on a server older than the library: said so (it was gRPC's "UNIMPLEMENTED: Method not found!")."""
    try:
        yield
    except StyleTransferError as e:
        if e.code != grpc.StatusCode.UNIMPLEMENTED:
            raise
        said = StyleTransferError(e.code, "this server has no style library: it is older than ListStyles (upgrade it)",
                                  request_id=e.request_id)
        said.unserved = True  # (over several replicas, the next may have it)
        raise said from None


def server_info_dict(reply: pb.ServerInfo, served_by: str = "") -> dict[str, Any]:
    """GetServerInfo's reply as a dict (decoder_meta parsed, uint64 limits as ints), with ``served_by`` where
    the replica that answered named itself (over a mixed fleet, which one's this is)."""
    from google.protobuf import json_format

    info = json_format.MessageToDict(
        reply, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    meta = info.pop("decoder_meta_json", "") or "{}"
    try:
        info["decoder_meta"] = json.loads(meta)
    except ValueError:
        info["decoder_meta"] = {"raw": meta}
    for group in ("limits", "batching"):
        for key, value in list(info.get(group, {}).items()):
            if isinstance(value, str) and value.isdigit():  # uint64 fields come as strings in JSON form
                info[group][key] = int(value)
    if served_by:
        info["served_by"] = served_by
    return info


def _fill_options(
    msg: pb.StylizeRequest | pb.VideoOptions,
    styles: Any,
    *,
    weights: Sequence[float] | None = None,
    alpha: float | None = None,  # None: not sent (the server's 1, or a preset's)
    preserve_color: str | bool | None = None,
    mask: ImageInput | None = None,
    masks: Sequence[ImageInput] | None = None,
    labels: ImageInput | None = None,
    label_values: Sequence[int | str] | None = None,
    region_alphas: Sequence[float] | None = None,
    content_size: int = 0,
    style_size: int = 0,
    format: str = "png",
    quality: int = DEFAULT_QUALITY,
    max_bytes: int | None = None,
) -> None:
    """The options an image and a video share (names and defaults, in one place); ``max_bytes``: the largest
    image that may be read (the client's message limit)."""
    if _fill(msg, styles, weights, alpha, preserve_color, mask, content_size, style_size, format, quality, max_bytes):
        _fill_regions(msg, masks, labels, label_values, region_alphas, max_bytes)  # (counted against the styles)
    else:  # the labels image is read all the same (one that cannot be is said with the styles' problem)
        with _checked():
            if labels is not None:
                msg.labels = image_bytes(labels, "labels", max_bytes)


def stylize_request(
    content: ImageInput,
    styles: Any,
    *,
    refine_steps: SupportsIndex = 0,
    refine_init: str = "adain",
    content_weight: SupportsFloat | None = None,
    style_weight: SupportsFloat | None = None,
    tv_weight: SupportsFloat | None = None,
    refine_size: SupportsIndex = 0,
    optimizer: str = "lbfgs",
    keep_exif: bool = False,
    max_bytes: int | None = None,
    **options: Any,
) -> pb.StylizeRequest:
    """The StylizeRequest of :meth:`StyleTransferClient.stylize`'s options (both clients build it here),
    checking what can be checked before anything is sent; ``options``: those of :func:`_fill_options`;
    ``max_bytes``: the client's message limit (each file measured before it is read, then the whole)."""
    refuse_unknown("stylize", options, STYLIZE_OPTIONS, LIBRARY_NAMES)
    request = pb.StylizeRequest(keep_exif=bool(keep_exif))
    with _every_problem():
        with _checked():
            request.content = image_bytes(content, "content", max_bytes)
        _fill_options(request, styles, max_bytes=max_bytes, **options)
        _fill_refine(request, refine_steps, refine_init, content_weight, style_weight, tv_weight, refine_size,
                     optimizer)
    if max_bytes is not None:
        check_request_size(request, max_bytes)
    return request


def video_options(
    styles: Any, *, temporal: str | None = None, temporal_strength: SupportsFloat | None = None,
    max_bytes: int | None = None,
    **options: Any,
) -> pb.VideoOptions:
    """The first message of a StylizeVideo stream, from :meth:`StyleTransferClient.stylize_video`'s options
    (``options``: those of :func:`_fill_options`; ``max_bytes``: as in :func:`stylize_request`)."""
    refuse_unknown("stylize_video", options, VIDEO_OPTIONS)
    first = pb.VideoOptions()
    with _options_of_video():
        with _every_problem():
            _fill_options(first, styles, max_bytes=max_bytes, **options)
            with _checked():
                if temporal is not None:
                    if temporal not in TEMPORAL_ENUM:
                        raise _local_error("temporal", f"must be one of {', '.join(TEMPORAL_ENUM)}, got {temporal!r}")
                    first.temporal = TEMPORAL_ENUM[temporal]
            with _checked():
                if temporal_strength is not None:
                    first.temporal_strength = _float32(temporal_strength, "temporal_strength")
        if max_bytes is not None:
            check_request_size(first, max_bytes)
    return first


def stylize_result(reply: pb.StylizeResponse, rid: str | None, served_by: str) -> StylizeResult:
    t = reply.timings
    return StylizeResult(
        image=reply.image,
        width=reply.width,
        height=reply.height,
        format=FORMAT_BY_ENUM.get(reply.format, "png"),
        timings=Timings(
            t.queue_ms, t.inference_ms, t.prepare_ms, t.encode_ms, t.batch_size, t.refine_ms, t.refine_steps
        ),
        request_id=reply.request_id or rid or "",
        served_by=served_by,
    )


def frame_result(reply: pb.VideoFrame) -> VideoFrameResult:
    t = reply.timings
    return VideoFrameResult(
        image=reply.image,
        index=reply.index,
        width=reply.width,
        height=reply.height,
        format=FORMAT_BY_ENUM.get(reply.format, "png"),
        timings=Timings(t.queue_ms, t.inference_ms, t.prepare_ms, t.encode_ms, t.batch_size),
    )


def _progress(p: pb.Progress) -> RefineProgress:
    return RefineProgress(p.step, p.steps, p.loss, p.elapsed_ms)


def new_request_id() -> str:
    """The id a call sends where its caller gave none: made here, not by the server, so that a call gRPC refuses
    before any handler runs (a message over the server's limit) still has one, the one the server logged it
    under (an outside SRE's: such a refusal came back with request_id None)."""
    return str(uuid.uuid4())


def _no_result(request_id: str | None) -> StyleTransferError:
    return StyleTransferError(grpc.StatusCode.INTERNAL, "the stream ended without a result", request_id=request_id)


def _fill(
    msg: pb.StylizeRequest | pb.VideoOptions,
    styles: Any,
    weights: Sequence[float] | None,
    alpha: float | None,
    preserve_color: str | bool | None,
    mask: ImageInput | None,
    content_size: int,
    style_size: int,
    format: str,
    quality: int,
    max_bytes: int | None = None,
) -> bool:
    """Set the options a StylizeRequest and a VideoOptions share, checking what can be checked here (each
    check under :func:`_checked`); whether the styles were taken (the regions are counted against them)."""
    with _checked():
        fmt = format_name(format)
        if fmt is None:
            raise _local_error("format", f"unsupported output format {format!r} (png, jpeg or webp)")
        msg.format = FORMAT_ENUM[fmt]
    with _checked():
        color = color_mode(preserve_color)
        if color not in COLOR_ENUM:
            raise _local_error("preserve_color", f"must be None, 'coral' or 'luminance', got {preserve_color!r}")
        if color is not None or preserve_color == "none":  # "none" is sent: none even where a preset has a mode
            msg.preserve_color = COLOR_ENUM[color]  # (False and "" stay unset, as they always were)
    styles_taken = False
    with _checked():
        if isinstance(styles, str) and styles.startswith(PRESET_PREFIX):
            styles = Preset(styles[len(PRESET_PREFIX) :])
        if isinstance(styles, Preset):
            if weights is not None:
                raise _local_error("weights", "a preset has its own weights")
            if not styles.name:  # (sent, no preset and no styles: "at least 1 style is required")
                raise _local_error("preset", "an empty preset name (list_presets() names the server's)")
            msg.preset = styles.name
            styles_taken = True
        else:
            taken, styles_taken = _styles(styles, weights, max_bytes)
            msg.styles.extend(taken)
    for name, value in (("content_size", content_size), ("style_size", style_size), ("quality", quality)):
        with _checked():
            setattr(msg, name, _uint(value, name))
    with _checked():
        if alpha is not None:
            msg.alpha = _in_unit_interval(alpha, "alpha")
    with _checked():
        if mask is not None:
            msg.mask = image_bytes(mask, "mask", max_bytes)
    return styles_taken


def _fill_regions(
    msg: pb.StylizeRequest | pb.VideoOptions,
    masks: Sequence[ImageInput] | None,
    labels: ImageInput | None,
    label_values: Sequence[int | str] | None,
    region_alphas: Sequence[float] | None,
    max_bytes: int | None = None,
) -> None:
    """Set the per-style mask, label and alpha (after the styles) and the labels image."""
    n = len(msg.styles)
    per_style: dict[str, list[Any]] = {}
    for name, values in (("masks", masks), ("label_values", label_values), ("region_alphas", region_alphas)):
        with _checked():
            listed = _per_style(values, name)
            if listed is not None and msg.preset:  # its styles are the server's: none here to count ("for 0 styles")
                raise _local_error(name, f"a preset's styles carry no {name.replace('_', ' ')}: give the styles "
                                   "themselves, each with its own (a preset takes the two-style mask=)")
            if listed is not None and len(listed) != n:
                raise _local_error(name, f"{plural(len(listed), name.replace('_', ' ')[:-1])}"
                                         f" for {plural(n, 'style')} (one per style)")
            if listed is not None:
                per_style[name] = listed
    for i, style in enumerate(msg.styles):
        if "masks" in per_style:
            with _checked():
                style.mask = image_bytes(per_style["masks"][i], f"styles[{i}].mask", max_bytes)
        if "label_values" in per_style:
            with _checked():
                style.label = _label(per_style["label_values"][i], i)
        if "region_alphas" in per_style:
            with _checked():
                style.alpha = _in_unit_interval(per_style["region_alphas"][i], f"styles[{i}].alpha")
    with _checked():
        if labels is not None:
            msg.labels = image_bytes(labels, "labels", max_bytes)


def _label(value: int | str, i: int) -> int:
    label = label_value(value)
    if label is None:
        raise _local_error(f"styles[{i}].label", f"must be 0-255, a colour 0xRRGGBB or '#rrggbb', got {value!r}")
    return label


def _fill_refine(
    msg: pb.StylizeRequest,
    steps: SupportsIndex,
    init: str,
    content_weight: SupportsFloat | None,
    style_weight: SupportsFloat | None,
    tv_weight: SupportsFloat | None,
    size: SupportsIndex,
    optimizer: str,
) -> None:
    """Set a StylizeRequest's optimisation fields (negative steps go to the server, which names them)."""
    with _checked():
        if init not in REFINE_INIT_ENUM:
            raise _local_error("refine_init", f"must be one of {', '.join(REFINE_INIT_ENUM)}, got {init!r}")
        msg.refine_init = REFINE_INIT_ENUM[init]
    with _checked():
        if optimizer not in OPTIMIZER_ENUM:
            raise _local_error("optimizer", f"must be one of {', '.join(OPTIMIZER_ENUM)}, got {optimizer!r}")
        msg.optimizer = OPTIMIZER_ENUM[optimizer]
    with _checked():
        msg.refine_steps = _whole(steps, "refine_steps", -(2**31), 2**31 - 1)  # (an int32: the server names <0)
    with _checked():
        msg.refine_size = _uint(size, "refine_size")
    for name, value in (("content_weight", content_weight), ("style_weight", style_weight), ("tv_weight", tv_weight)):
        with _checked():
            if value is not None:
                setattr(msg, name, _float32(value, name))


def _real(value: Any) -> bool:
    """A real number, NumPy's too; not a bool, nor a string ("0.5"), which float() took and the library refuses."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _shown(value: Any) -> str:
    """A value as a message quotes it: a 400-digit number's first and last digits, not all of them."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:18]}...{text[-18:]} ({len(text)} characters)"


def _float(value: Any, field: str) -> float:
    if not _real(value):
        raise _local_error(field, f"not a number: {_shown(value)}")
    try:
        return float(value)
    except OverflowError:  # an int past float's range (10**400): OverflowError came out of the client
        raise _local_error(field, f"{_shown(value)} is out of range (at most {FLOAT32_MAX:.7g} in size)") from None


def _float32(value: Any, field: str, *, zero_differs: bool = False) -> float:
    """A float field's value: a finite number beyond float32's range would arrive as infinity (NaN and infinity
    themselves go to the server, which names them); ``zero_differs``: one too small for it (below ~1.4e-45, not
    0), which would arrive as 0, is refused (a weight: 1e-46 and 0 were "all style weights are zero")."""
    number = _float(value, field)
    if math.isfinite(number) and abs(number) > FLOAT32_MAX:
        raise _local_error(field, f"{_shown(value)} is out of range (at most {FLOAT32_MAX:.7g} in size)")
    if zero_differs and number != 0 and abs(number) < FLOAT32_TINY / 2:  # rounds to 0 as a float32
        raise _local_error(field, f"{_shown(value)} is too small to be sent (a float32: {FLOAT32_TINY:.2g} at "
                           "least, or 0)")
    return number


def _in_unit_interval(value: Any, field: str) -> float:
    """An alpha (the request's, a region's). One out of [0, 1] that float32 rounds into it is refused here, as
    the library refuses it (1.00000001 was sent as 1 and taken, where the library, the CLI and the page refuse
    it); the others go to the server, which names every problem of a request at once."""
    number = _float32(value, field)
    if math.isfinite(number) and not 0 <= number <= 1 and 0 <= struct.unpack("f", struct.pack("f", number))[0] <= 1:
        raise _local_error(field, f"must be a number in [0, 1], got {_shown(value)}")
    return number


def _whole(value: Any, field: str, low: int, high: int) -> int:
    """An integer field's value: an int (NumPy's too; not 64.0, which the library refuses), ``high`` at most
    (past it, the field's size on the wire: the server's own limit is lower)."""
    number = int(value) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else None
    if number is None or number < low:
        raise _local_error(field, f"must be a whole number{' >= 0' if low == 0 else ''}, got {_shown(value)}")
    if number > high:
        raise _local_error(field, f"{_shown(value)} is over the most a request can carry ({high}); the server's "
                           "own limit is lower (server_info()['limits'])")
    return number


def _uint(value: Any, field: str) -> int:
    """A uint32 field's value; None is 0, the field not given (a size of None: as the library's)."""
    return 0 if value is None else _whole(value, field, 0, 2**32 - 1)


def _keywords(*functions: Callable[..., Any]) -> tuple[str, ...]:
    return tuple(name for f in functions for name, p in inspect.signature(f).parameters.items()
                 if p.kind is inspect.Parameter.KEYWORD_ONLY and name != "max_bytes")


# what a call's options may name, for an unknown one's hint (a call's own arguments too: on_step for on_progress)
CALL_ARGUMENTS = ("timeout", "request_id", "end_user")
LIBRARY_NAMES = {"on_step": "on_progress"}  # the library's Stylizer.stylize names it so
STYLIZE_OPTIONS = (*_keywords(_fill_options, stylize_request), "on_progress", *CALL_ARGUMENTS)
VIDEO_OPTIONS = (*_keywords(_fill_options, video_options), *CALL_ARGUMENTS, "stop")
