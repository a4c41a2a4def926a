"""The prepare threads (decoding, resizing, encoding), taking callers' work in turn.

The batch queue lets callers take turns (``batcher``), but the work before and after it ran first come,
first served on a plain thread pool: a caller that sent thirty 12-MP photos had all thirty decodes ahead of
another caller's one small photo. Here each caller's work waits in its own line and the threads take from
the callers in turn, so that one waits behind at most one piece of each other caller's work.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from concurrent.futures import Executor, Future
from typing import Any


class FairExecutor(Executor):
    """``workers`` threads; ``caller()``, read where work is submitted (the event loop, in the call's
    context), says whose work it is. Work of one caller runs in the order it came."""

    def __init__(self, workers: int, caller: Callable[[], Hashable], name: str = "adain-prepare") -> None:
        self._caller = caller
        self._lines: OrderedDict[Hashable, deque[tuple[Future, Callable, tuple, dict]]] = OrderedDict()
        self._cond = threading.Condition()
        self._shutdown = False
        self._threads = [threading.Thread(target=self._work, name=f"{name}_{i}", daemon=True) for i in range(workers)]
        for t in self._threads:
            t.start()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        caller = self._caller()
        work = (future, fn, args, kwargs)
        with self._cond:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._lines.setdefault(caller, deque()).append(work)
            self._cond.notify()
        future.add_done_callback(lambda f: self._drop(caller, f) if f.cancelled() else None)  # (not ``work``: a
        return future  # cycle through the future kept every request's bytes and result until a full collection)

    def _drop(self, caller: Hashable, future: Future) -> None:
        """Take a cancelled piece of work out of its line at once: left there, it held its request's bytes
        until a thread reached it, one a round, while its ticket was already free (a caller sending its share
        and cancelling, again and again, had 200 MiB waiting with nothing admitted)."""
        with self._cond:  # (re-entrant: shutdown cancels under it)
            line = self._lines.get(caller)
            work = next((w for w in line if w[0] is future), None) if line is not None else None
            if work is None:  # taken by a thread already
                return
            line.remove(work)
            if not line:
                del self._lines[caller]

    def _next(self) -> tuple[Future, Callable, tuple, dict] | None:
        """The oldest piece of work of the caller whose turn it is (that caller goes to the back), or None
        once shut down."""
        with self._cond:
            while not self._lines and not self._shutdown:
                self._cond.wait()
            if not self._lines:
                return None
            caller, line = next(iter(self._lines.items()))
            work = line.popleft()
            del self._lines[caller]
            if line:
                self._lines[caller] = line  # to the back of the turn
            return work

    def _work(self) -> None:
        while (work := self._next()) is not None:
            future, fn, args, kwargs = work
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as e:  # noqa: BLE001 - the caller gets it
                future.set_exception(e)
            del future, fn, args, kwargs, work  # no reference to a request's bytes while idle

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._cond:
            self._shutdown = True
            if cancel_futures:
                lines, self._lines = self._lines, OrderedDict()  # (a cancel drops its entry: not while iterating)
                for line in lines.values():
                    for future, *_ in line:
                        future.cancel()
            self._cond.notify_all()
        if wait:
            for t in self._threads:
                t.join()
