"""A bounded, thread-safe LRU of style statistics, so a repeated style costs no encoder pass."""

from __future__ import annotations

import numbers
import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any


class StyleCache:
    """Least recently used entries go first; ``size`` 0 keeps nothing. Counts hits and misses."""

    def __init__(self, size: int) -> None:
        given: object = size  # checked as whatever a caller passes (a NumPy integer; None failed at the first put)
        if not isinstance(given, numbers.Integral) or isinstance(given, bool) or given < 0:
            raise ValueError(f"cache_size must be a whole number >= 0 (0: no cache), got {size!r}")
        self.size = int(size)
        self._data: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            value = self._data.get(key)
            if value is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: Hashable, value: Any) -> None:
        if self.size <= 0:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)
