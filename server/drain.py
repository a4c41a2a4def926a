"""Calls in flight, and the drain on shutdown: refuse new calls, let those in flight finish."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator


class Drain:
    """Counts the calls in flight (on the event loop). Shutdown sets ``draining`` (calls that start
    then are refused with UNAVAILABLE), then ``wait``s for the calls in flight."""

    def __init__(self) -> None:
        self.draining = False
        self.inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        """Count one call for as long as the block runs."""
        self.inflight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.inflight -= 1
            if self.inflight == 0:
                self._idle.set()

    async def wait(self, grace: float) -> int:
        """Wait up to ``grace`` seconds for the calls in flight to end; returns how many are left."""
        if self.inflight:
            with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout=grace)
        return self.inflight
