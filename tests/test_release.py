"""A request that fails or is stopped lets go of its memory at once (decoded content, tiles, a batch's inputs, a
video stream's frames), not at CPython's next full collection: an error whose traceback reaches a frame that
holds, through a future, the error itself is a reference cycle, and in a server tracking ~188k objects the
generation-2 collection that frees it comes rarely. Each test runs with the collector off, so only reference
counts free anything."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import logging
import time
import traceback
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch

from adain import Job, Stylizer
from adain.prepared import Prepared
from adain.server.app import StyleTransferServer
from adain.server.batcher import Batcher
from adain.server.config import parse_settings
from adain.server.errors import ServiceError
from adain.server.metrics import Metrics
from adain.server.refine import RefineLimits, RefineService
from adain.server.service import StyleTransferServicer, Undecodable, _decoded
from adain.server.video import VideoLimits, VideoService
from adain.v1 import style_transfer_pb2 as pb
from adain.video import VideoStream
from synth import make_image, synth_image

torch.set_num_threads(1)
CONTENT = synth_image(64, 48, seed=41)
STYLE = synth_image(40, 40, seed=42, kind="noise")
SETTLE_S = 5.0  # a thread that handed the error over may still be returning from it


@pytest.fixture(scope="module")
def stylizer(decoder_path: Path) -> Stylizer:
    return Stylizer(decoder_path, device="cpu")


@contextlib.contextmanager
def collector_off() -> Iterator[None]:
    gc.collect()  # what earlier tests left is not counted
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def freed(gone: Callable[[], bool]) -> bool:
    """Whether ``gone()`` comes true by reference counting alone (the collector is off), allowing a thread that
    handed the error over a moment to return."""
    end = time.monotonic() + SETTLE_S
    while not gone():
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


def prepared_alive() -> int:
    """Prepared jobs not yet freed, garbage in a cycle included (the collector lists what it has not freed)."""
    return sum(type(o) is Prepared for o in gc.get_objects())


# --- long jobs (server.refine) --------------------------------------------------------------------------
def test_a_long_job_whose_prepare_fails_frees_what_it_decoded() -> None:
    service = RefineService(None, RefineLimits(max_jobs=1, max_queue=0), busy=lambda: False)  # type: ignore[arg-type]
    refs: list[weakref.ref] = []

    def prepare() -> Any:
        content = torch.zeros(1 << 20)  # a decode, then a failure (no model here)
        refs.append(weakref.ref(content))
        raise RuntimeError("cannot decode")

    async def call() -> str:
        place = service.admit()
        try:
            await service.run(prepare, None, place=place)
        except RuntimeError as e:
            return str(e)  # the error itself propagates unchanged
        finally:
            place.release()
        return "no error"

    try:
        with collector_off():
            assert asyncio.run(call()) == "cannot decode"
            assert refs and freed(lambda: refs[0]() is None), "the decoded content outlived its failed call"
    finally:
        service.close()


@pytest.mark.parametrize("tiled", [False, True], ids=["refine", "tiled"])
def test_a_long_job_stopped_at_its_deadline_frees_its_job(stylizer: Stylizer, tiled: bool) -> None:
    """Stopped at an iteration (a tile) by its deadline: the job's content, its optimiser's or its tiles' buffers
    are held by the stopped thread's frames in the error's traceback."""
    # always busy: the job waits for fast work at its first iteration (tile) until its deadline stops it
    service = RefineService(stylizer, RefineLimits(max_jobs=1, max_queue=0), busy=lambda: True)
    refs: list[weakref.ref] = []

    def prepare() -> Prepared:
        job = stylizer.prepare(Job(CONTENT, [STYLE], refine_steps=0 if tiled else 20))
        refs.extend((weakref.ref(job), weakref.ref(job.content)))
        return job

    async def call() -> ServiceError | None:
        place = service.admit()
        try:
            await service.run(prepare, time.monotonic() + 2.0, tiled=tiled, place=place)
        except ServiceError as e:
            return e
        finally:
            place.release()
        return None

    try:
        with collector_off():
            error = asyncio.run(call())
            assert error is not None and error.code == grpc.StatusCode.DEADLINE_EXCEEDED, error
            assert error.message == f"{'tiled render' if tiled else 'refine'} stopped: deadline"
            assert refs, "the job was stopped before it was prepared"  # (then at its first iteration or tile)
            # gone while the error is still held (as the call's end handles it), which still says where it stopped
            assert freed(lambda: all(r() is None for r in refs)), "the stopped job's content outlived its call"
            assert "in _check" in "".join(traceback.format_exception(error))
            del error
            assert freed(lambda: service.admitted == 0)
    finally:
        service.close()


def test_a_cancelled_long_job_frees_its_job_once_its_thread_stops(stylizer: Stylizer) -> None:
    service = RefineService(stylizer, RefineLimits(max_jobs=1, max_queue=0), busy=lambda: True)
    refs: list[weakref.ref] = []

    def prepare() -> Prepared:
        job = stylizer.prepare(Job(CONTENT, [STYLE]))
        refs.append(weakref.ref(job))
        return job

    async def call() -> bool:
        place = service.admit()
        task = asyncio.current_task()
        try:  # cancelled (the client went) at its first tile
            await service.run(prepare, None, lambda p: task.cancel(), tiled=True, place=place)  # type: ignore[union-attr]
        except asyncio.CancelledError:
            return True
        finally:
            place.release()
        return False

    try:
        with collector_off():
            assert asyncio.run(call())
            assert refs and freed(lambda: service.admitted == 0)  # its thread stopped at its next tile
            assert freed(lambda: refs[0]() is None), "the cancelled job's content outlived its thread"
    finally:
        service.close()


# --- the batch queue (server.batcher, Stylize's _render) ------------------------------------------------
@contextlib.contextmanager
def batch_queue(render: Callable[[Any], Any], delay_s: float = 0) -> Iterator[tuple[Batcher, StyleTransferServicer]]:
    batcher = Batcher(render, max_batch_size=4, max_delay_s=delay_s, max_queue=8)
    batcher.start()
    servicer = StyleTransferServicer(  # only the batcher is used by _render
        stylizer=None, batcher=batcher, registry=None, metrics=None, pool=None, limits=None,  # type: ignore[arg-type]
        info=pb.ServerInfo(), drain=None, video=None, refiner=None,  # type: ignore[arg-type]
    )
    try:
        yield batcher, servicer
    finally:
        batcher.close(10)


def test_a_request_dropped_in_the_batch_queue_frees_it(stylizer: Stylizer) -> None:
    refs: list[weakref.ref] = []

    async def call(batcher: Batcher, servicer: StyleTransferServicer) -> tuple[grpc.StatusCode, str]:
        prepared = stylizer.prepare(Job(CONTENT, [STYLE]))
        refs.append(weakref.ref(prepared))
        try:  # its deadline passed as it waited
            await servicer._render(batcher.admit(), prepared, time.monotonic() - 1)
        except ServiceError as e:
            return e.code, e.message
        return grpc.StatusCode.OK, ""

    with batch_queue(stylizer.render) as (batcher, servicer), collector_off():
        assert asyncio.run(call(batcher, servicer)) == (
            grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed while the request was queued")
        assert freed(lambda: refs[0]() is None), "a request dropped in the queue outlived its call"


@pytest.mark.parametrize("delay_s", [0, 0.5])
def test_a_batch_whose_render_fails_frees_its_requests(stylizer: Stylizer, delay_s: float) -> None:
    """The render's error reaches every request of the batch, and is logged with its traceback; then neither
    the requests nor the render's own tensors are kept. With a delay the two requests are one batch, rendered
    again one at a time once it fails (each fails alone here): its frame kept the last request (a run under load)."""
    refs: list[weakref.ref] = []
    tensors: list[weakref.ref] = []

    def render(jobs: list[Prepared]) -> list[Any]:
        inputs = torch.cat([job.content for job in jobs])  # the render's own memory, in its frame
        tensors.append(weakref.ref(inputs))
        raise RuntimeError("out of something")

    async def call(batcher: Batcher, servicer: StyleTransferServicer) -> list[BaseException | None]:
        async def one() -> BaseException | None:
            prepared = stylizer.prepare(Job(CONTENT, [STYLE]))
            refs.append(weakref.ref(prepared))
            try:
                await servicer._render(batcher.admit(), prepared, None)
            except RuntimeError as e:
                return e
            return None

        return await asyncio.gather(one(), one())

    logged = io.StringIO()
    handler = logging.StreamHandler(logged)  # the server's: formats the record, keeps nothing (pytest's keep them)
    logger = logging.getLogger("adain.server.batcher")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with batch_queue(render, delay_s) as (batcher, servicer), collector_off():
            errors = asyncio.run(call(batcher, servicer))
            assert [str(e) for e in errors] == ["out of something"] * 2
            assert len(refs) == 2 and tensors
            # the render's own memory is gone while its waiters still hold the error, which still says where it was
            assert freed(lambda: all(r() is None for r in tensors)), "a failed render's tensors outlived its log"
            assert "in render" in "".join(traceback.format_exception(errors[0]))
            del errors
            assert freed(lambda: all(r() is None for r in refs)), "a failed batch outlived its calls"
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    text = logged.getvalue()
    assert "render failed for a batch of" in text and "Traceback" in text and "in render" in text, text
    if delay_s:  # (without one the two are mostly rendered apart, but one batch under load: a full run's, once)
        assert "of its requests alone" in text, text


# --- StylizeWithProgress ---------------------------------------------------------------------------------
class _Context:
    """The little of grpc.aio.ServicerContext the handlers below read."""

    def __init__(self, remaining: float | None) -> None:
        self.remaining = remaining

    def time_remaining(self) -> float | None:
        return self.remaining

    def cancelled(self) -> bool:
        return False


def test_a_progress_call_that_fails_frees_its_request(stylizer: Stylizer) -> None:
    server = StyleTransferServer(parse_settings(["--max-batch-delay-ms", "0"]), stylizer)
    server.batcher.start()
    handler = StyleTransferServicer.StylizeWithProgress.__wrapped__  # the method, without _call's context
    request = pb.StylizeRequest(content=make_image(64, 48, seed=43), styles=[pb.Style(image=make_image(40, 40))])

    async def call() -> tuple[grpc.StatusCode, str]:
        try:  # its deadline has passed by the time its batch forms
            async for _ in handler(server.servicer, request, _Context(0.0), "rid"):
                pass
        except ServiceError as e:
            return e.code, e.message
        return grpc.StatusCode.OK, ""

    try:
        with collector_off():
            before = prepared_alive()
            code, message = asyncio.run(call())
            assert code == grpc.StatusCode.DEADLINE_EXCEEDED, message
            assert freed(lambda: prepared_alive() == before), "a failed progress call's job outlived it"
    finally:
        server.batcher.close(10)
        server.refiner.close()
        server.pool.shutdown(wait=True)


# --- video (server.video) --------------------------------------------------------------------------------
async def _messages(frames: list[Any]) -> AsyncIterator[Any]:
    for message in frames:
        yield message


@pytest.mark.parametrize("case", ["ended", "bad message", "undecodable message", "frame dropped"])
def test_a_video_stream_that_fails_frees_its_state(stylizer: Stylizer, case: str) -> None:
    """A stream ended by its reader's error (a bad message after a rendered frame, or one that does not parse),
    or by a frame that its deadline dropped in the queue: the stream (its previous frames) and its frames' jobs
    go with the call. So they do when it ends well (its client's stream ended in a StopAsyncIteration, which
    asyncio.wait_for held in a cycle with the reader's frame)."""
    batcher = Batcher(stylizer.render, max_batch_size=4, max_delay_s=0, max_queue=8)
    batcher.start()
    pool = ThreadPoolExecutor(2)
    streams: list[weakref.ref] = []

    def open_stream(*args: Any) -> VideoStream:
        stream = VideoStream.checked(stylizer, *args)
        streams.append(weakref.ref(stream))
        return stream

    video = VideoService(open_stream=open_stream, batcher=batcher, pool=pool, metrics=Metrics(),
                         limits=VideoLimits(max_frames=10, max_streams=2, window=2, default_temporal="smooth",
                                            default_strength=0.5))
    job = Job(None, [make_image(40, 40)]).check(stylizer.limits, content=False)
    frame = pb.VideoRequest(frame=make_image(64, 48, seed=44))
    messages: list[Any] = [frame]
    remaining = 0.0 if case == "frame dropped" else None  # its deadline passes as it waits
    if case == "bad message":  # frame 0 is rendered (the stream keeps it), then options again
        messages.append(pb.VideoRequest(options=pb.VideoOptions()))
    elif case == "undecodable message":  # as the server's request stream hands one that did not parse
        messages.append(Undecodable("adain.v1.VideoRequest", "junk"))

    async def call() -> tuple[int, grpc.StatusCode, str]:
        got = 0
        try:
            replies = video.run(job, "smooth", 0.5, pb.IMAGE_FORMAT_JPEG, 90, _decoded(_messages(messages)),
                                _Context(remaining))
            async for _ in replies:
                got += 1
        except ServiceError as e:
            return got, e.code, e.message
        return got, grpc.StatusCode.OK, ""

    try:
        with collector_off():
            before = prepared_alive()
            got, code, message = asyncio.run(call())
            if case == "ended":
                assert (got, code) == (1, grpc.StatusCode.OK), message
            elif case == "bad message":
                assert (got, code) == (1, grpc.StatusCode.INVALID_ARGUMENT), message
                assert "only the first message may carry options" in message
            elif case == "undecodable message":
                assert (got, code) == (1, grpc.StatusCode.INVALID_ARGUMENT), message
                assert "not a valid adain.v1.VideoRequest message (junk)" in message
            else:
                assert (got, code) == (0, grpc.StatusCode.DEADLINE_EXCEEDED), message
            assert streams and freed(lambda: streams[0]() is None), "a failed stream outlived its call"
            assert freed(lambda: prepared_alive() == before), "a failed stream's frames outlived its call"
            assert video.active == 0
    finally:
        batcher.close(10)
        pool.shutdown(wait=True)
