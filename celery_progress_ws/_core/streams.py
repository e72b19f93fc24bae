"""Reading progress streams, whatever the transport: topics, raw entries, stream metadata, positions and the gap rule.

Both readers, the web hub (async, many clients) and the ``watch`` command (sync), keep a ``Position`` per stream and,
each time they (re)read a stream after it, ask ``gap_reason`` whether entries after it may be missing.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple, Protocol

from .codec import MESSAGE_FIELD, StreamId, parse_stream_id
from .keys import KeySpace
from .schemas import GapReason


class TopicKind(StrEnum):
    """What a client watches."""

    OPERATION = "operation"
    CHANNEL = "channel"
    USER = "user"
    """A user's feed of ``operation_update`` entries; its name is the user's digest. It never finishes."""


class Topic(NamedTuple):
    """One watched stream: an operation, a custom channel or a user's feed."""

    kind: TopicKind
    name: str


def topic_stream(keys: KeySpace, topic: Topic) -> str:
    """The stream a topic reads."""
    if topic.kind is TopicKind.OPERATION:
        return keys.stream(topic.name)
    if topic.kind is TopicKind.USER:
        return keys.user_feed(topic.name)
    return keys.channel_stream(topic.name)


def topic_live(keys: KeySpace, topic: Topic) -> str:
    """The pub/sub channel on which a topic's new entries are announced."""
    if topic.kind is TopicKind.OPERATION:
        return keys.live(topic.name)
    if topic.kind is TopicKind.USER:
        return keys.user_feed_live(topic.name)
    return keys.channel_live(topic.name)


RawEntry = tuple[str, "bytes | str | None"]
"""A stream entry as read: its id and its ``message`` field (``None`` when the field is missing)."""


def raw_entry(entry_id: bytes | str, fields: Mapping[Any, Any] | None) -> RawEntry:
    """One entry of an XRANGE/XREVRANGE/XINFO reply (bytes or text) as a ``RawEntry``."""
    fields = fields or {}
    message: bytes | str | None = fields.get(MESSAGE_FIELD.encode(), fields.get(MESSAGE_FIELD))
    return (entry_id.decode() if isinstance(entry_id, bytes) else entry_id), message


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """What the store tells about a stream, for gap detection."""

    length: int
    first_id: StreamId | None
    max_deleted_id: StreamId | None = None
    entries_added: int | None = None
    last: RawEntry | None = None
    """The newest entry, if any."""

    @property
    def last_id(self) -> StreamId | None:
        return parse_stream_id(self.last[0]) if self.last is not None else None


def stream_info(reply: Mapping[str, Any]) -> StreamInfo:
    """``StreamInfo`` from redis-py's parsed ``XINFO STREAM`` reply (with or without decoded responses)."""
    first = reply.get("first-entry")
    last = reply.get("last-entry")
    max_deleted = reply.get("max-deleted-entry-id")
    added = reply.get("entries-added")
    return StreamInfo(
        length=int(reply["length"]),
        first_id=parse_stream_id(first[0]) if first else None,
        max_deleted_id=parse_stream_id(max_deleted) if max_deleted is not None else None,
        entries_added=int(added) if added is not None else None,
        last=raw_entry(last[0], last[1]) if last else None,
    )


@dataclass(slots=True)
class Position:
    """Where a reader is in one stream: the last id it delivered, and the Redis ``run_id`` it was last read under."""

    last_id: str | None = None
    run_id: str | None = None
    key: StreamId | None = field(init=False)

    def __post_init__(self) -> None:
        self.key = parse_stream_id(self.last_id) if self.last_id else None

    def admits(self, key: StreamId) -> bool:
        """Whether an entry with id ``key`` is new to this reader (the exactly-once gate)."""
        return self.key is None or key > self.key

    def advance(self, entry_id: str, key: StreamId) -> None:
        self.last_id, self.key = entry_id, key

    def forget(self) -> None:
        """Start from the stream's beginning (the position was never issued by the stream)."""
        self.last_id, self.key = None, None

    def restarted(self, run_id: str | None) -> bool:
        """Whether Redis restarted since this position was read: then its entry is looked up, to know if any were lost.

        A position read under an unknown run (or a server that hides its ``run_id``) is never taken as restarted.
        """
        return self.key is not None and None not in (self.run_id, run_id) and run_id != self.run_id


def gap_reason(info: StreamInfo | None, position: StreamId | None, *, restart_lost: bool = False) -> GapReason | None:
    """Why entries after ``position`` may be missing from a stream described by ``info``, or ``None`` if none are.

    ``restart_lost``: Redis restarted since the position was read (``Position.restarted``) and the position's entry is
    no longer in the stream; a restart that kept the stream (AOF, a replica) lost nothing. A missing stream lost
    entries only if the reader had any. A position after the newest entry is not an id of this stream (the reader
    must start again from the beginning). Trimming only removes the oldest entries, so nothing is missing while
    ``position`` is at or after the first entry; before it, entries were lost if the stream was ever trimmed
    (``entries_added > length``; assumed when the server does not report ``entries-added``).
    """
    if position is None:
        if info is None:
            return None
        position = (0, 0)
    if restart_lost:
        return GapReason.REDIS_RESTARTED
    if info is None:
        return GapReason.STREAM_MISSING
    newest = info.last_id
    if newest is not None and position > newest:
        return GapReason.AHEAD_OF_STREAM
    if info.max_deleted_id is not None and info.max_deleted_id > position:
        return GapReason.TRIMMED
    trimmed_ever = info.entries_added is None or info.entries_added > info.length
    if info.first_id is not None and info.first_id > position and trimmed_ever:
        return GapReason.TRIMMED
    return None


class SourceListener(Protocol):
    """What a stream source tells the hub."""

    def on_entry(self, topic: Topic, entry_id: str, message: bytes | str) -> None:
        """A live entry arrived (in stream order per topic)."""

    def on_lost(self, topics: Collection[Topic] | None = None) -> None:
        """The live connection of ``topics`` (``None``: every topic) was lost: their live entries may be missed until
        ``on_restored``."""

    def on_restored(self, topics: Collection[Topic] | None = None) -> None:
        """The live subscriptions of ``topics`` (``None``: every topic) are back (``StreamSource.run_id`` tells
        whether the Redis serving them restarted)."""


class StreamSource(Protocol):
    """Live subscriptions plus history reads of the streams."""

    @property
    def available(self) -> bool:
        """Whether the live connection is up."""

    def run_id(self, topic: Topic) -> str | None:
        """The ``run_id`` of the Redis serving ``topic`` (changes when it restarts, or on a cluster when another node
        takes over its slot), ``None`` before or if unknown."""

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
