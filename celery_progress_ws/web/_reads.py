"""One-off reads of a stream's newest entries (snapshots, cancel checks, SSE resume checks), bounded and fair.

Bounded in size: entries are read newest first, ``REQUEST_BATCH`` at a time, only until the request has what it needs
(at most ``REQUEST_LIMIT`` entries unless asked for more), and entries over ``max_entry_bytes`` are skipped as delivery
skips them. Fair to delivery: these reads take turns, one command at a time, so a burst of snapshots waits here
instead of queueing ahead of other users' catch-up reads on the shared command connection. Bounded in time: waiting
for a turn fails after ``wait_seconds`` (``SourceUnavailable``, answered 503), and so does a command (socket timeout).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .._core.codec import decode_entry
from .._core.errors import MalformedEntry, SourceUnavailable
from .._core.streams import StreamSource, Topic

REQUEST_BATCH = 16
"""Entries per command: small, so one command never holds the shared connection for long."""
REQUEST_LIMIT = 256
"""Entries a snapshot looks through at most for a status and a progress."""

Decoded = tuple[str, dict[str, Any]]
"""A well-formed entry: its id and the decoded entry."""


@dataclass(frozen=True, slots=True)
class Newest:
    """What a read found: the stream's newest id (even if that entry was skipped) and the well-formed entries read."""

    newest_id: str | None = None
    entries: list[Decoded] = field(default_factory=list)
    """Newest first."""


class NewestReader:
    """Reads for requests, one command at a time across the process."""

    def __init__(self, source: StreamSource, *, max_entry_bytes: int, wait_seconds: float) -> None:
        self._source = source
        self._max_entry_bytes = max_entry_bytes
        self._wait_seconds = wait_seconds
        self._turn = asyncio.Semaphore(1)

    async def newest(self, topic: Topic, enough: Callable[[list[Decoded]], bool], limit: int = REQUEST_LIMIT) -> Newest:
        """Read newest first until ``enough(entries)`` holds, the stream ends, or ``limit`` entries were read."""
        newest_id: str | None = None
        entries: list[Decoded] = []
        before: str | None = None
        read = 0
        while read < limit:
            count = min(REQUEST_BATCH, limit - read)
            batch = await self._read(topic, count, before)
            if batch and newest_id is None:
                newest_id = batch[0][0]
            for entry_id, message in batch:
                entry = self._decode(message)
                if entry is not None:
                    entries.append((entry_id, entry))
            read += len(batch)
            if len(batch) < count or enough(entries):
                break
            before = batch[-1][0]
        return Newest(newest_id, entries)

    async def _read(self, topic: Topic, count: int, before: str | None) -> list[tuple[str, bytes | str | None]]:
        try:
            await asyncio.wait_for(self._turn.acquire(), self._wait_seconds)
        except TimeoutError as exc:
            raise SourceUnavailable("too many reads are waiting for Redis") from exc
        try:
            return await self._source.read_latest(topic, count, before)
        finally:
            self._turn.release()

    def _decode(self, message: bytes | str | None) -> dict[str, Any] | None:
        if message is None or len(message) > self._max_entry_bytes:
            return None
        try:
            return decode_entry(message)
        except MalformedEntry:
            return None
