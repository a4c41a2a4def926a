"""Styles registered with RegisterStyle: image bytes by sha256, shared fairly between callers.

One shared least-recently-used order let one caller's registrations push out every other caller's styles (an
outside tester: 20 registrations emptied a registry of 8). So each entry counts for one caller, the last that
registered or used it, and when the registry is full the least recently used entry of the caller that holds
the most goes: a caller that floods it evicts its own. An image is kept once, whoever sends it (its id is its
sha256), so a style two callers use counts for one of them, the last.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
from collections import OrderedDict
from dataclasses import dataclass, field


def style_id(data: bytes) -> str:
    """The id of a style image: the sha256 hex digest of its bytes (as sent)."""
    return hashlib.sha256(data).hexdigest()


@dataclass
class _Holder:
    """One caller's entries, least recently used first (the value: when each was last used), and their bytes."""

    keys: OrderedDict[str, int] = field(default_factory=OrderedDict)
    bytes: int = 0


class StyleRegistry:
    """A thread-safe map id -> image bytes, bounded by count and by total bytes; evicts fairly between callers
    (see the module docstring)."""

    def __init__(self, max_count: int = 256, max_bytes: int = 1 << 30) -> None:
        if max_count < 1 or max_bytes < 1:
            raise ValueError("max_count and max_bytes must be >= 1")
        self.max_count = max_count
        self.max_bytes = max_bytes
        self._items: dict[str, tuple[bytes, str]] = {}  # id -> (image, the caller it counts for)
        self._holders: dict[str, _Holder] = {}
        self._bytes = 0
        self._clock = itertools.count()  # orders uses across callers (ties between holders)
        self._lock = threading.Lock()

    def add(self, data: bytes, key: str | None = None, caller: str = "") -> str:
        """Keep ``data`` for ``caller``; returns its id. ``key``: its id computed already (off the event loop:
        hashing 32 MiB there took 37 ms of every other call's time)."""
        key = key or style_id(data)
        with self._lock:
            if key in self._items:
                self._use(key, caller)
                return key
            self._items[key] = (bytes(data), caller)
            self._bytes += len(data)
            self._count_for(key, caller, len(data))
            while len(self._items) > 1 and (len(self._items) > self.max_count or self._bytes > self.max_bytes):
                self._evict(keep=key, by_bytes=len(self._items) <= self.max_count, adder=caller)
        return key

    def get(self, key: str, caller: str | None = None) -> bytes | None:
        """The image of ``key``, or None; a use by ``caller`` makes the entry count for it from now on."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._use(key, item[1] if caller is None else caller)
            return item[0]

    def held(self, caller: str) -> int:
        """How many entries count for ``caller``."""
        with self._lock:
            holder = self._holders.get(caller)
            return len(holder.keys) if holder is not None else 0

    def _use(self, key: str, caller: str) -> None:
        data, owner = self._items[key]
        if owner != caller:
            self._drop_from(owner, key, len(data))
            self._items[key] = (data, caller)
        self._count_for(key, caller, len(data))

    def _count_for(self, key: str, caller: str, size: int) -> None:
        """``key`` (``size`` bytes) counts for ``caller`` from now on, as its most recent use."""
        holder = self._holders.setdefault(caller, _Holder())
        if holder.keys.pop(key, None) is None:  # new to it
            holder.bytes += size
        holder.keys[key] = next(self._clock)

    def _drop_from(self, caller: str, key: str, size: int) -> None:
        holder = self._holders[caller]
        del holder.keys[key]
        holder.bytes -= size
        if not holder.keys:
            del self._holders[caller]

    def _evict(self, keep: str, by_bytes: bool, adder: str) -> None:
        """Drop the least recently used entry of the caller holding the most entries (the most bytes where only
        the byte limit is passed); of callers holding as much, the one adding, else the one whose entry is the
        oldest. ``keep`` (the entry being added) stays while anything else can go."""

        def size(name: str) -> tuple[int, int]:
            h = self._holders[name]
            return (h.bytes, len(h.keys)) if by_bytes else (len(h.keys), h.bytes)

        def oldest(name: str) -> int:
            keys = self._holders[name].keys
            return next((used for k, used in keys.items() if k != keep), 1 << 62)

        names = [n for n, h in self._holders.items() if any(k != keep for k in h.keys)]
        most = max(size(n) for n in names)
        tied = [n for n in names if size(n) == most]
        name = adder if adder in tied else min(tied, key=oldest)
        key = next(k for k in self._holders[name].keys if k != keep)
        data, _ = self._items.pop(key)
        self._bytes -= len(data)
        self._drop_from(name, key, len(data))

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._items
