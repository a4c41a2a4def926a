"""When graphs were being compiled inside calls, so that a compile is not taken for a hang.

Why: a shape seen a second time gets an OpenVINO graph compiled for it alone, inside the call that asked
(adain.backends._StaticShapes: 0.2-0.4 s on 2 cores). The server's stuck watch (server/stalled.py) judges a
render by its expected time; a 160-px render takes a few tens of ms, so that compile was 10x its time and
more, and a low ``--render-stuck-s`` took the replica out of service for it. The watch asks here how long
any thread spent compiling while a render ran (a compile shares the cores with every render, so it slows
them all, not only the call that waits on it).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Iterator

KEPT = 64  # finished compiles remembered (a render spans a few at most)
_lock = threading.Lock()
_done: deque[tuple[float, float]] = deque(maxlen=KEPT)  # (start, end), time.monotonic()
_running: dict[object, float] = {}  # a token -> its start


@contextlib.contextmanager
def compiling() -> Iterator[None]:
    """Marks a compile, for :func:`seconds_since`."""
    token = object()
    with _lock:
        _running[token] = time.monotonic()
    try:
        yield
    finally:
        with _lock:
            _done.append((_running.pop(token), time.monotonic()))


def seconds_since(since: float) -> float:
    """Seconds of compiling (summed over threads, those under way included) between ``since`` (time.monotonic())
    and now."""
    now = time.monotonic()
    with _lock:
        spans = [*_done, *((start, now) for start in _running.values())]
    return sum(max(0.0, end - max(start, since)) for start, end in spans)
