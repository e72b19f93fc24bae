"""When an operation ends and how long its stream is kept: the rules every reader and writer applies alike.

An operation ends with its first ``status_update`` entry whose status is one of ``TERMINAL_STATUSES``. A reader is
finished with it when its position is the stream's newest entry and that entry is terminal; any other position is
read from, never taken as finished.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .codec import StreamId
from .schemas import STATUS_UPDATE, TERMINAL_STATUSES, TaskStatus
from .settings import ProgressSettings


def terminal_status_of(entry_type: object, data: object) -> TaskStatus | None:
    """The terminal status an entry of ``entry_type`` with ``data`` announces, or ``None`` if it does not end."""
    if entry_type != STATUS_UPDATE or not isinstance(data, Mapping):
        return None
    status = data.get("status")
    return TaskStatus(status) if isinstance(status, str) and status in TERMINAL_STATUSES else None


def terminal_status(entry: Mapping[str, Any]) -> TaskStatus | None:
    """The terminal status an entry (or an unstored message of the same shape) announces, or ``None``."""
    return terminal_status_of(entry.get("type"), entry.get("data"))


def is_terminal(entry: Mapping[str, Any]) -> bool:
    """Whether an entry ends its operation."""
    return terminal_status(entry) is not None


def is_finished(position: StreamId | None, newest_id: StreamId | None, newest: Mapping[str, Any] | None) -> bool:
    """Whether a reader at ``position`` has nothing more to get: it is at the newest entry, and that one is terminal.

    ``newest`` is the decoded newest entry (``None`` when the stream is empty or that entry is not well-formed).
    """
    return position is not None and position == newest_id and newest is not None and is_terminal(newest)


def ttl_for(settings: ProgressSettings, entry_type: str, data: Mapping[str, Any]) -> int:
    """The stream TTL to set after writing an entry: long while running, short after a terminal status."""
    status = terminal_status_of(entry_type, data)
    if status is TaskStatus.FAILED:
        return settings.failed_ttl_seconds
    if status is not None:
        return settings.completed_ttl_seconds
    return settings.stream_ttl_seconds
