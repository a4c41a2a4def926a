"""How a call fails: ServiceError carries the status code, and for INVALID_ARGUMENT the field violations
that go into a google.rpc.BadRequest detail (the grpc-status-details-bin trailer)."""

from __future__ import annotations

import asyncio
import contextvars
import re
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from adain.errors import SHOWN
from adain.wire import REQUEST_ID_KEY, REQUEST_ID_RE, TRACEPARENT_KEY, trace_id_of


@dataclass
class Violation:
    field: str
    description: str

    def __str__(self) -> str:
        return f"{self.field}: {self.description}"


MAX_VIOLATIONS = SHOWN  # the library's bound on the problems one error lists, for the same reason
# A failure's text travels in trailers, twice (grpc-message, percent-encoded, and the details, base64, with the
# violations): gRPC clients refuse metadata over 8 KiB at random and over 16 KiB always, and then see
# RESOURCE_EXHAUSTED "received metadata size exceeds soft limit" instead of the error. These bytes (UTF-8) keep
# the trailers under 7.5 KiB whatever the text (percent-encoded non-ASCII included): three typos of a large
# library's names once made 11.6 KiB.
MAX_MESSAGE_BYTES = 1000
MAX_DESCRIPTION_BYTES = 300
MAX_VIOLATIONS_BYTES = 2000


def clip_bytes(text: str, most: int) -> str:
    """``text`` cut to at most ``most`` bytes of UTF-8, marked with '...' where it was cut."""
    data = text.encode()
    return text if len(data) <= most else data[: most - 3].decode(errors="ignore") + "..."


def release(error: BaseException | None) -> None:
    """Clear the local variables of the finished frames a failed call's exceptions hold (its chain: causes and
    contexts). Exceptions kept alive by a reference cycle (asyncio's futures, a traceback's frame holding its own
    exception) wait for the cyclic collector, and their frames with them: a server refusing a 6000 x 6000
    content for its mask held 137 MB more after each refusal (the decoded content in prepare's frames)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        traceback.clear_frames(error.__traceback__)  # (frames still running are left as they are)
        error = error.__cause__ or error.__context__


class ServiceError(Exception):
    """Ends a call with ``code``; INVALID_ARGUMENT carries google.rpc.BadRequest field violations, and a refusal
    that a later try may pass (a full queue) google.rpc.RetryInfo: ``retry_after_s``, when to try again."""

    def __init__(self, code: grpc.StatusCode, message: str, violations: list[Violation] | None = None,
                 retry_after_s: float | None = None) -> None:
        message = clip_bytes(message, MAX_MESSAGE_BYTES)
        super().__init__(message)
        self.code = code
        self.message = message
        self.violations = violations or []
        self.retry_after_s = retry_after_s

    @classmethod
    def invalid(cls, violations: list[Violation]) -> ServiceError:
        """INVALID_ARGUMENT listing the violations, at most MAX_VIOLATIONS entries in all ("and N more problems"
        the last of them where some are left out) and MAX_VIOLATIONS_BYTES (a request of a million style entries
        once listed each: a 73 MB log line, and a trailer too large to send)."""
        kept: list[Violation] = []
        size = 0
        shown = violations[:MAX_VIOLATIONS] if len(violations) <= MAX_VIOLATIONS else violations[:MAX_VIOLATIONS - 1]
        for v in shown:
            v = Violation(clip_bytes(v.field, 100), clip_bytes(v.description, MAX_DESCRIPTION_BYTES))
            size += len(v.field.encode()) + len(v.description.encode())
            if kept and size > MAX_VIOLATIONS_BYTES:
                break
            kept.append(v)
        if len(kept) < len(violations):
            kept.append(Violation("request", f"and {len(violations) - len(kept)} more problems"))
        return cls(grpc.StatusCode.INVALID_ARGUMENT, "; ".join(str(v) for v in kept), kept)

    @classmethod
    def reply_too_large(cls, what: str, size: int, limit: int, advice: str) -> ServiceError:
        """A reply over the message limit: said before sending, with what to ask for instead (gRPC would
        end the call with a bare "Sent message larger than max", logged here as if it had succeeded). ``limit``
        is :func:`reply_limit`'s; the message names max_message_bytes as GetServerInfo reports it, and the room
        kept from it (a number of its own was taken for a different limit). No RetryInfo: a retry never fits."""
        return cls(grpc.StatusCode.RESOURCE_EXHAUSTED,
                   f"{what}, {size:,} bytes, over the reply limit of {limit:,} bytes (max_message_bytes="
                   f"{limit + REPLY_ROOM:,}, less {REPLY_ROOM:,} kept for the reply's other fields): {advice}")


class PlaceClock:
    """When one of a bounded number of places (a long job's, a video stream's) may be free, for a refusal's
    RetryInfo: the oldest holder's expected end by the mean time places have been held (an average over the
    last few, which move with the load), 1 s at least and 60 at most; 5 s before any place was given back.
    The batcher's estimate is no use here: these places are held for seconds to minutes, outside its batches."""

    DEFAULT_S = 5.0
    SHORTEST_S = 1.0
    LONGEST_S = 60.0

    def __init__(self) -> None:
        self._held: dict[int, float] = {}  # a place's token -> when it was taken (monotonic)
        self._next = 0
        self._mean_s: float | None = None
        self._lock = threading.Lock()  # (long jobs free their places on their threads)

    def taken(self) -> int:
        """A place taken now: the token to give back to :meth:`freed`."""
        with self._lock:
            self._next += 1
            self._held[self._next] = time.monotonic()
            return self._next

    def freed(self, token: int) -> None:
        with self._lock:
            since = self._held.pop(token, None)
            if since is not None:
                held = time.monotonic() - since
                self._mean_s = held if self._mean_s is None else 0.8 * self._mean_s + 0.2 * held

    def retry_after(self) -> float:
        with self._lock:
            if self._mean_s is None or not self._held:
                return self.DEFAULT_S
            left = min(self._held.values()) + self._mean_s - time.monotonic()
            return min(self.LONGEST_S, max(self.SHORTEST_S, left))


# Set once a call's work has begun (it was admitted): a refusal before it is left out of adain_request_seconds, a
# failure after it (a print's reply over the limit, a stream's bad frame after hundreds rendered) is not
work_began: contextvars.ContextVar[bool] = contextvars.ContextVar("work_began", default=False)

REPLY_ROOM = 4096  # bytes of the message limit kept for a reply's fields besides its image


def reply_limit(max_message_bytes: int) -> int:
    """The largest image a reply may carry: the message limit less room for the reply's other fields (no
    limit where the message size has none)."""
    return max_message_bytes - REPLY_ROOM if max_message_bytes else 1 << 62


def smaller_image_advice(fmt: str) -> str:
    """What a caller whose image was over the reply limit as ``fmt`` can ask for instead: JPEG only where it
    asked for PNG (a JPEG is no smaller than a WebP at the same quality, and was what it asked for)."""
    if fmt == "png":
        return "ask for format JPEG or a smaller content_size"
    return "ask for a lower quality or a smaller content_size"  # (the CLI puts its flag for the field's name)


def status_trailers(err: ServiceError) -> tuple[tuple[str, Any], ...]:
    """The grpc-status-details-bin trailer of a rich google.rpc.Status (BadRequest when there are violations)."""
    status = status_pb2.Status(code=err.code.value[0], message=err.message)
    if err.violations:
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                    for v in err.violations
                ]
            )
        )
        status.details.append(detail)
    if err.retry_after_s is not None:  # a client's backoff reads it (gRPC's own retries do not)
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(max(1, round(err.retry_after_s * 1000)))
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        status.details.append(detail)
    assert status.code != code_pb2.OK
    return tuple(rpc_status.to_status(status).trailing_metadata)


def request_id(metadata: Sequence[tuple[str, Any]] | None) -> str:
    """The caller's x-request-id (trimmed to 128 characters), or a new one where there is none or it is not
    printable ASCII without spaces (``REQUEST_ID_RE``): every reply and every failure carries it back."""
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY and isinstance(value, str) and REQUEST_ID_RE.fullmatch(rid := _trimmed(value)):
            return rid
    return str(uuid.uuid4())


def _trimmed(value: str, most: int = 128) -> str:
    """``value`` stripped and cut to ``most`` characters, never inside a percent-escape (the clients encode what
    a header cannot carry: "%C3%A9" cut to "%C3%A" decoded to nothing a log search finds)."""
    rid = value.strip()
    if len(rid) > most:
        rid = rid[:most]
        for back in (1, 2):
            if rid[-back:].startswith("%"):
                rid = rid[:-back]
        if escapes := re.search(r"(?:%[0-9A-Fa-f]{2})+$", rid):  # nor inside a character's bytes ("%C3" of é)
            try:
                bytes.fromhex(escapes.group().replace("%", "")).decode()
            except UnicodeDecodeError as e:
                if e.reason == "unexpected end of data":
                    rid = rid[:escapes.start() + 3 * e.start]
    return rid


def trace_id(metadata: Sequence[tuple[str, Any]] | None) -> str | None:
    """The trace id of a call's W3C ``traceparent`` (what OpenTelemetry's gRPC instrumentation sends), so its log
    line can be found from the caller's trace; None without one (or an all-zero, invalid one)."""
    return next((t for key, value in metadata or () if key == TRACEPARENT_KEY and (t := trace_id_of(value))), None)


async def cancelled_soon(cancelled: Callable[[], bool]) -> bool:
    """Whether a call whose requests ended is cancelled. gRPC ends the requests of a call it cut (a client's
    cancel, a frame over the message limit) a moment before it marks the call cancelled: waited for, so that the
    call is logged as the cancel it is (once, under load, it was logged as an empty stream). An empty stream, a
    client's bug, is told the same 0.25 s later."""
    for _ in range(25):
        if cancelled():
            return True
        await asyncio.sleep(0.01)
    return cancelled()
