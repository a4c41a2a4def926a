"""Calls that end before their request message reaches the server's code, and a limit on how long it may take.

gRPC refuses a message over ``grpc.max_receive_message_length`` (``--max-message-mb``) by itself: the client
gets RESOURCE_EXHAUSTED ("Received message larger than max") and no handler runs, so such calls were in
neither the access log nor ``adain_requests_total``: a client sending too large photos was invisible to the
operator. A client that goes away (or whose deadline passes) while sending its message ends the call the same
way, and so does the server's stop. This interceptor sees every call begin; where the call's task ends and its
request was never read, it logs a line with the call's fields and counts ``adain_requests_unread_total``. The
caller is named where a token names it (the peer's address is not known here), and a request id the client did
not send is made up.

gRPC waits for a unary call's message as long as the connection lives, and checks nothing (the token neither)
until it comes: an outside tester held 20,000 streams that sent headers alone on one connection (220 MB kept).
So a unary method is served here as a request stream whose one message is awaited for ``timeout_s`` at most;
past it the call ends with DEADLINE_EXCEEDED and its place is free.

gRPC's ``maximum_concurrent_rpcs`` bounds the calls on the server (their memory), and one caller could take every
place of it. So every call counts for its caller (``who``: the fair queue's caller, a token's name or the peer's
address) while it runs, and a caller with ``max_per_caller`` calls in flight is refused the next at once
(RESOURCE_EXHAUSTED), before its message is read; health checks count apart (HEALTH_PER_CALLER). Calls gRPC
refused over its cap, which had no log line, get one here.

A stream's messages are read by its handler, which logs the call as it ends: only calls with one request
message (every method but StylizeVideo and reflection) are watched.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from .errors import cancelled_soon, request_id, trace_id
from .logs import log_fields

log = logging.getLogger("adain.server")

HEALTH = "/grpc.health.v1.Health/"
# Health checks one caller may have in flight, apart from its other calls: the client's channel holds a Watch
# open on each connection (client-side health checking), and a probe's Check is short; a host running many
# clients behind one address stays under it, one caller opening Watches to fill max_concurrent_rpcs does not.
# 64 refused the 65th channel of one host (a process pool, pods behind one NAT): gRPC marks a connection whose Watch
# is refused unhealthy, and every call on it failed UNAVAILABLE.
HEALTH_PER_CALLER = 1024


async def _replies(out: Any) -> AsyncIterator[Any]:
    """A streaming behaviour's replies, whichever of gRPC's forms it takes."""
    if hasattr(out, "__aiter__"):
        async for reply in out:
            yield reply
    elif inspect.isawaitable(out):  # a handler that writes with context.write
        await out
    else:
        for reply in out:
            yield reply


def _method(details: grpc.HandlerCallDetails) -> str:
    return details.method.rsplit("/", 1)[-1]


class _Call:
    """What one watched call's wrapper learnt about its message."""

    read = False  # the whole message arrived (gRPC deserialized it)
    began = False  # the handler began (gRPC refuses a call over maximum_concurrent_rpcs before it)
    timed_out = False  # it did not arrive within the timeout: the call was ended here
    deadline = False  # the client's deadline passed before it arrived
    gone = False  # the client cancelled (or gRPC ended the call for it: too large a message, bad metadata)
    empty = False  # the client ended its side without a message
    counted: tuple[str, str] | None = None  # the (kind, caller) it counts for (max_per_caller)
    over_share: str | None = None  # refused: its caller had its share in flight (the reason)
    rid: str | None = None  # the request id its refusal sent back (logged under it)
    who: str | None = None  # its caller as the share counts it (a peer's address where no token names it)

    def __init__(self, health: bool = False) -> None:
        self.health = health  # a health check: counted apart (each client channel holds a Watch open)


class UnreadRequests(grpc.aio.ServerInterceptor):
    """Logs and counts (``on_unread(method)``) the calls whose request message never arrived, and ends those whose
    message takes over ``timeout_s`` (0: never); logs and counts (``on_refused(method)``) the calls gRPC refused
    over ``max_calls`` (its maximum_concurrent_rpcs; they had no line). ``caller(metadata)`` names the caller
    where it can (a token's name); ``stopping()`` says the server is cutting calls short."""

    def __init__(
        self,
        max_message_bytes: int,
        on_unread: Callable[[str], None] = lambda method: None,
        *,
        on_refused: Callable[[str, str], None] = lambda method, reason: None,
        caller: Callable[[Any], str | None] = lambda metadata: None,
        stopping: Callable[[], bool] = lambda: False,
        timeout_s: float = 0,
        max_calls: int = 0,
        who: Callable[[grpc.aio.ServicerContext], str] | None = None,
        max_per_caller: int = 0,
        reply_ids: Callable[[str], Any] = lambda rid: (),
    ) -> None:
        self.max_message_bytes = max_message_bytes
        self.on_unread = on_unread
        self.on_refused = on_refused
        self.caller = caller
        self.stopping = stopping
        self.timeout_s = timeout_s
        self.max_calls = max_calls
        self.who = who
        self.max_per_caller = max_per_caller
        self.reply_ids = reply_ids  # a refusal's trailing metadata (x-request-id, x-served-by), as every reply's
        self._calls: dict[tuple[str, str], int] = {}  # calls in flight by (HEALTH or "", who(context))

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Any], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = await continuation(details)
        task = asyncio.current_task()  # the call's own task: it ends with the call
        if handler is None or task is None:
            return handler
        call = _Call(health=details.method.startswith(HEALTH))
        if handler.request_streaming:  # a stream reads its own messages: counted for its caller alone
            if self.who is None or not self.max_per_caller:
                return handler
            task.add_done_callback(lambda _: self._ended_stream(call, details))
            return self._counted(handler, call)
        parse = handler.request_deserializer

        def deserialize(data: bytes) -> Any:  # called once the whole message has arrived
            call.read = True
            return parse(data) if parse is not None else data

        start = time.perf_counter()

        def ended(_: asyncio.Task) -> None:
            if call.counted is not None:
                self._release(call.counted)
            if call.read:
                return
            ms = round((time.perf_counter() - start) * 1000, 1)
            if call.over_share is not None:
                self._refused(details, call, "max_calls_per_caller", call.over_share, ms=ms)
            elif not call.began and not self.stopping():  # gRPC's own refusal, over maximum_concurrent_rpcs
                self._refused(details, call, "max_concurrent_rpcs", f"over max_concurrent_rpcs={self.max_calls} calls "
                              "at once on this server (gRPC refused it before its handler began)", ms=ms)
            else:
                self.on_unread(_method(details))
                self._said(details, call, f"the request message never arrived: {self._why(call)}", outcome="unread",
                           ms=ms)

        task.add_done_callback(ended)
        return self._streamed(handler, call)._replace(request_deserializer=deserialize)

    def _ended_stream(self, call: _Call, details: grpc.HandlerCallDetails) -> None:
        if call.counted is not None:
            self._release(call.counted)
        if call.over_share is not None:  # its handler never ran: no line of its own
            self._refused(details, call, "max_calls_per_caller", call.over_share)

    def _refused(self, details: grpc.HandlerCallDetails, call: _Call, reason: str, detail: str, **more: Any) -> None:
        """A call refused over a limit (``reason``, the metric's): counted, and its line logged."""
        self.on_refused(_method(details), reason)
        self._said(details, call, detail, code="RESOURCE_EXHAUSTED", **more)

    def _said(self, details: grpc.HandlerCallDetails, call: _Call, detail: str, **outcome: Any) -> None:
        """The access log's line of a call the handler never logged (its fields as the handler's line has them)."""
        metadata = details.invocation_metadata
        log_fields(log, logging.INFO, request_id=call.rid or request_id(metadata), method=_method(details), **outcome,
                   caller=self.caller(metadata) or call.who, trace_id=trace_id(metadata), detail=detail)

    def _counted(self, handler: Any, call: _Call) -> Any:
        """``handler`` (a request stream) counted for its caller as it begins, or refused over its share."""
        if handler.response_streaming:
            streams = handler.stream_stream

            async def stream_stream(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
                await self._admit(context, call)
                async for reply in _replies(streams(requests, context)):
                    yield reply

            return handler._replace(stream_stream=stream_stream)
        unary = handler.stream_unary

        async def stream_unary(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            await self._admit(context, call)
            reply = unary(requests, context)
            return await reply if inspect.isawaitable(reply) else reply

        return handler._replace(stream_unary=stream_unary)

    def _why(self, call: _Call) -> str:
        """What can be known of why: gRPC ends a call whose message is over the limit, or whose client left or
        whose metadata it refused, in one way, and tells its handler none of it."""
        if self.stopping():
            return "the server stopped while it arrived"
        if call.timed_out:
            return (f"not all of it within {self.timeout_s:g} s (message_timeout_s; the call was ended with "
                    "DEADLINE_EXCEEDED)")
        if call.deadline:
            return "the client's deadline passed while it was sent"
        if call.empty:
            return "the client ended the call's request side without one (INTERNAL)"
        return (f"gRPC ended the call first: the message was over the limit of {self.max_message_bytes} bytes "
                "(max_message_bytes; gRPC answered RESOURCE_EXHAUSTED), or the client went away, or gRPC refused "
                "its metadata (gRPC does not say which)")

    def _streamed(self, handler: Any, call: _Call) -> Any:
        """``handler`` (a unary request) as a request-streaming handler: its behaviour gets the first message, awaited
        for the timeout at most. The wire is the same (the client sends one message either way)."""
        if handler.response_streaming:
            behaviour = handler.unary_stream

            async def stream_stream(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
                async for reply in _replies(behaviour(await self._first(requests, context, call), context)):
                    yield reply

            return handler._replace(request_streaming=True, unary_stream=None, stream_stream=stream_stream)
        unary = handler.unary_unary

        async def stream_unary(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            reply = unary(await self._first(requests, context, call), context)
            return await reply if inspect.isawaitable(reply) else reply

        return handler._replace(request_streaming=True, unary_unary=None, stream_unary=stream_unary)

    async def _first(self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext, call: _Call) -> Any:
        """The call's one request message; the call ends (abort) where it does not come within the timeout."""
        call.began = True
        await self._admit(context, call)
        read = asyncio.ensure_future(requests.__aiter__().__anext__())
        try:
            done, _ = await asyncio.wait({read}, timeout=self.timeout_s or None)
        except asyncio.CancelledError:  # gRPC ended the call
            read.cancel()
            self._ended(context, call)
            raise
        if not done:
            read.cancel()
            call.timed_out = True
            self._say_ids(context, call)
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                f"the request message did not arrive within {self.timeout_s:g} s of the call's start "
                                "(message_timeout_s)")
        try:
            return read.result()
        except StopAsyncIteration:
            # gRPC ends a cut call's requests a moment before it marks it cancelled (a client's cancel was logged
            # as a call that ended without its message, one time in four)
            if self._ended(context, call) or await cancelled_soon(context.cancelled):
                call.gone = True
                raise asyncio.CancelledError from None
            call.empty = True
            self._say_ids(context, call)
            await context.abort(grpc.StatusCode.INTERNAL, "the call's request side ended without a request message")

    async def _admit(self, context: grpc.aio.ServicerContext, call: _Call) -> None:
        """Count the call for its caller, or end it (RESOURCE_EXHAUSTED) where the caller has its share in flight
        already: without a share one caller's streams that never sent their message, or whose replies it never
        read, took every place of max_concurrent_rpcs, and every other caller was refused."""
        if self.who is None or not self.max_per_caller:
            return
        name = call.who = self.who(context)
        key, most = ((HEALTH, name), HEALTH_PER_CALLER) if call.health else (("", name), self.max_per_caller)
        held = self._calls.get(key, 0)
        if held >= most:
            what = (f"health checks in flight, its most ({most})" if call.health else
                    f"calls in flight on this server, its most (max_calls_per_caller={most})")
            call.over_share = f"this caller ({name}) has {held} {what}; retry as one ends"
            self._say_ids(context, call)
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, call.over_share)
        self._calls[key] = held + 1
        call.counted = key

    def _say_ids(self, context: grpc.aio.ServicerContext, call: _Call) -> None:
        """A refusal made here carries the call's request id and the replica back, as every reply does (they came
        without: the caller could not find the line the server logged them under)."""
        call.rid = request_id(context.invocation_metadata())
        context.set_trailing_metadata(tuple(self.reply_ids(call.rid)))

    def _release(self, key: tuple[str, str]) -> None:
        left = self._calls[key] - 1
        if left:
            self._calls[key] = left
        else:
            del self._calls[key]  # a long-lived server keeps no entry for every caller it ever saw

    @staticmethod
    def _ended(context: grpc.aio.ServicerContext, call: _Call) -> bool:
        """Whether gRPC ended the call (its deadline passed, or it was cancelled), noting which."""
        remaining = context.time_remaining()
        call.deadline = remaining is not None and remaining <= 0
        call.gone = call.deadline or context.cancelled()
        return call.gone
