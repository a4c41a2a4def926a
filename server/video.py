"""StylizeVideo on the server: one VideoStream per call, its frames through the shared batcher.

Frames go through the same dynamic batcher as single images, in order, so a running video never
starves Stylize calls: they queue between its frames. Each stream has at most ``window`` frames being
prepared, rendered or sent at once; the reader stops taking frames off the wire beyond that, so gRPC's
flow control holds the client back (no unbounded buffering). A cancelled or expired call cancels its
reader, withdraws its queued frames and frees its slot at once.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import traceback
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import grpc

from adain.errors import InvalidInputError
from adain.image import encode_image
from adain.job import CheckedJob
from adain.v1 import style_transfer_pb2 as pb
from adain.wire import FORMAT_BY_ENUM, format_cannot_hold

from .batcher import Batcher, ClosedError, DeadlineDropped
from .errors import PlaceClock, ServiceError, Violation, cancelled_soon, smaller_image_advice, work_began
from .metrics import Metrics

log = logging.getLogger("adain.server")


@dataclass(frozen=True)
class VideoLimits:
    max_frames: int  # per stream
    max_streams: int  # at once
    window: int  # frames of one stream in flight
    default_temporal: str  # for streams that ask for TEMPORAL_DEFAULT
    default_strength: float  # for streams that leave temporal_strength unset
    idle_s: float = 60.0  # the longest wait for a client's next frame
    max_reply_bytes: int = 1 << 62  # a frame's reply (the message limit, less room for its other fields)


@dataclass
class _Frame:
    index: int
    ticket: Any  # its place in the batcher's count
    item: Any = None  # the batcher's Item once submitted; None again once rendered
    prepare_ms: float = 0.0


class VideoService:
    """Runs StylizeVideo streams; ``open_stream(job, temporal, strength)`` makes a VideoStream."""

    def __init__(
        self,
        *,
        open_stream: Callable[[CheckedJob, str, float | None], Any],
        batcher: Batcher,
        pool: Executor,
        metrics: Metrics,
        limits: VideoLimits,
    ) -> None:
        self.open_stream = open_stream
        self.batcher = batcher
        self.pool = pool
        self.metrics = metrics
        self.limits = limits
        self.default_temporal = limits.default_temporal
        self.default_strength = limits.default_strength
        self.active = 0
        self.clock = PlaceClock()  # when a refused stream may find a place (its RetryInfo)
        self._ending: set[asyncio.Task] = set()  # calls being ended for not reading (see _end_unread)

    async def run(
        self,
        job: CheckedJob,
        temporal: str,
        strength: float | None,
        fmt: int,
        quality: int,
        requests: AsyncIterator[pb.VideoRequest],
        context: grpc.aio.ServicerContext,
        caller: str = "",
        option_field: Callable[[str], str] = lambda field: "options." + field,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> AsyncIterator[pb.VideoFrame]:
        """The stylized frames of one stream, in order (the options message was read already); ``caller``
        takes turns with the others in the batch queue; ``option_field`` names a problem the library finds in
        the options (a style image, the mask) as the wire does ("options.styles[0].image")."""
        if self.active >= self.limits.max_streams:
            self.metrics.queue_refused.labels("max_video_streams").inc()
            raise ServiceError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self.active} video streams are running, the limit is max_video_streams={self.limits.max_streams}",
                retry_after_s=self.clock.retry_after(),
            )
        self.active += 1
        work_began.set(True)
        place = self.clock.taken()
        self.metrics.video_streams.set(self.active)
        loop = asyncio.get_running_loop()
        remaining = context.time_remaining()
        deadline = time.monotonic() + remaining if remaining is not None and math.isfinite(remaining) else None
        queue: asyncio.Queue[_Frame | BaseException | None] = asyncio.Queue(maxsize=self.limits.window)
        in_flight: list[_Frame] = []
        answered = asyncio.Event()  # set while none of the client's frames is on the server: its idle clock runs
        answered.set()
        ended = asyncio.Event()
        reader: asyncio.Task | None = None
        try:
            try:
                stream = await loop.run_in_executor(self.pool, self.open_stream, job, temporal, strength)
            except InvalidInputError as e:
                raise ServiceError.invalid([Violation(option_field(e.field), e.description)]) from e
            if headers:  # admitted, its styles read: the client may send its frames (see StylizeVideo's handler)
                await context.send_initial_metadata(headers)
            reader = asyncio.create_task(self._read(stream, requests, queue, in_flight, answered, ended, deadline,
                                                    caller, option_field, FORMAT_BY_ENUM[fmt], context.cancelled))
            while True:
                got = await queue.get()
                if got is None:
                    break
                if isinstance(got, BaseException):
                    raise got
                reply = await self._finish(stream, got, fmt, quality, loop)
                # Suspended here while gRPC writes the reply: a client that takes none is held by flow control,
                # and would keep the stream (and its place) for good.
                unread = loop.call_later(self.limits.idle_s, self._end_unread, context, asyncio.current_task())
                try:
                    yield reply
                finally:
                    unread.cancel()
                in_flight.remove(got)
                if not in_flight:  # the client has every reply it waits for: from now on it owes the next frame
                    answered.set()
                self.metrics.video_frames.inc()
        finally:
            got = None  # an error raised from it has this frame (the stream, its last frames) in its traceback
            ended.set()
            if reader is not None:
                reader.cancel()
                while not queue.empty():  # a put waiting on the full window returns, should the cancel be lost
                    queue.get_nowait()
            for frame in in_flight:  # cancelled midway: take our frames out of the queue at once
                if frame.item is not None:
                    self.batcher.withdraw(frame.item)
                frame.ticket.release()
            self.active -= 1
            self.clock.freed(place)
            self.metrics.video_streams.set(self.active)

    def _idle(self, what: str) -> str:
        """Why a stream idle for video_idle_s was ended, ``what`` being the side that stalled."""
        return (f"{what} for {self.limits.idle_s:g} s (video_idle_s): the stream was ended, so that it holds no "
                "place that others wait for")

    def _end_unread(self, context: grpc.aio.ServicerContext, handler: asyncio.Task | None) -> None:
        """End a call whose client has taken no reply for idle_s: its status goes out beside the stuck write
        (the client reads it after the replies it has), then the handler's task is cancelled, out of the write
        that would wait for the client, and the stream's finally frees its place."""
        message = self._idle("the client took no frame")
        self.metrics.video_idle.inc()

        async def end() -> None:
            try:  # returns once the client has read up to the status, which may be never
                await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, message)
            except (grpc.aio.AbortError, asyncio.CancelledError, Exception):  # noqa: BLE001 - it ends the call
                pass

        task = asyncio.ensure_future(end())
        self._ending.add(task)  # a reference until it is done
        task.add_done_callback(self._ending.discard)
        if handler is not None:  # once the status is on its way
            asyncio.get_running_loop().call_later(0.1, handler.cancel)

    async def _read(
        self,
        stream: Any,
        requests: AsyncIterator[pb.VideoRequest],
        queue: asyncio.Queue,
        in_flight: list[_Frame],
        answered: asyncio.Event,
        ended: asyncio.Event,
        deadline: float | None,
        caller: str,
        option_field: Callable[[str], str],
        fmt: str,
        cancelled: Callable[[], bool],
    ) -> None:
        """Take frames off the wire, prepare them in order and queue them for rendering; ``queue``'s bound
        is the window. Ends the queue with None, or with the exception that ends the call; stops once the
        stream has ``ended``. ``answered``: set while none of the stream's frames is on the server (the idle
        clock runs only then). ``cancelled``: whether gRPC has cancelled the call."""
        loop = asyncio.get_running_loop()
        index = 0
        messages = aiter(requests)
        try:
            while True:
                try:  # the end comes as None: every stream's StopAsyncIteration made the cycle said below
                    message = await self._next(messages, answered)
                except Exception as e:
                    # the read's task holds the error, whose traceback holds that frame and this one (the stream,
                    # its last frame): a cycle that only a full collection freed. Its frames' locals go now; their
                    # line numbers stay for the log.
                    traceback.clear_frames(e.__traceback__)
                    raise
                if message is None:
                    break
                if ended.is_set():  # Python 3.11's wait_for returns a message that came as it was cancelled (and
                    return  # the reader went on to render a frame for nobody, or wait on the window for good)
                part = message.WhichOneof("part")
                if part is None:
                    # frames are named by their index in the stream, as the library names a bad frame ("frames[1]")
                    raise ServiceError.invalid([Violation(f"frames[{index}]", f"message {index + 2} of the stream "
                                                                              "carries neither a frame nor options")])
                if part != "frame":
                    raise ServiceError.invalid([Violation("options", "only the first message may carry options")])
                if index >= self.limits.max_frames:
                    raise ServiceError.invalid(
                        [Violation(f"frames[{index}]", f"more than max_video_frames={self.limits.max_frames} frames")]
                    )
                ticket = self.batcher.admit(bounded=False, caller=caller)  # the window bounds a stream's frames
                frame = _Frame(index, ticket)
                in_flight.append(frame)
                answered.clear()
                t0 = time.perf_counter()
                try:
                    prepared = await loop.run_in_executor(self.pool, stream.prepare, message.frame)
                except InvalidInputError as e:  # the frame's own problem, or one of the options' found with it
                    if e.field.startswith("frames["):
                        raise ServiceError.invalid([Violation(e.field, e.description)]) from e
                    # a mask's or labels' size against the frame's: the library's "content" is a stream's frames
                    description = e.description.replace(", content is ", ", frames are ")
                    raise ServiceError.invalid([Violation(option_field(e.field), description)]) from e
                if ended.is_set():  # the call ended as the frame was prepared: its ticket went with the call
                    return
                height, width = prepared.content.shape[2:]  # the output's size (every frame's: checked above)
                if index == 0 and (why := format_cannot_hold(fmt, width, height)):  # said now, not after rendering
                    raise ServiceError.invalid([Violation(option_field("format"), why)])
                frame.prepare_ms = (time.perf_counter() - t0) * 1000
                frame.item = self.batcher.submit(ticket, prepared, prepared.batch_key, deadline)
                await queue.put(frame)  # waits while the window is full
                index += 1
            if deadline is not None and time.monotonic() > deadline - 0.1:  # ended by its deadline, not the caller
                raise ServiceError(grpc.StatusCode.DEADLINE_EXCEEDED, "the stream's deadline passed")
            if index == 0:
                await cancelled_soon(cancelled)  # then logged as the cancel it is
                raise ServiceError.invalid([Violation("frames", "the stream carried no frames")])
            await self._hand(queue, None, ended)
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except ClosedError as e:
            await self._hand(queue, ServiceError(grpc.StatusCode.UNAVAILABLE, str(e)), ended)
        except BaseException as e:  # noqa: BLE001 - handed to the call, which ends with it
            await self._hand(queue, e, ended)

    async def first(self, requests: AsyncIterator[pb.VideoRequest]) -> Any:
        """A stream's first message (None where it ended first), or DEADLINE_EXCEEDED after idle_s: a client that
        opened a stream and never spoke kept a server task for its whole deadline (for ever without one)."""
        owed = asyncio.Event()
        owed.set()
        return await self._next(aiter(requests), owed, "no options came")

    async def _next(self, messages: AsyncIterator[pb.VideoRequest], answered: asyncio.Event,
                    missing: str = "no frame came") -> Any:
        """The client's next message (None at its end), or DEADLINE_EXCEEDED once it has owed one for idle_s:
        the clock runs only while ``answered`` (none of its frames on the server). While the server renders, a
        client that waits for its replies before sending more (a live camera, in lock-step) owes nothing; a
        stream ended while its frames rendered was ended for the server's slowness."""
        read = asyncio.ensure_future(anext(messages, None))
        try:
            if not answered.is_set():
                waiting = asyncio.ensure_future(answered.wait())
                try:
                    await asyncio.wait({read, waiting}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiting.cancel()
            # The clock starts as the last reply went out (frames come only through this reader: none is taken
            # while it waits here, so ``answered`` stays set).
            if not read.done():
                await asyncio.wait({read}, timeout=self.limits.idle_s)
            if not read.done():  # a paused or vanished client
                self.metrics.video_idle.inc()
                raise ServiceError(grpc.StatusCode.DEADLINE_EXCEEDED, self._idle(missing))
            return read.result()
        finally:
            if not read.done():  # cancelled, or ended idle: its read goes with the call
                read.cancel()
            read = None  # (its task holds a failed read's error, whose traceback holds this frame)

    @staticmethod
    async def _hand(queue: asyncio.Queue, last: BaseException | None, ended: asyncio.Event) -> None:
        """The reader's last word to the call, unless the call has ended (nobody reads the queue then): the
        reader's cancellation can be lost (3.11's wait_for swallows one that comes as a message does), and a
        put on a full window then waited for good, the task left pending until the server stopped."""
        if not ended.is_set():
            await queue.put(last)

    async def _finish(
        self, stream: Any, frame: _Frame, fmt: int, quality: int, loop: asyncio.AbstractEventLoop
    ) -> pb.VideoFrame:
        try:
            result = await frame.item.future
        except DeadlineDropped as e:
            raise ServiceError(grpc.StatusCode.DEADLINE_EXCEEDED, str(e)) from e
        except ClosedError as e:  # (a drain sheds single requests, not frames; should one come: retried elsewhere)
            raise ServiceError(grpc.StatusCode.UNAVAILABLE, str(e)) from e
        finally:
            # Resolved: nothing to withdraw, and a failed one's future holds an error whose traceback holds this
            # frame (a cycle, with the stream, until a full collection). A cancelled one may still be queued: the
            # stream's end withdraws it.
            if frame.item.future.done() and not frame.item.future.cancelled():
                frame.item = None
        frame.ticket.release()
        t0 = time.perf_counter()

        def finish_and_encode() -> tuple[Any, bytes]:
            image = stream.finish(frame.index, result.output)
            return image, encode_image(image, FORMAT_BY_ENUM[fmt], quality)

        image, data = await loop.run_in_executor(self.pool, finish_and_encode)
        if len(data) > self.limits.max_reply_bytes:
            raise ServiceError.reply_too_large(
                f"frame {frame.index} is {image.width}x{image.height} as {FORMAT_BY_ENUM[fmt].upper()}", len(data),
                self.limits.max_reply_bytes, smaller_image_advice(FORMAT_BY_ENUM[fmt]))
        return pb.VideoFrame(
            image=data,
            index=frame.index,
            width=image.width,
            height=image.height,
            format=fmt,
            timings=pb.Timings(
                queue_ms=result.queue_ms,
                inference_ms=result.inference_ms,
                prepare_ms=frame.prepare_ms,
                encode_ms=(time.perf_counter() - t0) * 1000,
                batch_size=result.batch_size,
            ),
        )
