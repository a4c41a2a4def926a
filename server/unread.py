"""Calls that end before their request message reaches the server's code.

gRPC refuses a message over ``grpc.max_receive_message_length`` (``--max-message-mb``) by itself: the client
gets RESOURCE_EXHAUSTED ("Received message larger than max") and no handler runs, so such calls were in
neither the access log nor ``adain_requests_total``: a client sending too large photos was invisible to the
operator. A client that goes away (or whose deadline passes) while sending its message ends the call the same
way, and so does the server's stop. This interceptor sees every call begin; where the call's task ends and its
request was never read, it logs a line with the call's fields and counts ``adain_requests_unread_total``. gRPC
does not say which it was; the caller is named where a token names it (the peer's address is not known here),
and a request id the client did not send is made up.

A stream's messages are read by its handler, which logs the call as it ends: only calls with one request
message (every method but StylizeVideo and reflection) are watched.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import grpc

from .errors import request_id, trace_id
from .logs import log_fields

log = logging.getLogger("adain.server")


class UnreadRequests(grpc.aio.ServerInterceptor):
    """Logs and counts (``on_unread(method)``) the calls whose request message never arrived. ``caller(metadata)``
    names the caller where it can (a token's name); ``stopping()`` says the server is cutting calls short."""

    def __init__(
        self,
        max_message_bytes: int,
        on_unread: Callable[[str], None] = lambda method: None,
        *,
        caller: Callable[[Any], str | None] = lambda metadata: None,
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        self.max_message_bytes = max_message_bytes
        self.on_unread = on_unread
        self.caller = caller
        self.stopping = stopping

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Any], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = await continuation(details)
        task = asyncio.current_task()  # the call's own task: it ends with the call
        if handler is None or handler.request_streaming or task is None:
            return handler
        read = False
        parse = handler.request_deserializer

        def deserialize(data: bytes) -> Any:  # called once the whole message has arrived
            nonlocal read
            read = True
            return parse(data) if parse is not None else data

        start = time.perf_counter()

        def ended(_: asyncio.Task) -> None:
            if read:
                return
            method = details.method.rsplit("/", 1)[-1]
            self.on_unread(method)
            metadata = details.invocation_metadata
            why = ("the server stopped while it arrived" if self.stopping() else
                   f"over the limit of {self.max_message_bytes} bytes (max_message_bytes; gRPC answered "
                   "RESOURCE_EXHAUSTED), or the client went away or its deadline passed while it was sent")
            log_fields(log, logging.INFO, request_id=request_id(metadata), method=method, outcome="unread",
                       ms=round((time.perf_counter() - start) * 1000, 1), caller=self.caller(metadata),
                       trace_id=trace_id(metadata), detail=f"the request message never arrived: {why}")

        task.add_done_callback(ended)
        return handler._replace(request_deserializer=deserialize)
