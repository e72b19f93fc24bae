"""Reading operation streams in tests: decoded entries, and polling Redis (with a deadline) until a condition holds."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import redis

from celery_progress_ws import ProgressSettings
from celery_progress_ws._core.codec import decode_fields
from celery_progress_ws._core.keys import KeySpace

Entries = list[dict[str, Any]]


def stream_key(settings: ProgressSettings, operation_id: str) -> str:
    """The stream key of ``operation_id`` under the settings' prefix."""
    return KeySpace(settings.key_prefix).stream(operation_id)


def read(client: redis.Redis, settings: ProgressSettings, operation_id: str) -> Entries:
    """Every entry of the operation's stream, decoded, oldest first."""
    return [decode_fields(fields) for _, fields in client.xrange(stream_key(settings, operation_id))]


def wait_for(
    client: redis.Redis,
    settings: ProgressSettings,
    operation_id: str,
    condition: Callable[[Entries], bool],
    timeout: float = 10.0,
) -> Entries:
    """Poll the stream until ``condition(entries)`` holds; fail with what the stream held at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        entries = read(client, settings, operation_id)
        if condition(entries):
            return entries
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s; stream holds {entries}")
        time.sleep(0.02)


def statuses(entries: Entries) -> list[str]:
    """The ``status`` of each ``status_update`` entry, in order."""
    return [entry["data"]["status"] for entry in entries if entry["type"] == "status_update"]


def progress_values(entries: Entries) -> list[Any]:
    """``documents_processed`` of each ``chunking_progress`` entry, in order."""
    return [entry["data"]["documents_processed"] for entry in entries if entry["type"] == "chunking_progress"]


def ended(entries: Entries) -> bool:
    """Whether the stream holds a terminal status."""
    return any(status in ("completed", "failed", "cancelled") for status in statuses(entries))


def kinds(entries: Entries) -> list[str]:
    """Each entry as ``status:<status>``, ``progress:<current>`` or its event type, to compare sequences at a glance."""
    out = []
    for entry in entries:
        if entry["type"] == "status_update":
            out.append(f"status:{entry['data']['status']}")
        elif entry["type"] == "chunking_progress":
            out.append(f"progress:{entry['data']['documents_processed']}")
        else:
            out.append(entry["type"])
    return out
