"""Dynamic batching on a worker thread, fed from the asyncio event loop.

Requests are *admitted* first (a bounded count: when ``max_queue`` requests are preparing or waiting,
the next one is refused, and so is one whose caller already has ``max_per_caller``; the last ``reserve``
places, an eighth, are kept for callers with nothing queued, so that two bulk callers at their shares do
not fill the queue and turn everyone else away), then *submitted*
once prepared. Callers take turns: the render thread starts each batch from the oldest waiting request
of the caller served longest ago (one never served first), so a caller with one image waits behind at
most one batch of another's hundred, not the hundred, and one that keeps sending as batches form (a
video's frames) takes turns with a backlog instead of heading every batch. The batch is that
request and every other waiting one with the same ``batch_key`` (up to ``max_batch_size``, and to
``max_batch_pixels`` in all where keys are (height, width) sizes: memory grows with a batch's pixels); when fewer
are there, it waits for more until the first has waited ``max_delay_s``. The model runs on that thread,
off the event loop (torch releases the GIL), and results go back with ``call_soon_threadsafe``.

A request whose handler was cancelled (client cancel, deadline) is taken out of the queue; one whose
deadline has passed when its batch is formed is dropped with :class:`DeadlineDropped`, unrendered.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from adain.errors import StoppedError
from adain.stopping import stop_when

log = logging.getLogger("adain.server.batcher")
MAX_TURNS_KEPT = 4096  # callers whose last turn is remembered


class QueueFullError(Exception):
    """``max_queue`` requests are already admitted (``reason`` "max_queue"), or the caller's share
    (``reason`` "max_queue_per_caller"), or only the places kept for callers with nothing queued are left and
    this caller has requests queued (``reason`` "reserved")."""

    def __init__(self, message: str, reason: str = "max_queue") -> None:
        super().__init__(message)
        self.reason = reason


class ClosedError(Exception):
    """The batcher is shutting down."""


class DeadlineDropped(Exception):
    """The request's deadline passed while it waited; it was not rendered."""


@dataclass(frozen=True)
class BatchResult:
    output: Any
    queue_ms: float
    inference_ms: float
    batch_size: int


class Ticket:
    """One admitted request's place in the queue bound; :meth:`release` is idempotent."""

    __slots__ = ("_batcher", "_released", "caller", "bounded")

    def __init__(self, batcher: Batcher, caller: Hashable, bounded: bool) -> None:
        self._batcher = batcher
        self._released = False
        self.caller = caller
        self.bounded = bounded

    def release(self) -> None:
        self._batcher._release(self)


@dataclass(eq=False)
class Item:
    prepared: Any
    key: Hashable
    ticket: Ticket
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    deadline: float | None
    enqueued: float = field(default_factory=time.monotonic)


RenderFn = Callable[[Sequence[Any]], Sequence[Any]]


def _units(item: Item) -> int:
    """A request's share of its batch's render time: its padded pixels where its key is a size (h, w), else 1."""
    key = item.key
    if isinstance(key, tuple) and len(key) == 2 and all(isinstance(k, int) for k in key):
        return max(1, key[0] * key[1])
    return 1


class Batcher:
    def __init__(
        self,
        render: RenderFn,
        *,
        max_batch_size: int = 8,
        max_delay_s: float = 0.0,  # the server's --max-batch-delay-ms default: what queued during a render
        max_queue: int = 64,
        max_per_caller: int | None = None,
        max_batch_pixels: int | None = None,
        on_batch: Callable[[int, float, Sequence[float]], None] | None = None,
        on_stopped: Callable[[], None] | None = None,
        repeatable: Callable[[Any], bool] = lambda item: getattr(item, "repeatable", True),  # (Prepared's)
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or (max_per_caller is not None and max_per_caller < 1):
            raise ValueError("max_batch_size, max_queue and max_per_caller must be >= 1")
        self._render = render
        self.max_batch_size = max_batch_size
        self.max_delay_s = max(0.0, max_delay_s)
        self.max_queue = max_queue
        self.max_per_caller = max_queue if max_per_caller is None else max_per_caller  # Settings.per_caller
        self.reserve = max(1, max_queue // 8) if max_queue > 1 else 0  # places for callers with nothing queued
        self.max_batch_pixels = max_batch_pixels
        self._on_batch = on_batch  # (batch size, inference seconds, queue seconds of each)
        self._on_stopped = on_stopped  # a batch's render stopped part-way: its callers had all gone
        self._repeatable = repeatable  # whether an item may be rendered again alone once its batch failed
        self._cond = threading.Condition()
        self._pending: deque[Item] = deque()
        self._admitted = 0
        self._by_caller: dict[Hashable, int] = {}  # bounded admissions of each caller
        self._last_turn: dict[Hashable, int] = {}  # callers with requests waiting -> when they were last served
        self._turns = 0
        self._closed = False
        self._stopped = False  # the render thread has taken its last batch (closed and drained)
        self._draining = False  # shed() was called: a batch no longer waits to fill
        self._drain_until: float | None = None  # when the drain's grace ends (monotonic)
        self._thread: threading.Thread | None = None
        # A request's render time per pixel (per request where keys are no sizes), a running average: what a drain
        # expects. One average a batch, whatever its size, took a batch of 7 for one of 1 after single calls, so
        # a drain kept a queue it could not render and cut it all at the grace's end.
        self._unit_s: float | None = None
        self._unit_seeded = False  # _unit_s is the start's warm-up's (see seed_unit), until a batch is timed
        self._rendering_since: float | None = None  # when the batch rendering now began; None when idle
        self._rendering_units = 0  # that batch's pixels

    # -- event-loop side ------------------------------------------------------------------------
    def admit(self, bounded: bool = True, caller: Hashable = None) -> Ticket:
        """Take a place in the queue bound, or raise QueueFullError / ClosedError. ``bounded=False`` is
        for work bounded elsewhere (a video stream's window of frames): it is counted, never refused.
        ``caller`` is who asks (a token's name, a peer): it takes turns with the others."""
        with self._cond:
            if self._closed:
                raise ClosedError("the server is shutting down")
            if bounded and self._admitted >= self.max_queue:
                raise QueueFullError(f"the request queue is full (max_queue={self.max_queue})")
            mine = self._by_caller.get(caller, 0)
            if bounded and mine >= self.max_per_caller:
                raise QueueFullError(
                    f"this caller already has {mine} requests queued (max_queue_per_caller={self.max_per_caller}); "
                    "others still get places",
                    reason="max_queue_per_caller",
                )
            if bounded and mine and self._admitted >= self.max_queue - self.reserve:
                raise QueueFullError(
                    f"the request queue is full for callers with requests queued already (max_queue={self.max_queue}"
                    f", of which the last {self.reserve} are kept for callers with none); this caller has {mine}",
                    reason="reserved",  # not a full queue: AdainQueueFull fired on two bulk callers sharing it
                )
            self._admitted += 1
            if bounded:
                self._by_caller[caller] = mine + 1
            return Ticket(self, caller, bounded)

    def _release(self, ticket: Ticket) -> None:
        with self._cond:
            if not ticket._released:
                ticket._released = True
                self._admitted -= 1
                if ticket.bounded:
                    left = self._by_caller[ticket.caller] - 1
                    if left:
                        self._by_caller[ticket.caller] = left
                    else:
                        del self._by_caller[ticket.caller]

    @property
    def depth(self) -> int:
        """Requests admitted and not yet rendering (preparing or waiting)."""
        return self._admitted

    @property
    def busy(self) -> bool:
        """Requests admitted, or a batch rendering: what a long job gives way to (``depth`` alone is 0 while a
        batch renders, its tickets released as it was taken, and a refine iteration ran beside it)."""
        return self._admitted > 0 or self._rendering_since is not None

    def submit(self, ticket: Ticket, prepared: Any, key: Hashable, deadline: float | None) -> Item:
        """Queue a prepared request; await ``item.future`` for a :class:`BatchResult`.

        ``deadline`` is a ``time.monotonic()`` instant or None.
        """
        loop = asyncio.get_running_loop()
        item = Item(prepared, key, ticket, loop, loop.create_future(), deadline)
        with self._cond:
            if self._thread is None or self._stopped or not self._thread.is_alive():
                raise ClosedError("the render thread is not running")
            self._pending.append(item)
            self._cond.notify_all()
            # draining: where the grace would not reach all that is queued with it, it is refused (its turn may
            # come before requests kept when the drain began: they stay kept); a stream's frame is never refused,
            # and those it puts out of reach go instead
            shed = self._beyond_grace(only=item if ticket.bounded else None)
        self._refuse(shed)
        return item

    def withdraw(self, item: Item) -> None:
        """Take a (cancelled) request out of the queue, if it is still waiting, and free its place; its future
        is cancelled (call this on its loop), so a batch that has it already skips it: an ended video stream's
        frames in a forming batch were rendered for nobody."""
        item.future.cancel()
        with self._cond:
            try:
                self._pending.remove(item)
            except ValueError:
                pass
            self._cond.notify_all()
        item.ticket.release()

    # -- lifecycle -------------------------------------------------------------------------------
    def seed_unit(self, unit_s: float) -> None:
        """A render time a pixel from the start's warm-up, for a drain (and a refusal's RetryInfo) before any batch
        is timed: a server stopped soon after its start refused none of its queue early (its clients waited out
        the grace, then were cut). A small warm-up image costs more a pixel than a real one, so this errs towards
        refusing early; the first batch timed replaces it."""
        with self._cond:
            if self._unit_s is None:
                self._unit_s, self._unit_seeded = unit_s, True

    def retry_after(self) -> float:
        """When a refused request may find a place: places free as the batch rendering now ends and the next is
        taken, so its remaining time by the average a pixel (0.1 s at least; 1 s before any batch is timed)."""
        with self._cond:
            if self._unit_s is None:
                return 1.0
            if self._rendering_since is None:
                return 0.1
            end = self._rendering_since + self._rendering_units * self._unit_s
            return min(60.0, max(0.1, end - time.monotonic()))

    def rendering(self) -> tuple[float, float | None]:
        """(seconds the batch rendering now has taken, the seconds its pixels take by the average a pixel, None
        before any is known); (0, None) when idle. What the render watch (server/stalled.py) judges."""
        with self._cond:
            if self._rendering_since is None:
                return 0.0, None
            expected = None if self._unit_s is None else self._rendering_units * self._unit_s
            return time.monotonic() - self._rendering_since, expected

    def start(self) -> None:
        with self._cond:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="adain-render", daemon=True)
            self._thread.start()

    def shed(self, until: float) -> int:
        """For a drain that ends at ``until`` (monotonic): refuse at once, with ClosedError, the requests
        waiting that would not be rendered by then at the average render time a pixel, so that their clients
        retry on another replica now (they waited out the whole grace, then were cut). Batches are counted in the order
        the render thread takes them (callers' turns, a size a batch: see :meth:`_batches`). A video stream's
        frames are left to finish (the stream drains as a call). Returns how many (before a batch has been
        timed, by the warm-up's time: :meth:`seed_unit`). From now on a batch starts at once, without waiting to
        fill (no new calls come, and the grace is short), and a request still being prepared when the drain began
        is refused as it is submitted where the queue with it would not be reached by ``until`` (the requests
        kept stay kept, whatever its turn)."""
        with self._cond:
            self._draining = True
            self._drain_until = until
            self._cond.notify_all()  # a batch waiting to fill starts
            shed = self._beyond_grace()
        self._refuse(shed)
        return len(shed)

    def _beyond_grace(self, only: Item | None = None) -> list[Item]:
        """Take out of the queue the requests a drain's grace will not reach (lock held); see :meth:`shed`.
        ``only``: that request alone, where any would be out of reach (one just come, whose turn may be early)."""
        if self._unit_s is None or not self._pending or self._drain_until is None:
            return []
        now = time.monotonic()
        # the queue's turn comes when the batch rendering now ends (by the average), or now when none is:
        # counting one as rendering when none was shed the whole queue of a slow replica (CI, 2 cores)
        free = now if self._rendering_since is None else max(
            now, self._rendering_since + self._rendering_units * self._unit_s)
        batches, fit, end = self._batches(), 0, free
        for batch in batches:  # each batch's time by its pixels; the first that ends past the grace, and all after
            end += sum(_units(it) for it in batch) * self._unit_s
            if end > self._drain_until:
                break
            fit += 1
        # (a stream's frame is never shed, but takes its batch when it comes: left out of the count, the
        # requests after it were kept, then cut)
        shed = [it for batch in batches[fit:] for it in batch if it.ticket.bounded]
        if only is not None:
            shed = [only] if shed else []
        for it in shed:
            self._pending.remove(it)
            it.ticket.release()
        if shed:
            self._cond.notify_all()
        return shed

    def _batches(self) -> list[list[Item]]:
        """The waiting requests as the render thread will take them, batch by batch (lock held): as
        :meth:`_next_batch` does, the head is the oldest request of the caller whose turn it is, and a batch is
        it and the oldest others of its size. Counted oldest first instead, a drain kept a bulk caller's backlog
        and refused the single requests of callers whose turn came first (which were then rendered, and the
        backlog's tail cut at the grace)."""
        turns, turn = dict(self._last_turn), self._turns
        left, batches = list(self._pending), []
        while left:
            head = min(left, key=lambda it: turns.get(it.ticket.caller, -1))  # the first of the least: the oldest
            same = [it for it in left if it.key == head.key and it is not head]
            batch = [head] + same[: self._batch_limit(head.key) - 1]
            for it in batch:
                left.remove(it)
                turns[it.ticket.caller], turn = turn, turn + 1
            batches.append(batch)
        return batches

    def _refuse(self, shed: list[Item]) -> None:
        for it in shed:
            self._post(it, error=ClosedError(
                f"the server is shutting down, and its queue would not reach this request within its grace "
                f"({len(shed)} refused at once, so that they are retried elsewhere)"))

    def close(self, timeout: float | None = None) -> None:
        """Refuse new admissions, render what is queued, and stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    # -- render thread ---------------------------------------------------------------------------
    def _next_batch(self) -> list[Item] | None:
        with self._cond:
            while True:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    self._stopped = True  # (under the lock: a submit from now on is refused, not left unrendered)
                    return None  # closed and drained
                head = self._head()
                most = self._batch_limit(head.key)
                while True:
                    same = [it for it in self._pending if it.key == head.key]
                    if len(same) >= most or self._closed or self._draining:
                        break
                    remaining = head.enqueued + self.max_delay_s - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                    if self._head() is not head:
                        break  # head withdrawn, or a caller with an earlier turn came: start over
                if self._head() is not head:
                    continue
                batch = [head] + [it for it in same if it is not head][: most - 1]
                self._rendering_since = time.monotonic()  # shed() counts it as rendering from here
                self._rendering_units = sum(_units(it) for it in batch)
                for it in batch:
                    self._pending.remove(it)
                    it.ticket.release()
                    self._last_turn[it.ticket.caller] = self._turns
                    self._turns += 1
                # A caller keeps its turn when its queue empties: forgotten, one that sent its next request
                # as each batch formed (a video's window, taken whole) counted as never served and headed
                # every batch while another's backlog starved (measured: 98 batches to 0 in a second).
                # A turn older than every waiting caller's orders as "never served" does: those go.
                waiting = {it.ticket.caller for it in self._pending}
                floor = min((self._last_turn.get(c, -1) for c in waiting), default=-1)
                kept = {c: t for c, t in self._last_turn.items() if t >= floor or c in waiting}
                if len(kept) > MAX_TURNS_KEPT:  # many callers (a front's end users): the most recent turns, and
                    recent = dict(sorted(kept.items(), key=lambda ct: ct[1])[-MAX_TURNS_KEPT:])  # every waiting one's
                    kept = {c: t for c, t in kept.items() if c in recent or c in waiting}
                self._last_turn = kept
                return batch

    def _batch_limit(self, key: Hashable) -> int:
        """How many requests of this key one batch takes: max_batch_size, and no more pixels than
        max_batch_pixels (a batch of eight 1-MP photos took 16 GB; one request always goes)."""
        if self.max_batch_pixels is None or not (isinstance(key, tuple) and len(key) == 2):
            return self.max_batch_size
        h, w = key
        return max(1, min(self.max_batch_size, self.max_batch_pixels // max(1, h * w)))

    def _head(self) -> Item | None:
        """The oldest waiting request of the caller whose turn it is (under the lock)."""
        head, best = None, 0
        for it in self._pending:  # oldest first
            turn = self._last_turn.get(it.ticket.caller, -1)
            if head is None or turn < best:
                head, best = it, turn
        return head

    @staticmethod
    def _resolve(future: asyncio.Future, result: Any = None, error: BaseException | None = None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def _post(self, item: Item, result: Any = None, error: BaseException | None = None) -> None:
        try:
            item.loop.call_soon_threadsafe(self._resolve, item.future, result, error)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    def _run(self) -> None:
        while True:
            batch = self._next_batch()  # marks it rendering, under the lock that takes it from the queue
            if batch is None:
                return
            try:
                self._render_batch(batch)
            finally:
                batch = None  # its requests' inputs (and a failure's error) are not kept while the next is awaited
                with self._cond:
                    self._rendering_since = None

    def _rendered(self) -> None:
        """The batch no longer counts as rendering, before its waiters hear of its end: one woken (or any call in
        between) read it as still rendering (busy, a longer Retry-After, a drain's queue behind it)."""
        with self._cond:
            self._rendering_since = None
            self._rendering_units = 0

    def _render_batch(self, batch: list[Item]) -> None:
        now = time.monotonic()
        live = []
        for it in batch:
            if it.future.done():  # cancelled by its handler in the meantime
                continue
            if it.deadline is not None and now >= it.deadline:
                self._post(it, error=DeadlineDropped("the deadline passed while the request was queued"))
                continue
            live.append(it)
        if not live:
            return
        t0 = time.monotonic()
        again: list[Item] = []

        def callers_gone() -> bool:  # (cancelled, past their deadlines, their streams ended)
            return all(it.future.done() for it in live)

        try:
            # stopped part-way once every caller of the batch has gone: the next batch's callers no longer wait
            # out a render nobody reads
            with stop_when(callers_gone):
                outputs = self._render([it.prepared for it in live])
            if len(outputs) != len(live):
                raise RuntimeError(f"render returned {len(outputs)} outputs for {len(live)} inputs")
        except Exception as e:  # every waiter must hear about it
            if isinstance(e, StoppedError) and callers_gone():  # (none is left to hear)
                log.info("a batch of %d stopped after %.1f s: its callers had gone", len(live), time.monotonic() - t0)
                self._rendered()
                if self._on_stopped is not None:
                    self._on_stopped()
                return
            failed: list[tuple[Item, BaseException]] = []
            if len(live) > 1:
                for it in live:
                    if self._repeatable(it.prepared):
                        again.append(it)
                    else:
                        failed.append((it, e))
            if not again:
                self._failed(live, e)
                batch = live = it = None  # (see _failed)
                return
            # one request's failure is not its batch mates': they are rendered alone, below (a clip's frame is not:
            # its render moved its stream's state on, and again would be a wrong frame, not an error)
            log.exception("render failed for a batch of %d: rendering %d of its requests alone", len(live), len(again))
            traceback.clear_frames(e.__traceback__)
        if again:  # (out of the except block: the requests' own errors are not chained to the batch's)
            self._render_alone(again, failed)
            batch = live = it = again = failed = None  # type: ignore[assignment]
            return
        inference_s = time.monotonic() - t0
        self._timed(live, inference_s)
        self._rendered()
        queue_s = [t0 - it.enqueued for it in live]
        self._observe(len(live), inference_s, queue_s)
        for it, out, q in zip(live, outputs, queue_s):
            self._post(it, BatchResult(out, q * 1000.0, inference_s * 1000.0, len(live)))

    def _failed(self, live: list[Item], e: Exception) -> None:
        """A batch's render raised ``e``: every request hears of it."""
        log.exception("render failed for a batch of %d", len(live))
        # Logged: the render's frames (the batch's tensors) go now, not with the last waiter to let go of the
        # error; their line numbers stay for the waiters' own logs.
        traceback.clear_frames(e.__traceback__)
        self._rendered()
        for it in live:
            self._post(it, error=e)
        # The error's traceback holds the caller's frame, which keeps its locals once it has returned, and these
        # requests' futures hold the error: a cycle, with the whole batch, that only a full collection freed (the
        # caller lets go of its own).
        live = it = None  # type: ignore[assignment]

    def _render_alone(self, live: list[Item], failed: list[tuple[Item, BaseException]]) -> None:
        """A failed batch's requests one at a time: the one whose input fails the render (a bug's trigger) gets
        the error, the others their images; ``failed`` get the batch's error. The results are handed over once all
        are done, so that none is heard of while the batch still counts as rendering."""
        posts: list[tuple[Item, Any, BaseException | None]] = [(it, None, e) for it, e in failed]
        for it in live:
            if it.future.done():  # (past its deadline: gRPC ends the call, which cancels it)
                continue
            t0 = time.monotonic()
            try:
                out = self._render([it.prepared])[0]
            except Exception as e:
                log.exception("render failed for one request of a failed batch")
                traceback.clear_frames(e.__traceback__)
                posts.append((it, None, e))
                continue
            inference_s = time.monotonic() - t0
            self._observe(1, inference_s, [t0 - it.enqueued])
            posts.append((it, BatchResult(out, (t0 - it.enqueued) * 1000.0, inference_s * 1000.0, 1), None))
        self._rendered()
        for it, result, error in posts:
            self._post(it, result, error)
        # the errors' tracebacks hold this frame, whose locals would hold the requests (see _render_batch's cycle)
        posts = live = failed = it = out = result = error = None  # type: ignore[assignment]

    def _observe(self, size: int, inference_s: float, queue_s: list[float]) -> None:
        if self._on_batch is not None:
            try:
                self._on_batch(size, inference_s, queue_s)
            except Exception:  # metrics must not break serving
                log.exception("batch metrics callback failed")

    def _timed(self, live: list[Item], inference_s: float) -> None:
        with self._cond:
            unit_s = inference_s / max(1, sum(_units(it) for it in live))
            first = self._unit_s is None or self._unit_seeded
            self._unit_s = unit_s if first else 0.7 * self._unit_s + 0.3 * unit_s
            self._unit_seeded = False
