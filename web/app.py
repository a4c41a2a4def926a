"""The web front of the service: one page and a small HTTP API, talking to adain-server through the thin
client (no torch, no second engine).

    GET  /                the page (static HTML, CSS and JavaScript from this package)
    GET  /api/info        what the page needs: the example styles (the server's library where it has one,
                          else the bundled ones), the upload limit, the server's limits
    GET  /api/styles/NAME.jpg   the thumbnail of a style of the server's library
    POST /api/stylize     multipart: content, styles (repeated: an image file, or "id:NAME" for a style of
                          the server's library), weights (repeated, one per style), alpha,
                          preserve_color, mask, labels and label (repeated, one per style: "#rrggbb" or a grey
                          level 0-255; the page's painted regions), refine_steps, format, keep_exif
                          -> the image (X-Request-Id: the caller's, where it sent a usable one), or a JSON error
    POST /api/videos      multipart: content (a clip), styles, weights, alpha, preserve_color, temporal, size,
                          fps, start, duration (a part of the clip, in seconds)
                          -> 202 and the job's state (``web.video``: a clip takes minutes)
    GET  /api/videos/ID   the job's state: running / done / failed / cancelled, frames done of total, the error
    GET  /api/videos/ID/result   the stylized clip (MP4), once done (409 before);  DELETE /api/videos/ID: cancel
                          a running job (its state says cancelled at once) or delete a finished one
    WS   /api/live        the live camera: options, then frames in and stylized frames out (``web.live``)
    GET  /healthz         200 when the backend's gRPC health is SERVING, else 503 (/, /api/info and /healthz
                          answer HEAD too, for probes)

Errors are JSON ``{"error": {"code", "message", "violations": [{"field", "description"}]}}``: 400 for a
bad input (fields named as in the proto: ``content``, ``styles[1].image``, ``alpha``...) and, with the code
DEADLINE_EXCEEDED, for an upload that stalled or came too slowly (not 408: browsers send a 408'd POST again
unasked), 413 for a body over the upload limit (refused before it is read whole), 429 with Retry-After when the
backend is full (RESOURCE_EXHAUSTED; 413 when the result is over the reply limit, or the request over the server's
message limit) or this page is (``--max-photos`` photo calls at once and a visitor's share of them, clip places, one
clip upload at a time a visitor, the clips' disk budget), 503 when
it is unreachable or draining, 504 when it runs past the deadline. A backend that cannot be reached is
answered with a fixed message: gRPC's details name its internal address, so they go to this process's log
(WARNING) only.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from fastapi import FastAPI, HTTPException, Request, WebSocket
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect, HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from adain.client import LibraryStyle, StyleRef, StyleTransferClient, StyleTransferError
from adain.client._client import REQUEST_OVER_RE
from adain.errors import install_hint
from adain.photo import heif_support
from adain.wire import (
    COLOR_MODES,
    FORMATS,
    MIN_FPS,
    STYLE_ID_RE,
    TEMPORAL_MODES,
    Limits,
    format_name,
    label_value,
    no_library_style,
    plural,
)

from . import access
from .access import RequestIds
from .checks import (
    STORAGE_ERRNOS,
    BadInput,
    Problems,
    attachment,
    clip_result_name,
    color,
    error_json,
    fraction,
    image_checked,
    number,
    public_error,
    style_count,
    style_name,
    temporal,
    weights,
    whole,
)
from .live import LiveSessions, LiveSettings
from .metrics import REFUSED_KEY, MetricsMiddleware, WebMetrics
from .progress import ClientGone, PhotoProgress, watch_disconnect
from .video import Busy, PageStopping, VideoJobs, clip_frames

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
GALLERY = HERE / "gallery"  # the bundled example styles (a link to examples/style in the source tree)
heif_support()  # so that a HEIC upload's header is checked here too, where pillow-heif is installed
RETRY_AFTER_S = 1  # told to a client the backend turned away as full
LIBRARY_TTL_S = 10.0  # the server's style library is asked again after this long (it follows its folder)
THUMBNAIL_PX = 256
HEALTH_WARN_S = 60.0  # /healthz logs why the server is unreachable at most this often (probes ask every few s)
log = logging.getLogger("adain.web")
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.CANCELLED: 503,
}
IMAGE_FIELDS = ("content", "styles", "weights", "alpha", "preserve_color", "mask", "labels", "label", "refine_steps",
                "size", "format", "keep_exif")
VIDEO_FIELDS = ("content", "styles", "weights", "alpha", "preserve_color", "temporal", "size", "fps", "start",
                "duration")
REPEATED_FIELDS = ("styles", "weights", "label")  # one per style; every other field is given once at most
MAX_FORM_FIELDS = 50  # the form's values (not files): the styles by name, their weights and labels, the options
ERROR_CODES = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 408: "DEADLINE_EXCEEDED",
               409: "FAILED_PRECONDITION", 410: "NOT_FOUND", 413: "PAYLOAD_TOO_LARGE"}
# An upload must keep coming: a body that stalls for WebSettings.upload_idle_s, or that is slower on average than
# BODY_RATE past BODY_GRACE_S, is refused (UploadStalled). Idle or trickling uploads held every photo place (and the
# clip place, 300 s and more).
BODY_GRACE_S = 120.0
BODY_RATE = 256 * 1024  # bytes a second


@dataclass(frozen=True)
class WebSettings:
    max_upload_bytes: int = 20 * 1024 * 1024  # the whole request body
    timeout: float = 120.0  # deadline of each backend call, seconds
    limits: Limits | None = None  # for the checks made here; None: the backend's, asked once it answers
    max_video_bytes: int = 200 * 1024 * 1024  # the body of a clip's upload
    max_video_frames: int = 900  # frames a clip may have: declared, by its duration, or as a job runs
    max_video_jobs: int = 1  # clips stylized at once; 429 beyond
    video_keep_s: float = 1800.0  # how long a finished clip is kept for its page to fetch
    video_abandon_s: float = 300.0  # a running clip nobody asked about for this long is cancelled
    max_disk_bytes: int = 2048 * 1024 * 1024  # clips' uploads and results at most (oldest results go first)
    max_photo_calls: int = 16  # photo calls at once (each holds its upload on disk, ~3x it in memory); 429 beyond
    live: LiveSettings = LiveSettings()  # the live camera (web.live)
    forwarded_for: bool = False  # the end user is the last X-Forwarded-For address (behind a proxy), not the peer
    allowed_origins: tuple[str, ...] = ()  # other sites whose pages may call this API from a browser
    # names a request's Host may give (HostCheck); None: loopback names alone where the page listens on loopback
    allowed_hosts: tuple[str, ...] | None = None
    # where adain-web listens (--host), which says whether a Host is checked by default; None (an app served by
    # its embedder, who knows its names): only where allowed_hosts is given
    listen_host: str | None = None
    upload_idle_s: float = 30.0  # an upload that sends nothing this long is refused (BodyLimit, UploadStalled)


class UploadStalled(Exception):
    """An upload that stalled or trickled (BodyLimit): answered 400 DEADLINE_EXCEEDED naming ``content``, not 408,
    which Chromium (and other browsers) send again unasked where the request went over a reused keep-alive
    connection: a page's slow upload spun for twice the time, then was told to send it again, which fails the
    same way. Counted as 408 in adain_web_requests, as before, and logged."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.message, self.field = message, field


class BodyLimit:
    """ASGI middleware: refuse a body over ``max_bytes`` by its Content-Length, or while it streams in
    (413), so an oversized upload is never read whole; and one that stalls or trickles (UploadStalled:
    ``idle_s``, BODY_RATE)."""

    def __init__(self, app: ASGIApp, max_bytes: int, by_prefix: dict[str, int] | None = None,
                 idle_s: float = 30.0) -> None:
        self.app, self.max_bytes, self.by_prefix, self.idle_s = app, max_bytes, by_prefix or {}, idle_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = next((n for prefix, n in self.by_prefix.items() if scope["path"].startswith(prefix)), self.max_bytes)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await _error(413, "PAYLOAD_TOO_LARGE", _too_large(limit))(scope, receive, send)
            return
        seen, done = 0, False
        start = time.monotonic()
        deadline = start + max(BODY_GRACE_S, limit / BODY_RATE)

        async def limited() -> Message:
            nonlocal seen, done
            if done:  # the body is in: a later receive waits for the client to leave, for as long as it takes
                return await receive()
            left = deadline - time.monotonic()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, min(self.idle_s, left)))
            except asyncio.TimeoutError:
                scope[REFUSED_KEY] = "408"  # the metric's series for stalled uploads, as it was
                clip = scope["path"].startswith("/api/videos")
                if left > self.idle_s:
                    why = (f"no byte of the upload came for {self.idle_s:g} s (the connection dropped or stalled); "
                           "check the connection and send it again")
                else:
                    why = (f"the upload came slower than {BODY_RATE // 1024} kB/s on average, too slow to finish "
                           f"in time ({seen / 2**20:.1f} MB in {time.monotonic() - start:.0f} s): send "
                           + ("a shorter clip (a part of it) or a smaller file" if clip else
                              "a smaller photo (fewer megabytes)") + ", or use a faster connection")
                log.info("%s %s: the upload stalled after %d bytes in %.0f s", scope.get("method"), scope["path"],
                         seen, time.monotonic() - start)
                raise UploadStalled(why, "content") from None
            seen += len(message.get("body", b""))
            done = message["type"] != "http.request" or not message.get("more_body", False)
            if seen > limit:
                raise HTTPException(413, _too_large(limit))
            return message

        await self.app(scope, limited, send)


class Visitors:
    """Who a request is for: the peer's address, or behind a proxy (``forwarded_for``) the last X-Forwarded-For
    address. The server gives each a queue share, and this page each a share of its photo and clip places."""

    def __init__(self, forwarded_for: bool) -> None:
        self.forwarded_for = forwarded_for
        self.warned = False  # a proxy that sends no address is said once (the log is no one's to flood)

    def end_user(self, connection: HTTPConnection) -> str | None:
        """The visitor's address, as the server's queue names it (it listens where adain-web's token is a front)."""
        peer = connection.client.host if connection.client else None
        if not self.forwarded_for:
            return peer
        # every X-Forwarded-For line: a proxy may add a line of its own rather than extend the client's
        lines = connection.headers.getlist("x-forwarded-for")
        hops = [h.strip() for h in ",".join(lines).split(",") if h.strip()]
        if not hops:
            return peer
        # the address the proxy in front of us saw (earlier ones the client could write); only an address: any
        # text ("<script>", a new one each call) was a new caller with a queue share of its own
        address = _forwarded_address(hops[-1])
        if address is None:
            if not self.warned:
                self.warned = True
                log.warning("--forwarded-for: the proxy's X-Forwarded-For ends in %r, not an address; such "
                            "requests count as the proxy's own (%s) (said once)", hops[-1][:100], peer)
            return peer
        return address

    def key(self, connection: HTTPConnection) -> str | None:
        """The visitor as this page's per-visitor limits count it: an IPv6 address by its /64 (one machine holds
        a whole /64 and may pick any address of it), anything else as the server names it."""
        return share_key(self.end_user(connection))


def _forwarded_address(text: str) -> str | None:
    """An X-Forwarded-For value as an address (a port some proxies add, 1.2.3.4:5678 or [::1]:5678, left off), or
    None where it is none."""
    for candidate in (text, text.rsplit(":", 1)[0] if text.count(":") == 1 or text.startswith("[") else None):
        if candidate is not None and (address := _address(candidate)) is not None:
            return str(address.ipv4_mapped or address) if isinstance(address, ipaddress.IPv6Address) else str(address)
    return None


def share_key(end_user: str | None) -> str | None:
    address = _address(end_user) if end_user else None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return end_user


def visitor_share(places: int) -> int:
    """Photo places one visitor may hold at once: a quarter of them, at least one (one visitor trickling uploads
    held every place, so that everyone else got 429 while nothing was being stylized)."""
    return max(1, math.ceil(places / 4))


class PhotoCalls:
    """Photo calls (POST /api/stylize) in progress, and how many may be, in all and by one visitor."""

    def __init__(self, limit: int) -> None:
        self.limit, self.running = limit, 0
        self.per_visitor = visitor_share(limit)
        self.by_visitor: Counter[str] = Counter()


class PhotosAtOnce:
    """ASGI middleware: at most ``calls.limit`` photo calls at once, ``calls.per_visitor`` of them a visitor's;
    another gets 429 before its body is read. Each holds its upload, spooled to the temporary folder's disk past
    1 MB, for its whole call: unbounded, a burst of them could fill a pod's emptyDir, which evicts it with every
    visitor's request."""

    def __init__(self, app: ASGIApp, calls: PhotoCalls, visitors: Visitors) -> None:
        self.app, self.calls, self.visitors = app, calls, visitors

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/api/stylize":
            await self.app(scope, receive, send)
            return
        calls = self.calls
        visitor = self.visitors.key(HTTPConnection(scope))
        # one event loop: no lock needed between the checks and the counts
        if calls.running >= calls.limit:
            busy = f"this page stylizes {plural(calls.limit, 'photo')} at once, and is doing so; try again in a moment"
        elif visitor is not None and calls.by_visitor[visitor] >= calls.per_visitor:
            busy = (f"you have {plural(calls.per_visitor, 'photo call')} on this page already (at most "
                    f"{calls.per_visitor} a visitor, of its {calls.limit}); try again when one is done")
        else:
            busy = ""
        if busy:
            await _error(429, "RESOURCE_EXHAUSTED", busy, headers={"Retry-After": str(RETRY_AFTER_S)})(
                scope, receive, send)
            return
        calls.running += 1
        if visitor is not None:
            calls.by_visitor[visitor] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            calls.running -= 1
            if visitor is not None:
                calls.by_visitor[visitor] -= 1
                if not calls.by_visitor[visitor]:
                    del calls.by_visitor[visitor]


class Stopping:
    """Whether adain-web is stopping (SIGTERM: its uvicorn server says so as the grace begins)."""

    began = False


class GraceEnd:
    """ASGI middleware: a call still running when ``--grace-seconds`` end (uvicorn cancels its task) is answered 503
    UNAVAILABLE with Retry-After, in JSON as every error. It was a plain-text 500 with a traceback at ERROR, which the
    RUNBOOK reads as a bug of adain-web's, in a routine rollout that cut a large photo. One cut mid-answer (a clip's
    download to a slow reader) cannot be answered again: said in one line, and uvicorn closes its connection (the
    client sees its answer cut short), where it was "Exception in ASGI application" and a traceback."""

    def __init__(self, app: ASGIApp, stopping: Stopping) -> None:
        self.app, self.stopping = app, stopping

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except asyncio.CancelledError:
            if not self.stopping.began:
                raise
            if started:  # (uvicorn's "returned without completing response" that follows: dropped, __main__)
                log.warning("%s %s: cut mid-answer at the end of --grace-seconds as the page stopped: its connection "
                            "is closed", scope.get("method"), scope.get("path"))
                return
            log.warning("%s %s: cut at the end of --grace-seconds as the page stopped: answered 503",
                        scope.get("method"), scope.get("path"))
            await _error(503, "UNAVAILABLE", "this page is stopping (a restart or a rollout) and cut this call at "
                         "the end of its grace period: send it again", headers={"Retry-After": str(RETRY_AFTER_S)})(
                scope, receive, send)


class SecurityHeaders:
    """ASGI middleware: every HTTP answer says what a browser may do with it. The page loads only its own
    scripts, styles and images (and the blob: URLs it makes for results), may not be framed by another site
    (clickjacking the Stylize button), and no answer is content-sniffed into something else."""

    HEADERS = (
        (b"content-security-policy", b"default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
                                     b"connect-src 'self' blob:; object-src 'none'; base-uri 'none'; "
                                     b"form-action 'self'; frame-ancestors 'none'"),
        (b"x-content-type-options", b"nosniff"),
        (b"x-frame-options", b"DENY"),
        (b"referrer-policy", b"same-origin"),
    )

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        started = False

        async def with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", []), *self.HEADERS]
            await send(message)

        try:
            await self.app(scope, receive, with_headers)
        except Exception as e:  # Starlette's own 500 is plain text and comes from outside this middleware
            full = storage_error(e)
            if full:  # this page's temporary folder full or read-only: said, not INTERNAL (an operator's tour)
                log.error("%s %s: %s", scope.get("method"), scope.get("path"), full)
            else:
                log.exception("%s %s failed", scope.get("method"), scope.get("path"))
            if started:
                raise
            internal = error_json("INTERNAL", "an error on this server (its log says more)")
            body = (JSONResponse(error_json("RESOURCE_EXHAUSTED", full), status_code=507, headers={"Retry-After": "30"})
                    if full else JSONResponse(internal, status_code=500))
            await body(scope, receive, with_headers)


def storage_error(e: BaseException) -> str | None:
    """What an error that is this process's storage's (a full, over-quota or read-only temporary folder: uploads
    are spooled there, clips kept there) says to a caller, or None: found in ``e``, its causes and an exception
    group's members. The folder is named as Python's tempfile takes it."""
    seen: set[int] = set()
    todo = [e]
    while todo:
        x = todo.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, OSError) and x.errno in STORAGE_ERRNOS:
            return (f"this page's temporary folder ({tempfile.gettempdir()}) {STORAGE_ERRNOS[x.errno]}: it cannot "
                    "take uploads or clips now; try again later (its operator is told)")
        todo += [x.__cause__, x.__context__, *getattr(x, "exceptions", ())]
    return None


def _bare(name: str) -> str:
    """A host name as compared: lower case, no IPv6 brackets, no root dot."""
    return name.lower().strip("[]").rstrip(".")


async def _refuse(scope: Scope, receive: Receive, send: Send, reason: str, message: str) -> None:
    """A request a guard turns away: 403 PERMISSION_DENIED saying ``message``; a WebSocket closed with 1008."""
    if scope["type"] == "websocket":
        await receive()  # the handshake
        await send({"type": "websocket.close", "code": 1008, "reason": reason})
        return
    await _error(403, "PERMISSION_DENIED", message)(scope, receive, send)


def _address(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return None


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, as --host takes it) is this machine's loopback alone."""
    address = _address(host)
    return _bare(host) == "localhost" or (address is not None and address.is_loopback)


class HostCheck:
    """ASGI middleware: a request whose Host is not a name this page answers to is refused (403; a socket closed
    with 1008). A site's page whose name is made to resolve to 127.0.0.1 (DNS rebinding) is, to the browser, the
    same origin as this page: its Origin and Host agree, so SameOrigin let it upload, stylize and read the
    replies, with the token adain-web holds. An address (127.0.0.1, a pod's IP: a probe's) is always taken, as
    rebinding needs a name; so is ``localhost``, and the names ``allowed`` gives (--allowed-host). Listening
    elsewhere than on loopback with none given (a service behind names this page cannot know), any Host is."""

    def __init__(self, app: ASGIApp, allowed: tuple[str, ...] | None, listen_host: str | None) -> None:
        self.app = app
        checked = allowed is not None or (listen_host is not None and is_loopback(listen_host))
        self.names = {"localhost", *(_bare(n) for n in allowed or ())} if checked else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.names is None or scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host = dict(scope.get("headers") or ()).get(b"host", b"").decode("latin-1").lower()
        name = _bare(host.rsplit(":", 1)[0] if host.count(":") == 1 or "]:" in host else host)  # less the port
        if name not in self.names and _address(name) is None:
            await _refuse(scope, receive, send, "host not allowed", f"this page does not answer to the name "
                          f"{name or '(none)'!r}: open it by its address or a name it answers to "
                          f"({', '.join(sorted(self.names))}; adain-web --allowed-host adds names)")
            return
        await self.app(scope, receive, send)


class SameOrigin:
    """ASGI middleware: a browser's POST, DELETE or WebSocket from another site's page is refused (403; the
    socket closed with 1008), so a page elsewhere cannot spend this server's time through a visitor's
    browser (the live camera's socket, an upload) nor cancel a visitor's clip. Browsers say where a request
    comes from (``Origin``); callers that are no browser send none and pass, as do ``allowed`` origins."""

    def __init__(self, app: ASGIApp, allowed: tuple[str, ...] = ()) -> None:
        self.app, self.allowed = app, {a.rstrip("/").lower() for a in allowed}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        guarded = scope["type"] == "websocket" or (scope["type"] == "http" and scope["method"] in ("POST", "DELETE"))
        headers = dict(scope.get("headers") or ())
        origin = headers.get(b"origin", b"").decode("latin-1").rstrip("/").lower()
        if guarded and origin and not self._same(origin, headers) and origin not in self.allowed:
            await _refuse(scope, receive, send, "origin not allowed",
                          f"requests from pages of {origin} are not accepted here (adain-web --allowed-origin)")
            return
        await self.app(scope, receive, send)

    @staticmethod
    def _same(origin: str, headers: dict[bytes, bytes]) -> bool:
        host = headers.get(b"host", b"").decode("latin-1").lower()
        return bool(host) and origin.split("://", 1)[-1] == host


def _too_large(limit: int) -> str:
    return f"the upload is over the limit of {limit / 2**20:g} MB"


# (REQUEST_OVER_RE: gRPC's own words for a request over the server's --max-message-mb: possible only where
# adain-web's --max-upload-mb is above it, and answered 429 "busy, try again" (which never helps) until told apart)


def _over_server_limit(size: int, limit: int, upload_limit: int) -> str:
    log.warning("a request of %d bytes was over the server's message limit of %d bytes: adain-web --max-upload-mb "
                "(%g) is above adain-server --max-message-mb (%g)", size, limit, upload_limit / 2**20, limit / 2**20)
    return (f"the request is {size / 2**20:.1f} MB, over the {limit / 2**20:g} MB the stylization server takes: "
            "send smaller images")


def _error(
    status: int, code: str, message: str, violations: list[tuple[str, str]] = (), headers: dict | None = None
) -> JSONResponse:
    return JSONResponse(error_json(code, message, violations), status_code=status, headers=headers)


def create_app(
    client: StyleTransferClient, settings: WebSettings = WebSettings(), metrics: WebMetrics | None = None
) -> FastAPI:
    """The app over ``client`` (which it does not close), counted in ``metrics`` when given. No interactive
    docs: they load scripts from other sites, and the page loads nothing from anywhere but here."""
    jobs = VideoJobs(client, max_running=settings.max_video_jobs, keep_s=settings.video_keep_s,
                     abandon_s=settings.video_abandon_s, max_frames=settings.max_video_frames,
                     max_disk_bytes=settings.max_disk_bytes, upload_bytes=2 * settings.max_video_bytes,
                     ) if _has_av() else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        if jobs is not None:
            await run_in_threadpool(jobs.close)  # running clips cancelled, every file removed

    stopping = Stopping()

    def begin_stop() -> None:
        """As SIGTERM's grace begins (adain-web's uvicorn server calls it): clips stop at once, the photos in
        flight have the grace, and those it cuts are answered 503 (GraceEnd)."""
        stopping.began = True
        if jobs is not None:
            jobs.stop_running()

    app = FastAPI(title="adain-web", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.begin_stop, app.state.stopping = begin_stop, stopping
    app.add_middleware(SameOrigin, allowed=settings.allowed_origins)
    app.add_middleware(HostCheck, allowed=settings.allowed_hosts, listen_host=settings.listen_host)
    app.add_middleware(BodyLimit, max_bytes=settings.max_upload_bytes,
                       by_prefix={"/api/videos": settings.max_video_bytes}, idle_s=settings.upload_idle_s)
    photo_calls = PhotoCalls(settings.max_photo_calls)
    visitors = Visitors(settings.forwarded_for)
    app.add_middleware(PhotosAtOnce, calls=photo_calls, visitors=visitors)
    app.add_middleware(GraceEnd, stopping=stopping)  # outside PhotosAtOnce: a cut call's place is given back first
    app.add_middleware(SecurityHeaders)  # outside the others: their own answers (a 413 by Content-Length) get them
    app.add_middleware(RequestIds)  # outside them all: each answer carries its id, each request gets its line
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    if GALLERY.is_dir():
        app.mount("/gallery", StaticFiles(directory=GALLERY), name="gallery")
    progress = PhotoProgress()  # the photo calls running now, for their pages to follow
    known: dict[str, Any] = {"at": -math.inf, "limits": None}  # the backend's limits, and when they were asked
    library: dict[str, Any] = {"at": -math.inf, "styles": {}, "presets": []}

    async def ask_library() -> bool:
        """The server's library asked now (ListStyles, with thumbnails) and kept; False where it did not answer
        (unreachable, or older than ListStyles: what was known stays, asked again in LIBRARY_TTL_S)."""
        library["at"] = time.monotonic()
        try:
            styles, presets = await run_in_threadpool(client.library, thumbnail_size=THUMBNAIL_PX,
                                                      timeout=min(5.0, settings.timeout))
        except StyleTransferError:
            return False
        library.update(styles={s.name: s for s in styles}, presets=presets)
        return True

    async def library_styles() -> dict[str, LibraryStyle]:
        """The server's library by name, with thumbnails, asked at most every LIBRARY_TTL_S."""
        if time.monotonic() - library["at"] > LIBRARY_TTL_S:
            await ask_library()
        return library["styles"]

    async def refuse_unknown_names(styles: list[Any]) -> None:
        """A clip's id:NAME styles that the server's library does not have, refused before its job starts (it was
        taken, 202, to fail at its first frame): the library asked again where a name is not in the last answer
        (its folder may have gained it), and nothing refused where the server does not answer now (the job waits
        for it, as for a blip) or has no ListStyles. A 64-hex name may be a registered style's id: the job tries it."""
        names = [(i, s.id) for i, s in enumerate(styles)  # (an id's hex in upper case too, as the server takes it)
                 if isinstance(s, StyleRef) and not STYLE_ID_RE.fullmatch(s.id.lower())]
        if not names or all(n in library["styles"] for _, n in names) or not await ask_library():
            return
        problems = Problems()  # (in the server's words and field, as a photo's answer has them)
        have = sorted(library["styles"]) or None  # (none: a server without a library)
        for i, n in names:
            if n not in library["styles"]:
                problems.add(f"styles[{i}].style_id", no_library_style(n, have))
        problems.raise_any()

    async def current_limits() -> Limits:
        """``settings.limits`` where given, else the backend's (GetServerInfo), asked again at most every
        LIBRARY_TTL_S as the library is (a server restarted with other flags has other limits): the defaults
        and a question on every call until it first answers; what was known while it does not answer."""
        if settings.limits is not None:
            return settings.limits
        if known["limits"] is None or time.monotonic() - known["at"] > LIBRARY_TTL_S:
            if known["limits"] is not None:
                known["at"] = time.monotonic()  # one that does not answer now is asked again in LIBRARY_TTL_S
            try:
                info = await run_in_threadpool(client.server_info, timeout=min(5.0, settings.timeout))
            except StyleTransferError:
                return known["limits"] or Limits()
            reported = info.get("limits", {})
            known["limits"], known["at"] = _limits(reported), time.monotonic()
            known["video_frames"] = int(reported.get("max_video_frames") or 0)
            known["tile_threshold"] = int(reported.get("tile_threshold_pixels") or 0)
            known["features"] = list(info.get("features") or [])  # empty: a server older than the list
        return known["limits"]

    def video_frames() -> int:
        """The frames a clip may have: this page's --max-video-frames, or the server's limit where lower (a
        clip over it was taken, to fail once sent, naming a temporary file and the CLI's flags)."""
        server = known.get("video_frames") or 0
        return min(settings.max_video_frames, server) if server else settings.max_video_frames

    @app.exception_handler(UploadStalled)
    async def stalled(request: Request, exc: UploadStalled) -> JSONResponse:
        return _error(400, "DEADLINE_EXCEEDED", f"{exc.field}: {exc.message}", [(exc.field, exc.message)])

    @app.exception_handler(ClientDisconnect)
    async def gone(request: Request, exc: ClientDisconnect) -> JSONResponse:
        # the visitor went away mid-upload: nobody reads this answer; a line, not 57 of traceback at ERROR each
        # (a log anyone could flood by cutting uploads short)
        log.info("%s %s: the client went away before its upload was in", request.method, request.url.path)
        return _error(400, "CANCELLED", "the upload was cut off")

    # Starlette's own HTTPException (an unknown route, a method not allowed, a malformed multipart body) is the
    # base of FastAPI's: one handler answers both as JSON errors.
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, ERROR_CODES.get(exc.status_code, "ERROR"), str(exc.detail), headers=exc.headers)

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    # when /healthz last logged why the server is out (at most once a HEALTH_WARN_S), and whether it is out now
    unreachable: dict[str, Any] = {"warned": -math.inf, "down": False}

    @app.api_route("/healthz", methods=["GET", "HEAD"])
    async def healthz() -> JSONResponse:
        try:
            status = await run_in_threadpool(client.health, timeout=min(5.0, settings.timeout))
        except StyleTransferError as e:
            message, _ = public_error(e, logging.DEBUG)  # probes ask every few seconds: no WARNING each time
            # ...but once a HEALTH_WARN_S: an operator saw UNREACHABLE and nothing in the log saying why
            unreachable["down"] = True
            if time.monotonic() - unreachable["warned"] >= HEALTH_WARN_S:
                unreachable["warned"] = time.monotonic()
                log.warning(
                    "/healthz: the server %s does not answer (%s: %s); logged at most once a minute",
                    client.target, e.code.name, e.details)
            return JSONResponse({"status": "UNREACHABLE", "detail": message}, status_code=503)
        if unreachable["down"]:
            unreachable["down"] = False
            log.info("/healthz: the server %s answers again: %s", client.target, status)
        return JSONResponse({"status": status}, status_code=200 if status == "SERVING" else 503)

    @app.api_route("/api/info", methods=["GET", "HEAD"])
    async def info() -> dict[str, Any]:
        limits = await current_limits()
        named = await library_styles()
        presets = []
        if named:  # the server's styles, sent by name, and its presets (the page sets their styles and options)
            examples = [{"name": n, "url": f"/api/styles/{n}.jpg", "style": f"id:{n}"} for n in sorted(named)]
            presets = [{"name": p.name, "styles": [{"style": s, "weight": w} for s, w in p.styles], "alpha": p.alpha,
                        "preserve_color": p.preserve_color or "none"} for p in library["presets"]]
        else:
            bundled = sorted(p.name for p in GALLERY.glob("*.png")) if GALLERY.is_dir() else []
            examples = [{"name": Path(n).stem, "url": f"/gallery/{n}"} for n in bundled]
        return {
            "examples": examples,
            "presets": presets,
            "max_upload_mb": settings.max_upload_bytes / 2**20,
            "max_styles": limits.max_styles,
            "max_refine_steps": limits.max_refine_steps,
            "max_pixels": limits.max_pixels,
            "max_content_side": limits.max_content_side,  # the page's size choices stop at it
            # photos over it render in parts, whose steps the page follows (0: never, or not known yet)
            "tile_threshold_pixels": known.get("tile_threshold", 0),
            # what the server implements (GetServerInfo.features); null until it first answers
            "features": known.get("features"),
            "color_modes": ["none", *COLOR_MODES],
            "formats": list(FORMATS),
            "video": None if jobs is None else {"max_upload_mb": settings.max_video_bytes / 2**20,
                                                "max_frames": video_frames(),
                                                "temporal_modes": list(TEMPORAL_MODES)},
        }

    @app.get("/api/styles/{name}.jpg")
    async def style_thumbnail(name: str) -> Response:
        style = (await library_styles()).get(name)
        if style is None or not style.thumbnail:
            raise HTTPException(404, f"no style named {name!r} in the server's library")
        return Response(style.thumbnail, media_type="image/jpeg", headers={"Cache-Control": "max-age=60"})

    live = LiveSessions(client, settings.live)
    if metrics is not None:
        metrics.follow(lambda: live.running, lambda: jobs.running() if jobs is not None else 0,
                       lambda: photo_calls.running, lambda: jobs.disk_used() if jobs is not None else 0,
                       settings.max_disk_bytes)
        app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: refused requests are counted too

    end_user = visitors.end_user

    @app.websocket("/api/live")
    async def live_camera(ws: WebSocket) -> None:
        await live.serve(ws, await current_limits(), end_user(ws))

    @app.post("/api/stylize")
    async def stylize(request: Request) -> Response:
        limits = await current_limits()
        files = f"one content, at most {plural(limits.max_styles, 'style')}, a mask and a labels image"
        try:
            async with _form(request, limits.max_styles + 3, files) as form:
                options = await _read_form(form, limits)
        except BadInput as e:
            return _error(400, "INVALID_ARGUMENT", str(e), e.violations)
        request_id = access.request_id(request.scope)  # the caller's, to find the call in the server's log
        steps = options.get("refine_steps") or 0
        followed = progress.start(request_id, steps)  # False where a call with this id runs (it keeps its entry)
        if steps and not followed:  # a refine is the page's own, and a page follows what it starts
            return _error(409, "ALREADY_EXISTS", f"a photo call with X-Request-Id {request_id!r} is running: each "
                          "refine needs an id of its own (or none)", headers={"Retry-After": "1"})
        # Every call reports its steps (a refine's, a print-size photo's boxes and tiles: minutes either way), and
        # one whose page went away is cancelled at its next step, its long-job place free for the next visitor.
        gone = threading.Event()
        watcher = asyncio.create_task(watch_disconnect(request, gone))
        options["on_progress"] = progress.callback(request_id if followed else None, gone)
        try:
            # stop: a photo rendered whole reports no step, and its page's going away held the visitor's place (and the
            # server's) to its end: the next photo of a visitor who gave up was refused for its whole render
            result = await run_in_threadpool(client.stylize, timeout=settings.timeout, end_user=end_user(request),
                                             request_id=request_id, stop=gone.is_set, **options)
        except ClientGone:
            return Response(status_code=499)  # nobody reads it: "client closed request", as nginx counts it
        except asyncio.CancelledError:  # cut at the end of the grace as the page stops: the server's call with it
            gone.set()
            raise
        except StyleTransferError as e:
            if gone.is_set() and e.code == grpc.StatusCode.CANCELLED:
                return Response(status_code=499)
            status = HTTP_STATUS.get(e.code, 502)
            message, violations = public_error(e)
            if e.code == grpc.StatusCode.DEADLINE_EXCEEDED:  # "try again in a moment" would take as long again
                message = (f"stylizing this photo took longer than the {settings.timeout:g} s this page allows (a "
                           "large photo, refine steps, a busy server, or a server that stopped answering): choose a "
                           "smaller size or fewer refine steps, or try again later")
            if e.code == grpc.StatusCode.RESOURCE_EXHAUSTED:  # too large, not busy: retrying will not help
                if "reply limit" in (e.details or ""):
                    status = 413  # the result: a smaller one will
                elif over := REQUEST_OVER_RE.search(e.details or ""):
                    status, message = 413, _over_server_limit(int(over[1]), int(over[2]), settings.max_upload_bytes)
            headers = {**(_retry_after(status, e.retry_after) or {}), "X-Request-Id": request_id}  # (as sent: the
            # client's is percent-encoded for gRPC, and "50%off" came back "50%25off")
            return _error(status, e.code.name, message, violations, headers)
        finally:
            watcher.cancel()
            if followed:
                progress.end(request_id)
        fmt = result.format
        return Response(
            result.image,
            media_type=f"image/{fmt}",
            headers={
                "X-Request-Id": request_id,
                "X-Image-Size": f"{result.width}x{result.height}",
                "Content-Disposition": f'inline; filename="stylized.{"jpg" if fmt == "jpeg" else fmt}"',
            },
        )

    @app.get("/api/progress/{request_id:path}")  # (an id with "/" in it: "job/1" was never found)
    async def photo_progress(request_id: str) -> dict[str, int]:
        found = progress.get(request_id)
        if found is None:
            raise HTTPException(404, f"no photo call running with request id {request_id[:128]!r}")
        return found

    @app.post("/api/videos", status_code=202)
    async def start_video(request: Request) -> JSONResponse:
        if jobs is None:
            return _error(501, "UNIMPLEMENTED", "this page was installed without video support: "
                          f"install the 'video' extra where adain-web runs ({install_hint('video')})")
        try:
            # before the upload is read: a full page answered 429 only after taking it all
            folder = jobs.reserve(visitors.key(request))
        except Busy as e:
            return _error(429, "RESOURCE_EXHAUSTED", str(e), headers={"Retry-After": "10"})
        except PageStopping as e:
            return _error(503, "UNAVAILABLE", str(e), headers={"Retry-After": str(RETRY_AFTER_S)})
        try:
            limits = await current_limits()
            files = f"one content clip and at most {plural(limits.max_styles, 'style')}"
            async with _form(request, limits.max_styles + 1, files) as form:
                source, name, total, options = await _read_video_form(form, limits, folder, video_frames())
            await refuse_unknown_names(options["styles"])
            job = jobs.start(folder, source, name, total, end_user=end_user(request),
                             request_id=access.request_id(request.scope), **options)  # the server's log says it
        except BadInput as e:
            jobs.discard(folder)
            return _error(400, "INVALID_ARGUMENT", str(e), e.violations)
        except Busy as e:
            jobs.discard(folder)
            return _error(429, "RESOURCE_EXHAUSTED", str(e), headers={"Retry-After": "10"})
        except PageStopping as e:  # read as the page began to stop
            jobs.discard(folder)
            return _error(503, "UNAVAILABLE", str(e), headers={"Retry-After": str(RETRY_AFTER_S)})
        except BaseException:
            jobs.discard(folder)
            raise
        return JSONResponse(job.state_json(), status_code=202)

    def _job(job_id: str) -> Any:
        job = jobs.get(job_id) if jobs is not None else None
        if job is None:
            raise HTTPException(404, f"no clip job {job_id!r}: never made, deleted, or finished over "
                                     f"{settings.video_keep_s:g} s ago")
        return job

    @app.get("/api/videos/{job_id}")
    async def video_state(job_id: str) -> dict[str, Any]:
        return _job(job_id).state_json()

    @app.api_route("/api/videos/{job_id}/result", methods=["GET", "HEAD"])  # HEAD: its size, before the bytes
    async def video_result(job_id: str) -> FileResponse:
        job = _job(job_id)
        if job.state != "done":
            raise HTTPException(409, f"the clip is {job.state}, not done")
        if not job.result.is_file():  # (a cleaner of /tmp took it: its job said done, and this was a 500)
            raise HTTPException(410, "the stylized clip is gone from this page's temporary folder (removed by another "
                                     "program); send the clip again")
        return FileResponse(job.result, media_type="video/mp4", headers={"Content-Disposition": attachment(job.name)})

    @app.delete("/api/videos/{job_id}")
    async def video_remove(job_id: str) -> Response:
        if jobs is None or not jobs.remove(job_id):
            raise HTTPException(404, f"no clip job {job_id!r}")
        return Response(status_code=204)

    return app


def _retry_after(status: int, asked: float | None = None) -> dict[str, str] | None:
    """Retry-After for a 429 or 503: the server's own estimate where it sent one (RetryInfo), in whole seconds."""
    if status not in (429, 503):
        return None
    if asked is not None and status == 429:
        return {"Retry-After": str(max(1, math.ceil(asked)))}
    return {"Retry-After": str(RETRY_AFTER_S if status == 429 else 5)}


def _has_av() -> bool:
    import importlib.util

    return importlib.util.find_spec("av") is not None


def _limits(reported: dict[str, Any]) -> Limits:
    """GetServerInfo's limits as the library's value (the fields this front checks)."""
    default = Limits()
    return Limits(
        max_pixels=int(reported.get("max_pixels") or default.max_pixels),
        max_content_side=int(reported.get("max_content_side") or default.max_content_side),
        style_size=int(reported.get("default_style_size") or default.style_size),
        max_styles=int(reported.get("max_styles") or default.max_styles),
        max_refine_steps=int(reported.get("max_refine_steps", default.max_refine_steps)),
    )


@asynccontextmanager
async def _form(request: Request, max_files: int, files: str) -> AsyncIterator[FormData]:
    """The request's multipart form (its uploads closed after); a body the parser refuses (too many files or
    fields, no multipart boundary) is a BadInput naming the field it concerns, as the checks here do; so is a
    body of another kind (JSON was read as an empty form: "content: a content image file is required")."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "multipart/form-data":
        raise BadInput("form", f"expected a multipart/form-data body (curl -F, a browser's FormData), got "
                       f"{kind[:60] or 'no Content-Type'}")
    try:
        form = await request.form(max_files=max_files, max_fields=MAX_FORM_FIELDS)
    except StarletteHTTPException as e:
        if e.status_code != 400:
            raise
        detail = str(e.detail)
        if detail.startswith("Too many files"):
            raise BadInput("styles", f"too many files: at most {max_files} ({files})") from None
        if detail.startswith("Too many fields"):
            raise BadInput("form", f"too many fields: at most {MAX_FORM_FIELDS} values besides the files") from None
        if "boundary" in detail.lower():
            raise BadInput("form", "not a multipart/form-data body: its Content-Type names no boundary") from None
        raise BadInput("form", detail) from None
    try:
        yield form
    finally:
        await form.close()


def _check_fields(form: Any, allowed: tuple[str, ...], files: dict[str, str]) -> None:
    """Every field known, given once (but the ones given per style), and a file where a file belongs
    (``files``: field -> what it is, "an image file"), a value elsewhere ("styles": either)."""
    unknown = sorted(set(form.keys()) - set(allowed))
    if unknown:
        raise BadInput(unknown[0], f"unknown field (expected {', '.join(allowed)})")
    items = form.multi_items()
    for name, count in Counter(name for name, _ in items).items():
        if count > 1 and name not in REPEATED_FIELDS:
            raise BadInput(name, f"given {count} times; once only")
    for name, value in items:
        if name in files and not isinstance(value, UploadFile) and value != "":  # "": not given
            raise BadInput(name, f"expected {files[name]}")
        if name not in files and name != "styles" and isinstance(value, UploadFile):
            raise BadInput(name, "expected a value, got a file")


async def _style_options(form: Any, limits: Limits, problems: Problems) -> dict[str, Any]:
    """Styles, weights, alpha and colour mode: what an image and a clip share; their problems kept."""
    styles = form.getlist("styles")
    problems.check(style_count, len(styles), limits, "an image file, or id:NAME for a style of the server's library")
    options: dict[str, Any] = {"styles": [await problems.wait(_style(s, i, limits))
                                          for i, s in enumerate(styles[: limits.max_styles])]}
    if form.getlist("weights"):
        options["weights"] = problems.check(weights, form.getlist("weights"), len(styles))
    if form.get("alpha") not in (None, ""):
        options["alpha"] = problems.check(fraction, form["alpha"], "alpha")
    options["preserve_color"] = problems.check(color, form.get("preserve_color"))
    return options


async def _read_form(form: Any, limits: Limits) -> dict[str, Any]:
    """The client's options from the multipart form; raises BadInput naming the field, with every problem."""
    _check_fields(form, IMAGE_FIELDS, {"content": "an image file", "mask": "an image file", "labels": "an image file"})
    problems = Problems()
    content = form.get("content")
    options: dict[str, Any] = {}
    if not isinstance(content, UploadFile):
        problems.add("content", "a content image file is required")
    else:
        options["content"] = await problems.wait(_image(content, "content", limits))
    options.update(await _style_options(form, limits, problems))
    mask = form.get("mask")
    if isinstance(mask, UploadFile) and (mask.size or mask.filename):
        options["mask"] = await problems.wait(_image(mask, "mask", limits))
    options.update(await _regions(form, len(options["styles"]), limits, problems))
    if not _unset(form.get("refine_steps")):
        options["refine_steps"] = problems.check(whole, form["refine_steps"], "refine_steps", 0,
                                                 ("max_refine_steps", limits.max_refine_steps))
    options.update(_size(form, limits, problems))
    fmt = format_name(form.get("format") or "png")
    if fmt is None:
        problems.add("format", f"must be one of {', '.join(FORMATS)}; got {form.get('format')!r}")
    options["format"] = fmt
    keep = str(form.get("keep_exif") or "0").lower()
    if keep not in ("0", "1", "true", "false", "on", "off"):
        problems.add("keep_exif", f"must be 1 or 0, got {form.get('keep_exif')!r}")
    options["keep_exif"] = keep in ("1", "true", "on")
    problems.raise_any()
    return options


def _unset(text: Any) -> bool:
    """An optional number left out: empty, or 0 however written ("0.0", "00" and "-0" were refused, "must be at
    least 0.001 (or empty: as filmed), got '0.0'", where "0" was taken)."""
    if text in (None, ""):
        return True
    try:
        return float(text) == 0
    except (TypeError, ValueError, OverflowError):
        return False


def _size(form: Any, limits: Limits, problems: Problems) -> dict[str, Any]:
    """``size``, a photo's or a clip's longest side as rendered (0 or empty: as taken; never scaled up)."""
    if _unset(form.get("size")):
        return {}
    return {"content_size": problems.check(whole, form["size"], "size", 16,
                                           ("max_content_side", limits.max_content_side))}


async def _regions(form: Any, styles: int, limits: Limits, problems: Problems) -> dict[str, Any]:
    """Regions painted on the page: a labels image and each style's label (the server checks the rest:
    the image's size against the content, each label painted somewhere)."""
    labels, values = form.get("labels"), form.getlist("label")
    if not isinstance(labels, UploadFile) or not (labels.size or labels.filename):
        if values:
            problems.add("labels", "label values were given without a labels image")
        return {}
    if len(values) != styles:
        problems.add("label", f"{plural(len(values), 'label')} for {plural(styles, 'style')} (one per style)")
    parsed = []
    for i, text in enumerate(values[:styles]):
        digits = str(text).isascii() and str(text).isdigit()  # "²" is a digit to isdigit, and no int
        # (int() of over 4,300 digits raises: a 500, where any number past 255 is refused below)
        value = (label_value(int(text)) if len(text) <= 12 else None) if digits else label_value(str(text).lower())
        if value is None or (digits and value > 255):
            problems.add(f"styles[{i}].label", f"must be a grey level 0-255 or a colour #rrggbb, got {text!r}")
        parsed.append(value)
    return {"labels": await problems.wait(_image(labels, "labels", limits)), "label_values": parsed}


async def _read_video_form(
    form: Any, limits: Limits, folder: Path, max_frames: int
) -> tuple[Path, str, int, dict[str, Any]]:
    """A clip's upload, saved into ``folder`` and checked as a video within the limits (at most ``max_frames``
    frames), and its options: (file, the result's name, its frames, options); raises BadInput naming the field,
    with every problem."""
    _check_fields(form, VIDEO_FIELDS, {"content": "a video file"})
    problems = Problems()
    content = form.get("content")
    clip = None
    if not isinstance(content, UploadFile):
        problems.add("content", "a content video file is required")
    else:
        clip = await problems.wait(_clip(content, folder, limits))
    fps = None
    if not _unset(form.get("fps")):
        fps = problems.check(number, form["fps"], "fps")
        if fps is not None and fps < MIN_FPS:
            problems.add("fps", f"must be at least {MIN_FPS:g} (or empty: as filmed), got {form['fps']!r}")
    start = problems.check(number, form["start"], "start") if form.get("start") not in (None, "") else 0.0
    if start is not None and start < 0:
        problems.add("start", f"must be >= 0 seconds, got {form['start']!r}")
    duration = None
    if not _unset(form.get("duration")):
        duration = problems.check(number, form["duration"], "duration")
        if duration is not None and duration <= 0:
            problems.add("duration", f"must be > 0 seconds (or empty: to the end), got {form['duration']!r}")
    frames = 0
    if clip is not None and not problems.found:  # the frame count needs a readable clip and a good part of it
        info = clip[1]
        if info.duration and start >= info.duration:
            problems.add("start", f"the clip is {info.duration:.1f} s long; {start:g} s is past its end")
        frames = clip_frames(info, fps, start, duration)  # declared, or by the duration (WebM declares none)
        if frames > max_frames and not info.frames:  # a guess from the duration: counted before it refuses
            from adain.media import counted

            frames = clip_frames(await run_in_threadpool(counted, clip[0], info), fps, start, duration)
        if frames > max_frames:
            problems.add("content", f"{frames} frames, over the limit of max_video_frames={max_frames}"
                         + (" (at that frame rate)" if fps else "")
                         + "; take a part of it (start, duration) or fewer frames a second")
    options = await _style_options(form, limits, problems)
    options["max_fps"] = fps
    options["start"], options["duration"] = start, duration
    options["temporal"] = problems.check(temporal, form.get("temporal"))
    options.update(_size(form, limits, problems))
    if clip is not None and not problems.found:  # the result is an MP4: 4:2:0, even sides of 2 px at least
        from adain.image import longest_size  # (as the clip is scaled while it is read)

        w, h = longest_size(clip[1].width, clip[1].height, options.get("content_size"))
        if min(w, h) < 2:
            problems.add("content", f"{w} x {h} frames" + (" at that size" if options.get("content_size") else "")
                         + " are too small for a video (2 x 2 at least)")
    problems.raise_any()
    assert clip is not None and isinstance(content, UploadFile)
    source = clip[0]
    return source, clip_result_name(content.filename), frames, options  # (it goes into Content-Disposition)


async def _clip(content: UploadFile, folder: Path, limits: Limits) -> tuple[Path, Any]:
    """The uploaded clip saved into ``folder``, and what its header says, once it is a video within max_pixels."""
    from adain.media import MediaError, is_media, probe

    source = folder / "upload"
    with source.open("wb") as f:
        await run_in_threadpool(shutil.copyfileobj, content.file, f, 1 << 20)
    if source.stat().st_size == 0:
        raise BadInput("content", "the file is empty")
    try:
        info = await run_in_threadpool(lambda: probe(source) if is_media(source) else None)
    except MediaError as e:  # named as the page names it, not by this server's folder
        raise BadInput("content", str(e).replace(f"{source}: ", "", 1)) from None
    if info is None:
        raise BadInput("content", "not a video this page reads (MP4, MOV, MKV, WebM or an animated GIF)")
    if info.width * info.height > limits.max_pixels:
        raise BadInput("content", f"{info.width} x {info.height} frames are over the limit of "
                       f"max_pixels={limits.max_pixels}")
    return source, info


async def _style(item: Any, i: int, limits: Limits) -> bytes | StyleRef:
    """A style of the form: an uploaded image, or "id:NAME" naming one of the server's library (the server
    says whether it has that name)."""
    if isinstance(item, UploadFile):
        return await _image(item, f"styles[{i}].image", limits, style=True)  # as the server names it
    return style_name(item, f"styles[{i}]")


async def _image(upload: UploadFile, field: str, limits: Limits, style: bool = False) -> bytes:
    """The upload's bytes, checked as :func:`checks.image` checks them (on a worker thread)."""
    return await image_checked(await upload.read(), field, limits, style)
