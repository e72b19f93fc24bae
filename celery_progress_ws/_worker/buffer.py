"""The bounded, ordered buffer of encoded entries waiting to be written while Redis is slow or unreachable.

Entries leave in the order they arrived. When the buffer is full, the oldest entry of the lowest rank goes first:
progress before other entries, terminal statuses last, so the entry that ends an operation is the one most likely kept.
"""

from __future__ import annotations

from collections import deque
from enum import IntEnum
from typing import Generic, TypeVar

T = TypeVar("T")


class Rank(IntEnum):
    """How much an entry is worth keeping when the buffer overflows (higher is kept longer)."""

    PROGRESS = 0
    """A ``chunking_progress`` entry: a later one supersedes it."""
    EVENT = 1
    """Free-form events and non-terminal statuses."""
    TERMINAL = 2
    """``completed``, ``failed`` or ``cancelled``."""


class EntryBuffer(Generic[T]):
    """A FIFO of at most ``capacity`` items that evicts by rank, then age. Not thread-safe: the owner locks it."""

    __slots__ = ("_items", "capacity", "dropped", "dropped_total")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.dropped = 0
        """How many items were evicted or refused since the owner last reset it."""
        self.dropped_total = 0
        """How many items were evicted or refused in all (never reset)."""
        self._items: deque[tuple[T, Rank]] = deque()

    def append(self, item: T, rank: Rank) -> bool:
        """Add ``item`` last; return ``False`` if it was refused because everything buffered outranks it."""
        if len(self._items) >= self.capacity and not self._evict(rank):
            self.dropped += 1
            self.dropped_total += 1
            return False
        self._items.append((item, rank))
        return True

    def put_back(self, item: T, rank: Rank) -> None:
        """Return an item that could not be written to the front, where it was taken from."""
        self._items.appendleft((item, rank))
        if len(self._items) > self.capacity:
            self._evict(Rank.TERMINAL)

    def take(self, count: int) -> list[tuple[T, Rank]]:
        """Remove and return up to ``count`` of the oldest items with their ranks, oldest first."""
        items = self._items
        return [items.popleft() for _ in range(min(count, len(items)))]

    def pop(self) -> tuple[T, Rank] | None:
        """Remove and return the oldest item with its rank, or ``None`` if the buffer is empty."""
        return self._items.popleft() if self._items else None

    def _evict(self, incoming: Rank) -> bool:
        """Drop the oldest item of the lowest rank, if that rank is not above ``incoming``."""
        lowest = min(rank for _, rank in self._items)
        if lowest > incoming:
            return False
        index = next(index for index, (_, rank) in enumerate(self._items) if rank == lowest)
        del self._items[index]
        self.dropped += 1
        self.dropped_total += 1
        return True

    def __len__(self) -> int:
        return len(self._items)
