"""The render thread's watch: a batch that never ends takes its replica out of service.

Why: every stylize request and video frame waits on one render thread (server/batcher.py). Should a batch never end
(a runtime hung in native code: the test suite once saw two threads spin for 25 minutes inside MKL's allocator), the
event loop still answers health checks SERVING while every request queues and runs out of time, so Kubernetes keeps
sending it traffic and never restarts it. So once the batch rendering now has taken ``--render-stuck-s`` and
FACTOR times what its pixels take by the running average a pixel, health goes NOT_SERVING (readiness takes the
replica out of the Service; liveness, after its failures, restarts it), ``adain_render_stuck`` says 1 and the log
says why; should the batch end after all, SERVING again. (A render stuck holding the GIL stops the event loop too:
the health checks then go unanswered, to the same end.) Refine and print-size jobs run on their own threads, with
their own step and time limits, and are not watched here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

log = logging.getLogger("adain.server.stalled")
FACTOR = 10.0  # times a batch's expected time: a first shape's compile or a slow moment is not a hang
PERIOD_S = 1.0  # how often the render thread is looked at (at most; more often for a shorter limit)


class Rendering(Protocol):
    def rendering(self) -> tuple[float, float | None]: ...


def limit_s(floor_s: float, expected_s: float | None) -> float:
    """How long the batch rendering now may take before it counts as stuck."""
    return max(floor_s, FACTOR * expected_s) if expected_s is not None else floor_s


async def watch(batcher: Rendering, floor_s: float, stuck: Callable[[bool], Awaitable[None]]) -> None:
    """Until cancelled: ``stuck(True)`` once the batch rendering now passes its limit, ``stuck(False)`` when that
    batch has ended."""
    period = min(PERIOD_S, floor_s / 4)
    was = False
    while True:
        await asyncio.sleep(period)
        running_s, expected_s = batcher.rendering()
        now = running_s > limit_s(floor_s, expected_s)
        if now and not was:
            expected = "unknown" if expected_s is None else f"{expected_s:.1f} s"
            log.error("the render thread has been on one batch for %.0f s (its pixels take %s by the average; "
                      "--render-stuck-s %g, and %gx the expected): health NOT_SERVING until it ends, so that this "
                      "replica gets no traffic and a liveness probe restarts it", running_s, expected, floor_s, FACTOR)
        elif was and not now:
            log.warning("the batch that held the render thread has ended: health SERVING again")
        if now != was:
            await stuck(now)
        was = now
