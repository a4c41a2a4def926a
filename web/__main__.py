"""``adain-web`` / ``python -m adain.web``: serve the page and the HTTP API in front of adain-server."""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from adain.argtypes import OneLineParser, float_in_range, int_in_range, positive_float, positive_int
from adain.client.cli import (
    CliError,
    add_connection_args,
    add_local_arg,
    connect,
    local_conflicts,
    served,
    timeout_of,
)
from adain.commands import Terminated, add_version_arg, on_signals, on_sigterm
from adain.files import temp_fallback, temp_problem
from adain.logs import FORMATS, announce, say
from adain.logs import setup as log_setup
from adain.wire import bare_host, host_port

if TYPE_CHECKING:
    from adain.client import StyleTransferClient

log = logging.getLogger("adain.web")
START_HEALTH_TIMEOUT_S = 5.0  # the one look at the server at start (in a thread: the page starts meanwhile)


# The upload is sent as one message, on a channel whose limit is an int32 of bytes with 10% and 1 MiB to spare
MAX_UPLOAD_MB = 1800
THROTTLE_S = 60.0  # a log line anyone can provoke at will is let through once in this long, the rest counted
CUT_SAY_S = 1.0  # after the grace: how long the calls it cut may take to answer 503 or say so in the log
# asyncio's words (logged, with a traceback, for each connection it cannot take) once file descriptors run out:
# ~20,000 a second, 480 MB of log a minute, filling a pod's disk; and uvicorn's for each --limit-concurrency 503
ACCEPT_FAILED = "socket.accept() out of system resource"
OVER_CONCURRENCY = "Exceeded concurrency limit."


def _origin(text: str) -> str:
    """A site as browsers send it in Origin: scheme://host[:port], nothing after ("example.org" never matched)."""
    if not re.fullmatch(r"https?://[^/\s]+", text.rstrip("/")):
        raise argparse.ArgumentTypeError(f"an origin is scheme://host[:port], as a browser sends it (e.g. "
                                         f"https://example.org), got {text!r}")
    return text


def _host_name(text: str) -> str:
    """A name the page answers to in Host: a name or address, with a port or without, no scheme or path."""
    if not text or "/" in text or any(c.isspace() for c in text):
        raise argparse.ArgumentTypeError(f"a host name (e.g. styles.example.org), no scheme or path, got {text!r}")
    return text


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = OneLineParser(prog="adain-web", description=(__doc__ or "").replace("``", ""))  # (reST quotes, in --help)
    add_version_arg(p, "adain-web")
    add_connection_args(p)
    add_local_arg(p)
    # (uvicorn takes an IPv6 address without brackets: "[::]", as the manifest said to give it, was "Name or
    # service not known")
    p.add_argument("--host", type=bare_host, default="127.0.0.1", help="address to listen on (default 127.0.0.1: "
                   "this machine only; 0.0.0.0 for every interface, :: for every IPv6 one, [::] alike)")
    p.add_argument("--port", type=int_in_range(1, 65535), default=8080, help="HTTP port (default 8080)")
    p.add_argument("--max-upload-mb", type=float_in_range(0, MAX_UPLOAD_MB), default=20.0, metavar="MiB",
                   help=f"largest request body (content, styles and mask together), MiB (default 20, at most "
                   f"{MAX_UPLOAD_MB:g}: it goes to the server as one gRPC message)")
    p.add_argument("--max-video-mb", type=positive_float, default=200.0, metavar="MiB",
                   help="largest clip upload (with its styles), MiB (default 200)")
    p.add_argument("--max-video-frames", type=positive_int, default=900,
                   help="most frames a clip may have (default 900: 30 s at 30 fps); the server's own limit holds too")
    p.add_argument("--max-photos", type=positive_int, default=16, metavar="N",
                   help="photo calls at once (default 16; each holds its upload, up to --max-upload-mb, on the "
                   "temporary folder's disk for its whole call, and about 3 times it in memory as it is sent: "
                   "~60 MiB at 20 MiB); more get 429 before their upload is read")
    p.add_argument("--max-disk-mb", type=positive_float, default=2048.0, metavar="MiB",
                   help="disk space for clips' uploads and results (default 2048; an upload counts as twice "
                   "--max-video-mb, as it is spooled, then copied): the oldest finished clips go first to make "
                   "room, then uploads wait (429) and a clip outgrowing it fails; keep it under the temporary "
                   "folder's size (a pod's emptyDir sizeLimit)")
    p.add_argument("--upload-idle-s", type=positive_float, default=30.0, metavar="S",
                   help="an upload that sends nothing for this long, or that comes slower than 256 kB/s on average "
                   "past 2 minutes, is refused (400, not 408, which browsers send again unasked) and its place freed "
                   "(default 30)")
    p.add_argument("--max-video-jobs", type=positive_int, default=1,
                   help="clips stylized at once (default 1); more get 429 and try again")
    p.add_argument("--video-abandon-s", type=positive_float, default=300.0, metavar="S",
                   help="cancel a running clip nobody has asked about for this long (default 300; the page asks "
                   "every second)")
    p.add_argument("--max-live", type=positive_int, default=2, metavar="N",
                   help="live camera sessions at once (default 2; each holds one of the server's video streams)")
    p.add_argument("--live-max-s", type=positive_float, default=300.0, metavar="S",
                   help="longest live camera session, seconds (default 300: a forgotten tab lets go)")
    p.add_argument("--live-idle-s", type=positive_float, default=30.0, metavar="S",
                   help="end a live camera session whose page sends nothing (or whose server sends no frame back) "
                   "for this long, seconds (default 30)")
    p.add_argument("--header-timeout-s", type=positive_float, default=20.0, metavar="S",
                   help="close a connection that has not sent a whole request head (its line and headers) this "
                   "long after it opened or after its last answer (default 20; uvicorn has no such limit: slow "
                   "headers held connections, and file descriptors, for good)")
    p.add_argument("--grace-seconds", type=positive_float, default=20.0, metavar="S",
                   help="on SIGTERM, how long requests in flight (a photo's call) may still take before they are cut "
                   "(default 20: a Kubernetes pod's 30 s grace period less its preStop wait; it was 10, whatever "
                   "the pod allowed, and a large photo was cut with a plain 500); clip jobs are cancelled at once")
    p.add_argument("--limit-concurrency", type=int_in_range(0, 1_000_000), default=0, metavar="N",
                   help="connections at once, idle ones included (uvicorn counts them so), past which a request gets "
                   "503 (default 0: no limit; a limit of a few hundred let ~200 empty connections, reopened every "
                   "--header-timeout-s, turn every visitor away: bound connections per address in the proxy)")
    p.add_argument("--forwarded-for", action="store_true",
                   help="behind a reverse proxy: a page's visitor is the last X-Forwarded-For address, not the "
                   "proxy's (the server gives each visitor a turn where adain-web's token is marked front); a "
                   "value that is no IP address counts as the proxy's own")
    p.add_argument("--allowed-origin", action="append", type=_origin, default=[], metavar="ORIGIN",
                   help="another site (https://example.org) whose pages may call this API from a browser; by "
                   "default only this page may (repeat for more)")
    p.add_argument("--allowed-host", action="append", type=_host_name, default=None, metavar="NAME",
                   help="a name this page answers to in a request's Host (repeat for more). Listening on loopback "
                   "(the default --host) it answers to its addresses and localhost alone, so that another site "
                   "whose name is made to resolve here (DNS rebinding) is refused; listening elsewhere, to any "
                   "name unless this is given (give the names it is served by)")
    p.add_argument("--metrics-port", type=int_in_range(0, 65535), default=0, metavar="PORT",
                   help="serve Prometheus metrics (requests by route and status, live sessions, clip jobs) on this "
                   "port of --host (default 0: none; a port of its own, so the public never sees them)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                   help="the page's log and uvicorn's (default info: a line a request, its id, status and ms)")
    p.add_argument("--log-format", default="text", choices=FORMATS,
                   help="text (a line for a person) or json (an object a line, as adain-server --log-format json "
                   "writes: time in UTC, level, logger, message, and a request's fields: request_id, method, path, "
                   "status, ms)")
    args = p.parse_args(argv)
    args.local_given = local_conflicts(p, sys.argv[1:] if argv is None else argv)
    return args


class Throttle(logging.Filter):
    """Lets through one record a ``every_s`` whose message starts with ``prefix`` (the next one that passes says
    how many were held back), and calls ``counted`` for each: a line anyone can provoke at will must not fill the
    disk. Other records pass untouched."""

    def __init__(self, prefix: str, every_s: float = THROTTLE_S, counted: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.prefix, self.every_s, self.counted = prefix, every_s, counted
        self.last, self.held = -float("inf"), 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not (isinstance(record.msg, str) and record.msg.startswith(self.prefix)):
            return True
        if self.counted is not None:
            self.counted()
        now = time.monotonic()
        if now - self.last < self.every_s:
            self.held += 1
            return False
        first, _, rest = record.msg.partition("\n")
        record.msg = "\n".join([f"{first} (logged at most once in {self.every_s:g} s; {self.held} held back "
                                 "before this one)", *([rest] if rest else [])])
        self.last, self.held = now, 0
        return True


class CutWhileStopping(logging.Filter):
    """Drops uvicorn's ERROR for an answer cut short once the page is stopping: GraceEnd has said which call's
    answer the grace's end cut, at WARNING, and an ERROR in a routine rollout reads as a bug (RUNBOOK)."""

    SAID = "ASGI callable returned without completing response."

    def __init__(self, stopping: object) -> None:
        super().__init__()
        self.stopping = stopping

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == self.SAID and getattr(self.stopping, "began", False))


def _say(kind: str, message: str) -> None:
    """A start-up line ("error" or "warning"), plain or JSON as the log is (adain.logs.say)."""
    say(log, "adain-web", kind, message)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    log_setup(args.log_level, args.log_format, force=False)  # (as its basicConfig did: a test's process keeps its own)
    if args.max_disk_mb < 2 * args.max_video_mb:
        _say("error", f"--max-disk-mb {args.max_disk_mb:g} is under twice --max-video-mb ({args.max_video_mb:g}): no "
             "clip upload would fit (it is spooled, then copied)")
        return 2
    # before anything listens, and before --local starts a server: a taken --port failed in uvicorn after the
    # URL line had been printed
    if no_temp := temp_problem():  # large uploads and every clip are spooled there: it passed its probes, then 500s
        _say("error", f"{no_temp}; the page needs one (uploads over 1 MB and clips are written there)")
        return 2
    if fallback := temp_fallback():
        _say("warning", fallback)
    if problem := cannot_listen(args.host, args.port):
        _say("error", f"cannot listen on {host_port(args.host, args.port)}: {problem}")
        return 2
    # --local: SIGTERM unwinds as Ctrl-C does (uvicorn raises it again after its graceful stop), so the server of
    # the page's own is stopped and its folder removed (exit 143); without --local the signal ends it as before
    main_thread = threading.current_thread() is threading.main_thread()
    previous = on_signals({signal.SIGTERM: on_sigterm}) if args.local and main_thread else {}
    try:
        with served(args, args.local_given, prog="adain-web", front=True):
            return _serve(args)
    except CliError as e:  # --local's, or a --server gRPC would misread (http://..., no port): the client's check
        _say("error", str(e))
        return 2
    except Terminated:
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:  # Ctrl-C while --local's server starts (uvicorn's own is caught in _serve)
        _say("error", "interrupted")
        return 130
    finally:
        on_signals(previous)


def _serve(args: argparse.Namespace) -> int:
    """The page in front of ``args.server``, until it is stopped."""
    import uvicorn

    from .app import WebSettings, create_app
    from .checks import BACKEND_FAILED
    from .live import LiveSettings
    from .metrics import WebMetrics

    max_message_mb = max(args.max_upload_mb * 1.1 + 1, 64)  # a whole upload fits in one request
    with connect(args, max_message_mb=max_message_mb) as client:
        settings = WebSettings(max_upload_bytes=int(args.max_upload_mb * 2**20), timeout=timeout_of(args),
                               max_video_bytes=int(args.max_video_mb * 2**20), max_video_frames=args.max_video_frames,
                               max_video_jobs=args.max_video_jobs, video_abandon_s=args.video_abandon_s,
                               max_disk_bytes=int(args.max_disk_mb * 2**20), max_photo_calls=args.max_photos,
                               live=LiveSettings(max_sessions=args.max_live, max_seconds=args.live_max_s,
                                                 idle_seconds=args.live_idle_s),
                               forwarded_for=args.forwarded_for, allowed_origins=tuple(args.allowed_origin),
                               allowed_hosts=None if args.allowed_host is None else tuple(args.allowed_host),
                               listen_host=args.host, upload_idle_s=args.upload_idle_s)
        metrics = WebMetrics() if args.metrics_port > 0 else None
        app = create_app(client, settings, metrics)
        if metrics is not None:
            try:
                metrics.serve(args.host, args.metrics_port)
            except OSError as e:
                _say("error", str(e))
                return 2
        # Not an error: the server may start later (the page answers 503 until then), but say so, and why.
        threading.Thread(target=_look_at_server, args=(client, args.server, settings.max_upload_bytes),
                         name="server-check", daemon=True).start()
        # proxy_headers off: uvicorn's default takes X-Forwarded-For from a peer at 127.0.0.1 as the client's
        # address, so any local process could name the visitor; --forwarded-for is the one switch for that.
        # No "server: uvicorn": a tester's first step is to look up what it runs.
        # log_config None: uvicorn's lines go through this process's handler (its own had no time, and no JSON);
        # its access line is replaced by the page's own (web.access: the request's id, status and ms)
        config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level, log_config=None,
                                access_log=False,
                                timeout_graceful_shutdown=args.grace_seconds, proxy_headers=False, server_header=False,
                                limit_concurrency=args.limit_concurrency or None,
                                http=_head_timeout_protocol(args.header_timeout_s,
                                                            metrics.slow_heads.inc if metrics else None))
        # added after Config, which sets up uvicorn's logging (dictConfig keeps filters already there, too)
        logging.getLogger("asyncio").addFilter(
            Throttle(ACCEPT_FAILED, counted=metrics.accept_failures.inc if metrics else None))
        logging.getLogger("uvicorn.error").addFilter(
            Throttle(OVER_CONCURRENCY, counted=metrics.over_concurrency.inc if metrics else None))
        logging.getLogger("uvicorn.error").addFilter(CutWhileStopping(app.state.stopping))
        # python-multipart says each malformed body at WARNING as it raises (answered 400 and counted): one line a
        # request at any visitor's will (a property tour's made 176), let through once a minute
        logging.getLogger("python_multipart.multipart").addFilter(Throttle(""))
        # a failed server call's line, at every visitor's call while the server is out (three in 6 s in an SRE tour):
        # once a minute, as /healthz's; each call's own line (web.access: its status, its request id) still says it
        logging.getLogger("adain.web").addFilter(Throttle(BACKEND_FAILED))
        server = _server_class()(config, f"adain-web: http://{host_port(args.host, args.port)}/ (server {args.server})")
        try:
            server.run()
        except Terminated:  # --local's SIGTERM, raised again by uvicorn after its graceful stop: exit 143
            raise
        except KeyboardInterrupt:
            pass
        except SystemExit:  # uvicorn's start exits 1 where it cannot bind (a port taken since the check)
            if server.started:
                raise
        if not server.started:  # uvicorn's own start failed (a port taken since the check): it said why
            return 3
    return 0


def cannot_listen(host: str, port: int) -> str | None:
    """Why uvicorn could not listen on ``host``:``port`` (as asyncio binds: each address the name resolves to,
    SO_REUSEADDR, IPv6 sockets v6-only; an address family the machine lacks is skipped), or None. A probe: the
    socket is closed again; a port taken between this and uvicorn's start is uvicorn's own error."""
    try:
        infos = socket.getaddrinfo(host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    except (OSError, UnicodeError) as e:  # no such name; a malformed one
        return getattr(e, "strerror", None) or str(e)
    for family, kind, proto, _name, address in dict.fromkeys(infos):
        try:
            probe = socket.socket(family, kind, proto)
        except OSError:  # a family this kernel lacks (IPv6 off, ::1 in /etc/hosts): asyncio skips it too
            continue
        try:
            with probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                probe.bind(address)
        except OSError as e:
            if e.errno != errno.EADDRNOTAVAIL:  # asyncio skips those (a family not enabled here)
                return e.strerror or str(e)
    return None


def _look_at_server(client: StyleTransferClient, target: str, max_upload_bytes: int) -> None:
    """One health check at start, logged: an address that answers nothing (a typo'd port, a server not up
    yet) was seen only after a first call, as "not available right now". And its message limit: uploads
    between it and --max-upload-mb are refused by the server (413), which the operator should hear of first."""
    from adain.client import StyleTransferError

    try:
        status = client.health(timeout=START_HEALTH_TIMEOUT_S)
        limit = client.server_info(timeout=START_HEALTH_TIMEOUT_S)["limits"].get("max_message_bytes", 0)
    except StyleTransferError as e:
        log.warning("the server %s does not answer (%s: %s); the page answers 503 until it does", target,
                    e.code.name, e.details)
        return
    log.info("the server %s answers: %s", target, status)
    if limit and max_upload_bytes > limit:
        log.warning("--max-upload-mb %g is above the server's message limit (adain-server --max-message-mb %g): "
                    "uploads between the two are refused (413)", max_upload_bytes / 2**20, limit / 2**20)


def _head_timeout_protocol(timeout_s: float, closed: Callable[[], None] | None) -> type:
    """uvicorn's h11 protocol, closing a connection that has not sent a whole request head ``timeout_s`` after it
    opened or after its last answer (``closed`` is called for each). uvicorn times out neither (only the idle
    keep-alive, once an answer has gone): a connection sending a header line every few seconds, or nothing,
    was held for good, until file descriptors ran out and the page took no connection at all."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeadTimeout(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(timeout_s, self._head_late)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():  # the next request's head has its time from now
                self._arm()

        def handle_websocket_upgrade(self, event: Any) -> None:
            self._disarm()  # the WebSocket's own protocol has the connection now (the live camera times it)
            super().handle_websocket_upgrade(event)

        def _head_late(self) -> None:
            self._head_timer = None
            # IDLE: h11 has no request head of the peer's (a request being read or answered is past it)
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                if closed is not None:
                    closed()
                self.transport.close()

    return HeadTimeout


def _server_class() -> type:
    """uvicorn.Server with the URL line (a class made here: uvicorn is imported lazily, as the app is)."""
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, printing the page's URL once it listens (before, a taken port failed after the
        line had invited the user to open another process's page)."""

        def __init__(self, config: uvicorn.Config, line: str) -> None:
            super().__init__(config)
            self.line = line

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:  # (a JSON object where the log is JSON: a pipeline read the plain line as unparsed text)
                announce(log, self.line, sys.stderr)

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            """The page's own stop first (clips end at once: ``app.state.begin_stop``), then uvicorn's grace; then
            a moment for the calls the grace's end cancelled to say so (GraceEnd: a 503, a line in the log), which
            uvicorn does not wait for: the process could end first."""
            begin_stop = getattr(getattr(self.config.app, "state", None), "begin_stop", None)
            if begin_stop is not None:
                begin_stop()
            await super().shutdown(sockets)
            if not self.force_exit and (cut := [t for t in self.server_state.tasks if not t.done()]):  # (a second
                await asyncio.wait(cut, timeout=CUT_SAY_S)  # Ctrl-C: at once)

    return Server


if __name__ == "__main__":
    sys.exit(main())
