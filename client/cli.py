"""``adain-stylize``: stylize an image (or a folder of images) with a running ``adain-server``.

    adain-stylize photo.jpg --style starry.jpg --style mosaic.jpg:0.3 --alpha 0.8 -o out.png
    adain-stylize photos/ --style starry.jpg --style mosaic.jpg -o stylized/ --format jpeg
    adain-stylize *.jpg --style id:mosaic -o stylized/

A style is ``PATH`` or ``PATH:WEIGHT`` (the part after the last ``:`` is a weight only if it reads as a
number; default 1), or ``id:STYLE_ID[:WEIGHT]`` for a style registered on the server or ``id:NAME[:WEIGHT]``
for one of its library (``adain-stylize --list-styles`` lists them). With one content
file, the styles are blended by weight and the output format comes from the ``-o`` extension. With a
folder, or several contents (files and folders), every content is stylized with each style separately and
written to the ``-o`` folder as
``<content-stem>_stylized_<style-stem>.<ext>`` (``--format``, default png).

Every failure prints one line ``adain-stylize: error: ...`` to stderr and exits non-zero.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, NoReturn

import grpc

from adain.argtypes import int_in_range, non_negative_float, non_negative_int, one_of, positive_float, unit_interval
from adain.wire import (
    COLOR_MODES,
    DEFAULT_ADDRESS,
    DEFAULT_QUALITY,
    DEFAULT_TEMPORAL,
    FORMAT_SUFFIXES,
    FORMATS,
    INPUT_SUFFIXES,
    PRESET_PREFIX,
    STYLE_ID_PREFIX,
    TEMPORAL_MODES,
    format_from_suffix,
    format_name,
)

from ._client import Preset, StyleRef, StyleTransferClient, StyleTransferError
from .video import is_video, stylize_video_file

PROG = "adain-stylize"


class CliError(Exception):
    """A failure to report as one line and exit 1."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, no usage block
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def add_connection_args(p: argparse.ArgumentParser) -> None:
    """--server, --timeout, --retries, TLS and the token: how a command reaches adain-server (the CLI's and
    adain-web's, one set of rules); :func:`connect` makes the client from them."""
    p.add_argument("--server", default=os.environ.get("ADAIN_SERVER", DEFAULT_ADDRESS), metavar="HOST:PORT",
                   help=f"server address (default: $ADAIN_SERVER or {DEFAULT_ADDRESS}); several replicas: "
                   "comma-separated IP:PORT list, or dns:///NAME:PORT (calls are balanced round-robin)")
    p.add_argument("--timeout", type=positive_float, default=120.0, metavar="S",
                   help="deadline of each call to the server, seconds (default 120)")
    p.add_argument("--retries", type=non_negative_int, default=2, metavar="N",
                   help="retries of a call the server answers UNAVAILABLE (default 2)")
    p.add_argument("--tls", action="store_true", help="connect with TLS (system root certificates)")
    p.add_argument("--ca-cert", metavar="PEM", help="root certificate(s) for TLS (implies --tls)")
    p.add_argument("--client-cert", metavar="PEM", help="this client's certificate chain, for a server that asks for "
                   "one (mutual TLS; implies --tls; with --client-key)")
    p.add_argument("--client-key", metavar="PEM", help="the private key of --client-cert")
    p.add_argument("--token-file", default=os.environ.get("ADAIN_TOKEN_FILE") or None, metavar="FILE",
                   help="file whose first line is the bearer token, for a server that asks for one (default: "
                   "$ADAIN_TOKEN_FILE; or put the token itself in $ADAIN_TOKEN); read again when it changes")


def connect(args: argparse.Namespace, **options: Any) -> StyleTransferClient:
    """The client the flags of :func:`add_connection_args` describe (``options``: more constructor arguments).
    A missing or unreadable certificate, key or token file is a CliError naming its flag."""
    if bool(args.client_cert) != bool(args.client_key):
        raise CliError("--client-cert and --client-key go together")
    token = None if args.token_file else (os.environ.get("ADAIN_TOKEN") or "").strip() or None
    for flag, path in (("--ca-cert", args.ca_cert), ("--client-cert", args.client_cert),
                       ("--client-key", args.client_key), ("--token-file", args.token_file)):
        if path and not os.path.isfile(path):
            raise CliError(f"{flag}: no such file: {path}")
    try:
        return StyleTransferClient(
            args.server, timeout=args.timeout, tls=args.tls or bool(args.ca_cert), root_certificates=args.ca_cert,
            retries=args.retries, token=token, token_file=args.token_file, client_certificate=args.client_cert,
            client_key=args.client_key, **options,
        )
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise CliError(f"--token-file: {e}" if args.token_file else str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Stylize images with a running adain-server (AdaIN arbitrary style transfer).",
        epilog="Examples:\n"
        "  adain-stylize photo.jpg --style starry.jpg --style mosaic.jpg:0.3 --alpha 0.8 -o out.png\n"
        "  adain-stylize photos/ --style a.jpg --style b.jpg -o stylized/ --format jpeg",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("content", metavar="CONTENT", nargs="+",
                   help="content image or video (MP4, MOV, MKV, WebM, animated GIF); or several, or folders of them "
                   "(every content x every style, into the -o folder)")
    p.add_argument(
        "-s", "--style", action="append", required=True, metavar="STYLE[:WEIGHT]",
        help="style image path, optionally with a weight after the last ':' (default 1); or id:STYLE_ID[:WEIGHT] "
        "for a registered style, id:NAME[:WEIGHT] for a style of the server's library, preset:NAME for one of its "
        "presets (alone; --list-styles lists both). Repeat to blend several (one content) or to run each (folder).",
    )
    p.add_argument("--list-styles", action="store_true",
                   help="list the styles of the server's library and exit (needs no CONTENT, --style or -o; "
                   "--thumbnails DIR saves their thumbnails)")
    p.add_argument("--server-info", action="store_true",
                   help="print what the server runs (model, weights, backend, precision, CPU, limits, batching, "
                   "its library) as JSON, and exit (needs no CONTENT, --style or -o)")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output file (format from its extension: .png, .jpg/.jpeg, .webp; for a video .mp4, .mov, "
                   ".mkv, .webm or .gif); a folder for a folder")
    p.add_argument("--alpha", type=unit_interval, default=None,
                   help="style strength in [0, 1] (default 1, or a preset's)")
    p.add_argument("--preserve-color", nargs="?", const="coral", choices=COLOR_MODES, default=None,
                   help="keep the content's colours: coral (the AdaIN paper's, the default when given alone) or "
                   "luminance")
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
                   help="longest side the content is rendered at (0: as it is; default 0)")
    p.add_argument("--style-size", type=non_negative_int, default=0, metavar="N",
                   help="longest side of the styles (0: the server's default, 512)")
    p.add_argument("--keep-exif", action="store_true",
                   help="the output keeps the photo's EXIF: date taken, camera, exposure (never its GPS location), "
                   "so photo libraries file it beside the original")
    p.add_argument("--quality", type=int_in_range(1, 100), default=DEFAULT_QUALITY, metavar="Q",
                   help=f"JPEG/WebP quality 1-100 (default {DEFAULT_QUALITY})")
    p.add_argument("--format", type=one_of(FORMATS, _format), default=None, metavar="FORMAT",
                   help=f"output format in folder mode: {', '.join(FORMATS)} (default png); a single output takes "
                   "its extension's")
    add_connection_args(p)
    p.add_argument("-j", "--jobs", type=non_negative_int, default=4, metavar="N",
                   help="requests in flight at once in folder mode (default 4)")
    p.add_argument("--temporal", type=one_of(TEMPORAL_MODES), default=None, metavar="MODE",
                   help=f"video: how frames are kept stable in time: {', '.join(TEMPORAL_MODES)} (default: the "
                   f"server's, {DEFAULT_TEMPORAL})")
    p.add_argument("--temporal-strength", type=_strength, default=None, metavar="S",
                   help="video: how much of the past each frame keeps, in [0, 1) (default: the server's)")
    p.add_argument("--fps", type=positive_float, default=None, metavar="N",
                   help="video: at most N frames a second (the others are dropped: half the rate, half the time; "
                   "the sound stays in step; default: as filmed)")
    p.add_argument("--start", type=non_negative_float, default=0.0, metavar="S",
                   help="video: begin at S seconds into the clip (default 0)")
    p.add_argument("--duration", type=positive_float, default=None, metavar="S",
                   help="video: take S seconds from --start (default: to the end); its sound too")
    p.add_argument("--refine", type=non_negative_int, default=0, metavar="N",
                   help="then N iterations of the optimisation method (Gatys et al.) on the output: finer "
                   "texture, seconds per iteration on a CPU; raise --timeout to match (default 0: off)")
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
                   help="optimisation: weight of a smoothness (total variation) loss (default 0)")
    p.add_argument("--refine-size", type=non_negative_int, default=0, metavar="N",
                   help="optimisation: work at this longest side and upsample the change (default 0: full size)")
    return p


def _refine_options(args: argparse.Namespace) -> dict[str, Any]:
    if args.classic and not args.refine:
        raise CliError("--classic needs --refine N (the number of iterations, e.g. 300)")
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


def parse_style(text: str) -> tuple[str, float]:
    """``"a.jpg:0.3"`` -> ("a.jpg", 0.3); the suffix is a weight only if it parses as a float."""
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            weight = float(tail)
        except ValueError:
            return text, 1.0
        if not (math.isfinite(weight) and weight >= 0):
            raise CliError(f"--style {text}: the weight must be a finite number >= 0, got {tail}")
        return head, weight
    return text, 1.0


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
    path = Path(source)
    if not path.is_file():
        hint = ""
        if ":" in spec:
            hint = f" (the part after the last ':', {spec.rpartition(':')[2]!r}, is not a number, so it is no weight)"
        elif not path.suffix and len(path.parts) == 1:
            hint = f" (a style of the server's library is id:{source}; --list-styles lists them)"
        raise CliError(f"--style {spec}: no such file: {source}{hint}")
    _check_readable(path, f"--style {spec}")
    return path


def _check_readable(path: Path, what: str) -> None:
    try:
        with path.open("rb") as f:
            f.read(1)
    except OSError as e:
        raise CliError(f"{what}: cannot read {path}: {e.strerror or e}") from None


def _describe(e: StyleTransferError, args: argparse.Namespace) -> str:
    server = args.server
    if e.code == grpc.StatusCode.UNAVAILABLE:
        tls = args.tls or args.ca_cert or args.client_cert
        hint = "; over TLS: is --ca-cert the server's CA, and does it want a --client-cert?" if tls else ""
        return f"cannot reach the server at {server} (UNAVAILABLE): {e.details}{hint}"
    if e.code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"the server at {server} did not answer in time (DEADLINE_EXCEEDED; see --timeout)"
    if e.code == grpc.StatusCode.INVALID_ARGUMENT:
        return e.details
    if e.code == grpc.StatusCode.UNAUTHENTICATED:
        return f"the server at {server} wants a valid token (UNAUTHENTICATED: {e.details}; see --token-file)"
    return f"{e.code.name}: {e.details}"


def _format(text: str) -> str:
    return format_name(text) or text


def _output_format(path: Path) -> str:
    fmt = format_from_suffix(path.suffix)
    if fmt is None:
        raise CliError(f"-o {path}: cannot tell the output format from {path.suffix or 'no extension'!r} "
                       "(use .png, .jpg, .jpeg or .webp)")
    return fmt


def _image_arg(path: str, flag: str) -> Path:
    file = Path(path)
    if not file.is_file():
        raise CliError(f"{flag}: no such file: {file}")
    _check_readable(file, flag)
    return file


def _region_options(args: argparse.Namespace) -> dict[str, Any]:
    """--mask (one per style, or the two-style form), --labels/--label and --region-alpha as client options."""
    n = len(args.style)
    masks = [_image_arg(m, "--mask") for m in args.mask or []]
    out: dict[str, Any] = {}
    if len(masks) == 1 and n == 2:
        out["mask"] = masks[0]
    elif masks:
        if len(masks) != n:
            raise CliError(f"--mask: {len(masks)} masks for {n} styles (give one per --style, in order)")
        out["masks"] = masks
    if args.labels is not None:
        if masks:
            raise CliError("--labels: give regions either by --mask or by --labels, not both")
        labels = args.label or []
        if len(labels) != n:
            raise CliError(f"--label: {len(labels)} labels for {n} styles (give one per --style, in order)")
        out["labels"] = _image_arg(args.labels, "--labels")
        out["label_values"] = [_label_arg(v) for v in labels]
    elif args.label:
        raise CliError("--label needs --labels (the label image)")
    if args.region_alpha:
        if len(args.region_alpha) != n:
            raise CliError(f"--region-alpha: {len(args.region_alpha)} values for {n} styles (one per --style)")
        out["region_alphas"] = args.region_alpha
    return out


def _label_arg(text: str) -> int | str:
    if text.startswith("#"):
        return text
    try:
        return int(text, 0)
    except ValueError:
        raise CliError(f"--label: {text!r} is not a grey level 0-255 or a colour #rrggbb") from None


def _options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        **_region_options(args),
        "alpha": args.alpha,
        "preserve_color": args.preserve_color,
        "content_size": args.size,
        "style_size": args.style_size,
        "quality": args.quality,
    }


def _run_single(client: StyleTransferClient, args: argparse.Namespace, styles: list[tuple[Any, float]]) -> int:
    content = Path(args.content)
    _check_readable(content, "CONTENT")
    out = Path(args.output)
    fmt = _output_format(out)
    refine = _refine_options(args)
    bar = None
    if refine["refine_steps"]:
        from tqdm import tqdm

        bar = tqdm(total=refine["refine_steps"], unit="step", desc="refine", disable=None)

    def progress(p: Any) -> None:
        bar.total = p.steps
        bar.update(p.step - bar.n)
        bar.set_postfix(loss=f"{p.loss:.4g}", refresh=False)

    try:
        result = client.stylize(content, _blend(styles), format=fmt, on_progress=progress if bar else None,
                                keep_exif=args.keep_exif, **_options(args), **refine)
    except StyleTransferError as e:
        raise CliError(_describe(e, args)) from None
    finally:
        if bar is not None:
            bar.close()
    try:
        result.save(out)
    except OSError as e:
        raise CliError(f"-o {out}: cannot write: {e.strerror or e}") from None
    print(f"{out} ({result.width} x {result.height})")
    return 0


def _video_options(args: argparse.Namespace) -> dict[str, Any]:
    options = _options(args)
    del options["quality"]  # frames travel as JPEG 95; the output's quality is the video encoder's
    return {**options, "temporal": args.temporal, "temporal_strength": args.temporal_strength}


def _stylize_video(client: StyleTransferClient, args: argparse.Namespace, src: Path, out: Path, styles: Any) -> int:
    """One video, with a progress bar of frames and frames per second. Raises MediaError,
    StyleTransferError or OSError (see ``_video_error``)."""
    from tqdm import tqdm

    bar = tqdm(unit="frame", desc=src.name, disable=None)
    try:
        return stylize_video_file(client, src, out, styles, on_start=lambda n: bar.reset(total=n or None),
                                  on_frame=lambda: bar.update(1), max_fps=args.fps, start=args.start,
                                  duration=args.duration, **_video_options(args))
    finally:
        bar.close()


def _video_error(e: Exception, args: argparse.Namespace, src: Path, out: Path) -> CliError:
    if isinstance(e, StyleTransferError):
        return CliError(f"{src}: {_describe(e, args)}")
    if isinstance(e, OSError):
        return CliError(f"-o {out}: cannot write: {e.strerror or e}")
    return CliError(str(e))  # MediaError: names the file and the problem


def _run_video(client: StyleTransferClient, args: argparse.Namespace, styles: list[tuple[Any, float]]) -> int:
    from adain.media import VIDEO_SUFFIXES

    src = Path(args.content)
    out = Path(args.output)
    if args.refine:
        raise CliError(f"--refine: {src} is a video; the optimisation method is for images (seconds per frame)")
    if out.is_dir():  # the same container as the input, named after it
        out = out / f"{src.stem}_stylized{_video_suffix(src)}"
    elif out.suffix.lower() not in VIDEO_SUFFIXES:
        raise CliError(f"-o {out}: {src} is a video, so the output must be a video file "
                       f"({', '.join(VIDEO_SUFFIXES)}) or a folder")
    from adain.media import MediaError

    try:
        n = _stylize_video(client, args, src, out, _blend(styles))
    except (MediaError, StyleTransferError, OSError) as e:
        raise _video_error(e, args, src, out) from None
    print(f"{out} ({n} frames)")
    return 0


def _video_suffix(src: Path) -> str:
    from adain.media import VIDEO_SUFFIXES

    return src.suffix.lower() if src.suffix.lower() in VIDEO_SUFFIXES else ".mp4"


def _content_files(paths: list[Path]) -> list[Path]:
    """The files of several CONTENT arguments: each folder's images and videos (by suffix), and each file as
    given (the server says if it is no image); outputs are named by stem, so two contents may not share one."""
    from adain.media import VIDEO_SUFFIXES

    known = INPUT_SUFFIXES + VIDEO_SUFFIXES
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in known)
            if not found:
                raise CliError(f"{path}: no images or videos in this folder ({', '.join(known)})")
            files += found
        else:
            _check_readable(path, "CONTENT")
            files.append(path)
    stems: dict[str, Path] = {}
    for f in files:
        if f.stem in stems and stems[f.stem] != f:
            raise CliError(f"{stems[f.stem]} and {f}: two contents named {f.stem!r} would write outputs of one name")
        stems[f.stem] = f
    return list(dict.fromkeys(files))


def _run_folder(client: StyleTransferClient, args: argparse.Namespace, styles: list[tuple[Any, float]]) -> int:
    from tqdm import tqdm

    from adain.media import MediaError

    if args.mask or args.labels:
        raise CliError(f"--{'mask' if args.mask else 'labels'} needs one content file; several contents run each "
                       "style alone")
    files = _content_files([Path(c) for c in args.content])
    videos = [p for p in files if is_video(p)]
    contents = [p for p in files if p not in videos]
    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise CliError(f"-o {out_dir}: several contents (or a folder) need an output folder, and this is a file")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CliError(f"-o {out_dir}: cannot create the folder: {e.strerror or e}") from None
    fmt = args.format or "png"
    ext = FORMAT_SUFFIXES[fmt]
    # the videos of a folder are not refined, and keep no EXIF (a video container has its own metadata)
    options = {**_options(args), **_refine_options(args), "keep_exif": args.keep_exif}
    # Send each style image once, then refer to it by id.
    refs: list[tuple[Any, str]] = []
    for source, _weight in styles:
        if isinstance(source, (StyleRef, Preset)):
            refs.append((source, source.id[:12] if isinstance(source, StyleRef) else source.name))
            continue
        try:
            refs.append((StyleRef(client.register_style(source)), source.stem))
        except StyleTransferError as e:
            raise CliError(f"style {source}: {_describe(e, args)}") from None
    tasks = [(c, ref, out_dir / f"{c.stem}_stylized_{stem}{ext}") for c in contents for ref, stem in refs]

    served: Counter[str] = Counter()  # outputs per replica (x-served-by), for the summary

    def one(content: Path, ref: StyleRef, out: Path) -> None:
        result = client.stylize(content, ref, format=fmt, **options)
        result.save(out)
        served[result.served_by or "?"] += 1

    failed = 0
    with ThreadPoolExecutor(max(1, args.jobs)) as pool, tqdm(total=len(tasks), unit="img", disable=None) as bar:
        futures = {pool.submit(one, *t): t for t in tasks}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for f in done:
                content, _, out = futures[f]
                bar.update(1)
                err = f.exception()
                if err is None:
                    continue
                if isinstance(err, StyleTransferError) and err.code == grpc.StatusCode.INVALID_ARGUMENT:
                    failed += 1  # a bad content image: say so and go on with the others
                    bar.write(f"{PROG}: error: {content}: {err.details}", file=sys.stderr)
                    continue
                for p in pending:
                    p.cancel()
                if isinstance(err, StyleTransferError):
                    raise CliError(f"{content}: {_describe(err, args)}")
                if isinstance(err, OSError):
                    raise CliError(f"{out}: cannot write: {err.strerror or err}")
                raise err
    video_tasks = [(v, ref, out_dir / f"{v.stem}_stylized_{stem}{_video_suffix(v)}")
                   for v in videos for ref, stem in refs]
    for src, ref, out in video_tasks:  # one at a time: a stream keeps the server busy on its own
        try:
            _stylize_video(client, args, src, out, ref)
        except (MediaError, StyleTransferError, OSError) as e:
            bad_input = isinstance(e, MediaError) or (
                isinstance(e, StyleTransferError) and e.code == grpc.StatusCode.INVALID_ARGUMENT
            )
            if not bad_input:
                raise _video_error(e, args, src, out) from None
            failed += 1  # a bad video: say so and go on with the others
            print(f"{PROG}: error: {_video_error(e, args, src, out)}", file=sys.stderr, flush=True)
    total = len(tasks) + len(video_tasks)
    print(f"{total - failed} of {total} outputs written to {out_dir} ({len(tasks)} images, {len(video_tasks)} videos)")
    if served:
        print("images per replica: " + ", ".join(f"{name} {n}" for name, n in sorted(served.items())))
    return 1 if failed else 0


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
    return p


def _server_info(args: argparse.Namespace) -> int:
    import json

    with connect(args) as client:
        info = client.server_info()
        try:
            info["health"] = client.health()
        except ImportError:  # grpcio-health-checking is in the server and web extras, not the base install
            pass
    print(json.dumps(info, indent=2, sort_keys=True))
    return 0


def _list_styles(args: argparse.Namespace) -> int:
    with connect(args) as client:
        styles, presets = client.library(thumbnail_size=256 if args.thumbnails else 0)
    if not styles:
        print(f"the server at {args.server} has no library styles (adain-server --styles-dir)")
        return 0
    if args.thumbnails:
        folder = Path(args.thumbnails)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for s in styles:
                (folder / f"{s.name}.jpg").write_bytes(s.thumbnail)
        except OSError as e:
            raise CliError(f"--thumbnails {folder}: cannot write: {e.strerror or e}") from None
    width = max(len(s.name) for s in styles)
    for s in styles:
        print(f"{s.name:<{width}}  {s.width:>5} x {s.height:<5}  {s.style_id[:12]}")
    for p in presets:
        blend = " + ".join(f"{name} {weight:g}" for name, weight in p.styles)
        print(f"preset:{p.name}  {blend}; alpha {p.alpha:g}; colours: {p.preserve_color or 'the styles'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    query = next((f for f in ("--list-styles", "--server-info") if f in argv), None)  # no CONTENT, --style, -o
    parser = build_query_parser(query) if query else build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a usage error (already printed as one line)
        return int(e.code or 0)
    try:
        if query == "--list-styles":
            return _list_styles(args)
        if query == "--server-info":
            return _server_info(args)
        paths = [Path(c) for c in args.content]
        for path in paths:
            if not path.exists():
                raise CliError(f"CONTENT: no such file or folder: {path}")
        single = len(paths) == 1 and paths[0].is_file()
        if single:
            args.content = content = paths[0]
        styles: list[tuple[Any, float]] = []
        for spec in args.style:
            source, weight = parse_style(spec)
            styles.append((_style_source(spec, source), weight))
        if any(isinstance(s, Preset) for s, _ in styles) and len(styles) > 1:
            raise CliError("--style preset:NAME stands alone: a preset has its own styles and weights")
        if single and sum(w for _, w in styles) <= 0:
            raise CliError("--style: all weights are 0; at least one must be > 0")
        with connect(args) as client:
            if not single:
                return _run_folder(client, args, styles)
            if is_video(content):
                return _run_video(client, args, styles)
            return _run_single(client, args, styles)
    except CliError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr, flush=True)
        return 1
    except StyleTransferError as e:
        print(f"{PROG}: error: {_describe(e, args)}", file=sys.stderr, flush=True)
        return 1
    except OSError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: error: interrupted", file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
