"""``adain-stylize``: stylize an image (or a folder of images) with a running ``adain-server``.

    adain-stylize photo.jpg --style starry.jpg --style mosaic.jpg:0.3 --alpha 0.8 -o out.png
    adain-stylize photos/ --style starry.jpg --style mosaic.jpg -o stylized/ --format jpeg
    adain-stylize *.jpg --style id:mosaic -o stylized/

A style is ``PATH`` or ``PATH:WEIGHT`` (the part after the last ``:`` is a weight only if it reads as a
number; default 1), or ``id:STYLE_ID[:WEIGHT]`` for a style registered on the server or ``id:NAME[:WEIGHT]``
for one of its library (``adain-stylize --list-styles`` lists them; the name is all up to a further ``:``, so
``id:1977`` is the style named 1977), or ``preset:NAME`` (no weight: a preset sets its own). With one content
file, the styles are blended by weight and the output format comes from the ``-o`` extension (``-o`` a folder,
or ending in ``/``: ``<content-stem>_stylized.<ext>`` in it). With a folder, or several contents (files and
folders), every content is stylized with each style separately and written to the ``-o`` folder as
``<content-stem>_stylized_<style-stem>.<ext>`` (``--format``, default png). The video flags (``--temporal``,
``--fps``, ``--start``, ...) are refused for an image, the image flags (``--quality``, ``--keep-exif``,
``--format``) for a video; among several contents each applies to its kind.

Every failure prints one line ``adain-stylize: error: ...`` to stderr and exits non-zero.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import errno
import hashlib
import math
import os
import re
import signal
import stat
import sys
import threading
import time
import unicodedata
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import grpc
from PIL import Image

from adain.argtypes import (
    OneLineParser,
    int_in_range,
    non_negative_float,
    non_negative_int,
    one_of,
    positive_float,
    positive_int,
    unit_interval,
)
from adain.commands import add_version_arg, interrupted_code, on_signals, on_sigterm
from adain.errors import MediaError, one_line
from adain.files import check_writable, cut_name, name_max, temp_problem, write_whole
from adain.wire import (
    COLOR_MODES,
    DEFAULT_ADDRESS,
    DEFAULT_QUALITY,
    DEFAULT_TEMPORAL,
    FORMAT_SUFFIXES,
    FORMATS,
    INPUT_SUFFIXES,
    LIBRARY_NAME_RULE,
    MIN_FPS,
    PRESET_PREFIX,
    READ_VIDEO_SUFFIXES,
    STYLE_ID_PREFIX,
    STYLE_ID_RE,
    TEMPORAL_MODES,
    VIDEO_SUFFIXES,
    format_from_suffix,
    format_name,
    library_name,
    plural,
)

from ._client import (
    DEFAULT_TIMEOUT,
    FLOAT32_MAX,
    MAX_RETRIES,
    NO_FEATURES_HINT,
    PER_MEGAPIXEL_S,
    PER_REFINE_STEP_S,
    PING_TIMEOUT_S,
    REQUEST_OVER_RE,
    LibraryStyle,
    Preset,
    StyleRef,
    StyleTransferClient,
    StyleTransferError,
    work_seconds,
)
from .local import LocalServer, LocalServerError
from .video import is_video, media, stylize_video_file

PROG = "adain-stylize"


class CliError(Exception):
    """A failure to report as one line and exit 1 (``lines``: the lines after it are meant, each escaped alone:
    --local's server log)."""

    def __init__(self, message: str, lines: bool = False) -> None:
        super().__init__(message)
        self.lines = lines

    def shown(self) -> str:
        """The message as printed: one line (a name's newline escaped), or each of its lines escaped."""
        text = str(self)
        return "\n".join(one_line(line) for line in text.split("\n")) if self.lines else one_line(text)


def _error_line(message: str) -> str:
    """An error as the CLI prints it: one line, a name's newline or escape written as such (a file named with a
    newline split the line in two, the second whatever the name said)."""
    return f"{PROG}: error: {one_line(message)}"


class _OnlyWithListStyles(argparse.Action):
    """An option of --list-styles given to a stylizing command: an error as soon as it is read."""

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        parser.error("--thumbnails DIR goes with --list-styles (adain-stylize --list-styles --thumbnails DIR)")


class _Once(argparse._StoreAction):
    """A flag that takes one value, given twice: refused (argparse kept the last, so ``-o a.png -o b.png``
    wrote b.png alone, without a word), as the page's API refuses a field given twice."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        seen = namespace.__dict__.setdefault("_flags_given", set())
        if self.dest in seen:
            parser.error(f"{'/'.join(self.option_strings)}: given twice, and it takes one value")
        seen.add(self.dest)
        super().__call__(parser, namespace, values, option_string)


class _Parser(OneLineParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register("action", None, _Once)  # every flag of one value (positionals take theirs once anyway)
        self.register("action", "store", _Once)


def timeout_of(args: argparse.Namespace) -> float:
    """--timeout, or the default deadline of a call."""
    return DEFAULT_TIMEOUT if args.timeout is None else args.timeout


def image_timeout(args: argparse.Namespace, content: Path, refine_steps: int) -> float:
    """--timeout, or one that grows with this image's work (the clients' rule: ``work_seconds``): its pixels at
    --size and its refine steps."""
    if args.timeout is not None:
        return args.timeout
    try:
        with Image.open(content) as img:  # the header only
            w, h = img.size
    except Exception:  # noqa: BLE001 (the server says what is wrong with it)
        return DEFAULT_TIMEOUT
    return DEFAULT_TIMEOUT + work_seconds(w, h, getattr(args, "size", 0), refine_steps)


class _NoTokenFlag(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        parser.error("--token: a token is not given on the command line (the shell's history and the process list "
                     "would show it): put it in a file (--token-file FILE, first line) or in $ADAIN_TOKEN")


def add_connection_args(p: argparse.ArgumentParser) -> None:
    """--server, --timeout, --retries, TLS and the token: how a command reaches adain-server (the CLI's and
    adain-web's, one set of rules); :func:`connect` makes the client from them."""
    p.add_argument("--server", default=os.environ.get("ADAIN_SERVER", DEFAULT_ADDRESS), metavar="HOST:PORT",
                   help=f"server address (default: $ADAIN_SERVER or {DEFAULT_ADDRESS}); several replicas: "
                   "comma-separated IP:PORT list, or dns:///NAME:PORT (calls are balanced round-robin)")
    p.add_argument("--timeout", type=positive_float, default=None, metavar="S",
                   help=f"deadline of each call to the server, seconds (default {DEFAULT_TIMEOUT:g}; adain-stylize's "
                   f"for an image grows with its work: {PER_MEGAPIXEL_S:g} more a megapixel rendered and "
                   f"{PER_REFINE_STEP_S:g} a --refine step); for a video, of each frame's reply")
    p.add_argument("--retries", type=int_in_range(0, MAX_RETRIES), default=2, metavar="N",
                   help=f"retries of a call the server answers UNAVAILABLE, 0-{MAX_RETRIES} (default 2)")
    p.add_argument("--tls", action="store_true", help="connect with TLS (system root certificates)")
    p.add_argument("--ca-cert", metavar="PEM", help="root certificate(s) for TLS (implies --tls)")
    p.add_argument("--client-cert", metavar="PEM", help="this client's certificate chain, for a server that asks for "
                   "one (mutual TLS; implies --tls; with --client-key)")
    p.add_argument("--client-key", metavar="PEM", help="the private key of --client-cert")
    p.add_argument("--token-file", default=os.environ.get("ADAIN_TOKEN_FILE") or None, metavar="FILE",
                   help="file whose first line is the bearer token, for a server that asks for one (default: "
                   "$ADAIN_TOKEN_FILE; or put the token itself in $ADAIN_TOKEN); read again when it changes")
    # A token on the command line would be in the shell's history and the process list; argparse took
    # "--token SECRET" as --token-file's abbreviation and printed "--token-file: no such file: SECRET".
    p.add_argument("--token", action=_NoTokenFlag, nargs="?", help=argparse.SUPPRESS)


def add_local_arg(p: argparse.ArgumentParser) -> None:
    """--local: the command starts a server of its own (client.local), for a machine that runs none."""
    p.add_argument("--local", action="store_true",
                   help="start a server for this command on this machine and stop it at the end (needs the server "
                   "extra, torch; its settings: ADAIN_* variables, e.g. ADAIN_PRECISION); not with --server or TLS")


# the flags --local replaces (a server of its own, on 127.0.0.1 with a token of its own), by their dests
_LOCAL_REPLACES = {"server": "--server", "tls": "--tls", "ca_cert": "--ca-cert", "client_cert": "--client-cert",
                   "client_key": "--client-key", "token_file": "--token-file"}


def local_conflicts(parser: argparse.ArgumentParser, argv: Sequence[str]) -> list[str]:
    """The connection flags given on the command line, which --local refuses, even where the value given is the
    default (``--server localhost:50051``). A value from a variable, such as $ADAIN_SERVER, is the flag's default:
    --local simply replaces it. ``argv`` parsed once more with those defaults unset tells them apart."""
    unset = object()
    saved = {dest: parser.get_default(dest) for dest in _LOCAL_REPLACES}
    parser.set_defaults(**dict.fromkeys(saved, unset))
    try:
        probe = parser.parse_args(argv)  # parsed once already: no error here
    finally:
        parser.set_defaults(**saved)
    return [flag for dest, flag in _LOCAL_REPLACES.items() if getattr(probe, dest) is not unset]


@contextlib.contextmanager
def served(args: argparse.Namespace, given: Sequence[str], prog: str = PROG, front: bool = False) -> Iterator[None]:
    """With --local, a server of this command's own, started and SERVING, ``args`` pointing at it; stopped when
    the block ends, however it ends. ``given``: :func:`local_conflicts` (refused); ``front``: the command speaks
    for many end users (adain-web: its visitors take turns in the server's queue)."""
    if not getattr(args, "local", False):
        yield
        return
    if given:
        raise CliError(f"--local starts a server of its own on this machine: not with {', '.join(given)}")
    if no_temp := temp_problem():  # (Python's own "No usable temporary directory found in [...]")
        raise CliError(f"--local: {no_temp}; its server needs one")

    def starting() -> None:
        if getattr(args, "quiet", False):
            return
        print(f"{prog}: starting a server for this command (--local): the model loads, a few seconds (the first "
              "time on this machine converts it: up to a minute)", file=sys.stderr, flush=True)

    server = LocalServer(prog, front)
    try:
        with server as (address, token_file):
            args.server, args.token_file, args.tls, args.ca_cert = address, token_file, False, None
            args.client_cert = args.client_key = None
            with connect(args) as probe:
                server.wait_serving(lambda: probe.health(timeout=2), starting)
            yield
    except LocalServerError as e:  # (the server's log lines after it)
        raise CliError(str(e), lines=True) from None


@contextlib.contextmanager
def session(args: argparse.Namespace) -> Iterator[StyleTransferClient]:
    """The command's client: of --server, or with --local of a server started for it (only now, after the
    command's own checks of its flags and paths: a mistake the CLI can see costs no server start; what only the
    server checks, such as a content's size, comes after it)."""
    with served(args, args.local_given), connect(args) as client:
        yield client


def connect(args: argparse.Namespace, **options: Any) -> StyleTransferClient:
    """The client the flags of :func:`add_connection_args` describe (``options``: more constructor arguments).
    A missing or unreadable certificate, key or token file is a CliError naming its flag."""
    if bool(args.client_cert) != bool(args.client_key):
        raise CliError("--client-cert and --client-key go together")
    token = None if args.token_file else (os.environ.get("ADAIN_TOKEN") or "").strip() or None
    for flag, path in (("--ca-cert", args.ca_cert), ("--client-cert", args.client_cert),
                       ("--client-key", args.client_key), (_named(args, "token_file"), args.token_file)):
        if path and not os.path.isfile(path):
            raise CliError(f"{flag}: no such file: {path}")
    try:
        return StyleTransferClient(
            args.server, timeout=timeout_of(args), tls=args.tls or bool(args.ca_cert), root_certificates=args.ca_cert,
            retries=args.retries, token=token, token_file=args.token_file, client_certificate=args.client_cert,
            client_key=args.client_key, **options,
        )
    except StyleTransferError as e:  # a file the client could not read, or a --server it cannot use
        field, detail = (_violations(e) or [("", "")])[0]
        raise CliError(f"{_named(args, field)}: {detail}" if field in _CLIENT_FLAGS else e.details) from None
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise CliError(f"{_named(args, 'token_file')}: {e}" if args.token_file else str(e)) from None


# the connection flags whose default is a variable's: named as the variable where the value came from it
_FLAG_VARIABLES = {"server": "ADAIN_SERVER", "token_file": "ADAIN_TOKEN_FILE"}


def _named(args: argparse.Namespace, field: str) -> str:
    """The flag that set a client argument, or the variable where the command line gave none (ADAIN_SERVER=x
    was reported as "--server: x: no port" by a command given no --server). ``args.local_given``: the flags
    given (:func:`local_conflicts`)."""
    variable = _FLAG_VARIABLES.get(field)
    if variable and os.environ.get(variable) and _CLIENT_FLAGS[field] not in getattr(args, "local_given", ()):
        return f"${variable}"
    return _CLIENT_FLAGS[field]


COLOR_CHOICES = (*COLOR_MODES, "none")  # --preserve-color's: none is sent, and overrides a preset's mode

# the client's argument names in its errors -> the flags that set them
_CLIENT_FLAGS = {"token_file": "--token-file", "root_certificates": "--ca-cert", "client_certificate": "--client-cert",
                 "client_key": "--client-key", "server": "--server", "token": "$ADAIN_TOKEN"}


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Stylize images with a running adain-server (AdaIN arbitrary style transfer), or with one "
        "started for the command (--local).",
        epilog="Examples:\n"
        "  adain-stylize photo.jpg --style starry.jpg --style mosaic.jpg:0.3 --alpha 0.8 -o out.png\n"
        "  adain-stylize photos/ --style a.jpg --style b.jpg -o stylized/ --format jpeg\n\n"
        "The video flags (--temporal, --temporal-strength, --fps, --start, --duration) are refused for an image,\n"
        "the image flags (--quality, --keep-exif, --format) for a video; among several contents each applies to\n"
        "its kind.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_version_arg(p, PROG)
    p.add_argument("content", metavar="CONTENT", nargs="+",
                   help="content image or video (MP4, MOV, MKV, WebM, animated GIF); or several, or folders of them "
                   "(every content x every style, into the -o folder)")
    p.add_argument(
        "-s", "--style", action="append", required=True, metavar="STYLE[:WEIGHT]",
        help="style image path, optionally with a weight after the last ':' (default 1); or id:STYLE_ID[:WEIGHT] "
        "for a registered style, id:NAME[:WEIGHT] for a style of the server's library, preset:NAME for one of its "
        "presets (alone, no weight; --list-styles lists both). Repeat to blend several (one content) or to run "
        "each (folder).",
    )
    p.add_argument("--list-styles", action="store_true",
                   help="list the styles of the server's library and exit (needs no CONTENT, --style or -o; "
                   "--thumbnails DIR saves their thumbnails)")
    # here for --help, and refused with a word as it is read (at the end, the parser said only "the following
    # arguments are required"); --list-styles has a parser of its own, where it belongs
    p.add_argument("--thumbnails", metavar="DIR", action=_OnlyWithListStyles, help="with --list-styles: also save "
                   "each style's thumbnail (a JPEG of at most 256 px) into DIR as NAME.jpg")
    p.add_argument("--server-info", action="store_true",
                   help="print what the server runs (model, weights, backend, precision, CPU, limits, batching, "
                   "its library) as JSON, and exit (needs no CONTENT, --style or -o)")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output file (format from its extension: .png, .jpg/.jpeg, .webp; for a video .mp4, .m4v, "
                   ".mov, .mkv, .webm or .gif, which holds no sound); or a folder (one that exists, or ends in "
                   "'/'), which several contents need: CONTENT_stylized.EXT in it for one content, "
                   "CONTENT_stylized_STYLE.EXT for several")
    p.add_argument("--alpha", type=unit_interval, default=None,
                   help="style strength in [0, 1] (default 1, or a preset's)")
    p.add_argument("--preserve-color", nargs="?", const="coral", choices=COLOR_CHOICES, default=None,
                   help="keep the content's colours: coral (the AdaIN paper's, the default when given alone) or "
                   "luminance; none takes the styles' colours even where a preset keeps the content's")
    p.add_argument("--mask", action="append", metavar="MASK",
                   help="regions: a greyscale mask of the content's size per --style, in order (white: the style's "
                   "region; pixels no mask covers keep the photo); or one mask for 2 styles (white takes the "
                   "first, black the second)")
    p.add_argument("--labels", metavar="IMAGE", help="regions: an image of the content's size whose pixel values "
                   "name regions; give each --style its --label")
    p.add_argument("--label", action="append", metavar="VALUE",
                   help="the --labels value of each --style, in order: a grey level 0-255 or a colour #rrggbb "
                   "(pixels no style names keep the photo)")
    p.add_argument("--region-alpha", action="append", type=unit_interval, metavar="A",
                   help="each region's strength in [0, 1], one per --style, in order (with --mask or --labels)")
    p.add_argument("--size", type=non_negative_int, default=0, metavar="N",
                   help="longest side the content is rendered at (0: as it is; default 0). Smaller is quicker and "
                   "gives bolder strokes: a 12-MP photo as it is renders in tiles, 25 s to minutes on a CPU; at "
                   "1024 px it takes seconds")
    p.add_argument("--style-size", type=non_negative_int, default=0, metavar="N",
                   help="longest side of the styles (0: the server's default, 512)")
    p.add_argument("--keep-exif", action="store_true",
                   help="the output keeps the photo's EXIF: date taken, camera, exposure (never its GPS location), "
                   "so photo libraries file it beside the original")
    p.add_argument("--quality", type=int_in_range(1, 100), default=None, metavar="Q",
                   help=f"JPEG/WebP quality 1-100 (default {DEFAULT_QUALITY})")
    p.add_argument("--format", type=one_of(FORMATS, _format), default=None, metavar="FORMAT",
                   help=f"output format of images written into an -o folder: {', '.join(FORMATS)} (default png); an "
                   "output file takes its extension's")
    add_connection_args(p)
    add_local_arg(p)
    p.add_argument("-j", "--jobs", type=positive_int, default=4, metavar="N",
                   help="requests in flight at once in folder mode (default 4)")
    p.add_argument("--skip-existing", action="store_true",
                   help="leave an output that is already there as it is, and make only the others: a folder run "
                   "stopped halfway and started again makes the rest (outputs are written whole, so one that is "
                   "there is complete); without it an output there is replaced")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="print no line saying what was written, nor --local's note (for cron and scripts: the exit "
                   "status says how it went; errors and warnings still show), and no progress bar")
    p.add_argument("--temporal", type=one_of(TEMPORAL_MODES), default=None, metavar="MODE",
                   help=f"video: how frames are kept stable in time: {', '.join(TEMPORAL_MODES)} (default: the "
                   f"server's, {DEFAULT_TEMPORAL})")
    p.add_argument("--temporal-strength", type=_strength, default=None, metavar="S",
                   help="video: how much of the past each frame keeps, in [0, 1) (default: the server's)")
    p.add_argument("--fps", type=_fps, default=None, metavar="N",
                   help="video: at most N frames a second (the others are dropped: half the rate, half the time; "
                   "the sound stays in step; default: as filmed)")
    p.add_argument("--start", type=non_negative_float, default=0.0, metavar="S",
                   help="video: begin at S seconds into the clip (default 0)")
    p.add_argument("--duration", type=positive_float, default=None, metavar="S",
                   help="video: take S seconds from --start (default: to the end); its sound too")
    p.add_argument("--refine", type=non_negative_int, default=0, metavar="N",
                   help="then N iterations of the optimisation method (Gatys et al.) on the output: finer "
                   "texture, seconds per iteration on a CPU; the deadline grows with the steps (default 0: off)")
    p.add_argument("--classic", action="store_true",
                   help="with --refine N: start from the content image instead of the decoder's output (the "
                   "classic method, to compare; it needs a few hundred iterations)")
    p.add_argument("--content-weight", type=non_negative_float, default=None, metavar="W",
                   help="optimisation: weight of the content loss (default: the server's, 5 for --refine, 1 with "
                   "--classic)")
    p.add_argument("--style-weight", type=non_negative_float, default=None, metavar="W",
                   help="optimisation: weight of the style loss (default: the server's, 10); the ratio to "
                   "--content-weight is the knob")
    p.add_argument("--tv-weight", type=non_negative_float, default=None, metavar="W",
                   help="optimisation: weight of a smoothness (total variation) loss (default: the server's, 1000 for "
                   "a full-size --refine, 0 when it works below full size (--refine-size, or a large image) or "
                   "with --classic)")
    p.add_argument("--refine-size", type=non_negative_int, default=0, metavar="N",
                   help="optimisation: work at this longest side and upsample the change (default 0: full size)")
    return p


def _refine_options(args: argparse.Namespace) -> dict[str, Any]:
    if not args.refine:  # else they would be ignored, and the picture not the one asked for
        tuning = (("--classic", args.classic or None), ("--content-weight", args.content_weight),
                  ("--style-weight", args.style_weight), ("--tv-weight", args.tv_weight),
                  ("--refine-size", args.refine_size or None))
        given = [flag for flag, value in tuning if value is not None]
        if given:
            raise CliError(f"{' and '.join(given)} need{'s' if len(given) == 1 else ''} --refine N (the number of "
                           "iterations, e.g. 300): they tune the optimisation method")
    return {
        "refine_steps": args.refine,
        "refine_init": "content" if args.classic else "adain",
        "content_weight": args.content_weight,
        "style_weight": args.style_weight,
        "tv_weight": args.tv_weight,
        "refine_size": args.refine_size,
    }


def _strength(text: str) -> float:
    value = unit_interval(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def _fps(text: str) -> float:
    value = positive_float(text)
    if value < MIN_FPS:
        raise argparse.ArgumentTypeError(f"must be at least {MIN_FPS:g} (a frame each {1 / MIN_FPS:,.0f} s), "
                                         f"got {text}")
    return value


def parse_style(text: str) -> tuple[str, float]:
    """``"a.jpg:0.3"`` -> ("a.jpg", 0.3): a path's suffix is a weight only if it parses as a float. After
    ``id:`` or ``preset:`` the name comes whole (a library style may be called "1977" or "nan"), and only a
    further ':' starts a weight (``id:1977:0.5``), which must then be a number; a preset takes none (it sets
    its own weights)."""
    for prefix in (STYLE_ID_PREFIX, PRESET_PREFIX):
        if text.startswith(prefix):
            name, sep, tail = text[len(prefix) :].rpartition(":")
            if not sep:
                return text, 1.0
            if prefix == PRESET_PREFIX:
                raise CliError(f"--style {text}: a preset takes no weight (it sets its own styles and weights)")
            try:
                weight = float(tail)
            except ValueError:
                raise CliError(f"--style {text}: the part after the last ':' must be a weight, got {tail!r}") from None
            return prefix + name, _weight(text, weight, tail)
    head, sep, tail = text.rpartition(":")
    if not sep:
        return text, 1.0
    try:
        weight = float(tail)
    except ValueError:
        return text, 1.0
    if not head:
        raise CliError(f"--style {text}: no style before the weight {tail!r} (give PATH:WEIGHT)")
    return head, _weight(text, weight, tail)


def _weight(spec: str, weight: float, text: str) -> float:
    if not (math.isfinite(weight) and weight >= 0):
        raise CliError(f"--style {spec}: the weight must be a finite number >= 0, got {text}")
    if weight > FLOAT32_MAX:  # a float32 on the wire: it would arrive as infinity
        raise CliError(f"--style {spec}: the weight must be at most {FLOAT32_MAX:.7g}, got {text}")
    return weight


def _blend(styles: list[tuple[Any, float]]) -> Any:
    """The styles of one content as the client takes them: a preset alone, or (style, weight) pairs."""
    return styles[0][0] if isinstance(styles[0][0], Preset) else [(s, w) for s, w in styles]


def _style_source(spec: str, source: str) -> StyleRef | Preset | Path:
    if source.startswith(PRESET_PREFIX):
        if not source[len(PRESET_PREFIX) :]:
            raise CliError(f"--style {spec}: empty preset name")
        return Preset(source[len(PRESET_PREFIX) :])
    if source.startswith(STYLE_ID_PREFIX):
        sid = source[len(STYLE_ID_PREFIX) :]
        if not sid:
            raise CliError(f"--style {spec}: empty style id")
        return StyleRef(sid)
    if not source:  # Path("") is ".", a folder: the message would name the wrong problem
        raise CliError(f"--style {spec}: an empty path (give an image file)")
    path = Path(source)
    if not path.exists():
        hint = ""
        if source == spec and ":" in spec:  # a suffix that is no weight was taken as part of the name
            hint = f" (the part after the last ':', {spec.rpartition(':')[2]!r}, is not a number, so it is no weight)"
        elif source != spec and Path(spec).is_file():  # a file named "st:2" whose suffix was read as a weight
            hint = f" (the file {spec} exists: its ':{spec.rpartition(':')[2]}' was read as a weight; give {spec}:1)"
        elif not path.suffix and len(path.parts) == 1:
            hint = f" (a style of the server's library is id:{source}; --list-styles lists them)"
        raise CliError(f"--style {spec}: no such file: {source}{hint}")
    _check_readable(path, f"--style {spec}")
    return path


def _check_readable(path: Path, what: str, allow_empty: bool = False) -> None:
    """A regular file that can be opened: a folder, a device (/dev/zero: endless) or a FIFO (a read that never
    returns) is refused before anything reads it; so is an empty file (unless ``allow_empty``: a folder run's
    content, said by the server and passed over), which the server named only as "image data is empty"."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise CliError(f"{what}: {path} is not a regular file (a folder, a device or a pipe)")
        if st.st_size == 0 and not allow_empty:
            raise CliError(f"{what}: {path} is empty (0 bytes)")
        with path.open("rb") as f:
            f.read(1)
    except OSError as e:
        raise CliError(f"{what}: cannot read {path}: {e.strerror or e}") from None


# gRPC's words for a peer that answered the HTTP/2 preface in HTTP/1 text ("HTTP/1.1 400", "<!DOCTYPE"): its
# own, or the frame type it read, a printable character (a TLS port's reply reads otherwise: "Socket closed")
_HTTP1_RE = re.compile(r"http1\.x server|Expected SETTINGS frame as the first frame, got frame type (\d+)")


def _http1_peer(details: str) -> bool:
    m = _HTTP1_RE.search(details)
    return m is not None and (m.group(1) is None or 0x21 <= int(m.group(1)) <= 0x7E)


def _cli_words(said: str, args: argparse.Namespace) -> str:
    """What the server suggests, in this command's words: its RPCs and request fields as the flags that do it
    (a print's reply over the message limit said "ask for format JPEG or a smaller content_size"; JPEG is asked
    for by -o's extension where -o names a file: --format beside a .png file is refused)."""
    output = getattr(args, "output", None)
    one_file = output and isinstance(args.content, (str, Path)) and not _names_folder(output)  # (set by _run)
    jpeg = f"a .jpg output (-o {Path(output).with_suffix('.jpg')})" if one_file and output else "--format jpeg"
    said = (said.replace("see ListStyles", "see --list-styles")
            .replace("register it with RegisterStyle", "pass its image instead (--style FILE)")
            .replace("ask for format JPEG", f"ask for {jpeg}")
            .replace("ask for a lower quality", "ask for a lower --quality")
            .replace("or a smaller content_size", "or a smaller --size"))
    # the request's other field names in the text as their flags ("--style-weight: content_weight and style_weight
    # are both 0"); the two-word ones only, which prose does not use
    return _FIELD_WORD_RE.sub(lambda m: _OPTION_FLAGS[m.group(0)], said)


NO_LIBRARY = "this server has no style library"  # (server/service.py's words for an unknown id:NAME)


def _library_hint(args: argparse.Namespace) -> str:
    """Where a server's style library comes from: --local starts its own, which reads ADAIN_STYLES_DIR (the
    README's `id:mosaic` there said only "this server has no style library", of a server on a random port)."""
    if getattr(args, "local", False):
        return "--local's server reads its library from ADAIN_STYLES_DIR=FOLDER, a folder of style images"
    return "adain-server --styles-dir"


def _describe(e: StyleTransferError, args: argparse.Namespace, cli_terms: bool = False) -> str:
    """A failed call in the CLI's words; ``cli_terms``: the request's field names as the flags and files
    that set them (one content's request: its styles[i] are the --style flags in order)."""
    server = args.server
    if e.code == grpc.StatusCode.UNAVAILABLE and "Cancelling all calls" in e.details:  # gRPC's server stop
        return (f"the server at {server} stopped during the call (UNAVAILABLE: {e.details}): it was shut down, and "
                "this call ran past its drain (adain-server --grace-seconds); run it again once a server is up")
    if e.code == grpc.StatusCode.UNAVAILABLE and _LOST_RE.search(e.details) and not _NEVER_CONNECTED_RE.match(
            e.details):  # reached, then cut: not "cannot reach"
        dead = "ping timeout" in e.details
        why = f" (no answer to a ping for {PING_TIMEOUT_S} s: the link went dead)" if dead else ""
        return (f"the connection to the server at {server} was lost during the call (UNAVAILABLE: {e.details}){why}; "
                "run it again")
    if e.code == grpc.StatusCode.UNAVAILABLE:
        tls = args.tls or args.ca_cert or args.client_cert
        hint = "; over TLS: is --ca-cert the server's CA, and does it want a --client-cert?" if tls else ""
        if tls and "WRONG_VERSION_NUMBER" in e.details:  # what came back was no TLS record
            hint = "; the server does not speak TLS there: leave out --tls and --ca-cert (or start it with TLS)"
        if _http1_peer(e.details):
            hint = "; this is an HTTP server, not adain-server (the web page's port?)"
        elif not tls and "Connection refused" in e.details and not getattr(args, "local", False):
            hint = "; is adain-server running there? Start one, or add --local to run one for this command"
        return f"cannot reach the server at {server} (UNAVAILABLE): {e.details}{hint}"
    if e.code == grpc.StatusCode.DEADLINE_EXCEEDED and "(message_timeout_s)" in e.details:  # the server's limit
        return (f"the request did not reach the server at {server} in time (DEADLINE_EXCEEDED: {e.details}): over a "
                "slow link, send a smaller file, or raise the server's --message-timeout-s")
    if e.code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"the server at {server} did not answer in time (DEADLINE_EXCEEDED: {e.details}; raise --timeout)"
    # (the client's own refusal of a file over the message limit is RESOURCE_EXHAUSTED too, as the server's is:
    # named by its flag or file as a bad input is; never sent, it has no request id)
    own = e.code == grpc.StatusCode.RESOURCE_EXHAUSTED and e.violations and e.request_id is None
    if e.code == grpc.StatusCode.INVALID_ARGUMENT or own:
        said = _cli_words(_in_cli_terms(e, args) if cli_terms else e.details, args)
        if getattr(args, "local", False) and NO_LIBRARY in e.details:  # its server was never the user's to start
            said += f" ({_library_hint(args)})"
        at = e.details.find(NO_FEATURES_HINT)  # (the violations, which the CLI words, do not carry it)
        return said + e.details[at:] if at >= 0 and NO_FEATURES_HINT not in said else said
    if e.code == grpc.StatusCode.UNIMPLEMENTED:  # a feature's name as the server lists it, not as a flag
        return f"{e.code.name}: {e.details}"
    if e.code == grpc.StatusCode.UNAUTHENTICATED:
        return f"the server at {server} wants a valid token (UNAUTHENTICATED: {e.details}; see --token-file)"
    if e.code == grpc.StatusCode.RESOURCE_EXHAUSTED and (over := REQUEST_OVER_RE.search(e.details)):
        return _request_over_limit(int(over.group(1)), int(over.group(2)), args)
    return f"{e.code.name}: {_cli_words(e.details, args)}"


# gRPC's words for a connection that was up and went: a reply cut mid-way read "cannot reach the server" (whose
# log said OK), as did a link found dead by the keepalive pings
_LOST_RE = re.compile(r"Stream removed|Connection reset|Broken pipe")
_NEVER_CONNECTED_RE = re.compile(r"failed to connect to all addresses|connections to all backends failing")

def _request_over_limit(size: int, limit: int, args: argparse.Namespace) -> str:
    """A request over the server's message limit, with the largest file it carried by its flag: gRPC said only
    "RESOURCE_EXHAUSTED: SERVER: Received message larger than max (12018771 vs. 1048576)"."""
    content = getattr(args, "content", None)  # one content (a folder run's args: _one_content's, its own)
    styles = [Path(parse_style(spec)[0]) for spec in getattr(args, "style", None) or []]  # (id:NAME: no file)
    sent = _named_inputs(args, styles, [Path(content)] if isinstance(content, (str, Path)) else [])
    sizes = [(os.path.getsize(path), what, str(path)) for what, path in sent if os.path.isfile(path)]
    said = (f"the request, {size:,} bytes, is over the server's message limit of {limit:,} bytes (its "
            "--max-message-mb)")
    if not sizes:
        return said
    bytes_, what, path = max(sizes)
    named = path if what == "CONTENT" else f"{what} {path}"
    return f"{said}; the largest file in it: {named}, {bytes_:,} bytes: send it smaller"


# the request's own fields (StylizeRequest, VideoOptions) -> the flags that set them
_OPTION_FLAGS = {
    "alpha": "--alpha", "preserve_color": "--preserve-color", "content_size": "--size", "style_size": "--style-size",
    "quality": "--quality", "keep_exif": "--keep-exif", "refine_steps": "--refine", "refine_init": "--classic",
    "content_weight": "--content-weight", "style_weight": "--style-weight", "tv_weight": "--tv-weight",
    "refine_size": "--refine-size", "temporal": "--temporal", "temporal_strength": "--temporal-strength",
    "styles": "--style", "weights": "--style", "masks": "--mask", "label_values": "--label",
    "region_alphas": "--region-alpha",
}
_STYLE_FIELD_RE = re.compile(r"styles\[(\d+)\](?:\.(\w+))?")
# (not in a path: "--style p/style_size.png" became "p/--style-size.png")
_FIELD_WORD_RE = re.compile(r"(?<![\w.\[/\\-])(?:" + "|".join(f for f in _OPTION_FLAGS if "_" in f)
                            + r")(?![\w\]=./\\])")


def _nth(values: Sequence[Any] | None, i: int) -> Any:
    return values[i] if values and i < len(values) else None


def _cli_term(field: str, args: argparse.Namespace) -> tuple[str | None, str | None] | None:
    """A request field of one content's call as (flag, the value given to it): styles[1].image -> ("--style",
    the second style as given), mask -> ("--mask", its file), content -> (None, the content file); None for a
    field no flag sets (a frame, the request as a whole)."""
    field = field.removeprefix("options.")  # a video's options
    m = _STYLE_FIELD_RE.fullmatch(field)
    if m:
        i, part = int(m.group(1)), m.group(2)
        if part in (None, "image", "style_id", "weight"):
            return ("--style", _nth(args.style, i))
        if part == "mask":
            return ("--mask", _nth(args.mask, i))
        if part == "label":
            return ("--label", _nth(args.label, i))
        if part == "alpha":
            alpha = _nth(args.region_alpha, i)
            return ("--region-alpha", None if alpha is None else f"{alpha:g}")
        return None
    if field == "content":
        return (None, str(args.content))
    if field == "mask":  # the one mask of two styles
        return ("--mask", _nth(args.mask, 0))
    if field == "labels":
        return ("--labels", args.labels)
    if field == "preset":
        return ("--style", _nth(args.style, 0))
    if field == "format":  # the output's, by -o's extension or --format
        return ("--format", args.format) if args.format else ("-o", args.output)
    flag = _OPTION_FLAGS.get(field)
    return None if flag is None else (flag, None)


def _violations(e: StyleTransferError) -> list[tuple[str, str]]:
    """A failed call's (field, description) pairs: its BadRequest detail, or without one (googleapis-common-protos
    is optional) the first field of its text; none where the text names no field."""
    if e.violations:
        return list(e.violations)
    field, sep, rest = e.details.partition(": ")
    return [(field, rest)] if sep else []


def _first_field(e: StyleTransferError) -> str:
    """The field a failed call names first ("" where it names none)."""
    pairs = _violations(e)
    return pairs[0][0] if pairs else ""


def _one_content(args: argparse.Namespace, content: Path, spec: str) -> argparse.Namespace:
    """``args`` as one call of a folder run sees them: that content and the one style it runs (its styles[0],
    ``spec`` as given to --style), so that a refusal names the flag and file that set the field."""
    return argparse.Namespace(**{**vars(args), "content": content, "style": [spec]})


def _content_failed(e: StyleTransferError, args: argparse.Namespace, content: Path) -> str:
    """A failed call for ``content`` (``args`` as that call sees them: see :func:`_one_content`) in the CLI's
    words: a flag's problem as the flag says it (the content file is named where the field is it), anything
    else after the content's name."""
    if e.details.startswith(f"{content}:"):  # the client's own checks name the file already
        return _describe(e, args)
    said = _describe(e, args, cli_terms=True)
    if said.startswith(f"{content}:"):  # the field was the content
        return said
    field = _first_field(e)
    # a flag's problem is every content's; one this content alone has (its size for --format webp) names it
    option = e.code == grpc.StatusCode.INVALID_ARGUMENT and _cli_term(field, args) is not None
    return said if option and not _this_content_only(e) else f"{content}: {said}"


def _in_cli_terms(e: StyleTransferError, args: argparse.Namespace) -> str:
    """``e.details`` with each field named as the flag and file that set it ("styles[1].image: not a decodable
    image" -> "--style b.png: not a decodable image"), the server's descriptions as they are."""
    pairs = _violations(e)
    if not pairs:
        return e.details
    said = []
    for field, description in pairs:
        term = _cli_term(field, args)
        if term is None:
            said.append(f"{field}: {description}")
            continue
        flag, value = term
        if value is not None and description.startswith((f"{value} ", f"{value}:")):  # the client named it
            said.append(f"{flag}: {description}" if flag else description)
        else:
            said.append(f"{' '.join(x for x in (flag, value) if x)}: {description}")
    return "; ".join(said)


def _format(text: str) -> str:
    return format_name(text) or text


def _refuse_quality_for_png(args: argparse.Namespace, fmt: str, what: str) -> None:
    """--quality with a PNG output did nothing, without a word (PNG is lossless)."""
    if args.quality is not None and fmt == "png":
        raise CliError(f"--quality: only for JPEG and WebP outputs; {what} PNG, which is lossless")


def _output_format(path: Path, content: Path) -> str:
    fmt = format_from_suffix(path.suffix)
    if fmt is None:
        suffix = path.suffix.lower()
        if suffix in VIDEO_SUFFIXES:
            kind = "for videos (animated)" if suffix == ".gif" else "a video container"
            raise CliError(f"-o {path}: {content} is an image, and {path.suffix} is {kind}; an image's output "
                           "format is .png, .jpg, .jpeg or .webp")
        if str(path) == "-" or str(path).startswith("/dev/"):  # (the folder hint sent '-o -' to '-o -/')
            raise CliError(f"-o {path}: outputs are written to files (under a temporary name, renamed when "
                           "complete), not to standard output or a device: write a file, then cat it")
        if not suffix:
            raise CliError(f"-o {path}: no extension to tell the output format by (use .png, .jpg, .jpeg or "
                           f".webp; or end the name with '/' for a folder: -o {path}/)")
        raise CliError(f"-o {path}: cannot tell the output format from {path.suffix!r} "
                       "(use .png, .jpg, .jpeg or .webp)")
    return fmt


def _image_arg(path: str, flag: str) -> Path:
    if not path:
        raise CliError(f"{flag}: an empty path (give an image file)")
    file = Path(path)
    if not file.exists():
        raise CliError(f"{flag}: no such file: {file}")
    _check_readable(file, flag)
    return file


def _region_options(args: argparse.Namespace) -> dict[str, Any]:
    """--mask (one per style, or the two-style form), --labels/--label and --region-alpha as client options."""
    n = len(args.style)
    masks = [_image_arg(m, "--mask") for m in args.mask or []]
    out: dict[str, Any] = {}
    preset = n == 1 and args.style[0].startswith(PRESET_PREFIX)  # its styles are the server's: none to count here
    if preset and (len(masks) > 1 or args.labels is not None or args.label or args.region_alpha):
        flag = "--mask" if masks else "--labels" if args.labels is not None else \
            "--label" if args.label else "--region-alpha"
        raise CliError(f"{flag}: a preset's styles carry no masks, labels or alphas of their own: give the styles "
                       "themselves (--style each, in order); a preset takes one --mask (of its two styles)")
    if len(masks) == 1 and (n == 2 or preset):  # (the server says whether the preset has two styles)
        out["mask"] = masks[0]
    elif masks:
        if len(masks) != n:
            raise CliError(f"--mask: {plural(len(masks), 'mask')}"
                           f" for {plural(n, 'style')} (give one per --style, in order)")
        out["masks"] = masks
    if args.labels is not None:
        if masks:
            raise CliError("--labels: give regions either by --mask or by --labels, not both")
        labels = args.label or []
        if len(labels) != n:
            raise CliError(f"--label: {plural(len(labels), 'label')}"
                           f" for {plural(n, 'style')} (give one per --style, in order)")
        out["labels"] = _image_arg(args.labels, "--labels")
        out["label_values"] = [_label_arg(v) for v in labels]
    elif args.label:
        raise CliError("--label needs --labels (the label image)")
    if args.region_alpha:
        if len(args.region_alpha) != n:
            raise CliError(f"--region-alpha: {plural(len(args.region_alpha), 'value')}"
                           f" for {plural(n, 'style')} (one per --style)")
        out["region_alphas"] = args.region_alpha
    return out


def _label_arg(text: str) -> int | str:
    """A grey level 0-255 (decimal, or 0x..) or a colour "#rrggbb" (checked by the client); a number above 255
    is refused, not read as the colour 0xRRGGBB it would be to the client."""
    if text.startswith("#"):
        return text
    try:
        value = int(text, 10) if text.strip().isdigit() else int(text, 0)
    except ValueError:
        raise CliError(f"--label: {text!r} is not a grey level 0-255 or a colour #rrggbb") from None
    if not 0 <= value <= 255:
        raise CliError(f"--label: {text} is no grey level 0-255 (a colour is #rrggbb)")
    return value


def _options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        **_region_options(args),
        "alpha": args.alpha,
        "preserve_color": args.preserve_color,
        "content_size": args.size,
        "style_size": args.style_size,
        "quality": args.quality or DEFAULT_QUALITY,
    }


def _video_flags(args: argparse.Namespace) -> list[str]:
    """The video-only flags given (none of them does anything to an image)."""
    given = {"--temporal": args.temporal is not None, "--temporal-strength": args.temporal_strength is not None,
             "--fps": args.fps is not None, "--start": args.start > 0, "--duration": args.duration is not None}
    return [flag for flag, on in given.items() if on]


def _image_flags(args: argparse.Namespace) -> list[str]:
    """The image-only flags given (a video's quality and container are its encoder's and its input's)."""
    given = {"--quality": args.quality is not None, "--keep-exif": args.keep_exif, "--format": args.format is not None}
    return [flag for flag, on in given.items() if on]


def _names_folder(output: str) -> bool:
    """Whether -o names a folder: one that exists, or a path the user ended with '/' (made if need be)."""
    return output.endswith(("/", os.sep)) or os.path.isdir(output)  # (Path.is_dir raised on a name too long)


def _name_key(name: str) -> str:
    """What tells two file names apart on every file system: neither case (A.jpg and a.png are one file on macOS
    and Windows) nor Unicode's two ways of writing an accent (NFC "café" and NFD "cafe" + U+0301, one file on
    macOS, whose APFS and HFS+ compare names normalized; on Linux two files that look alike). Unicode's canonical
    caseless match: NFD(casefold(NFD(name)))."""
    return unicodedata.normalize("NFD", unicodedata.normalize("NFD", name).casefold())


def _twins(what: str, first: str, second: str) -> str:
    """Two names of one key (:func:`_name_key`), ``what`` ("two contents named" ...) said of them; names that
    differ only in their Unicode form look the same when printed, so their code points are shown too."""
    said = f"{what} {first!r}"
    if first.casefold() != second.casefold():
        said += f" (one name written two ways in Unicode: {ascii(first)} and {ascii(second)})"
    return said


def _fitted(limit: int, stem: str, middle: str, ext: str) -> str:
    """The name ``stem + middle + ext`` of an output the CLI names itself (``middle``: "_stylized" or
    "_stylized_STYLE"), cut to ``limit`` bytes (:func:`adain.files.name_max`) where it is longer. A content named
    near the limit (a 250-byte name) had no room for the suffix: its output failed "File name too long", and a
    folder run stopped there. Written, not refused, as the user asked for an output named after the content: its stem is
    cut and marked with "~" and 8 hex digits of the whole name's SHA-256, so two names cut alike still write two
    files, and a run again writes the same one. A style's name that leaves no room is cut with it."""
    name = stem + middle + ext
    if len(os.fsencode(name)) <= limit:
        return name
    mark = f"~{hashlib.sha256(os.fsencode(name)).hexdigest()[:8]}"
    room = limit - len(os.fsencode(mark + middle + ext))
    if room > 0:  # the style's name kept whole: it tells a content's outputs apart
        return cut_name(stem, room) + mark + middle + ext
    return cut_name(stem + middle, limit - len(os.fsencode(mark + ext))) + mark + ext


def _name_over(path: Path) -> str | None:
    """Which name in ``path`` is over its file system's limit (:func:`adain.files.name_max`), its bytes and the
    limit; None where none is."""
    limit = name_max(path.parent)
    for i, part in enumerate(reversed(path.parts)):
        size = len(os.fsencode(part))
        if size > limit:
            which = "its file name" if i == 0 else f"the folder name {part}"
            return f"{which} is too long ({size} bytes, the most is {limit})"
    return None


def _too_long(path: Path) -> str:
    """What ENAMETOOLONG meant for ``path``: a name in it over its file system's limit (:func:`_name_over`), or the
    whole path over the system's (the error said "File name too long", and named the folder)."""
    if over := _name_over(path):
        return over
    try:
        most = f", the most is {os.pathconf(path.anchor or '.', 'PC_PATH_MAX') - 1}"
    except (AttributeError, OSError, ValueError):
        most = ""
    return f"its path is too long ({len(os.fsencode(path))} bytes{most})"


def _cannot_write(out: Path, e: OSError) -> str:
    """"cannot write: " and why, a name too long said as which name and its bytes (:func:`_too_long`)."""
    return f"cannot write: {_too_long(out) if e.errno == errno.ENAMETOOLONG else e.strerror or e}"


# The errors of writing one output that are that output's alone, said after the rest of a folder run is written: its
# path over the system's limit, a name a file system refuses (EILSEQ: bytes that are no UTF-8 where names must be;
# EINVAL: FAT's "a:b.png"), a folder of its name. The others (a full disk or quota, a read-only or unwritable
# folder, a lost mount) are every output's, and stop the run.
_ONE_OUTPUTS = frozenset({errno.ENAMETOOLONG, errno.EILSEQ, errno.EINVAL, errno.EISDIR})


def _named_inputs(args: argparse.Namespace, styles: Sequence[Any], contents: Sequence[Path]) -> list[tuple[str, Path]]:
    """The files a run reads, each with what names it: "CONTENT", "--style" (``styles``: their sources, files
    as Paths), "--mask", "--labels"."""
    named = [("CONTENT", c) for c in contents] + [("--style", s) for s in styles if isinstance(s, Path)]
    mask, labels = getattr(args, "mask", None), getattr(args, "labels", None)  # (none in --list-styles')
    return named + [("--mask", Path(m)) for m in mask or []] + ([("--labels", Path(labels))] if labels else [])


def _input_files(args: argparse.Namespace, styles: list[tuple[Any, float]], contents: list[Path]) -> dict:
    """The files a run reads, by (device, inode): an output that is one of them would overwrite it."""
    ids = {}
    for what, path in _named_inputs(args, [s for s, _ in styles], contents):
        try:
            st = os.stat(path)
        except OSError:
            continue
        ids[(st.st_dev, st.st_ino)] = (what, path)
    return ids


def _refuse_overwriting(out: Path, shown: str, inputs: dict) -> None:
    """-o may not name a file the run reads (the same path, or a link to it): it would be overwritten."""
    try:
        st = os.stat(out)
    except OSError:
        return
    hit = inputs.get((st.st_dev, st.st_ino))
    if hit is not None:
        what, path = hit
        raise CliError(f"-o {shown}: the output {out} would overwrite the {what} file {path}; give another output")


def _check_writable(out: Path, shown: str) -> None:
    """Refuse, before any call, an output that could not be written: a refine or a print-size photo rendered for
    minutes, then failed to save ("File exists"). Its folder is made by the save, as before."""
    if over := _name_over(out):
        raise CliError(f"-o {shown}: cannot write there: {over}")
    try:
        check_writable(out)
    except (NotADirectoryError, IsADirectoryError) as e:
        raise CliError(f"-o {shown}: cannot write there: {e.filename} is {e.strerror}") from None
    except FileNotFoundError as e:  # a link on the way to a folder or file that is not there
        raise CliError(f"-o {shown}: cannot write there: {e.filename} is {e.strerror}") from None
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:  # (said "cannot write in the folder" and named the file)
            raise CliError(f"-o {shown}: cannot write there: {_too_long(out)}") from None
        raise CliError(f"-o {shown}: cannot write in the folder {e.filename}: {e.strerror or e}") from None


def _run_single(later: contextlib.ExitStack, args: argparse.Namespace, styles: list[tuple[Any, float]]) -> int:
    content = Path(args.content)  # checked by _run
    flags = _video_flags(args)
    if flags:
        raise CliError(f"{flags[0]}: only for videos, and {content} is an image")
    if _names_folder(args.output):  # named after the content, in --format (made by save())
        fmt = args.format or "png"
        folder = Path(args.output)
        out = folder / _fitted(name_max(folder), content.stem, "_stylized", FORMAT_SUFFIXES[fmt])
    else:
        out = Path(args.output)
        fmt = _output_format(out, content)
        if args.format is not None and args.format != fmt:  # else one of the two would be ignored
            raise CliError(f"--format {args.format}: -o {out} is a {fmt.upper()} file by its extension; give one "
                           f"or the other (or -o ending in {FORMAT_SUFFIXES[args.format]})")
    _refuse_quality_for_png(args, fmt, f"-o {out} is")
    _refuse_overwriting(out, args.output, _input_files(args, styles, [content]))
    if _already_there(args, out):
        return 0
    refine = _refine_options(args)
    _check_writable(out, args.output)
    client = later.enter_context(session(args))
    # Steps are reported where someone watches: a refine, or a terminal that would stare at a print-size photo's
    # minute or more of tiles (70 s for 12 MP on a 2-core CPU) with no sign of life; elsewhere a plain Stylize.
    steps = refine["refine_steps"]
    follow = bool(steps) or sys.stderr.isatty()
    bar = _bar(args, total=steps, unit="step", desc="refine") if steps else None

    def progress(p: Any) -> None:
        nonlocal bar
        if bar is None:  # a content over the server's tile threshold: its statistics boxes, then its tiles
            bar = _bar(args, total=p.steps, unit="part", desc="large photo")
        bar.total = p.steps
        if steps:
            bar.set_postfix(loss=f"{p.loss:.4g}", refresh=False)  # shown by the update: this step's, not the last's
        bar.update(p.step - bar.n)

    try:
        result = client.stylize(content, _blend(styles), format=fmt, on_progress=progress if follow else None,
                                keep_exif=args.keep_exif, timeout=image_timeout(args, content, steps),
                                **_options(args), **refine)
    except StyleTransferError as e:
        raise CliError(_describe(e, args, cli_terms=True)) from None
    finally:
        if bar is not None:
            bar.close()
    try:
        result.save(out)
    except OSError as e:
        raise CliError(f"-o {out}: {_cannot_write(out, e)}") from None
    print(one_line(f"{out} ({result.width} x {result.height})"))  # (a name's newline or escape, as errors write it)
    return 0


def _already_there(args: argparse.Namespace, out: Path) -> bool:
    """Whether --skip-existing leaves ``out`` as it is (said): it is a file already. Outputs are written
    whole (a temporary file renamed), so one that is there is complete."""
    if not (args.skip_existing and os.path.isfile(out)):
        return False
    print(one_line(f"{out}: already there, left as it is (--skip-existing)"))  # (-q: stdout goes nowhere)
    return True


def _bar(args: argparse.Namespace, **kwargs: Any) -> Any:
    """A tqdm progress bar, shown only on a terminal and not with -q (a quiet run on a terminal still drew them)."""
    from tqdm import tqdm

    return tqdm(disable=True if getattr(args, "quiet", False) else None, **kwargs)


def _video_options(args: argparse.Namespace) -> dict[str, Any]:
    options = _options(args)
    del options["quality"]  # frames travel as JPEG 95; the output's quality is the video encoder's
    return {**options, "temporal": args.temporal, "temporal_strength": args.temporal_strength}


def _stylize_video(client: StyleTransferClient, args: argparse.Namespace, src: Path, out: Path, styles: Any) -> int:
    """One video, with a progress bar of frames and frames per second. Raises MediaError,
    StyleTransferError or OSError (see ``_video_error``)."""
    bar = _bar(args, unit="frame", desc=one_line(src.name))  # (an escape in the name reached the terminal)
    try:
        return stylize_video_file(client, src, out, styles, on_start=lambda n: bar.reset(total=n or None),
                                  on_frame=lambda: bar.update(1), max_fps=args.fps, start=args.start,
                                  duration=args.duration, frame_timeout=timeout_of(args), **_video_options(args))
    finally:
        bar.close()


def _video_error(e: Exception, args: argparse.Namespace, src: Path, out: Path) -> CliError:
    """``args`` as this clip's call sees them (a folder run's: :func:`_one_content`)."""
    if isinstance(e, StyleTransferError):  # a style's or another option's problem is not the clip's
        return CliError(_content_failed(e, args, src))
    if isinstance(e, OSError):
        return CliError(f"-o {out}: {_cannot_write(out, e)}")
    return CliError(str(e))  # MediaError: names the file and the problem


def _run_video(later: contextlib.ExitStack, args: argparse.Namespace, styles: list[tuple[Any, float]]) -> int:
    src = Path(args.content)
    out = Path(args.output)
    if args.refine:
        raise CliError(f"--refine: {src} is a video; the optimisation method is for images (seconds per frame)")
    _refine_options(args)  # its tuning flags without --refine are refused, as for an image
    flags = _image_flags(args)
    if flags:
        raise CliError(f"{flags[0]}: only for images, and {src} is a video (its output takes its container, and "
                       "the video encoder's quality)")
    if _names_folder(args.output):  # the same container as the input, named after it
        out = out / _fitted(name_max(out), src.stem, "_stylized", _video_suffix(src))
    elif out.suffix.lower() not in VIDEO_SUFFIXES:
        try:  # a file with sound and no picture (an .m4a) is no video: say that, not the output's suffix
            media().VideoReader(src).close()
        except MediaError as e:
            raise CliError(str(e)) from None
        # a name ending in a space ("trail.mp4 ") read as a video's, the space unseen in the line (a tour's)
        spaced = f" (its name ends in a space: {out.name!r})" if out.name != out.name.rstrip() else ""
        raise CliError(f"-o {args.output}: {src} is a video, so the output must be a video file "
                       f"({', '.join(VIDEO_SUFFIXES)}) or a folder (one that exists, or a name ending in '/'){spaced}")
    _refuse_overwriting(out, args.output, _input_files(args, styles, [src]))
    if _already_there(args, out):
        return 0
    _check_writable(out, args.output)
    client = later.enter_context(session(args))
    try:
        n = _stylize_video(client, args, src, out, _blend(styles))
    except (MediaError, StyleTransferError, OSError) as e:
        raise _video_error(e, args, src, out) from None
    print(one_line(f"{out} ({plural(n, 'frame')})"))
    return 0


def _video_suffix(src: Path) -> str:
    return src.suffix.lower() if src.suffix.lower() in VIDEO_SUFFIXES else ".mp4"


def _content_files(paths: list[Path]) -> list[Path]:
    """The files of several CONTENT arguments: each folder's images and videos (by suffix), and each file as
    given (the server says if it is no image); outputs are named by stem, so two contents may not share one."""
    known = tuple(dict.fromkeys(INPUT_SUFFIXES + READ_VIDEO_SUFFIXES))  # .gif is both
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir()  # not hidden files (macOS's ._photo.jpg is no photo)
                           if p.is_file() and p.suffix.lower() in known and not p.name.startswith("."))
            if not found:
                inner = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
                deeper = ""
                if inner:  # a folder of folders (one an album): said, not searched
                    shown = ", ".join(inner[:3]) + (", ..." if len(inner) > 3 else "")
                    deeper = f"; its subfolders ({shown}) are not searched: give them as CONTENT too"
                raise CliError(f"{path}: no images or videos in this folder ({', '.join(known)}){deeper}")
            files += found
        else:
            _check_readable(path, "CONTENT", allow_empty=True)  # the server names it, and the others go on
            files.append(path)
    stems: dict[str, Path] = {}
    for f in files:
        key = _name_key(f.stem)
        if key in stems and stems[key] != f:
            raise CliError(f"{stems[key]} and {f}: {_twins('two contents named', stems[key].stem, f.stem)} would "
                           "write outputs of one name")
        stems[key] = f
    return list(dict.fromkeys(files))


def _run_folder(later: contextlib.ExitStack, args: argparse.Namespace, styles: list[tuple[Any, float]]) -> int:
    if args.mask or args.labels:
        raise CliError(f"--{'mask' if args.mask else 'labels'} needs one content file; several contents run each "
                       "style alone")
    if args.region_alpha:  # else sent with each style alone: "2 region alphas for 1 styles"
        raise CliError("--region-alpha: a region's strength needs regions (--mask or --labels), which need one "
                       "content file; several contents run each style alone")
    weighted = next((spec for spec, (_source, weight) in zip(args.style, styles) if weight != 1), None)
    if weighted is not None:  # else dropped without a word: each output is one style at full weight
        raise CliError(f"--style {weighted}: a weight blends styles, which needs one content file; several "
                       "contents run each style alone")
    paths = [Path(c) for c in args.content]
    files = _content_files(paths)
    videos = [p for p in files if is_video(p)]
    contents = [p for p in files if p not in videos]
    flags = _video_flags(args)
    if flags and not videos:
        raise CliError(f"{flags[0]}: only for videos, and none of the contents is one")
    flags = _image_flags(args)
    if flags and not contents:
        raise CliError(f"{flags[0]}: only for images, and none of the contents is one")
    shown = args.output  # as typed, its '/' kept
    out_dir = Path(args.output)
    if os.path.lexists(out_dir) and not os.path.isdir(out_dir):  # (Path's raised on a name too long)
        raise CliError(f"-o {shown}: several contents (or a folder) need an output folder, and this is a file")
    if not _names_folder(shown) and out_dir.suffix.lower() in INPUT_SUFFIXES + VIDEO_SUFFIXES:
        raise CliError(f"-o {shown}: several contents (or a folder) need an output folder, and this names a file "
                       f"(end it with '/' for a folder of that name)")
    for folder in (p for p in paths if p.is_dir()):
        if os.path.isdir(out_dir) and os.path.samefile(out_dir, folder):
            raise CliError(f"-o {shown}: that is the content folder {folder}: the outputs would be taken as "
                           "contents the next time; give another folder")
    fmt = args.format or "png"
    _refuse_quality_for_png(args, fmt, f"the outputs are (--format png{'' if args.format else ', the default'})")
    ext = FORMAT_SUFFIXES[fmt]
    named = _style_names(styles)
    limit, cut = name_max(out_dir), []

    def output(content: Path, stem: str, suffix: str) -> Path:
        out = out_dir / _fitted(limit, content.stem, f"_stylized_{stem}", suffix)
        if out.name != f"{content.stem}_stylized_{stem}{suffix}":
            cut.append(out)
        return out

    tasks = [(c, source, output(c, stem, ext)) for c in contents for source, stem in named]
    video_tasks = [(v, source, output(v, stem, _video_suffix(v))) for v in videos for source, stem in named]
    inputs = _input_files(args, styles, files)
    for _, _, out in tasks + video_tasks:
        _refuse_overwriting(out, shown, inputs)
    there = 0  # outputs left as they are (--skip-existing)
    if args.skip_existing:
        wanted = len(tasks) + len(video_tasks)
        tasks, video_tasks = ([t for t in ts if not os.path.isfile(t[2])] for ts in (tasks, video_tasks))
        there = wanted - len(tasks) - len(video_tasks)
        if not tasks and not video_tasks:  # nothing to make: no server asked (nor --local's started)
            print(one_line(f"0 of {plural(wanted, 'output')} written to {shown}: all {wanted} already there "
                           "(--skip-existing)"))
            return 0
        made = {t[2] for t in tasks + video_tasks}
        cut = [out for out in cut if out in made]  # (the note counted outputs left as they were)
        videos = list(dict.fromkeys(v for v, _, _ in video_tasks))
    # The folder, by a name of no output: an output's own trouble (a folder of its name, a name the file system
    # refuses) is its failure alone, said after the rest are written; checked on the first output, it stopped the
    # run before any call, and where it was another output's the run went on (a review's).
    _check_writable(out_dir / "adain-output-probe.png", shown)
    # the videos of a folder are not refined, and keep no EXIF (a video container has its own metadata)
    options = {**_options(args), **_refine_options(args), "keep_exif": args.keep_exif}
    if cut and not args.quiet:  # said: such an output is not where its content's name would put it
        print(one_line(f"{PROG}: note: {plural(len(cut), 'output')} named after a content would be over the "
                       f"{limit} bytes a file name may have in {shown}: the content's part is cut, and marked with ~ "
                       f"and a digest ({cut[0].name})"), file=sys.stderr, flush=True)
    if args.refine and videos and not args.quiet:  # said, not done silently: the method is for images
        applies = f"applies to the {len(contents)} image(s)" if contents else "applies to images, and there are none"
        print(f"{PROG}: note: --refine {applies}; the {len(videos)} video(s) are stylized without it (seconds "
              "per frame)", file=sys.stderr, flush=True)
    spec_of = {source: spec for spec, (source, _weight) in zip(args.style, styles)}  # each as given to --style
    client = later.enter_context(session(args))
    # Send each style image once, then refer to it by id.
    refs: dict[Any, Any] = {}
    for source, _stem in named:
        if isinstance(source, (StyleRef, Preset)):
            refs[source] = source
            continue
        try:
            refs[source] = StyleRef(client.register_style(source))
        except StyleTransferError as e:  # its one field, image, is the --style named
            raise CliError(f"--style {spec_of[source]}: {_describe(e, args).removeprefix('image: ')}") from None

    served: Counter[str] = Counter()  # outputs per replica (x-served-by), for the summary

    lock = threading.Lock()  # (-j threads)

    follow = sys.stderr.isatty()  # a refine's steps or a print-size photo's parts, beside the bar: minutes each

    def one(content: Path, source: Any, out: Path) -> None:
        def progress(p: Any) -> None:
            bar.set_postfix_str(f"{one_line(content.name)}: {'step' if options['refine_steps'] else 'part'} "
                                f"{p.step} of {p.steps}")

        give_up = time.monotonic() + image_timeout(args, content, options["refine_steps"])
        while True:
            try:
                result = client.stylize(content, refs[source], format=fmt, on_progress=progress if follow else None,
                                        timeout=max(0.1, give_up - time.monotonic()), **options)
                break
            except StyleTransferError as e:
                # a full queue (a refine's or a print's: one place, four waiting) is waited for as the server
                # asks, within the image's own time (-j 8, or two users' folder runs, failed the whole run)
                wait_s = e.retry_after if e.code == grpc.StatusCode.RESOURCE_EXHAUSTED else None
                if wait_s is None or time.monotonic() + wait_s > give_up or stopped.wait(wait_s):
                    raise
        result.save(out)
        with lock:
            served[result.served_by or "?"] += 1

    failed, told, stopped = 0, set(), threading.Event()
    with ThreadPoolExecutor(args.jobs) as pool, _bar(args, total=len(tasks), unit="img") as bar:
        futures = {pool.submit(one, *t): t for t in tasks}
        pending = set(futures)
        try:
            while pending:  # each as it ends: the bar moves (FIRST_EXCEPTION waited for all of them)
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    content, source, out = futures[f]
                    bar.set_postfix_str("", refresh=False)  # its parts are done; one still running says its own
                    bar.update(1)
                    err = f.exception()
                    if err is None:
                        continue
                    if isinstance(err, StyleTransferError):
                        said = _content_failed(err, _one_content(args, content, spec_of[source]), content)
                        if not _this_content_only(err):
                            raise CliError(said)
                        failed += 1  # a bad or too large content image: say so and go on with the others
                        if said not in told:  # once, not once per style (the same line, nothing between them)
                            told.add(said)
                            bar.write(_error_line(said), file=sys.stderr)
                        continue
                    if isinstance(err, OSError):
                        said = f"{out}: {_cannot_write(out, err)}"
                        if err.errno not in _ONE_OUTPUTS:  # (every output's: a full disk, a read-only folder)
                            raise CliError(said)
                        failed += 1  # this output's own (its name): said, and the others written
                        bar.write(_error_line(said), file=sys.stderr)
                        continue
                    raise err
        except BaseException as e:  # an error, Ctrl-C or SIGTERM: those not started are not started, those running
            stopped.set()  # are (those waiting for a place in a full queue) cancelled (closing the channel; they ran to
            for p in pending:  # their end, minutes with --refine)
                p.cancel()
            client.close()
            if isinstance(e, CliError):  # what was written before it stopped: said, as a finished run says it
                written = sum(f.done() and not f.cancelled() and f.exception() is None for f in futures)
                total = len(tasks) + len(video_tasks)
                raise CliError(f"{e} ({written} of {plural(total, 'output')} written to {shown} before the run "
                               "stopped)") from None
            raise
    for src, source, out in video_tasks:  # one at a time: a stream keeps the server busy on its own
        try:
            _stylize_video(client, args, src, out, refs[source])
        except (MediaError, StyleTransferError, OSError) as e:
            bad_input = isinstance(e, MediaError) or (
                isinstance(e, StyleTransferError) and e.code == grpc.StatusCode.INVALID_ARGUMENT
            ) or (isinstance(e, OSError) and e.errno in _ONE_OUTPUTS)
            error = _video_error(e, _one_content(args, src, spec_of[source]), src, out)
            if not bad_input:
                raise error from None
            failed += 1  # a bad video: say so and go on with the others
            print(_error_line(str(error)), file=sys.stderr, flush=True)
    total = len(tasks) + len(video_tasks)
    kept = f"; {there} already there, left as they were (--skip-existing)" if there else ""
    print(one_line(f"{total - failed} of {plural(total, 'output')} written to {shown} ({plural(len(tasks), 'image')}, "
                   f"{plural(len(video_tasks), 'video')}){kept}"))
    if served and not args.local:  # (--local: the command's own server, its name a random vm:port, noise)
        # a video's stream names no replica to this client: said, not left to be read as all outputs
        unsaid = " (videos not counted)" if video_tasks else ""
        print("images per replica: " + ", ".join(f"{name} {n}" for name, n in sorted(served.items())) + unsaid)
    return 1 if failed else 0


def _this_content_only(err: StyleTransferError) -> bool:
    """Whether a folder run's failed call was this content's own doing, so the run goes on with the others: an
    image the server refuses, one whose upload or output is over a message limit, one past the deadline. A style
    or an option it refuses (the same for every content: it was said once per content), the server's full queue
    or its absence stop the run."""
    field = _first_field(err)
    if err.code == grpc.StatusCode.INVALID_ARGUMENT:  # the content, its size (the request's, or the format's for it)
        return field in ("content", "request", "format") or field.startswith("content.")
    if err.code == grpc.StatusCode.RESOURCE_EXHAUSTED:  # the reply limit, or gRPC's own for the upload
        return "over the reply limit" in err.details or "larger than max" in err.details
    return err.code == grpc.StatusCode.DEADLINE_EXCEEDED


def _style_names(styles: list[tuple[Any, float]]) -> list[tuple[Any, str]]:
    """Each style once, with the name its outputs carry (a file's stem, a registered id's first 12 characters,
    a library style's or preset's name): two styles of one name would write outputs of one name, and are
    refused as two contents of one stem are."""
    named: dict[str, tuple[Any, str, str]] = {}
    for source, _weight in styles:
        if isinstance(source, Preset):
            stem, shown = source.name, f"{PRESET_PREFIX}{source.name}"
        elif isinstance(source, StyleRef):  # a library name whole (cut, two names of one start were refused)
            stem = source.id[:12] if STYLE_ID_RE.fullmatch(source.id) else source.id
            shown = f"{STYLE_ID_PREFIX}{source.id}"
        else:
            stem, shown = source.stem, str(source)
        key = _name_key(stem)
        if key in named and named[key][0] != source:
            raise CliError(f"--style {named[key][1]} and {shown}: {_twins('two styles named', named[key][2], stem)} "
                           "would write outputs of one name")
        named[key] = (source, shown, stem)
    return [(source, stem) for source, _shown, stem in named.values()]


def build_query_parser(flag: str) -> argparse.ArgumentParser:
    """The parser of a command that asks the server something (--list-styles, --server-info) and exits."""
    p = _Parser(prog=f"{PROG} {flag}", description="List the styles of the server's library (adain-server "
                "--styles-dir); a request names one as --style id:NAME." if flag == "--list-styles" else
                "Print what the server runs, as JSON.")
    p.add_argument(flag, action="store_true", required=True)
    if flag == "--list-styles":
        p.add_argument("--thumbnails", metavar="DIR", help="also save each style's thumbnail (a JPEG of at most 256 "
                       "px) into DIR as NAME.jpg")
    add_connection_args(p)
    add_local_arg(p)
    return p


def _server_info(args: argparse.Namespace) -> int:
    import json

    with session(args) as client:
        info = client.server_info()
        info["health"] = client.health(timeout=client.timeout)  # --timeout, as the other call
    print(json.dumps(info, indent=2, sort_keys=True))
    if not info.get("features"):  # its zeros read as limits ("message_timeout_s": 0 is "never" on a newer one)
        print(f"{PROG}: warning: this server lists no features: it is older than that field, and the fields it does "
              "not know show as 0 or empty", file=sys.stderr)
    return 0


def _valid_names(styles: list[LibraryStyle]) -> list[LibraryStyle]:
    """The styles whose names are library names (adain.wire.library_name); the others are skipped with a
    warning. A name becomes a file name (--thumbnails DIR/NAME.jpg) and is printed: a hostile server, or anyone
    on a plaintext connection, could otherwise send "../x" or "/abs/x" and write outside DIR."""
    valid = []
    for s in styles:
        if library_name(s.name) is not None:
            valid.append(s)
        else:  # repr: the name may hold control characters meant for the terminal
            print(f"{PROG}: warning: skipped the style named {s.name[:100]!r} the server listed: a style name is "
                  f"{LIBRARY_NAME_RULE}", file=sys.stderr)
    return valid


def _cells(name: str) -> int:
    """The columns a terminal gives ``name``: two for a wide character (CJK), none for a mark drawn on the one
    before, so that the listing's columns line up with names in any script."""
    return sum(0 if unicodedata.category(c) in ("Mn", "Me") else 2 if unicodedata.east_asian_width(c) in "WF" else 1
               for c in name)


def _list_styles(args: argparse.Namespace) -> int:
    with session(args) as client:
        styles, presets = client.library(thumbnail_size=256 if args.thumbnails else 0)
    styles = _valid_names(styles)
    if not styles:
        whose = "this command's server" if getattr(args, "local", False) else f"the server at {args.server}"
        print(one_line(f"{whose} has no library styles ({_library_hint(args)})"))
        return 0
    if args.thumbnails:
        folder = Path(args.thumbnails)
        path = folder
        try:
            if folder.exists() and not folder.is_dir():  # ("File exists", from the mkdir)
                raise NotADirectoryError(errno.ENOTDIR, "a file, not a folder")
            folder.mkdir(parents=True, exist_ok=True)
            for s in styles:  # names checked by _valid_names: each file is in folder
                path = folder / f"{s.name}.jpg"
                write_whole(path, s.thumbnail)  # (a full disk left one cut short under its name)
        except OSError as e:
            raise CliError(f"--thumbnails {path}: cannot write: {e.strerror or e}") from None
    width = max(_cells(s.name) for s in styles)
    for s in styles:
        # the file's digest, labelled: it changes when the file does, and is no id for -s id:... (the name is)
        pad = " " * (width - _cells(s.name))
        print(f"{s.name}{pad}  {s.width:>5} x {s.height:<5}  sha256:{s.style_id[:12]}")
    for p in presets:  # names the server sent: printed as names only (control characters meant for the terminal)
        if library_name(p.name) is None or any(library_name(n) is None for n, _ in p.styles):
            print(f"{PROG}: warning: skipped the preset named {p.name[:100]!r} the server listed: its name or its "
                  "styles' are no library names", file=sys.stderr)
            continue
        blend = " + ".join(f"{name} {weight:g}" for name, weight in p.styles)
        colours = p.preserve_color if p.preserve_color in COLOR_MODES else "the styles"
        print(f"preset:{p.name}  {blend}; alpha {p.alpha:g}; colours: {colours}")
    return 0


def _bare_preserve_color(argv: list[str]) -> list[str]:
    """``--preserve-color`` alone means coral, but argparse takes the next word as its value (the content, in
    ``--preserve-color photo.jpg -s ...``) and refuses it as no mode: a word that names a file or folder is
    left to be one (a mistyped mode still gets argparse's list of the modes)."""
    out = list(argv)
    for i, arg in enumerate(out[:-1]):
        if arg == "--":
            break
        nxt = out[i + 1]
        if arg == "--preserve-color" and nxt not in COLOR_CHOICES and ("." in nxt or "/" in nxt or Path(nxt).exists()):
            out[i] = "--preserve-color=coral"
    return out


def _names_as_they_were(e: UnicodeError) -> tuple[bytes, int]:
    """Standard output's encoding errors: a file name's undecodable bytes (surrogate escapes) written as they were,
    another character the stream cannot hold as a backslash escape. A name it could not encode ended a run that had
    written its output in a traceback, exit 1 (PYTHONIOENCODING=ascii; Windows' cp1252 for a pipe)."""
    if not isinstance(e, UnicodeEncodeError):
        raise e
    out = b"".join(bytes([ord(c) - 0xDC00]) if 0xDC80 <= ord(c) <= 0xDCFF else c.encode("ascii", "backslashreplace")
                   for c in e.object[e.start:e.end])
    return out, e.end


codecs.register_error("adain-names", _names_as_they_were)


@contextlib.contextmanager
def _printable_names() -> Iterator[None]:
    """Standard output with :func:`_names_as_they_were` for the block (a stream that cannot be set is left)."""
    out = sys.stdout
    errors = getattr(out, "errors", None)
    # (the main thread's alone: runs on other threads at once would each put back what another had set)
    if errors is None or not hasattr(out, "reconfigure") or threading.current_thread() is not threading.main_thread():
        yield
        return
    out.reconfigure(errors="adain-names")
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):  # (closed meanwhile)
            out.reconfigure(errors=errors)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    query = next((f for f in ("--list-styles", "--server-info") if f in argv), None)  # no CONTENT, --style, -o
    parser = build_query_parser(query) if query else build_parser()
    argv = _bare_preserve_color(argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a usage error (already printed as one line)
        return int(e.code or 0)
    args.local_given = local_conflicts(parser, argv)
    # SIGTERM (a service manager, kill, a container stopping) and SIGHUP (a closed terminal or SSH session) as
    # Ctrl-C: no temporary file left behind (SIGHUP's default left a video's .part file in the output folder)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = on_signals({signal.SIGTERM: on_sigterm, signal.SIGHUP: on_sigterm}) if main_thread else {}
    try:
        with contextlib.ExitStack() as quiet, contextlib.redirect_stdout(_GuardedStdout(sys.stdout)), \
                _printable_names():
            if getattr(args, "quiet", False):  # the lines saying what was written (a cron job's mail every run)
                devnull = open(os.devnull, "w", errors="adain-names")  # (in the locale's encoding: a name it cannot
                quiet.enter_context(contextlib.redirect_stdout(quiet.enter_context(devnull)))  # encode, a traceback)
            return _run(args, query)
    except CliError as e:  # (one line: a file named with a newline split it in two)
        print(f"{PROG}: error: {e.shown()}", file=sys.stderr, flush=True)
        return 1
    except StyleTransferError as e:
        print(_error_line(_describe(e, args)), file=sys.stderr, flush=True)
        return 1
    except BrokenPipeError:  # its reader went away (--server-info | head): nobody to tell; as a shell's SIGPIPE
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (Python's flush at exit would say it again)
        return 128 + signal.SIGPIPE
    except _StdoutError as e:  # (said "[Errno 28] No space left on device", naming nothing)
        with contextlib.suppress(OSError, ValueError):  # (the exit's flush would fail again)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print(f"{PROG}: error: standard output: cannot write: {e.strerror or e}", file=sys.stderr, flush=True)
        return 1
    except OSError as e:
        print(_error_line(str(e)), file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt as e:
        print(f"{PROG}: error: interrupted", file=sys.stderr, flush=True)
        return interrupted_code(e)
    finally:
        on_signals(previous)


class _StdoutError(OSError):
    """What this command prints could not be written (stdout on a full disk): said as standard output's."""


class _GuardedStdout:
    """Standard output whose write errors are :class:`_StdoutError` (an OSError from a print names no file)."""

    def __init__(self, out: Any) -> None:
        self._out = out

    def write(self, text: str) -> int:
        with self._said_as_stdouts():
            return self._out.write(text)

    def flush(self) -> None:
        with self._said_as_stdouts():
            self._out.flush()

    @staticmethod
    @contextlib.contextmanager
    def _said_as_stdouts() -> Iterator[None]:
        try:
            yield
        except BrokenPipeError:  # its reader went away: as before (a shell's SIGPIPE)
            raise
        except OSError as e:
            raise _StdoutError(e.errno, e.strerror) from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._out, name)


def _run(args: argparse.Namespace, query: str | None) -> int:
    if query == "--list-styles":
        return _list_styles(args)
    if query == "--server-info":
        return _server_info(args)
    if any(not c for c in args.content):
        raise CliError("CONTENT: an empty path (give a file or a folder; '.' for this one)")
    if not args.output:
        raise CliError("-o: an empty path (give a file, or a folder ending in '/')")
    paths = [Path(c) for c in args.content]
    for path in paths:
        if str(path) == "-" and not path.exists():
            raise CliError("CONTENT: '-': contents are read from files, not standard input (save it to a file)")
        if not path.exists():
            raise CliError(f"CONTENT: no such file or folder: {path}")
        if not (path.is_dir() or path.is_file()):
            raise CliError(f"CONTENT: {path} is not a regular file or a folder (a device or a pipe)")
    single = len(paths) == 1 and paths[0].is_file()
    if single:
        args.content = content = paths[0]
        _check_readable(content, "CONTENT")  # before is_video opens it (a FIFO named .mp4 would hang there)
    styles: list[tuple[Any, float]] = []
    for spec in args.style:
        source, weight = parse_style(spec)
        styles.append((_style_source(spec, source), weight))
    if any(isinstance(s, Preset) for s, _ in styles) and len(styles) > 1:
        raise CliError("--style preset:NAME stands alone: a preset has its own styles and weights")
    if single and sum(w for _, w in styles) <= 0:
        raise CliError("--style: all weights are 0; at least one must be > 0")
    if len(args.mask or []) == 1 and len(styles) == 2 and any(w != 1 for _, w in styles):
        raise CliError("--mask: one mask with two styles places them by the mask alone (white the first, black "
                       "the second), so weights do nothing; give each style its own --mask to blend by weight")
    # each run checks its flags and paths, then connects (with --local, starts its server) in ``later``
    with contextlib.ExitStack() as later:
        if not single:
            return _run_folder(later, args, styles)
        if is_video(content):
            return _run_video(later, args, styles)
        return _run_single(later, args, styles)


if __name__ == "__main__":
    sys.exit(main())
