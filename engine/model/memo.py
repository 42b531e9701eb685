"""A small thread-safe LRU cache for results computed from a shared, read-only model."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any


class Memo:
    """`memo(key, compute)` returns the value kept for `key`, or computes, keeps and returns it.

    Two threads asking for the same missing key may both compute it (maps are
    deterministic, so either answer is right); the cache itself is never corrupted.
    """

    def __init__(self, max_entries: int = 96, max_bytes: int | None = None) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes  # also bounded by the values' size (NumPy arrays' nbytes), when given
        self._bytes = 0
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
        return None

    def __call__(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        found = self.get(key)
        if found is not None:
            return found
        value = compute()  # outside the lock: a slow method must not block other sessions
        with self._lock:
            self.misses += 1
            if key in self._items:
                self._bytes -= _size(self._items[key])
            self._items[key] = value
            self._bytes += _size(value)
            self._items.move_to_end(key)
            while len(self._items) > self.max_entries or (
                self.max_bytes is not None and self._bytes > self.max_bytes and len(self._items) > 1
            ):
                self._bytes -= _size(self._items.popitem(last=False)[1])
        return value

    def __len__(self) -> int:
        return len(self._items)


def _size(value: Any) -> int:
    return int(getattr(value, "nbytes", 0))
