"""A thread-safe LRU of loaded things (search indexes, encoders) for the API process."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["LoadingCache"]

V = TypeVar("V")


class LoadingCache(Generic[V]):
    """Entries keyed by ``(row id, version)`` (any hashable row id), bounded by total
    ``weight``; the newest always stays. Loads run outside the lock, one per key at a time
    (concurrent requests for the same entry wait for the first load instead of loading it
    again).

    ``version`` (a row's creation or build time) tells apart two rows that had the same id:
    SQLite hands a deleted highest id out again, and another API process may have deleted
    it. Loading a new version of an id drops the old ones.
    """

    def __init__(self, limit: int, weight: Callable[[V], int] = lambda _: 1) -> None:
        self.limit = limit
        self._weight = weight
        self._entries: OrderedDict[tuple[Hashable, str], V] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[tuple[Hashable, str], threading.Lock] = {}

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self._weight(e) for e in self._entries.values())

    def values(self) -> list[V]:
        """The entries held now, oldest first."""
        with self._lock:
            return list(self._entries.values())

    def get(self, row_id: Hashable, version: str, load: Callable[[], V]) -> V:
        """The entry, loaded by ``load()`` on a miss (blocking: call it from a thread)."""
        key = (row_id, version)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:
            with self._lock:
                if key in self._entries:
                    return self._entries[key]
            entry = load()
            with self._lock:
                self._drop(row_id)
                self._entries[key] = entry
                self._loading.pop(key, None)
                total = sum(self._weight(e) for e in self._entries.values())
                while total > self.limit and len(self._entries) > 1:
                    _, old = self._entries.popitem(last=False)
                    total -= self._weight(old)
            return entry

    def drop(self, row_id: Hashable) -> None:
        """Forget every version of ``row_id`` (its row or files were deleted)."""
        with self._lock:
            self._drop(row_id)

    def _drop(self, row_id: Hashable) -> None:
        for key in [k for k in self._entries if k[0] == row_id]:
            del self._entries[key]

    def __contains__(self, row_id: object) -> bool:
        with self._lock:
            return any(k[0] == row_id for k in self._entries)
