"""Calls in flight, and the drain on shutdown: refuse new calls, let those in flight finish."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any


class Drain:
    """Counts the calls in flight (on the event loop). Shutdown sets ``draining`` (calls that start
    then are refused with UNAVAILABLE), then ``wait``s for the calls in flight."""

    def __init__(self) -> None:
        self.draining = False
        self.inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.contextmanager
    def track(self, context: Any = None) -> Iterator[None]:
        """Count one call for as long as the block runs and, given its ``context``, until the call is done:
        grpc.aio sends a unary reply after its handler returns, and a drain that ended at the handler's return
        cut a large reply on a slow link short (the done callback comes after the status, on every path:
        returned, aborted, cancelled, past its deadline)."""
        self.inflight += 1
        self._idle.clear()
        holders = [1]

        def end(*_: Any) -> None:
            holders[0] -= 1
            if holders[0] == 0:
                self.inflight -= 1
                if self.inflight == 0:
                    self._idle.set()

        if context is not None:
            with contextlib.suppress(Exception):  # a context without it: counted for the block alone
                context.add_done_callback(end)
                holders[0] += 1
        try:
            yield
        finally:
            end()

    async def wait(self, grace: float) -> int:
        """Wait up to ``grace`` seconds for the calls in flight to end; returns how many are left."""
        if self.inflight:
            with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout=grace)
        return self.inflight
