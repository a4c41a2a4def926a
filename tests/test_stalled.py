"""The stuck watch (server/stalled.py): a batch or a long job's step that never ends takes the replica out of service,
and one that ends after all brings it back; a server whose renders take their usual time stays SERVING."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2

from adain import compiling
from adain.client import StyleTransferClient
from adain.server import stalled
from adain.server.batcher import Batcher
from adain.server.refine import RefineLimits, RefineService
from helpers import NO_REFINE, ServerProcess, health_status
from synth import encoded, synth_image

SERVING = health_pb2.HealthCheckResponse.SERVING


async def _verdicts(source: stalled.Rendering, start: Callable[[], Awaitable[object]], hanging: threading.Event,
                    hang: threading.Event) -> tuple[list[tuple[float, bool]], float]:
    """The watch's verdicts on ``source`` (seconds from the watch's start, stuck or not) while the work ``start``
    begins hangs for 1.5 s (floor 0.4 s) and then ends, and when it was released."""
    verdicts: list[tuple[float, bool]] = []

    async def stuck(now: bool) -> None:
        verdicts.append((time.monotonic() - t0, now))

    t0 = time.monotonic()
    watch = asyncio.ensure_future(stalled.watch({"the work": source}, 0.4, stuck))
    work = asyncio.ensure_future(start())
    await asyncio.to_thread(hanging.wait, 10)
    running_s, expected_s = source.rendering()
    assert running_s < 0.4 and (expected_s is None or 10 * expected_s < 0.4)  # the floor is the limit
    await asyncio.sleep(1.5)
    released = time.monotonic() - t0
    hang.set()
    with contextlib.suppress(ValueError):  # (the long job's decode gives up)
        await work
    await asyncio.sleep(0.5)
    watch.cancel()
    return verdicts, released


def _stuck_then_not(verdicts: list[tuple[float, bool]], released: float) -> None:
    assert [now for _, now in verdicts] == [True, False], verdicts
    assert 0.4 <= verdicts[0][0] < released <= verdicts[1][0], (verdicts, released)


def test_a_batch_past_its_limit_is_reported_stuck_until_it_ends() -> None:
    """A real Batcher whose render hangs (a runtime stuck in native code, here a wait on an event): the watch says
    stuck once the batch passes max(floor, FACTOR x its expected time), and not stuck once it has ended."""
    hang, hanging = threading.Event(), threading.Event()

    def render(batch: list[str]) -> list[str]:
        if batch == ["slow"]:
            hanging.set()
            hang.wait(30)
        else:
            time.sleep(0.01)  # ~10 ms for 64 x 64 pixels: the average a pixel the watch expects by
        return batch

    async def main() -> tuple[list[tuple[float, bool]], float]:
        batcher = Batcher(render, max_batch_size=1, max_delay_s=0, max_queue=8)
        batcher.start()

        def send(name: str) -> asyncio.Future:
            return batcher.submit(batcher.admit(), name, key=(64, 64), deadline=None).future

        assert batcher.rendering() == (0.0, None)  # idle
        await send("quick")  # times a pixel: a 64 x 64 batch is expected to take ~10 ms
        hung = asyncio.ensure_future(_verdicts(batcher, lambda: send("slow"), hanging, hang))
        await asyncio.to_thread(hanging.wait, 10)
        expected_s = batcher.rendering()[1]
        assert expected_s is not None and 0.005 < expected_s < 0.2
        result = await hung
        batcher.close(5)
        return result

    _stuck_then_not(*asyncio.run(main()))
    # the limit: the floor, or FACTOR times the expected time where that is longer (a large batch, a slow CPU)
    assert stalled.limit_s(300, None) == stalled.limit_s(300, 2.0) == 300
    assert stalled.limit_s(300, 60.0) == 60.0 * stalled.FACTOR
    # a graph compiled meanwhile (a size's own OpenVINO graph) adds its time to the factor's limit, within a bound
    assert stalled.limit_s(0.05, 0.01, 0.3) == pytest.approx(0.01 * stalled.FACTOR + 0.3)
    assert stalled.limit_s(0.05, 0.01, 1e6) == pytest.approx(0.01 * stalled.FACTOR + stalled.COMPILE_ALLOWANCE_S)
    assert stalled.limit_s(0.05, None, 0.3) == 0.05  # no expected time: the floor alone, as before


def test_compile_time_is_counted_within_the_window_asked_for() -> None:
    """adain.compiling: a compile's seconds count from the window's start (or its own), those under way included
    (another thread's too), and none before the window."""
    before = time.monotonic()
    with compiling.compiling():
        time.sleep(0.1)
    after = time.monotonic()
    assert 0.1 <= compiling.seconds_since(before) <= after - before
    assert compiling.seconds_since(after) == 0.0
    started, release = threading.Event(), threading.Event()

    def compile_slowly() -> None:
        with compiling.compiling():
            started.set()
            release.wait(10)

    thread = threading.Thread(target=compile_slowly)
    thread.start()
    started.wait(10)
    time.sleep(0.1)
    assert compiling.seconds_since(after) >= 0.1  # under way, in another thread
    release.set()
    thread.join(10)
    assert 0.1 <= compiling.seconds_since(after) <= time.monotonic() - after



def test_a_batch_that_compiles_a_graph_is_not_taken_for_stuck() -> None:
    """A real Batcher whose second batch compiles a graph (as a size's own OpenVINO graph is, inside the call that
    asked) for 0.6 s, 60x its expected 10 ms and 12x the floor: no verdict; the same time without a compile is one
    (the test above)."""

    def render(batch: list[str]) -> list[str]:
        if batch == ["compiles"]:
            with compiling.compiling():
                time.sleep(0.6)
        else:
            time.sleep(0.01)
        return batch

    async def main() -> list[bool]:
        verdicts: list[bool] = []

        async def stuck(now: bool) -> None:
            verdicts.append(now)

        batcher = Batcher(render, max_batch_size=1, max_delay_s=0, max_queue=8)
        batcher.start()

        def send(name: str) -> asyncio.Future:
            return batcher.submit(batcher.admit(), name, key=(64, 64), deadline=None).future

        await send("quick")
        watch = asyncio.ensure_future(stalled.watch({"the batch": batcher}, 0.05, stuck))
        await send("compiles")
        await asyncio.sleep(0.1)
        watch.cancel()
        batcher.close(5)
        return verdicts

    assert asyncio.run(main()) == []

def test_a_long_job_stuck_before_its_next_step_is_reported_until_it_ends() -> None:
    """A real RefineService whose job's decode hangs (a stand-in for native code that never returns): stuck once
    its thread has gone the floor without a step, not stuck once the job has ended (here with an error)."""
    hang, hanging = threading.Event(), threading.Event()

    def prepare():
        hanging.set()
        hang.wait(30)
        raise ValueError("the decode gave up")

    async def main() -> tuple[list[tuple[float, bool]], float]:
        service = RefineService(None, RefineLimits(max_jobs=1, max_queue=1), busy=lambda: False)  # type: ignore[arg-type]
        assert service.rendering() == (0.0, None)  # nothing running
        result = await _verdicts(service, lambda: service.run(prepare, deadline=None, place=service.admit("a")),
                                 hanging, hang)
        assert service.rendering() == (0.0, None)
        service.close()
        return result

    _stuck_then_not(*asyncio.run(main()))


def test_a_server_whose_renders_take_their_usual_time_stays_serving(decoder_path: Path) -> None:
    """--render-stuck-s at 0.05 s, far under a render's time here: the factor over the expected time keeps every
    render of its usual length from counting as stuck, health stays SERVING and adain_render_stuck 0."""
    srv = ServerProcess(decoder_path, *NO_REFINE, "--render-stuck-s", "0.05")
    try:
        srv.wait_serving()
        seen: list[int | None] = []
        stop = threading.Event()

        def poll() -> None:
            while not stop.is_set():
                seen.append(health_status(srv.target))
                time.sleep(0.02)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        style = encoded(synth_image(96, 96, seed=5))
        with StyleTransferClient(srv.target, timeout=60) as client:
            for i, side in enumerate((96, 160, 160, 224)):
                client.stylize(encoded(synth_image(side, side, seed=i)), style)
        stop.set()
        poller.join(5)
        assert seen and set(seen) == {SERVING}, seen
        assert srv.metric("adain_render_stuck") == 0
    finally:
        assert srv.terminate() == 0
    log = "".join(srv.stderr_lines)
    assert "health NOT_SERVING until it ends" not in log, log
