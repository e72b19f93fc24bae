"""The small interface between the delivery core and the store of streams (Redis in production, fakes in tests)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple, Protocol

from .._core.codec import StreamId
from .._core.errors import ProgressError
from .._core.schemas import GapReason


class TopicKind(StrEnum):
    """What a client watches."""

    OPERATION = "operation"
    CHANNEL = "channel"


class Topic(NamedTuple):
    """One watched stream: an operation or a custom channel."""

    kind: TopicKind
    name: str


class SourceUnavailable(ProgressError):
    """The stream store cannot be reached right now; delivery resumes when it reconnects."""


RawEntry = tuple[str, "bytes | str | None"]
"""A stream entry as read: its id and its ``message`` field (``None`` when the field is missing)."""


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """What the store tells about a stream, for gap detection."""

    length: int
    first_id: StreamId | None
    max_deleted_id: StreamId | None = None
    entries_added: int | None = None
    last: RawEntry | None = None
    """The newest entry, if any."""


class SourceListener(Protocol):
    """What the source tells the hub."""

    def on_entry(self, topic: Topic, entry_id: str, message: bytes | str) -> None:
        """A live entry arrived (in stream order per topic)."""

    def on_lost(self) -> None:
        """The live connection was lost: live entries may be missed until ``on_restored``."""

    def on_restored(self, restarted: bool) -> None:
        """The live connection is back and resubscribed; ``restarted`` if the store restarted meanwhile."""


class StreamSource(Protocol):
    """Live subscriptions plus history reads of the streams."""

    @property
    def available(self) -> bool:
        """Whether the live connection is up."""

    async def ensure(self, topic: Topic) -> None:
        """Make sure live entries of ``topic`` are delivered; return once the subscription is confirmed.

        Raises ``SourceUnavailable`` while disconnected (the topic stays wanted and is subscribed on reconnect).
        """

    async def drop(self, topic: Topic) -> None:
        """Stop live delivery of ``topic``."""

    async def read_after(self, topic: Topic, after: str | None, count: int) -> list[RawEntry]:
        """Up to ``count`` entries with an id greater than ``after`` (all when ``None``), oldest first."""

    async def read_latest(self, topic: Topic, count: int, before: str | None = None) -> list[RawEntry]:
        """Up to ``count`` of the newest entries (with an id less than ``before``, if given), newest first."""

    async def info(self, topic: Topic) -> StreamInfo | None:
        """Stream metadata, or ``None`` when the stream does not exist."""


def gap_reason(info: StreamInfo | None, position: StreamId) -> GapReason | None:
    """Why entries after ``position`` may be missing from a stream described by ``info``, or ``None`` if none are.

    Trimming only removes the oldest entries, so nothing is missing while ``position`` is at or after the first
    entry. Before it, entries were lost if the stream was ever trimmed (``entries_added > length``; assumed when the
    server does not report ``entries-added``).
    """
    if info is None:
        return GapReason.STREAM_MISSING
    if info.max_deleted_id is not None and info.max_deleted_id > position:
        return GapReason.TRIMMED
    trimmed_ever = info.entries_added is None or info.entries_added > info.length
    if info.first_id is not None and info.first_id > position and trimmed_ever:
        return GapReason.TRIMMED
    return None
