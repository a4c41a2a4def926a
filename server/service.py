"""The ``adain.v1.StyleTransfer`` servicer (grpc.aio): request -> Job, error mapping, request ids, metrics.

The servicer is given its collaborators (the Stylizer, the batcher, the style registry, the metrics,
the prepare pool, the limits, the static server info and the drain); it knows nothing of the app that
built them. Requests are checked once, by ``Job.check``, on the event loop (no decoding there); the
servicer adds only what the protocol itself brings (style ids, enum values, output quality).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import DecodeError

from adain.errors import InvalidInputError
from adain.image import KeyedImage, encode_image, header_size, load_image, longest_size
from adain.job import CheckedJob, Job, temporal_problems, too_many_styles
from adain.photo import exif_to_keep
from adain.v1 import style_transfer_pb2 as pb
from adain.v1 import style_transfer_pb2_grpc as pb_grpc
from adain.wire import (
    COLOR_BY_ENUM,
    COLOR_ENUM,
    DEFAULT_QUALITY,
    FEATURES,
    FEATURES_KEY,
    FORMAT_BY_ENUM,
    MIN_STYLE_SIDE,
    OPTIMIZER_BY_ENUM,
    REFINE_INIT_BY_ENUM,
    REQUEST_ID_KEY,
    SERVED_BY_KEY,
    STYLE_ID_RE,
    TEMPORAL_BY_ENUM,
    Limits,
    format_cannot_hold,
    label_value,
    listing,
    no_library_style,
    style_too_small,
)

from .auth import TokenFile, caller_of
from .batcher import Batcher, ClosedError, DeadlineDropped, QueueFullError
from .config import KEEPALIVE_TIMEOUT_S
from .drain import Drain
from .errors import (
    ServiceError,
    Violation,
    cancelled_soon,
    release,
    reply_limit,
    request_id,
    smaller_image_advice,
    status_trailers,
    trace_id,
    work_began,
)
from .library import MAX_THUMBNAIL, StyleLibrary
from .logs import log_fields
from .metrics import Metrics
from .refine import RefineService
from .registry import StyleRegistry, style_id
from .video import VideoService

if TYPE_CHECKING:
    from adain.stylizer import Stylizer

log = logging.getLogger("adain.server")
SERVED_FEATURES = ",".join(FEATURES)  # (FEATURES_KEY: sent with every reply)


# Who makes the call being handled (set by _call as the call begins; tasks started by the handler see it).
current_caller: contextvars.ContextVar[str] = contextvars.ContextVar("current_caller", default="")
# codes of calls refused before any work (work_began unset), left out of adain_request_seconds (counted in
# adain_requests_total): their microseconds pulled the latency down just as a server was overloaded
REFUSED = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED)


@contextlib.asynccontextmanager
async def _call(
    servicer: StyleTransferServicer, method: str, context: grpc.aio.ServicerContext, *, stream: bool = False
) -> AsyncIterator[str]:
    """Around every call: request id, draining check, in-flight count, status mapping, metrics, access log.
    Yields the request id. A unary call sends no headers before its reply: a call whose replica dies
    before answering has then received nothing, and the client's retry policy sends it to another one."""
    metadata = context.invocation_metadata()
    rid = request_id(metadata)
    trace = trace_id(metadata)
    # Asked once, first: a cancelled call's context no longer has a peer to give (asking then crashed grpc).
    caller = caller_of(context, servicer.tokens)
    current_caller.set(caller)
    rid_md = servicer.reply_ids(rid)
    start = time.perf_counter()
    code = grpc.StatusCode.OK
    detail = ""
    work_began.set(False)
    recorded = False

    def record() -> None:
        """Its metrics and access-log line, once: before an error status goes out, so that a caller (or a test)
        that reads /metrics or the log on its status finds the call there (after, a scrape sometimes missed it)."""
        nonlocal recorded
        if recorded:
            return
        recorded = True
        elapsed = time.perf_counter() - start
        servicer.metrics.requests.labels(method, code.name).inc()
        account = caller.split("/", 1)[0] if servicer.tokens is not None else "anonymous"
        servicer.metrics.caller_requests.labels(account, code.name).inc()
        if code not in REFUSED or work_began.get():
            servicer.metrics.request_seconds.labels(method).observe(elapsed)
        # the callers' own doing (bad input; over a limit or a share, which a bulk caller hits thousands of
        # times a minute) is INFO, counted in the metrics; the rest WARNING
        quiet = code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)
        log_fields(log, logging.INFO if quiet else logging.WARNING, request_id=rid, method=method, code=code.name,
                   ms=round(elapsed * 1000, 1), caller=caller, trace_id=trace, detail=detail or None)

    try:
        with servicer.drain.track(context):
            # Refuse before any header goes out: a call that got no response headers is retried on
            # another replica by the client's retry policy.
            if servicer.drain.draining:
                raise ServiceError(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
            if stream:  # a stream's client reads the request id before the first message
                await context.send_initial_metadata(rid_md)
            yield rid
            context.set_trailing_metadata(rid_md)
    except ServiceError as e:
        code, detail = e.code, e.message
        release(e)
        if context.cancelled():  # nobody hears this status: a video stream gRPC cut for a message over the limit
            code, detail = grpc.StatusCode.CANCELLED, _cancelled_detail(servicer, method)  # ends its requests first
        record()
        await context.abort(e.code, e.message, trailing_metadata=rid_md + status_trailers(e))
    except (asyncio.CancelledError, GeneratorExit):
        remaining = context.time_remaining()
        # gRPC's deadline timer and this clock differ by milliseconds: a cut that close to the deadline is it
        expired = remaining is not None and remaining < 0.1
        code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
        if not expired and servicer.drain.draining:  # cut at the drain's end: the caller got UNAVAILABLE
            code = grpc.StatusCode.UNAVAILABLE
        ended = context.code()  # ended by the server beside the handler (a stream whose client reads nothing)
        if ended is not None and ended != grpc.StatusCode.OK:
            code, detail = ended, context.details() or ""
        elif code == grpc.StatusCode.CANCELLED:
            detail = _cancelled_detail(servicer, method)
        raise
    except grpc.aio.AbortError:
        code = context.code() or grpc.StatusCode.UNKNOWN
        raise
    except Exception as e:
        code = grpc.StatusCode.INTERNAL
        log.exception("request %s: %s failed", rid, method)
        release(e)
        detail = f"internal error (request id {rid})"
        record()
        await context.abort(code, detail, trailing_metadata=rid_md)
    finally:
        record()


def _cancelled_detail(servicer: StyleTransferServicer, method: str) -> str:
    """What a cancelled call's log line says: for the one stream of requests, StylizeVideo, gRPC ends it so
    when a message is too large (a call with one request: server/unread.py)."""
    if method != "StylizeVideo":
        return ""
    return (f"the client cancelled, its connection was lost (a ping unanswered for {KEEPALIVE_TIMEOUT_S:g} s; a "
            f"stalled reader), or it sent a message over the limit of {servicer.info.limits.max_message_bytes} "
            "bytes (max_message_bytes), which gRPC refused with RESOURCE_EXHAUSTED")


@dataclass(frozen=True)
class Undecodable:
    """A request whose bytes are no message of its type: handed to the handler in its place, which answers
    INVALID_ARGUMENT, logged and counted like any bad input (gRPC's own answer would be INTERNAL or UNKNOWN
    with a traceback, and would page someone for a caller's junk)."""

    type_name: str
    error: str

    def refusal(self) -> ServiceError:
        return ServiceError.invalid([Violation("request", f"not a valid {self.type_name} message ({self.error})")])


def add_servicer(servicer: StyleTransferServicer, server: grpc.aio.Server) -> None:
    """``pb_grpc.add_StyleTransferServicer_to_server`` with each request parser made tolerant (see Undecodable)."""

    class Capture:
        def add_generic_rpc_handlers(self, handlers: Any) -> None:
            pass

        def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
            self.service, self.handlers = service, handlers

    capture = Capture()
    pb_grpc.add_StyleTransferServicer_to_server(servicer, capture)
    most = servicer.limits.max_styles + EXTRA_FIELDS
    handlers = {name: h._replace(request_deserializer=_tolerant(h.request_deserializer, most))
                for name, h in capture.handlers.items()}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(capture.service, handlers),))
    server.add_registered_method_handlers(capture.service, handlers)


# Fields a request may have besides its styles (a few dozen at most): a request of 16 million empty style
# entries (32 MB) took 1.2 GB to parse, before any check (or a token's) could refuse it.
EXTRA_FIELDS = 64


def _tolerant(parse: Callable[[bytes], Any], most: int) -> Callable[[bytes], Any]:
    descriptor = getattr(getattr(parse, "__self__", None), "DESCRIPTOR", None)
    type_name = descriptor.full_name if descriptor is not None else "request"
    # the fields holding one message (a video's options), whose own fields are counted too
    nested = frozenset(f.number for f in descriptor.fields if f.message_type is not None
                       and not f.is_repeated) if descriptor is not None else frozenset()

    def tolerant(data: bytes) -> Any:
        if not fields_within(data, most, nested):
            return Undecodable(type_name, f"over {most} fields: more than max_styles={most - EXTRA_FIELDS} styles, "
                               "or fields repeated")
        try:
            return parse(data)
        except DecodeError as e:
            return Undecodable(type_name, str(e) or "it does not parse")

    return tolerant


def fields_within(data: bytes, most: int, nested: frozenset[int] = frozenset()) -> bool:
    """Whether a serialized message has at most ``most`` fields, and so has each field numbered in ``nested``
    (a message). Walks the wire format without parsing, stopping past ``most``: a few steps for a real
    request. Malformed data passes, for the parser to name."""
    fields, i, n = 0, 0, len(data)

    def varint() -> int:
        nonlocal i
        value = shift = 0
        for _ in range(10):  # a varint has at most 10 bytes (a million of them took 18 s, squared, on the loop)
            if i >= n:
                break
            byte = data[i]
            i += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
            shift += 7
        raise IndexError

    try:
        while i < n:
            fields += 1
            if fields > most:
                return False
            key = varint()
            kind = key & 7
            if kind == 0:
                varint()
            elif kind == 1:
                i += 8
            elif kind == 5:
                i += 4
            elif kind == 2:
                size = varint()
                if key >> 3 in nested and not fields_within(data[i:i + size], most):
                    return False
                i += size
            elif kind not in (3, 4):  # a group's start and end are fields, its content counted as it comes
                return True  # no such wire type: the parser refuses it
    except IndexError:
        return True
    return True


async def _decoded(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, Undecodable):
            raise request.refusal()
        yield request


def rpc(method: str) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]:
    """A unary handler ``fn(self, request, context, rid)`` inside :func:`_call`."""

    def wrap(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(fn)
        async def handler(self: StyleTransferServicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with _call(self, method, context) as rid:
                if isinstance(request, Undecodable):
                    raise request.refusal()
                return await fn(self, request, context, rid)

        return handler

    return wrap


def stream_rpc(
    method: str, early_headers: bool = True
) -> Callable[[Callable[..., AsyncIterator[Any]]], Callable[..., AsyncIterator[Any]]]:
    """A streaming handler ``fn(self, requests, context, rid)`` (an async generator) inside :func:`_call`;
    ``early_headers=False``: the handler sends its response headers itself (StylizeVideo: once admitted)."""

    def wrap(fn: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
        @functools.wraps(fn)
        async def handler(self: StyleTransferServicer, requests: Any, context: grpc.aio.ServicerContext) -> Any:
            async with _call(self, method, context, stream=early_headers) as rid:
                if isinstance(requests, Undecodable):  # a server stream's one request
                    raise requests.refusal()
                if hasattr(requests, "__aiter__"):  # a client stream: each message checked as it comes
                    requests = _decoded(requests)
                async for reply in fn(self, requests, context, rid):
                    yield reply

        return handler

    return wrap


class StyleTransferServicer(pb_grpc.StyleTransferServicer):
    def __init__(
        self,
        *,
        stylizer: Stylizer,
        batcher: Batcher,
        registry: StyleRegistry,
        metrics: Metrics,
        pool: Executor,
        limits: Limits,
        info: pb.ServerInfo,
        drain: Drain,
        video: VideoService,
        refiner: RefineService,
    ) -> None:
        self.stylizer = stylizer
        self.batcher = batcher
        self.registry = registry
        self.metrics = metrics
        self.pool = pool
        self.limits = limits
        self.info = info  # GetServerInfo's reply, less what changes (registered_styles)
        self.drain = drain
        self.video = video
        self.refiner = refiner
        self.replica = ""  # this replica's name (x-served-by), set once the port is bound
        self.tokens: TokenFile | None = None  # the token file, where the server checks tokens (names callers)
        self.library: StyleLibrary | None = None  # --styles-dir: styles named by their file stems
        # A reply is the image plus a few hundred bytes of fields: what is left of the message limit.
        self.max_reply_bytes = reply_limit(info.limits.max_message_bytes)

    # -- request -> checked job ------------------------------------------------------------------
    def _style(self, style: pb.Style, i: int, bad: list[Violation], prefix: str) -> Any:
        """A request's style as an image source; a registered id or a library style's name becomes its
        bytes, keyed by its sha256 (a replaced library file is a new key, so no stale statistics)."""
        which = style.WhichOneof("source")
        if which == "image":
            return style.image
        if which != "style_id":
            bad.append(Violation(f"{prefix}styles[{i}]", "set image or style_id"))
            return b""
        key = style.style_id
        if STYLE_ID_RE.fullmatch(key.lower()):  # hex digits in either case (a client's sha256 may be upper case)
            key = key.lower()
        data = self.registry.get(key, current_caller.get())  # a use: it counts for this caller now
        if data is not None:
            return KeyedImage(key, data)
        named = self.library.get(style.style_id) if self.library is not None else None
        if named is None and self.library is not None and STYLE_ID_RE.fullmatch(key):
            # a library style's id (ListStyles gives it; it is its bytes' sha256, as a registered style's is): those
            # very bytes, served. It was refused, naming the style: a style registered on one replica whose bytes
            # were a library style's failed on every other, the client's resending of its bytes never asked for
            named = next((s for s in self.library.styles() if s.id == key), None)
        if named is not None:
            return named.source
        bad.append(Violation(f"{prefix}styles[{i}].style_id", self._unknown_style(key)))
        return b""

    def _preset(self, msg: pb.StylizeRequest | pb.VideoOptions, bad: list[Violation], prefix: str) -> dict[str, Any]:
        """A preset's styles and weights, and its alpha and colour mode where the request sets none."""
        preset = self.library.preset(msg.preset) if self.library is not None else None
        if preset is None:
            names = self.library.presets() if self.library is not None else []
            shown = listing([p.name for p in names])
            bad.append(Violation(f"{prefix}preset", f"no preset named {_clipped(msg.preset)!r} on this server "
                                 f"(it has: {shown}; see ListStyles)"))
            return {}
        if msg.styles:
            bad.append(Violation(f"{prefix}preset", "give styles or a preset, not both"))
            return {}
        styles = []
        for name, _ in preset.styles:
            style = self.library.get(name)
            if style is None:
                bad.append(Violation(f"{prefix}preset", f"preset {preset.name!r} names the style {name!r}, which "
                                     "the library no longer has"))
                return {}
            styles.append(style.source)
        look: dict[str, Any] = {"styles": styles, "weights": [w for _, w in preset.styles]}
        if not msg.HasField("alpha"):
            look["alpha"] = preset.alpha
        if not msg.HasField("preserve_color"):  # a NONE the request sets is its own choice
            look["preserve_color"] = preset.preserve_color
        return look

    def reply_ids(self, rid: str) -> tuple[tuple[str, str], ...]:
        """The metadata every reply carries: its request id, this replica's name and what it implements."""
        return (REQUEST_ID_KEY, rid), (SERVED_BY_KEY, self.replica), (FEATURES_KEY, SERVED_FEATURES)

    def _unknown_style(self, key: str) -> str:
        key = _clipped(key)
        if STYLE_ID_RE.fullmatch(key):
            return (f"unknown style id {key!r} (never registered, or dropped from the registry of "
                    f"{self.registry.max_count}); register it with RegisterStyle")
        return no_library_style(key, None if self.library is None else self.library.names())

    def _check(
        self,
        msg: pb.StylizeRequest | pb.VideoOptions,
        content: bytes | None,
        prefix: str = "",
        more: list[InvalidInputError] | None = None,
    ) -> CheckedJob:
        """A request (or a video's options, ``content`` None, fields under ``prefix``) as a checked Job,
        or one INVALID_ARGUMENT listing every problem, ``more`` (the caller's own) included."""
        if len(msg.styles) > self.limits.max_styles:  # the count alone, before any work for each entry
            raise ServiceError.invalid([Violation(prefix + "styles", too_many_styles(len(msg.styles),
                                                                                      self.limits).description)])
        bad: list[Violation] = []
        look = {
            "styles": [self._style(style, i, bad, prefix) for i, style in enumerate(msg.styles)],
            "weights": [style.weight if style.HasField("weight") else 1.0 for style in msg.styles],
            "alpha": msg.alpha if msg.HasField("alpha") else 1.0,
            "preserve_color": COLOR_BY_ENUM.get(msg.preserve_color, "none"),
        }
        preset_failed = False
        if msg.preset:
            found = self._preset(msg, bad, prefix)
            preset_failed = not found
            look.update(found)
        job = Job(
            content=content,
            **look,
            mask=msg.mask or None,
            **_region_options(msg),
            content_size=msg.content_size or None,
            style_size=msg.style_size or None,
            **(_refine_options(msg, bad) if isinstance(msg, pb.StylizeRequest) else {}),
        )
        if msg.preserve_color not in COLOR_BY_ENUM:
            bad.append(Violation(f"{prefix}preserve_color", f"unknown value {msg.preserve_color}"))
        if msg.format not in FORMAT_BY_ENUM:
            bad.append(Violation(f"{prefix}format", f"unknown value {msg.format} (PNG, JPEG or WEBP)"))
        if msg.quality > 100:
            bad.append(
                Violation(f"{prefix}quality", f"must be in [1, 100] (0 means {DEFAULT_QUALITY}), got {msg.quality}")
            )
        problems = list(more or [])
        try:
            checked = job.check(self.limits, content=content is not None)
        except InvalidInputError as e:
            problems = list(e.problems) + problems
        if preset_failed:  # its styles are missing because the preset is: one violation says so
            problems = [p for p in problems if p.field != "styles"]
        bad += [_violation(p.field, p.description, msg, prefix) for p in problems]
        if bad:
            raise ServiceError.invalid(bad)
        return checked

    # -- RPCs ------------------------------------------------------------------------------------
    @rpc("Stylize")
    async def Stylize(self, request: pb.StylizeRequest, context: grpc.aio.ServicerContext, rid: str) -> Any:
        return await self._stylize(request, context, rid)

    @stream_rpc("StylizeWithProgress")
    async def StylizeWithProgress(
        self, request: pb.StylizeRequest, context: grpc.aio.ServicerContext, rid: str
    ) -> AsyncIterator[pb.StylizeEvent]:
        events: asyncio.Queue[Any] = asyncio.Queue()
        ctx = contextvars.copy_context()  # the task's: what it sets (work_began) is read back for the call's metrics
        task = asyncio.get_running_loop().create_task(self._stylize(request, context, rid, events.put_nowait),
                                                      context=ctx)
        getter: asyncio.Future[Any] | None = None
        try:
            while not task.done():
                getter = asyncio.ensure_future(events.get())
                await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    break
                yield _progress_event(getter.result())
            while not events.empty():
                yield _progress_event(events.get_nowait())
            yield pb.StylizeEvent(result=await task)
        finally:
            task.cancel()
            if ctx.get(work_began):  # adain_request_seconds counts a refusal after work (the call's own context)
                work_began.set(True)
            if getter is not None:  # a call cancelled while waiting: no pending task left behind to log an ERROR
                getter.cancel()
            # The task holds its error, whose traceback holds this frame: a cycle that kept the request and its
            # job (the task's frames) until a full collection, rare in a server's heap.
            task = getter = None

    def _admit(self) -> Any:
        """A place in the queue for this call's caller (a ticket to release), or RESOURCE_EXHAUSTED."""
        try:
            return self.batcher.admit(caller=current_caller.get())
        except QueueFullError as e:
            self.metrics.queue_refused.labels(e.reason).inc()
            raise ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e),
                               retry_after_s=self.batcher.retry_after()) from e
        except ClosedError as e:
            raise ServiceError(grpc.StatusCode.UNAVAILABLE, str(e)) from e

    async def _stylize(
        self,
        request: pb.StylizeRequest,
        context: grpc.aio.ServicerContext,
        rid: str,
        on_progress: Callable[[Any], None] | None = None,
    ) -> pb.StylizeResponse:
        """Stylize's work: checked, prepared, rendered in a batch (or, for an optimisation job or a content
        large enough to render in tiles, on the long-job threads), encoded."""
        job = self._check(request, request.content)
        refining = job.refine_steps > 0  # an optimisation job: its own threads, never the batch
        long_job = refining
        ticket = place = None
        if refining:
            place = self.refiner.admit(current_caller.get())
            work_began.set(True)  # (a long job: its decoding and minutes of work on its thread)
        else:
            ticket = self._admit()
        loop = asyncio.get_running_loop()
        remaining = context.time_remaining()
        deadline = time.monotonic() + remaining if remaining is not None and math.isfinite(remaining) else None
        refine_ms = queue_ms = 0.0
        refine_steps = 0
        try:
            # Print size (minutes of tiles) goes to the long-job threads too: known from the header, before
            # decoding (in the pool: a PNG's text chunks come before its size, and reading them took seconds)
            if await loop.run_in_executor(self.pool, self._plan, request, job) and not refining:
                ticket.release()
                ticket = None
                place = self.refiner.admit(current_caller.get())
                work_began.set(True)
                long_job = True
            try:
                if long_job:  # decoded on its thread when its turn comes (a waiting job holds only its bytes)
                    t_run = time.perf_counter()
                    ran = await self.refiner.run(functools.partial(self.stylizer.prepare, job), deadline,
                                                 on_progress, tiled=not refining, place=place)
                    prepare_ms, queue_ms = ran.prepare_s * 1000, ran.waited_s * 1000
                    ran_ms = (time.perf_counter() - t_run) * 1000 - prepare_ms - queue_ms
                    refine_ms = ran_ms if refining else 0.0
                    refine_steps = ran.steps  # those run (L-BFGS may converge before the steps asked; a tile run: 0)
                    inference_ms = 0.0 if refining else ran_ms
                    image, result = ran.image, None
                else:
                    t0 = time.perf_counter()
                    prepared = await loop.run_in_executor(self.pool, self.stylizer.prepare, job)
                    work_began.set(True)  # decoded: what fails now (the reply's size) failed after work
                    prepare_ms = (time.perf_counter() - t0) * 1000
            except InvalidInputError as e:
                raise _invalid(e, request) from e
            self.metrics.prepare_seconds.observe(prepare_ms / 1000)
            if not long_job:
                result = await self._render(ticket, prepared, deadline)
                image = result.output
            t1 = time.perf_counter()
            fmt = FORMAT_BY_ENUM[request.format]

            def encode() -> bytes:
                exif = exif_to_keep(request.content) if request.keep_exif else None
                return encode_image(image, fmt, request.quality or DEFAULT_QUALITY, exif)

            try:
                data = await loop.run_in_executor(self.pool, encode)
            except InvalidInputError as e:  # what the format cannot hold, where the header did not say it first
                raise _invalid(e, request) from e
            encode_ms = (time.perf_counter() - t1) * 1000
            self.metrics.encode_seconds.labels(fmt).observe(encode_ms / 1000)
        finally:
            if place is not None:
                place.release()
            elif ticket is not None:
                ticket.release()
        if len(data) > self.max_reply_bytes:
            raise ServiceError.reply_too_large(
                f"the output is {image.width}x{image.height} as {fmt.upper()}", len(data), self.max_reply_bytes,
                smaller_image_advice(fmt))
        return pb.StylizeResponse(
            image=data,
            width=image.width,
            height=image.height,
            format=request.format,
            request_id=rid,
            timings=pb.Timings(
                queue_ms=result.queue_ms if result else queue_ms,
                inference_ms=result.inference_ms if result else inference_ms,
                prepare_ms=prepare_ms,
                encode_ms=encode_ms,
                batch_size=result.batch_size if result else 1,
                refine_ms=refine_ms,
                refine_steps=refine_steps,
            ),
        )

    def _plan(self, request: pb.StylizeRequest, job: CheckedJob) -> bool:
        """From the content's header alone, before it is decoded: whether it is tiled as rendered (at most
        ``content_size``; a refine's output is that size too), and INVALID_ARGUMENT where the header cannot be
        read or the output format cannot hold its size (said now, not after a wait for a long-job thread)."""
        try:
            w, h = header_size(request.content, field="content", max_pixels=self.limits.max_pixels)
        except InvalidInputError as e:
            raise _invalid(e, request) from e
        w, h = longest_size(w, h, job.content_side)  # (an EXIF turn swaps them: no matter to either rule)
        if why := format_cannot_hold(FORMAT_BY_ENUM[request.format], w, h):
            raise ServiceError.invalid([Violation("format", why)])
        return self.stylizer.tiling.wants_pixels(w * h)

    async def _render(self, ticket: Any, prepared: Any, deadline: float | None) -> Any:
        """One prepared request through the dynamic batch."""
        try:
            item = self.batcher.submit(ticket, prepared, prepared.batch_key, deadline)
        except ClosedError as e:
            raise ServiceError(grpc.StatusCode.UNAVAILABLE, str(e)) from e
        try:
            return await item.future
        except asyncio.CancelledError:
            self.batcher.withdraw(item)
            raise
        except DeadlineDropped as e:
            raise ServiceError(grpc.StatusCode.DEADLINE_EXCEEDED, str(e)) from e
        except ClosedError as e:  # shed by a drain: retried on another replica
            raise ServiceError(grpc.StatusCode.UNAVAILABLE, str(e)) from e
        except (MemoryError, RuntimeError) as e:
            if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":  # torch.cuda's
                raise ServiceError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED, f"out of memory rendering a batch: {type(e).__name__}"
                ) from e
            raise
        finally:
            # Its future holds the error raised here, whose traceback holds this frame: a cycle that kept the
            # request's job until a full collection, rare in a server's heap.
            item = None

    @rpc("RegisterStyle")
    async def RegisterStyle(self, request: pb.RegisterStyleRequest, context: grpc.aio.ServicerContext, rid: str) -> Any:
        data = request.image
        if not data:
            raise ServiceError.invalid([Violation("image", "image data is empty")])
        if len(data) > self.registry.max_bytes:  # it would push every other registered style out, and still not fit
            raise ServiceError.invalid([Violation("image", f"{len(data):,} bytes, over the registry's limit of "
                                                           f"{self.registry.max_bytes:,} (style_registry_mb)")])
        loop = asyncio.get_running_loop()

        def decode() -> tuple[Any, str]:  # the id too: hashing is no work for the event loop
            return load_image(data, field="image", max_pixels=self.limits.max_pixels), style_id(data)

        ticket = self._admit()  # its decode takes a place in the queue as a stylize's does (they were unbounded)
        try:
            img, key = await loop.run_in_executor(self.pool, decode)
        except InvalidInputError as e:
            raise ServiceError.invalid([Violation(e.field, e.description)]) from e
        finally:
            ticket.release()
        # Styles are only scaled down: one too small at the largest style_size a call may ask for could only
        # fail each call naming its id (the library refuses such files at the default size, whose calls it is)
        largest = longest_size(img.width, img.height, self.limits.max_content_side)
        if style_too_small(*largest, self.limits.max_content_side):
            raise ServiceError.invalid([Violation("image", f"{img.width} x {img.height} px is too small to carry a "
                                                           f"style at any style_size: its shorter side needs "
                                                           f"{MIN_STYLE_SIDE} px as used")])
        key = self.registry.add(data, key, current_caller.get())  # the registry's room is shared by caller
        self.metrics.registered_styles.set(len(self.registry))
        return pb.RegisterStyleResponse(style_id=key, width=img.width, height=img.height)

    @stream_rpc("StylizeVideo", early_headers=False)
    async def StylizeVideo(
        self, requests: AsyncIterator[pb.VideoRequest], context: grpc.aio.ServicerContext, rid: str
    ) -> AsyncIterator[pb.VideoFrame]:
        first = await self.video.first(requests)
        if first is None:  # a client that cancelled before sending anything is a cancel, not bad input
            await cancelled_soon(context.cancelled)
        if first is None or first.WhichOneof("part") != "options":
            raise ServiceError.invalid([Violation("options", "the first message of a stream must carry the options")])
        opts = first.options
        temporal = TEMPORAL_BY_ENUM.get(opts.temporal, "?") if opts.temporal else self.video.default_temporal
        strength = opts.temporal_strength if opts.HasField("temporal_strength") else self.video.default_strength
        more = [p for p in temporal_problems(temporal, strength) if p.field != "temporal"]
        if temporal == "?":  # named with the other problems (the strength's too)
            more.insert(0, InvalidInputError("temporal", f"unknown value {opts.temporal}"))
        job = self._check(opts, None, "options.", more)
        quality = opts.quality or DEFAULT_QUALITY
        # The response headers (the request id) go out once the stream is admitted: a client that sends its frames
        # only then never writes into a stream already refused (grpc.aio's client then raised INTERNAL "Internal
        # error from Core" for one in four refusals under load, losing RESOURCE_EXHAUSTED and its RetryInfo).
        headers = self.reply_ids(rid)
        async for frame in self.video.run(
            job, temporal, strength, opts.format, quality, requests, context, current_caller.get(),
            lambda field: "options." + _proto_field(field, opts), headers,
        ):
            yield frame

    @rpc("GetServerInfo")
    async def GetServerInfo(self, request: pb.GetServerInfoRequest, context: grpc.aio.ServicerContext, rid: str) -> Any:
        reply = pb.ServerInfo()
        reply.CopyFrom(self.info)
        reply.registered_styles = len(self.registry)
        reply.library_styles = len(self.library) if self.library is not None else 0
        return reply

    @rpc("ListStyles")
    async def ListStyles(self, request: pb.ListStylesRequest, context: grpc.aio.ServicerContext, rid: str) -> Any:
        size = request.thumbnail_size
        if size > MAX_THUMBNAIL:
            raise ServiceError.invalid([Violation("thumbnail_size", f"must be at most {MAX_THUMBNAIL}, got {size}")])
        styles = self.library.styles() if self.library is not None else []
        presets = self.library.presets() if self.library is not None else []

        def reply() -> pb.ListStylesResponse:  # thumbnails decode images: off the event loop
            return pb.ListStylesResponse(
                styles=[
                    pb.LibraryStyle(name=s.name, style_id=s.id, width=s.width, height=s.height,
                                    thumbnail=s.thumbnail(size) if size else b"")
                    for s in styles
                ],
                presets=[
                    pb.Preset(name=p.name, styles=[pb.Preset.Part(style=n, weight=w) for n, w in p.styles],
                              alpha=p.alpha, preserve_color=COLOR_ENUM[p.preserve_color])
                    for p in presets
                ],
            )

        listed = await asyncio.get_running_loop().run_in_executor(self.pool, reply)
        if listed.ByteSize() > self.max_reply_bytes:
            raise ServiceError.reply_too_large(
                f"the list of {len(styles)} styles with {size}-px thumbnails", listed.ByteSize(), self.max_reply_bytes,
                "ask for smaller thumbnails (thumbnail_size) or none")
        return listed


def _refine_options(msg: pb.StylizeRequest, bad: list[Violation]) -> dict[str, Any]:
    """The optimisation fields of a request as Job arguments; unknown enum values are violations."""
    for name, names in (("refine_init", REFINE_INIT_BY_ENUM), ("optimizer", OPTIMIZER_BY_ENUM)):
        if getattr(msg, name) not in names:
            bad.append(Violation(name, f"unknown value {getattr(msg, name)} ({', '.join(names.values())})"))
    options: dict[str, Any] = {
        "refine_steps": msg.refine_steps,
        "refine_init": REFINE_INIT_BY_ENUM.get(msg.refine_init, "adain"),
        "optimizer": OPTIMIZER_BY_ENUM.get(msg.optimizer, "lbfgs"),
        "refine_size": msg.refine_size or None,
    }
    for name in ("content_weight", "style_weight", "tv_weight"):
        if msg.HasField(name):
            options[name] = getattr(msg, name)
    return options


def _progress_event(progress: Any) -> pb.StylizeEvent:
    return pb.StylizeEvent(
        progress=pb.Progress(
            step=progress.step, steps=progress.steps, loss=progress.loss, elapsed_ms=progress.seconds * 1000
        )
    )


def _region_options(msg: pb.StylizeRequest | pb.VideoOptions) -> dict[str, Any]:
    """The Job's region fields from the per-style mask, label and alpha and the request's labels
    (each only when the request uses it, so a request without regions has none)."""
    styles = msg.styles
    options: dict[str, Any] = {}
    if any(s.mask for s in styles):
        options["masks"] = [s.mask or None for s in styles]
    if msg.labels or any(s.HasField("label") for s in styles):
        options["labels"] = msg.labels or None
        options["label_values"] = [s.label if s.HasField("label") else None for s in styles]
    if any(s.HasField("alpha") for s in styles):
        options["region_alphas"] = [s.alpha if s.HasField("alpha") else 1.0 for s in styles]
    return options


LABEL_FIELD_RE = re.compile(r"styles\[(\d+)\]\.label")
# What Style.label (a uint32) may be, as the proto says (_wire_terms)
WIRE_LABEL_RULE = ("must be a grey level 0-255, a colour 0xRRGGBB (up to 0xFFFFFF), or 0x1000000 | 0xRRGGBB "
                   "(what a colour under 256, (0, 0, b), must be: 0x1000000 | b)")


def _invalid(e: InvalidInputError, request: pb.StylizeRequest) -> ServiceError:
    """The library's refusal of a request as INVALID_ARGUMENT naming the request's own field."""
    return ServiceError.invalid([_violation(e.field, e.description, request)])


def _violation(field: str, description: str, request: pb.StylizeRequest | pb.VideoOptions,
               prefix: str = "") -> Violation:
    """A Job's problem as the request's: its field path (:func:`_proto_field`), and a style that came from the
    request's preset named as the preset's (the request has no styles[i] to name)."""
    if _from_preset(request) and field.startswith("styles["):
        description = f"{field} of preset {_clipped(request.preset)!r}: {description}"
    field, description = _wire_terms(field, description, request)
    return Violation(prefix + _proto_field(field, request), description)


def _from_preset(request: pb.StylizeRequest | pb.VideoOptions) -> bool:
    """Whether the request's styles are its preset's (a request that gives both has its own, and is refused for
    it: a problem in its styles[i] was said to be the preset's, a preset that did not exist)."""
    return bool(request.preset) and not request.styles


def _wire_terms(field: str, description: str, request: pb.StylizeRequest | pb.VideoOptions) -> tuple[str, str]:
    """A Job's problem in the wire's terms, where the library's are for Python callers: its per-style lists
    (``masks``, ``label_values``) as the wire's fields (a client generated from the proto has no field by those
    names: a fuzzer's BadRequest named them), and a label value out of range as what a uint32 Style.label may be
    (the library's message names "#rrggbb" too, which no uint32 can be sent as)."""
    if description.startswith("give one form of regions"):  # (the library names its second form)
        description = description.replace("masks", "styles[].mask")
        return ("mask" if field == "masks" else field), description
    if field == "label_values" and _from_preset(request):  # the only way a count can differ on the wire
        return "labels", "a preset's styles carry no labels: give the styles themselves, each with its Style.label"
    m = LABEL_FIELD_RE.fullmatch(field)
    if m is not None and int(m.group(1)) < len(request.styles) and not _from_preset(request):
        style = request.styles[int(m.group(1))]
        if style.HasField("label") and label_value(style.label) is None:  # (not a value no pixel has, say)
            return field, f"{WIRE_LABEL_RULE}, got {style.label} ({style.label:#x})"
    return field, description


def _proto_field(field: str, request: pb.StylizeRequest | pb.VideoOptions) -> str:
    """A Job field as the request's field path: what the proto adds is the style's source
    ("styles[1]" -> "styles[1].image" or "styles[1].style_id"), or the preset the styles came from."""
    if field.startswith("styles[") and _from_preset(request):
        return "preset"
    if field.startswith("styles[") and field.endswith("]"):
        i = int(field[len("styles[") : -1])
        which = request.styles[i].WhichOneof("source") if i < len(request.styles) else None
        return f"{field}.{which or 'image'}"
    return field


def _clipped(text: str, most: int = 80) -> str:
    """A caller's text as an error quotes it: at most ``most`` characters (the message travels in a header)."""
    return text if len(text) <= most else f"{text[:most]}... ({len(text)} characters)"
