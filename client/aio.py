"""The asyncio client: :class:`StyleTransferClient`'s calls as coroutines, for services built on asyncio
(FastAPI, aiohttp, grpc.aio). No torch.

    from adain.client.aio import AsyncStyleTransferClient

    async with AsyncStyleTransferClient("127.0.0.1:50051") as client:
        result = await client.stylize("photo.jpg", "starry.jpg", alpha=0.8)
        results = await asyncio.gather(*(client.stylize(p, "starry.jpg") for p in photos))

It shares the blocking client's channel settings (balancing, health checking, retries, TLS, tokens),
requests, results and errors (:class:`StyleTransferError`); only the transport differs (grpc.aio). Reading
files and encoding images happen on a worker thread, so a call never blocks the event loop on them.
Cancelling the task that awaits a call cancels the call on the server too (a queued request leaves the
queue, a refine stops).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import sys
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Sequence,
)
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from adain.v1 import style_transfer_pb2 as pb
from adain.wire import SERVICE_NAME

from ._client import (
    FEATURES_ASK_S,
    ImageInput,
    LibraryPreset,
    LibraryStyle,
    RefineProgress,
    Styles,
    StyleTransferError,
    StylizeOptions,
    StylizeResult,
    VideoFrameResult,
    VideoStreamOptions,
    _ClientBase,
    _frames_not_a_file,
    _no_library,
    _no_result,
    _progress,
    _rpc_error,
    _uint,
    frame_result,
    image_bytes,
    library_presets,
    library_styles,
    needed_features,
    no_deadline_past,
    server_info_dict,
    stylize_request,
    stylize_result,
    unserved_retry,
    video_options,
)

if sys.version_info >= (3, 11):  # (at run time too: typing.get_type_hints reads it)
    from typing import Unpack
elif TYPE_CHECKING:
    from typing_extensions import Unpack

_T = TypeVar("_T")
ProgressCallback = Callable[[RefineProgress], Awaitable[None] | None]


class AsyncStyleTransferClient(_ClientBase):
    """An asyncio client of ``adain.v1.StyleTransfer``: the constructor's arguments and every method's
    options are :class:`StyleTransferClient`'s. Use it from one event loop (``async with``, or ``await
    close()``); many calls may run at once on it."""

    def _connect(self, target: str, creds: grpc.ChannelCredentials | None, options: list[tuple[str, Any]]) -> None:
        """gRPC's channel belongs to the event loop it is made in: made outside one (a module-level client of a
        FastAPI or aiohttp app), it is made in the loop of the first call (made at once, it was bound to a loop
        that never ran, and every call failed with "attached to a different loop")."""
        self._channel: Any = None
        self._stub_now: Any = None
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop, self._later = None, (target, creds, options)
            return
        super()._connect(target, creds, options)

    def _connected(self) -> None:
        """Made outside a loop: connected now, in this call's (closed first: said so)."""
        if self._stub_now is None:
            self._check_open()
            super()._connect(*self._later)

    @property
    def _stub(self) -> Any:
        self._connected()
        return self._stub_now

    @_stub.setter
    def _stub(self, stub: Any) -> None:
        self._stub_now = stub

    def _open(self, target: str, creds: grpc.ChannelCredentials | None, options: list[tuple[str, Any]]) -> Any:
        if creds is not None:
            return grpc.aio.secure_channel(target, creds, options=options)
        return grpc.aio.insecure_channel(target, options=options)

    def _check_open(self) -> None:
        """Closed, or called from another event loop than its own (a second ``asyncio.run``): said, where gRPC
        raised "RuntimeError: Event loop is closed" and left a coroutine never awaited."""
        super()._check_open()
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif loop is not self._loop:
            raise StyleTransferError(grpc.StatusCode.FAILED_PRECONDITION, "this client belongs to another event "
                                     "loop (a client per asyncio.run: make it inside the loop that uses it)")

    async def close(self) -> None:
        """Close the channel; calls still running raise StyleTransferError CANCELLED on Python 3.11 and later (gRPC
        raised CancelledError in their tasks, which asyncio, gather and TaskGroup read as the task's own cancel;
        3.10 cannot tell the two apart, and there they stay CancelledError)."""
        self._closed = True
        if self._channel is not None:
            await self._channel.close()

    @contextlib.contextmanager
    def _cut_by_close(self, request_id: str | None) -> Iterator[None]:
        """A call's CancelledError that close() caused, not its task's cancel, as StyleTransferError."""
        try:
            yield
        except asyncio.CancelledError:
            cancelling = getattr(asyncio.current_task(), "cancelling", None)  # (3.11: on 3.10 a cancel is a cancel)
            if self._closed and cancelling is not None and not cancelling():
                said = "the client was closed while this call ran (close(), or the end of its async with block)"
                raise StyleTransferError(grpc.StatusCode.CANCELLED, said, request_id=request_id) from None
            raise

    async def __aenter__(self) -> AsyncStyleTransferClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _check_served(self, initial: Any, trailing: Any, needed: Sequence[str], request_id: str | None
                            ) -> tuple[str | None, str]:
        """As the blocking client's: a reply refused where its server lacks a feature the call used."""
        rid, served_by, unlisted = self._served_by_list(initial, trailing, needed, request_id)
        asked = 0
        while self._to_ask(unlisted, served_by):
            try:
                with self._cut_by_close(rid):  # (a close() meanwhile: the caller's task read it as its own cancel)
                    call = self._stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=FEATURES_ASK_S,
                                                    metadata=self._metadata(None)[1])
                    reply = await call
                    replica = self._keep_features(reply, await call.initial_metadata(),
                                                  await call.trailing_metadata())
            except grpc.RpcError as e:
                raise self._not_learned(served_by, rid, f"GetServerInfo failed ({_rpc_error(e, None)})") from None
            asked += 1
            if self._asked_enough(served_by, replica, asked):
                break
        return self._served_by_info(needed, unlisted, served_by, rid)

    async def _unary(
        self, method: Any, request: Any, timeout: float | None, request_id: str | None, end_user: str | None = None,
        needed: Sequence[str] = (),
    ) -> tuple[Any, str | None, str]:
        """(reply, request id, the replica that answered); ``needed``: as the blocking client's."""
        request_id, metadata = self._metadata(request_id, end_user)
        call = method(request, timeout=self._deadline(timeout), metadata=metadata)
        try:
            with self._cut_by_close(request_id):
                reply = await call
                initial, trailing = await call.initial_metadata(), await call.trailing_metadata()
        except grpc.RpcError as e:
            raise _rpc_error(e, request_id, needed) from None
        return (reply, *await self._check_served(initial, trailing, needed, request_id))

    async def stylize(
        self,
        content: ImageInput,
        styles: Styles,
        *,
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
        end_user: str | None = None,
        **options: Unpack[StylizeOptions],
    ) -> StylizeResult:
        """Stylize ``content`` with ``styles``; ``options`` are :meth:`StyleTransferClient.stylize`'s (alpha,
        weights, regions, sizes, format, refine...), and so is ``end_user``. ``on_progress`` may be a function or
        a coroutine function; it gets a :class:`RefineProgress` after every optimisation step, or statistics box
        and tile of a content the server renders in tiles."""
        request = await asyncio.to_thread(stylize_request, content, styles, max_bytes=self.max_message_bytes,
                                          **options)
        timeout = self._image_timeout(request, timeout)
        self._with_known_bytes(request)
        needed = needed_features(request)

        async def send() -> tuple[Any, str | None, str]:
            if on_progress is None:
                return await self._unary(self._stub.Stylize, request, timeout, request_id, end_user, needed)
            return await self._with_progress(request, on_progress, timeout, request_id, end_user, needed)

        try:
            reply, rid, served_by = await self._until_served(send)
        except StyleTransferError as e:
            if not self._inline_unknown_styles(request, e):  # a replica that did not know a style this client
                raise  # registered: its bytes, once
            reply, rid, served_by = await self._until_served(send)
        return stylize_result(reply, rid, served_by)

    async def _until_served(self, send: Callable[[], Awaitable[_T]]) -> _T:
        """``await send()``, sent again where its replica lacked what it used (the blocking client's)."""
        for tries_left in reversed(range(self._unserved_tries)):
            try:
                return await send()
            except StyleTransferError as e:
                if (pause := unserved_retry(e, tries_left)) is None:
                    raise
                await asyncio.sleep(pause)
        raise AssertionError("unreachable")

    async def _with_progress(
        self, request: pb.StylizeRequest, on_progress: ProgressCallback, timeout: float | None, request_id: str | None,
        end_user: str | None = None, needed: Sequence[str] = (),
    ) -> tuple[Any, str | None, str]:
        request_id, metadata = self._metadata(request_id, end_user)
        call = self._stub.StylizeWithProgress(
            request, timeout=self._deadline(timeout), metadata=metadata
        )
        reply = None
        try:
            with self._cut_by_close(request_id):
                async for event in call:
                    if event.WhichOneof("event") == "progress":
                        done = on_progress(_progress(event.progress))
                        if inspect.isawaitable(done):
                            await done
                    else:
                        reply = event.result
                initial = await call.initial_metadata()
        except grpc.RpcError as e:
            raise _rpc_error(e, request_id, needed) from None
        finally:
            call.cancel()  # a no-op once ended; stops the server's job if on_progress raised
        if reply is None:
            raise _no_result(request_id)
        return reply, *await self._check_served(initial, None, needed, request_id)  # (served_by too)

    async def stylize_video(
        self,
        frames: AsyncIterable[ImageInput] | Iterable[ImageInput],
        styles: Styles,
        *,
        timeout: float | None = None,
        request_id: str | None = None,
        end_user: str | None = None,
        stop: Callable[[], bool] | None = None,
        **options: Unpack[VideoStreamOptions],
    ) -> AsyncGenerator[VideoFrameResult, None]:
        """Stylize frames in order over one StylizeVideo stream, yielding each stylized frame as it comes
        back: ``async for frame in client.stylize_video(frames, style): ...``. ``frames`` is an iterable
        or an async iterable of images, read as the stream has room; ``options`` are
        :meth:`StyleTransferClient.stylize_video`'s (temporal mode included). ``timeout`` bounds the whole
        stream (None: no deadline). An exception raised while reading ``frames`` cancels the stream and is
        raised here; leaving the loop early cancels it at once where the generator goes with the loop (``async for
        f in client.stylize_video(...)``); one kept in a variable is cancelled only when it is closed or collected,
        so close it (``async with contextlib.aclosing(client.stylize_video(...)) as frames``: a kept one held its
        stream's place for seconds). ``stop()`` is asked four times a second, as by the
        blocking client: True cancels the stream (StyleTransferError CANCELLED here), while no reply comes too."""
        _frames_not_a_file(frames)
        first = await asyncio.to_thread(video_options, styles, max_bytes=self.max_message_bytes, **options)
        self._with_known_bytes(first, every=True)
        needed = needed_features(first)
        failure: list[BaseException] = []
        stopped: list[bool] = []

        def open_call(gate: asyncio.Event | None, passed: list[bool]) -> Any:
            """A StylizeVideo call: the options, then the frames once ``gate`` is set with ``passed`` true."""
            holder: list[Any] = []

            async def requests() -> AsyncIterator[pb.VideoRequest]:
                yield pb.VideoRequest(options=first)
                # The frames wait for the server's response headers, sent once it has taken the stream: written
                # into a stream it had refused, grpc.aio raised INTERNAL "Internal error from Core" in place of its
                # status (one refusal in four under load; grpc/grpc#36066). A server that sends them at once loses
                # nothing. A stream using a feature waits too for its replica's check (the blocking client's).
                await holder[0].initial_metadata()
                if gate is not None:
                    await gate.wait()
                if holder[0].done() or (gate is not None and not passed):
                    return
                try:
                    i = 0
                    async for frame in _aiter(frames):
                        if isinstance(frame, bytes) and len(frame) <= self.max_message_bytes:
                            data = frame  # nothing to read or encode
                        else:
                            data = await asyncio.to_thread(image_bytes, frame, f"frames[{i}]",
                                                           self.max_message_bytes)
                        yield pb.VideoRequest(frame=data)
                        i += 1
                except Exception as e:  # noqa: BLE001 - raised again to the caller, below
                    failure.append(e)
                    holder[0].cancel()

            holder.append(self._stub.StylizeVideo(requests(), timeout=no_deadline_past(timeout), metadata=metadata))
            return holder[0]

        async def watch(call: Any) -> None:
            while not call.done():
                await asyncio.sleep(0.25)
                if stop is not None and stop():
                    stopped.append(True)
                    call.cancel()
                    return

        request_id, metadata = self._metadata(request_id, end_user)
        call: Any = None
        watcher: asyncio.Future | None = None
        try:
            with self._cut_by_close(request_id):
                for tries_left in reversed(range(self._unserved_tries if needed else 1)):
                    self._check_open()  # (closed while a refused stream waited to be opened again)
                    gate = asyncio.Event() if needed else None
                    passed: list[bool] = []
                    call = open_call(gate, passed)
                    watcher = asyncio.ensure_future(watch(call)) if stop is not None else None
                    if gate is None:
                        break
                    try:  # (as the blocking client's: a replica without a feature the stream uses, elsewhere)
                        headers = await call.initial_metadata()
                        if not call.done():
                            await self._check_served(headers, None, needed, request_id)
                            passed.append(True)
                    except StyleTransferError as e:
                        if watcher is not None:
                            watcher.cancel()
                        call.cancel()
                        if (pause := unserved_retry(e, tries_left)) is None:
                            raise
                        await asyncio.sleep(pause)
                        continue
                    finally:
                        gate.set()
                    break
                async for reply in call:
                    yield frame_result(reply)
            if stopped:  # (ended by the cancel, without an error from the iteration)
                raise StyleTransferError(grpc.StatusCode.CANCELLED, "the stream was stopped (stop() said so)")
        except (grpc.RpcError, asyncio.CancelledError) as e:
            if failure:
                raise failure[0] from None
            if stopped:
                raise StyleTransferError(grpc.StatusCode.CANCELLED, "the stream was stopped (stop() said so)") from None
            if isinstance(e, grpc.RpcError):
                raise _rpc_error(e, request_id, needed) from None
            raise
        finally:
            if watcher is not None:
                watcher.cancel()
            if call is not None:
                call.cancel()
        if failure:
            raise failure[0]

    async def register_style(
        self, image: ImageInput, *, timeout: float | None = None, request_id: str | None = None
    ) -> str:
        """Store a style on the server; returns its id (see :meth:`StyleTransferClient.register_style`)."""
        data = await asyncio.to_thread(image_bytes, image, "image", self.max_message_bytes)
        reply, _, _ = await self._unary(self._stub.RegisterStyle, pb.RegisterStyleRequest(image=data), timeout,
                                        request_id)
        return self._remember(reply.style_id, data)

    async def server_info(self, *, timeout: float | None = None) -> dict[str, Any]:
        """The server's model, device, backend, limits and batching settings, as a dict."""
        reply, _, served_by = await self._unary(self._stub.GetServerInfo, pb.GetServerInfoRequest(), timeout, None)
        return server_info_dict(reply, served_by)

    async def library(
        self, *, thumbnail_size: int = 0, timeout: float | None = None
    ) -> tuple[list[LibraryStyle], list[LibraryPreset]]:
        """The server's styles and presets in one call (see :meth:`StyleTransferClient.library`)."""
        request = pb.ListStylesRequest(thumbnail_size=_uint(thumbnail_size, "thumbnail_size"))
        async def send() -> Any:
            with _no_library():
                return (await self._unary(self._stub.ListStyles, request, timeout, None))[0]

        reply = await self._until_served(send)
        return library_styles(reply), library_presets(reply)

    async def list_styles(self, *, thumbnail_size: int = 0, timeout: float | None = None) -> list[LibraryStyle]:
        """The styles of the server's library."""
        return (await self.library(thumbnail_size=thumbnail_size, timeout=timeout))[0]

    async def list_presets(self, *, timeout: float | None = None) -> list[LibraryPreset]:
        """The presets of the server's library."""
        return (await self.library(timeout=timeout))[1]

    async def health(self, *, timeout: float | None = 5.0) -> str:
        """"SERVING", "NOT_SERVING" or "UNKNOWN" (needs grpcio-health-checking)."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        self._check_open()
        self._connected()
        stub = health_pb2_grpc.HealthStub(self._channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME),
                                     timeout=no_deadline_past(timeout))
        except grpc.RpcError as e:
            raise _rpc_error(e, None) from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


async def _aiter(items: AsyncIterable[Any] | Iterable[Any]) -> AsyncIterator[Any]:
    """Items of either kind of iterable; a plain one is advanced on a worker thread (a lazy reader of a
    video file decodes in its next())."""
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
        return
    it = iter(items)
    done = object()
    while (item := await asyncio.to_thread(next, it, done)) is not done:
        yield item
