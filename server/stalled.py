"""The stuck watch: a render that never ends takes its replica out of service.

Why: every stylize request and video frame waits on one render thread (server/batcher.py), and refines and
print-size photos on the long-job threads (server/refine.py). Should a render never end (a runtime hung in native
code: the test suite once saw two threads spin for 25 minutes inside MKL's allocator), the event loop still answers
health checks SERVING while the requests behind it run out of time, so Kubernetes keeps sending it traffic and never
restarts it. So once the batch rendering now, or a long job's step (an iteration, a statistics box, a tile; its
decode before the first), has taken ``--render-stuck-s`` and FACTOR times what it is expected to take (the batch: its
pixels by the running average a pixel; a step: the running mean between steps), health goes NOT_SERVING (readiness
takes the replica out of the Service; liveness, after its failures, restarts it), ``adain_render_stuck`` says 1 and
the log says why; should it end after all, SERVING again. Time spent compiling a graph meanwhile (adain.compiling: a
size's own OpenVINO graph, 0.2-0.4 s, inside the call that asked for it) is added to the factor's limit, up to
COMPILE_ALLOWANCE_S: it is no hang, and a low floor with an accurate expected time counted it as one. (A render
stuck holding the GIL stops the event loop too: the health checks then go unanswered, to the same end.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from adain.compiling import seconds_since

log = logging.getLogger("adain.server.stalled")
FACTOR = 10.0  # times a render's expected time: a first shape's compile or a slow moment is not a hang
COMPILE_ALLOWANCE_S = 60.0  # of compiling during a render, added to its limit: a compile that hangs still counts
PERIOD_S = 1.0  # how often the renders are looked at (at most; more often for a shorter limit)


class Rendering(Protocol):
    def rendering(self) -> tuple[float, float | None]: ...


def limit_s(floor_s: float, expected_s: float | None, compiling_s: float = 0.0) -> float:
    """How long a render (a batch, a long job's step) expected to take ``expected_s`` may take before it counts as
    stuck, ``compiling_s`` of graph compiles having run meanwhile."""
    if expected_s is None:
        return floor_s
    return max(floor_s, FACTOR * expected_s + min(compiling_s, COMPILE_ALLOWANCE_S))


async def watch(sources: dict[str, Rendering], floor_s: float, stuck: Callable[[bool], Awaitable[None]]) -> None:
    """Until cancelled: ``stuck(True)`` once one of ``sources`` (by what each is: "the render thread's batch", "a long
    job's step") passes its limit, ``stuck(False)`` when none does any longer."""
    period = min(PERIOD_S, floor_s / 4)
    was = False
    while True:
        await asyncio.sleep(period)
        over = []
        for what, source in sources.items():
            running_s, expected_s = source.rendering()
            if running_s > limit_s(floor_s, expected_s, seconds_since(time.monotonic() - running_s)):
                over.append((what, running_s, expected_s))
        if bool(over) == was:
            continue
        if over:
            what, running_s, expected_s = over[0]
            expected = "unknown" if expected_s is None else f"{expected_s:.1f} s"
            log.error("%s has taken %.0f s (expected %s by the running average; --render-stuck-s %g, and %gx the "
                      "expected): health NOT_SERVING until it ends, so that this replica gets no traffic and a "
                      "liveness probe restarts it", what, running_s, expected, floor_s, FACTOR)
        else:
            log.warning("the render that was stuck has ended: health SERVING again")
        was = bool(over)
        await stuck(was)
