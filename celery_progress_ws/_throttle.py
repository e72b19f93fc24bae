"""A per-key throttle that never loses the latest value: dropped values wait as a trailing publish.

Transport-agnostic and not thread-safe: the sync publisher guards it with a lock, the async one runs it on the loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import Enum
from typing import Generic, TypeVar

T = TypeVar("T")


class Decision(Enum):
    """What the caller of ``Throttle.offer`` must do next."""

    PUBLISH = "publish"
    """Publish the value now."""
    SCHEDULE = "schedule"
    """The value was kept as pending; schedule ``take_due`` at ``due_at(key)``."""
    KEPT = "kept"
    """The value replaced an already scheduled pending value; nothing else to do."""


# Plain globals: an enum attribute lookup costs about as much as the rest of a dropped offer() together.
_PUBLISH, _SCHEDULE, _KEPT = Decision.PUBLISH, Decision.SCHEDULE, Decision.KEPT


class _Slot(Generic[T]):
    __slots__ = ("last_sent", "pending")

    def __init__(self, last_sent: float) -> None:
        self.last_sent = last_sent
        self.pending: T | None = None


class Throttle(Generic[T]):
    """Lets one value per ``interval`` through for each key and keeps the newest of the others."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self._slots: dict[str, _Slot[T]] = {}

    def offer(self, key: str, value: T, force: bool = False, now: float | None = None) -> Decision:
        """Decide about ``value``; ``force`` (or the key's first value) always publishes and clears the pending one.

        ``now`` is a clock reading the caller already took (saves a second one on hot paths).
        """
        if now is None:
            now = self.clock()
        slot = self._slots.get(key)
        if slot is None:
            self._slots[key] = _Slot(now)
            return _PUBLISH
        if force or now - slot.last_sent >= self.interval:
            slot.last_sent = now
            slot.pending = None
            return _PUBLISH
        first = slot.pending is None
        slot.pending = value
        return _SCHEDULE if first else _KEPT

    def due_at(self, key: str) -> float | None:
        """When the pending value of ``key`` should be published (clock time), or ``None`` if there is none."""
        slot = self._slots.get(key)
        if slot is None or slot.pending is None:
            return None
        return slot.last_sent + self.interval

    def take_pending(self, key: str) -> T | None:
        """Remove and return the pending value of ``key``, counting it as published now."""
        slot = self._slots.get(key)
        if slot is None or slot.pending is None:
            return None
        value, slot.pending = slot.pending, None
        slot.last_sent = self.clock()
        return value

    def take_due(self) -> list[tuple[str, T]]:
        """Remove and return every pending value whose interval has ended."""
        now = self.clock()
        ready = [
            key
            for key, slot in self._slots.items()
            if slot.pending is not None and now - slot.last_sent >= self.interval
        ]
        taken: list[tuple[str, T]] = []
        for key in ready:
            value = self.take_pending(key)
            if value is not None:
                taken.append((key, value))
        return taken

    def next_due(self) -> float | None:
        """The earliest clock time at which some pending value becomes due, or ``None``."""
        times = [slot.last_sent + self.interval for slot in self._slots.values() if slot.pending is not None]
        return min(times, default=None)

    def forget(self, key: str) -> T | None:
        """Drop all state for ``key``; return its pending value so the caller can publish it first."""
        slot = self._slots.pop(key, None)
        return None if slot is None else slot.pending

    def forget_idle(self, idle_seconds: float) -> int:
        """Drop keys with nothing pending and nothing sent for ``idle_seconds``; return how many."""
        cutoff = self.clock() - idle_seconds
        idle = [key for key, slot in self._slots.items() if slot.pending is None and slot.last_sent < cutoff]
        for key in idle:
            del self._slots[key]
        return len(idle)

    def pending_keys(self) -> list[str]:
        """The keys that hold a pending value right now (due or not)."""
        return [key for key, slot in self._slots.items() if slot.pending is not None]

    def __contains__(self, key: object) -> bool:
        return key in self._slots

    def __len__(self) -> int:
        return len(self._slots)
