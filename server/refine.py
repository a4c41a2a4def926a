"""Long jobs outside the dynamic batch of fast requests: optimisation jobs (``refine_steps`` > 0) and
contents large enough to render in tiles (``adain.tiling``).

A long job takes seconds to minutes, so it never enters the batcher: it runs on its own threads, at
most ``max_jobs`` at once with at most ``max_queue`` more waiting (beyond: RESOURCE_EXHAUSTED naming
the limit; the limits are named after refine, their first user). A job is decoded on its thread when its
turn comes, so a waiting one holds its request's bytes, not its content as floats (770 MiB at 67 MP: five
print-size calls waiting took a replica to its pod's 8 GiB limit). Between iterations (or tiles) it
yields to the batcher: while fast requests are queued or rendering,
the next iteration waits, so plain Stylize calls keep their latency on a CPU the two would otherwise
share. A cancelled call or a passed deadline stops the job at the next iteration (StoppedError).

Callers take turns, as in the fast queue: a thread that frees takes the oldest waiting job of the caller served
least recently, and the last place is kept for a caller that holds none (one caller's five refines took every
place, and another's came back RESOURCE_EXHAUSTED; queued behind four, it ran last).
"""

from __future__ import annotations

import asyncio
import heapq
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

from adain.errors import StoppedError

from .errors import PlaceClock, ServiceError

if TYPE_CHECKING:
    from adain.optimize import Progress
    from adain.prepared import Prepared
    from adain.stylizer import Stylizer

YIELD_POLL_S = 0.005
YIELD_MAX_S = 5.0  # a refine iteration waits at most this long for fast work, so it cannot starve either


@dataclass(frozen=True)
class Ran:
    """A long job's output image, the seconds it waited for a thread of its own (the queue) and the seconds
    its prepare (decode, style statistics) took there."""

    image: Any
    waited_s: float
    prepare_s: float
    steps: int = 0  # a refine's iterations run (L-BFGS may converge before the steps asked for)


class Place:
    """An admitted long job's place, freed once its call has let it go (:meth:`release`, idempotent) and,
    where the job ran on a thread, that thread has ended: a cancelled call's thread runs on to its next
    check (a decode, a tile), and its place freed at the cancel let more jobs in than the limits say."""

    def __init__(self, service: RefineService, token: int, caller: str) -> None:
        self._service = service
        self._token = token  # its place in the service's PlaceClock
        self.caller = caller
        self._holders = 1  # the call
        self._call_released = False
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            if self._call_released:
                return
            self._call_released = True
        self._let_go()

    def hold_until(self, future: Future) -> None:
        """Keep the place until ``future`` (the job's thread's) is done too."""
        with self._lock:
            self._holders += 1
        future.add_done_callback(lambda _: self._let_go())

    def _let_go(self) -> None:
        with self._lock:
            self._holders -= 1
            last = self._holders == 0
        if last:
            self._service._release(self._token, self.caller)


def _next_turn(jobs: list, last_turn: dict[str, int]) -> tuple:
    """Of waiting (caller, arrival, work, future) jobs, the one whose turn it is: the oldest of the caller served
    least recently (a caller never served first)."""
    return min(jobs, key=lambda w: (last_turn.get(w[0], -1), w[1]))


@dataclass(frozen=True)
class RefineLimits:
    max_jobs: int
    max_queue: int


class RefineService:
    """Runs prepared refine jobs; ``busy()`` says whether fast work is waiting (the batcher's depth);
    ``refused(reason)`` is told of each job turned away (the server counts it with the queue's refusals):
    ``max_refine_jobs`` where every place was taken, ``long_job_reserved`` where the last was kept for another
    caller (one caller held back, not a full server)."""

    def __init__(self, stylizer: Stylizer, limits: RefineLimits, busy: Callable[[], bool],
                 refused: Callable[[str], None] = lambda reason: None) -> None:
        self.stylizer = stylizer
        self.limits = limits
        self.busy = busy
        self.refused = refused
        self.pool = ThreadPoolExecutor(limits.max_jobs, thread_name_prefix="adain-refine")
        self._admitted = 0
        self._held: Counter[str] = Counter()  # places by caller
        self._lock = threading.Lock()
        self.clock = PlaceClock()  # when a refused job may find a place (its RetryInfo)
        # jobs waiting for a thread, (caller, arrival, work, future), and the callers' last turns (see _dispatch)
        self._waiting: list[tuple[str, int, Callable[[], Any], Future]] = []
        self._running = 0
        self._started: dict[int, float] = {}  # when each running job began (a drain's estimate)
        self._run_mean_s: float | None = None  # the mean time a job ran (a drain's estimate)
        # when each running job's thread last made a step (an iteration, a statistics box, a tile; its start before
        # the first) and the mean time between steps: what the stuck watch judges (server/stalled.py)
        self._stepped: dict[int, float] = {}
        self._step_mean_s: float | None = None
        self._drain_until: float | None = None  # a drain's end (monotonic), once one began
        self._arrivals = 0
        self._last_turn: dict[str, int] = {}
        self._turns = 0

    def admit(self, caller: str = "") -> Place:
        """A long job's place (running or waiting) for ``caller``; raises RESOURCE_EXHAUSTED when there is none,
        or when only the last is left and this caller holds one already (it is kept for the others)."""
        total = self.limits.max_jobs + self.limits.max_queue
        with self._lock:
            held = self._held[caller]
            if self._admitted >= total or (held and self._admitted >= total - 1):
                self.refused("max_refine_jobs" if self._admitted >= total else "long_job_reserved")
                why = (f"too many refine jobs: {self._admitted} running or waiting (max_refine_jobs="
                       f"{self.limits.max_jobs}, max_refine_queue={self.limits.max_queue})")
                if self._admitted < total:
                    why = (f"this caller holds {held} of the {total} long-job places (max_refine_jobs + "
                           "max_refine_queue); the last is kept for other callers")
                raise ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED, why, retry_after_s=self.clock.retry_after())
            self._admitted += 1
            self._held[caller] += 1
        return Place(self, self.clock.taken(), caller)

    def _release(self, token: int, caller: str) -> None:
        with self._lock:
            self._admitted -= 1
            self._held[caller] -= 1
            if not self._held[caller]:  # it holds nothing: forgotten, turns included (a caller a visitor, for a
                del self._held[caller]  # front token: the turns grew with every visitor), new again if it comes
                self._last_turn.pop(caller, None)
        self.clock.freed(token)

    def _submit(self, caller: str, work: Callable[[], Any]) -> Future:
        """``work`` run on a long-job thread when its turn comes (see :meth:`_dispatch`); its future. During a
        drain, a job that would not end within it is refused at once (admitted before the drain, it reached the
        queue after: it waited out the grace, then was cut)."""
        future: Future = Future()
        with self._lock:
            self._arrivals += 1
            job = (caller, self._arrivals, work, future)
            late = self._drain_until is not None and job in self._beyond(self._waiting, self._drain_until, job)
            if not late:
                self._waiting.append(job)
        if late:
            self._refuse([job], 1)
            return future
        future.add_done_callback(self._forget)
        self._dispatch()
        return future

    def _forget(self, future: Future) -> None:
        """A waiting job whose call went away (cancelled) leaves the queue at once: left there, it was counted
        by a drain as work to come and took its caller's turn."""
        if future.cancelled():
            with self._lock:
                self._waiting = [w for w in self._waiting if w[3] is not future]

    def _dispatch(self) -> None:
        """Start waiting jobs while threads are free: each time the oldest of the caller served least recently
        (a caller never served first), so callers take turns whatever the order their jobs came in."""
        start = []
        with self._lock:
            while self._waiting and self._running < self.limits.max_jobs:
                job = _next_turn(self._waiting, self._last_turn)
                self._waiting.remove(job)
                if job[3].done():  # (cancelled)
                    continue
                self._last_turn[job[0]] = self._turns
                self._turns += 1
                self._running += 1
                start.append(job)
        for _caller, _arrival, work, future in start:
            try:
                self.pool.submit(self._run_one, [work, future, id(future)])
            except RuntimeError:  # closed meanwhile (the server stopping): not run
                future.cancel()
                with self._lock:
                    self._running -= 1

    def shed(self, until: float) -> int:
        """For a drain that ends at ``until`` (monotonic): refuse at once, UNAVAILABLE, the jobs waiting for a
        thread that would not end by then, so that their clients retry them on another replica now (a queued
        refine waited out the whole grace, then was cut); jobs that reach the queue later are judged as they
        come (:meth:`_submit`). Returns how many."""
        with self._lock:
            self._drain_until = until
            shed = self._beyond(self._waiting, until)
            for job in shed:
                self._waiting.remove(job)
        self._refuse(shed, len(shed))
        return len(shed)

    def _beyond(self, jobs: list, until: float, last: tuple | None = None) -> list:
        """Of ``jobs`` (and ``last``, counted after them all), those that would not end by ``until``, counted in
        the order the threads would take them, by the mean time a job has run (all of them before any has
        ended). Lock held."""
        now = time.monotonic()
        mean = self._run_mean_s
        ends = sorted(now + max(0.0, (mean or 0.0) - (now - t)) for t in self._started.values())
        ends += [now] * (self.limits.max_jobs - len(ends))  # threads free now
        heapq.heapify(ends)
        turns, turn, left, beyond = dict(self._last_turn), self._turns, [j for j in jobs if not j[3].done()], []
        while left or last is not None:
            if left:  # as _dispatch will take them
                job = _next_turn(left, turns)
                left.remove(job)
            else:
                job, last = last, None
            turns[job[0]], turn = turn, turn + 1
            start = heapq.heappop(ends)
            if mean is None or start + mean > until:
                beyond.append(job)
                heapq.heappush(ends, start)
            else:
                heapq.heappush(ends, start + mean)
        return beyond

    @staticmethod
    def _refuse(jobs: list, count: int) -> None:
        for *_, future in jobs:
            if future.set_running_or_notify_cancel():
                future.set_exception(ServiceError(
                    grpc.StatusCode.UNAVAILABLE,
                    f"the server is shutting down, and its long-job queue would not reach this job within its grace "
                    f"({count} refused at once, so that they are retried elsewhere)"))

    def _run_one(self, job: list) -> None:
        """Run ``job``'s [work, future]. Handed over in a list emptied here: a failed job's traceback holds this
        frame and, through it, the pool's frame that called it, whose arguments held the future, which holds
        the error: a cycle, with everything the job's frames held (its decoded content), that only a full
        collection freed."""
        work, future, key = job
        job.clear()
        t0 = time.monotonic()
        with self._lock:
            self._started[key] = t0
            self._stepped[threading.get_ident()] = t0
        try:
            if future.set_running_or_notify_cancel():  # (cancelled while it waited: not run)
                result, error = None, None
                try:
                    result = work()
                except BaseException as e:  # noqa: BLE001 - the call's, raised where it awaits the future
                    error = e
                with self._lock:  # a drain's estimate: a job's own run (not its place's hold), and its thread free,
                    took = time.monotonic() - t0  # counted before its caller learns the end: a job it sends next
                    self._run_mean_s = took if self._run_mean_s is None else 0.8 * self._run_mean_s + 0.2 * took
                    self._started.pop(key, None)  # is judged by them
                if error is None:
                    future.set_result(result)
                else:
                    future.set_exception(error)
        finally:
            work = future = result = error = None  # type: ignore[assignment]  # (the error's traceback holds this frame)
            with self._lock:
                self._running -= 1
                self._started.pop(key, None)
                self._stepped.pop(threading.get_ident(), None)
            self._dispatch()

    def _step(self) -> None:
        """A running job made a step (on its thread)."""
        now = time.monotonic()
        with self._lock:
            last = self._stepped.get(threading.get_ident())
            if last is not None:
                took = now - last
                self._step_mean_s = took if self._step_mean_s is None else 0.8 * self._step_mean_s + 0.2 * took
            self._stepped[threading.get_ident()] = now

    def rendering(self) -> tuple[float, float | None]:
        """(the longest a running job has gone without a step, the mean time between steps, None before any);
        (0, None) when none runs. What the stuck watch (server/stalled.py) judges, as the batcher's batch."""
        now = time.monotonic()
        with self._lock:
            if not self._stepped:
                return 0.0, None
            return now - min(self._stepped.values()), self._step_mean_s

    @property
    def admitted(self) -> int:
        """Jobs running or waiting for a thread (adain_long_jobs)."""
        return self._admitted

    async def run(
        self,
        prepare: Callable[[], Prepared],
        deadline: float | None,
        on_progress: Callable[[Progress], None] | None = None,
        tiled: bool = False,
        place: Place | None = None,
    ) -> Ran:
        """The job ``prepare`` gives (called on the job's thread), refined, or ``tiled`` rendered tile by
        tile, with its times (the queue's apart: a reply's refine_ms counted it, and queue_ms said 0); raises
        ServiceError (CANCELLED/DEADLINE_EXCEEDED) when stopped, and what ``prepare`` raises.
        ``on_progress`` is called on the event loop (for a tiled job: step = statistics boxes + tiles done,
        loss 0). The caller has admitted the job."""
        from adain.optimize import parts_progress, refine
        from adain.tiling import render_tiled

        loop = asyncio.get_running_loop()
        stop = threading.Event()
        steps = [0]  # the iterations a refine has run

        def on_step(progress: Progress) -> None:
            self._step()
            steps[0] = max(steps[0], progress.iteration)
            self._check(stop, deadline)
            if on_progress is not None:
                loop.call_soon_threadsafe(on_progress, progress)
            waited = 0.0
            while self.busy() and waited < YIELD_MAX_S:  # fast requests first
                time.sleep(YIELD_POLL_S)
                waited += YIELD_POLL_S
                self._check(stop, deadline)

        queued = time.perf_counter()

        def timed() -> Ran:
            start = time.perf_counter()
            self._check(stop, deadline)  # gone while it waited: not decoded for nobody
            prepared = prepare()
            ready = time.perf_counter()
            if tiled:
                image = render_tiled(self.stylizer, prepared, self.stylizer.tiling, on_step=parts_progress(on_step))
                return Ran(image, start - queued, ready - start)
            image = refine(self.stylizer, prepared, on_step=on_step)
            return Ran(image, start - queued, ready - start, steps[0])

        future = self._submit(place.caller if place is not None else "", timed)
        if place is not None:
            place.hold_until(future)  # not freed by the call's end while its thread still runs
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            stop.set()  # the thread stops at its next iteration; the call is already gone
            raise
        except StoppedError as e:
            # Its status says all: the stopped thread's frames (the content, the tiles' buffers, the optimiser's
            # state) go now, not with the last reference to the error (they keep their line numbers).
            traceback.clear_frames(e.__traceback__)
            code = grpc.StatusCode.DEADLINE_EXCEEDED if e.reason == "deadline" else grpc.StatusCode.CANCELLED
            raise ServiceError(code, f"{'tiled render' if tiled else 'refine'} stopped: {e.reason}") from e
        finally:
            # The future holds the job's error, whose traceback holds this frame: a cycle that only a full
            # collection (rare in a server's heap) freed, with everything the job's frames hold.
            future = None

    @staticmethod
    def _check(stop: threading.Event, deadline: float | None) -> None:
        if stop.is_set():
            raise StoppedError("cancelled")
        if deadline is not None and time.monotonic() >= deadline:
            raise StoppedError("deadline")

    def close(self) -> None:
        with self._lock:
            waiting, self._waiting = self._waiting, []
        for *_, future in waiting:
            future.cancel()
        self.pool.shutdown(wait=False, cancel_futures=True)
