"""Each HTTP request's id and its line in the log.

The id is the caller's ``X-Request-Id`` where it is usable (printable ASCII, at most 128 characters: what a gRPC
header carries), else a new UUID; every answer carries it back, refusals the page makes itself included (a photo
it refused as no image answered with none, and nothing in any log said it), the server's call is made under it,
and every log line written while the request runs carries it (``adain.logs.CONTEXT``: a warning from inside a call
named no call), with the trace id of its W3C ``traceparent`` where it sent one (the server's call is made under the
request id, which its line has: the trace leads to the page's line, its request id to the server's). The line a
request ends with (method, path, status, ms, request id, trace id) replaces uvicorn's access
line, which had no id, no duration and, in its own format, no time; the page's progress polls and health probes,
several a second, are written at DEBUG.
"""

from __future__ import annotations

import logging
import time
import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from adain.logs import CONTEXT, log_fields
from adain.wire import REQUEST_ID_RE, trace_id_of

log = logging.getLogger("adain.web.access")
QUIET_ROUTES = ("/api/progress/", "/healthz")  # polled: a line each at DEBUG, not INFO


def request_id(scope: Scope) -> str:
    """The id :class:`RequestIds` gave this request (a handler's, for the server's call)."""
    return scope["state"]["request_id"]


class RequestIds:
    """The ASGI middleware: the id set, echoed and logged (above)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k: v.decode("latin-1") for k, v in scope["headers"] if k in (b"x-request-id", b"traceparent")}
        given = headers.get(b"x-request-id", "")
        rid = given if REQUEST_ID_RE.fullmatch(given) else str(uuid.uuid4())
        trace = trace_id_of(headers.get(b"traceparent"))  # (the server's lines have the request id, not this)
        scope.setdefault("state", {})["request_id"] = rid
        status = [500]

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                answer = MutableHeaders(scope=message)
                if "x-request-id" not in answer:
                    answer.append("X-Request-Id", rid)
            await send(message)

        token = CONTEXT.set({"request_id": rid, **({"trace_id": trace} if trace else {})})
        start = time.perf_counter()
        try:
            await self.app(scope, receive, sending)
        finally:
            CONTEXT.reset(token)
            path = scope.get("path", "")
            level = logging.DEBUG if path.startswith(QUIET_ROUTES) else logging.INFO
            log_fields(log, level, method=scope.get("method"), path=path[:200], status=status[0],
                       ms=round((time.perf_counter() - start) * 1000, 1), request_id=rid, trace_id=trace)
