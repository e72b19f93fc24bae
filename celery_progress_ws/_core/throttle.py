"""A per-key throttle that never loses the latest value: dropped values wait as a trailing publish.

Transport-agnostic and not thread-safe, except ``keep``: the sync publisher guards everything else with a lock, the
async one runs it on the loop. ``keep`` is the hot path of a dropped report and runs without the lock; under the GIL
it only ever replaces a pending value with another, in one attribute store. Should that store land just after the
owner took the pending value away, the slot would hold a value no wake-up was planned for; so every take plans one
more look at its key when the new interval ends (``next_due``/``take_due``), and the value is published then.
Only a thread held up between its check and its store for longer than a whole interval could miss that look; its
value then waits for the operation's next write, and is still written before the task's terminal status.
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
    """The value was kept as pending; schedule ``take_due`` for when ``next_due()`` says."""
    KEPT = "kept"
    """The value replaced an already scheduled pending value; nothing else to do."""


# Plain globals: an enum attribute lookup costs about as much as the rest of a dropped offer() together.
_PUBLISH, _SCHEDULE, _KEPT = Decision.PUBLISH, Decision.SCHEDULE, Decision.KEPT


class _Slot(Generic[T]):
    __slots__ = ("last_sent", "pending", "recheck")

    def __init__(self, last_sent: float) -> None:
        self.last_sent = last_sent
        self.pending: T | None = None
        self.recheck = False
        """A pending value was taken: look again when this interval ends (see the module docstring)."""

    def take(self, now: float) -> T | None:
        """Remove the pending value and count a publish at ``now``."""
        value, self.pending = self.pending, None
        self.last_sent = now
        if value is not None:
            self.recheck = True
        return value


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
            slot.take(now)
            return _PUBLISH
        first = slot.pending is None
        slot.pending = value
        return _SCHEDULE if first else _KEPT

    def keep(self, key: str, value: T, now: float) -> bool:
        """Replace the pending value of ``key`` if it has one and its interval still runs at ``now``; else ``False``.

        ``True`` means the value is scheduled and the caller has nothing else to do. The one method that is safe to
        call without the owner's lock (see the module docstring).
        """
        slot = self._slots.get(key)
        if slot is None or slot.pending is None or now - slot.last_sent >= self.interval:
            return False
        slot.pending = value
        return True

    def take_pending(self, key: str) -> T | None:
        """Remove and return the pending value of ``key``, counting it as published now."""
        slot = self._slots.get(key)
        if slot is None or slot.pending is None:
            return None
        return slot.take(self.clock())

    def take_due(self) -> list[tuple[str, T]]:
        """Remove and return every pending value whose interval has ended; end the rechecks that are due."""
        now = self.clock()
        taken: list[tuple[str, T]] = []
        for key, slot in self._slots.items():
            if (slot.pending is None and not slot.recheck) or now - slot.last_sent < self.interval:
                continue
            slot.recheck = False
            value = slot.take(now) if slot.pending is not None else None
            if value is not None:
                taken.append((key, value))
        return taken

    def next_due(self) -> float | None:
        """The earliest clock time at which ``take_due`` has something to do (a pending value or a recheck)."""
        times = [
            slot.last_sent + self.interval for slot in self._slots.values() if slot.pending is not None or slot.recheck
        ]
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
