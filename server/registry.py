"""Styles registered with RegisterStyle: image bytes by sha256, least recently used dropped first."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict


def style_id(data: bytes) -> str:
    """The id of a style image: the sha256 hex digest of its bytes (as sent)."""
    return hashlib.sha256(data).hexdigest()


class StyleRegistry:
    """A thread-safe LRU map id -> image bytes, bounded by count and by total bytes."""

    def __init__(self, max_count: int = 256, max_bytes: int = 1 << 30) -> None:
        if max_count < 1 or max_bytes < 1:
            raise ValueError("max_count and max_bytes must be >= 1")
        self.max_count = max_count
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def add(self, data: bytes, key: str | None = None) -> str:
        """Keep ``data``; returns its id. ``key``: its id computed already (off the event loop: hashing 32 MiB
        there took 37 ms of every other call's time)."""
        key = key or style_id(data)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return key
            self._items[key] = bytes(data)
            self._bytes += len(data)
            while len(self._items) > 1 and (len(self._items) > self.max_count or self._bytes > self.max_bytes):
                _, old = self._items.popitem(last=False)
                self._bytes -= len(old)
        return key

    def get(self, key: str) -> bytes | None:
        with self._lock:
            data = self._items.get(key)
            if data is not None:
                self._items.move_to_end(key)
            return data

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._items
