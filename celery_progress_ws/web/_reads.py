"""One-off reads of a stream's newest entries (snapshots, cancel checks, SSE resume checks), bounded and fair.

``NewestReader`` reads any topic; ``OperationReads`` asks it what requests want to know about an operation.

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

from .._core.codec import decode_entry, is_valid_stream_id, parse_stream_id
from .._core.errors import MalformedEntry, SourceUnavailable
from .._core.keys import validate_operation_id
from .._core.policy import is_finished
from .._core.streams import StreamSource, Topic, TopicKind

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


class OperationReads:
    """What requests read of an operation's stream; every method validates the operation id first."""

    def __init__(self, reader: NewestReader, *, history_batch: int) -> None:
        self._reader = reader
        self._history_batch = history_batch

    async def newest(self, operation_id: str, enough: Callable[[list[Decoded]], bool]) -> Newest:
        """The newest entries, read until ``enough(entries)`` holds (at most ``REQUEST_LIMIT``)."""
        return await self._reader.newest(_operation(operation_id), enough)

    async def entries(self, operation_id: str, count: int | None = None) -> list[dict[str, Any]]:
        """Well-formed entries among the newest ``count`` (default ``history_batch``), newest first.

        Entries over ``max_entry_bytes`` are skipped. Raises ``SourceUnavailable`` when Redis cannot be read in time.
        """
        topic = _operation(operation_id)
        newest = await self._reader.newest(topic, lambda entries: False, count or self._history_batch)
        return [entry for _, entry in newest.entries]

    async def is_finished(self, operation_id: str, last_event_id: str) -> bool:
        """Whether ``last_event_id`` is the operation's newest entry and that entry is terminal (nothing will come).

        An id after the newest entry is not: the stream never issued it (the client gets a gap, then the stream).
        """
        topic = _operation(operation_id)
        if not is_valid_stream_id(last_event_id):
            return False
        try:
            newest = await self._reader.newest(topic, lambda entries: True, 1)
        except SourceUnavailable:
            return False
        newest_id = parse_stream_id(newest.newest_id) if newest.newest_id is not None else None
        entry = newest.entries[0][1] if newest.entries else None  # the newest entry, unless it was skipped
        return is_finished(parse_stream_id(last_event_id), newest_id, entry)


def _operation(operation_id: str) -> Topic:
    return Topic(TopicKind.OPERATION, validate_operation_id(operation_id))
