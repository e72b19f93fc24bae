"""What became of a published entry, and how long an entry is kept when the buffer overflows."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from .._core.policy import terminal_status_of
from .._core.schemas import CHUNKING_PROGRESS
from .buffer import Rank


class PublishResult(StrEnum):
    """What happened to one published or reported entry."""

    SENT = "sent"
    """Written to Redis (accepted by a master) before the call returned."""
    THROTTLED = "throttled"
    """Held back by the throttle; the newest held value is published when the interval ends."""
    BUFFERED = "buffered"
    """Redis is unreachable or cannot take writes now (a replica, loading, no master): kept in memory and written,
    in order, when it takes writes again."""
    DROPPED = "dropped"
    """Not written and never will be: Redis cannot take writes and the buffer is full of entries that matter more,
    or Redis refused this entry for good (e.g. ``WRONGTYPE``, ``OOM``: logged with the error)."""


def rank_of(entry_type: str, data: dict[str, Any]) -> Rank:
    """How long an entry is kept when the buffer overflows."""
    if entry_type == CHUNKING_PROGRESS:
        return Rank.PROGRESS
    if terminal_status_of(entry_type, data) is not None:
        return Rank.TERMINAL
    return Rank.EVENT
