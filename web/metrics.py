"""adain-web's Prometheus metrics (``--metrics-port``): what someone running the page for the public watches,
on a port of its own (not the page's, so the public never sees them). Requests by route and status and their
time, live camera sessions, clip jobs running, photo calls in progress and the clips' disk use. The server's own
metrics say the rest (queue, inference).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from adain.exporter import Exporter

REFUSED_KEY = "adain.refused"  # set in a WebSocket's scope by the app when it turns the session away: its status
_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class WebMetrics(Exporter):
    def __init__(self) -> None:
        super().__init__()
        r = self.registry
        self.requests = Counter("adain_web_requests", "HTTP requests and WebSocket sessions, by route and status "
                                "(a WebSocket's: \"websocket\")", ["route", "status"], registry=r)
        self.seconds = Histogram("adain_web_request_seconds", "Time per request (a WebSocket: its session), by "
                                 "route", ["route"], buckets=_BUCKETS, registry=r)
        self.live_sessions = Gauge("adain_web_live_sessions", "Live camera sessions open", registry=r)
        self.video_jobs = Gauge("adain_web_video_jobs_running", "Clip jobs stylizing now", registry=r)
        self.photo_calls = Gauge("adain_web_photo_calls", "Photo calls in progress (at most --max-photos)", registry=r)
        self.clip_disk = Gauge("adain_web_clip_disk_bytes", "Clips' files on disk, uploads being read counted at "
                               "their most", registry=r)
        self.clip_disk_budget = Gauge("adain_web_clip_disk_budget_bytes", "--max-disk-mb, in bytes", registry=r)
        # what the log says at most once a minute (anyone can provoke them at will), counted in full
        self.accept_failures = Counter("adain_web_accept_failures", "Connections the page could not take: out of "
                                       "file descriptors (or memory)", registry=r)
        self.over_concurrency = Counter("adain_web_over_concurrency", "Requests answered 503 past "
                                        "--limit-concurrency", registry=r)
        self.slow_heads = Counter("adain_web_slow_heads", "Connections closed for sending no whole request head "
                                  "within --header-timeout-s", registry=r)

    def follow(self, live_sessions: Callable[[], float], video_jobs: Callable[[], float],
               photo_calls: Callable[[], float], clip_disk: Callable[[], float], clip_disk_budget: int) -> None:
        """Read the gauges from the app's own counts at each scrape."""
        self.live_sessions.set_function(live_sessions)
        self.video_jobs.set_function(video_jobs)
        self.photo_calls.set_function(photo_calls)
        self.clip_disk.set_function(clip_disk)
        self.clip_disk_budget.set(clip_disk_budget)


_CONVERTER = re.compile(r"\{(\w+):\w+\}")  # a path parameter's converter, as in {request_id:path}


class MetricsMiddleware:
    """ASGI middleware: count each request by the route it matched (its template, ``/api/videos/{job_id}``,
    so ids make no series of their own) and its status, and time it."""

    def __init__(self, app: ASGIApp, metrics: WebMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        status = ["websocket" if scope["type"] == "websocket" else "500"]

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = str(message["status"])
            await send(message)

        start = time.perf_counter()
        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            # the template without its converters: "/api/progress/{request_id:path}" is the route the alerts leave
            # out as "/api/progress/{request_id}" (counted under the first, a page's polls diluted both web alerts)
            name = _CONVERTER.sub(r"{\1}", getattr(route, "path", None) or "unmatched")
            # a WebSocket turned away (every live session taken) counts as the 429 an HTTP request would get
            self.metrics.requests.labels(name, scope.get(REFUSED_KEY) or status[0]).inc()
            self.metrics.seconds.labels(name).observe(time.perf_counter() - start)
