"""A photo's long work, followed and stopped from the page: a refine's iterations or a print-size photo's
statistics boxes and tiles as they come (``GET /api/progress/ID``), and the server's job cancelled when the
page goes away.

A refine takes seconds to minutes, and so does a photo over the server's tile threshold (a 12-MP phone photo:
70 s on a 2-core CPU). The page showed a spinner the whole time, and one it cancelled (or a closed tab) kept the
server's only long-job place busy until the call's deadline (118 s measured for a 500-step refine abandoned
after 2 s), while everyone else's refine or large photo waited or was refused.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from starlette.requests import Request

POLL_S = 0.25  # how often the request is checked for a client that went away


class ClientGone(Exception):
    """The page that asked went away: raised from the progress callback, so the client cancels the call."""


class PhotoProgress:
    """The steps of the photo calls running now, by request id (a page polls its own, an id it made): a
    refine's iterations, or a tiled render's boxes and tiles; (0, 0) until the server reports one."""

    def __init__(self) -> None:
        self._steps: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()

    def get(self, request_id: str) -> dict[str, int] | None:
        with self._lock:
            found = self._steps.get(request_id)
        return None if found is None else {"step": found[0], "steps": found[1]}

    def callback(self, request_id: str | None, gone: threading.Event) -> Callable[[Any], None]:
        """``on_progress`` for the client: records each step (under ``request_id``, where it is followed), and
        stops the call once ``gone`` is set."""

        def on_progress(p: Any) -> None:
            if gone.is_set():
                raise ClientGone("the page went away")
            if request_id is not None:
                with self._lock:
                    self._steps[request_id] = (p.step, p.steps)

        return on_progress

    def start(self, request_id: str, steps: int) -> bool:
        """Follow a call; False when one with that id runs already (the two would share one entry, and the
        first to end would remove the other's)."""
        with self._lock:
            if request_id in self._steps:
                return False
            self._steps[request_id] = (0, steps)
            return True

    def end(self, request_id: str) -> None:
        with self._lock:
            self._steps.pop(request_id, None)


async def watch_disconnect(request: Request, gone: threading.Event) -> None:
    """Set ``gone`` when the HTTP client disconnects (its body is read already, so the next message that
    comes is the disconnect); cancelled when the call ends."""
    while not await request.is_disconnected():
        await asyncio.sleep(POLL_S)
    gone.set()
