"""Routes live entries to the subscribers of each topic and runs their catch-up (history, resume and repair).

Each live entry is decoded and serialized once, then offered to every subscriber of its topic: sent at once to an idle
connection, else one queue append (see ``Outbox``).
A subscriber's catch-up is one short task at a time: make sure the topic's live channel is subscribed (confirmed),
read the stream after the subscriber's position, then release the live entries it buffered meanwhile.

Live announcements are not trusted blindly, since anyone who can PUBLISH on Redis can send one: an id ahead of Redis'
clock cannot be real and is replaced by a read of the stream, and a terminal entry is read back from the stream (once
per topic) before it ends any connection. A position found ahead of the stream is forgotten after a gap message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Collection
from typing import Any

from .._core.codec import StreamId, decode_entry, parse_stream_id
from .._core.errors import MalformedEntry, SourceUnavailable
from .._core.policy import is_finished, is_terminal
from .._core.schemas import GapReason
from .._core.streams import StreamSource, Topic, TopicKind, gap_reason
from . import _close_codes as close
from ._metrics import WebTally
from ._outbox import Outgoing
from ._subscriber import Subscriber
from ._tasks import stop_task

logger = logging.getLogger(__name__)

RETRY_FIRST_SECONDS = 0.05
BEHIND_MS = 50
"""A live entry older than this (by its id's time) means the reader is behind: connections then send from their
queues, in batches, instead of the reader sending to each socket itself (cheapest per message when keeping up)."""
PLAUSIBLE_AHEAD_MS = 5_000
"""A live id further ahead of Redis' clock than this was not issued by Redis: real ids carry the time of their XADD,
which precedes the announcement. The margin covers the error of the measured clock offset and small clock steps; a
real entry misjudged costs one stream read, never the entry."""


def _local_ms() -> float:
    return time.time() * 1000


class Hub:
    """Knows which subscribers watch which topic; implements ``SourceListener`` for the stream source."""

    def __init__(
        self,
        source: StreamSource,
        *,
        history_batch: int,
        max_entry_bytes: int,
        retry_max_seconds: float,
        clock: Callable[[], float] = _local_ms,
        tally: WebTally | None = None,
    ) -> None:
        self.source = source
        self._tally = tally if tally is not None else WebTally()
        self._history_batch = history_batch
        self._max_entry_bytes = max_entry_bytes
        self._retry_max_seconds = retry_max_seconds
        self._clock = clock
        """Redis' current time in milliseconds, to judge live ids by."""
        self._topics: dict[Topic, set[Subscriber]] = {}
        self._catch_ups: dict[Subscriber, asyncio.Task[None]] = {}
        self._held: dict[Topic, deque[Outgoing]] = {}
        """Per topic: a terminal live entry being confirmed from the stream, and the live entries that followed it."""
        self._confirming: dict[Topic, asyncio.Task[None]] = {}

    def subscribers(self, topic: Topic) -> list[Subscriber]:
        return list(self._topics.get(topic, ()))

    def attach(self, subscriber: Subscriber) -> None:
        """Start delivering ``subscriber``'s topic to it: catch-up first, then live."""
        self._topics.setdefault(subscriber.topic, set()).add(subscriber)
        self._schedule(subscriber)

    async def detach(self, subscriber: Subscriber) -> None:
        """Stop delivering to ``subscriber``; unsubscribe its topic when it was the last one."""
        await stop_task(self._catch_ups.pop(subscriber, None))
        subscribers = self._topics.get(subscriber.topic)
        if subscribers is None or subscriber not in subscribers:
            return
        subscribers.discard(subscriber)
        if not subscribers:
            del self._topics[subscriber.topic]
            self._held.pop(subscriber.topic, None)
            await stop_task(self._confirming.pop(subscriber.topic, None))
            await self.source.drop(subscriber.topic)

    def broadcast(self, topic: Topic, message: dict[str, Any]) -> int:
        """Hand a message without stream id straight to the local subscribers of ``topic``; return how many."""
        terminal = topic.kind is TopicKind.OPERATION and is_terminal(message)
        item = Outgoing.unstored(message, terminal=terminal)
        subscribers = self._topics.get(topic, ())
        for subscriber in subscribers:
            subscriber.offer_live(item)
        return len(subscribers)

    # -- SourceListener ---------------------------------------------------------------------------------------------

    def on_entry(self, topic: Topic, entry_id: str, message: bytes | str) -> None:
        subscribers = self._topics.get(topic)
        if not subscribers:
            return
        item = self.decode(topic, entry_id, message)
        if item is None or item.key is None:
            return
        now = self._clock()
        if item.key[0] > now + PLAUSIBLE_AHEAD_MS:
            logger.warning(
                "Ignoring live entry %s of %s %r: its id is ahead of Redis' clock; reading the stream instead",
                entry_id,
                topic.kind,
                topic.name,
            )
            self._repair(topic)
            return
        behind = now - item.key[0]
        self._tally.observe_lag(max(behind, 0.0) / 1000)
        if behind > BEHIND_MS:
            item.direct = False
        held = self._held.get(topic)
        if held is not None:
            held.append(item)  # behind a terminal entry being confirmed: order is kept
        elif item.terminal:
            self._held[topic] = deque([item])
            task = asyncio.get_running_loop().create_task(self._release_held(topic))
            self._confirming[topic] = task
            task.add_done_callback(lambda done: self._forget_confirmation(topic, done))
        else:
            for subscriber in subscribers:
                subscriber.offer_live(item)

    def on_lost(self, topics: Collection[Topic] | None = None) -> None:
        for subscribers in self._subscribers_of(topics):
            for subscriber in subscribers:
                subscriber.begin_catch_up()

    def on_restored(self, topics: Collection[Topic] | None = None) -> None:
        for subscribers in self._subscribers_of(topics):
            for subscriber in subscribers:
                if subscriber.catching_up:
                    self._schedule(subscriber)

    def _subscribers_of(self, topics: Collection[Topic] | None) -> list[set[Subscriber]]:
        if topics is None:
            return list(self._topics.values())
        return [self._topics[topic] for topic in topics if topic in self._topics]

    # -- live entries that need the stream's word ------------------------------------------------------------------

    async def _release_held(self, topic: Topic) -> None:
        """Confirm held terminal entries from the stream and offer the held entries in order; repair on doubt."""
        try:
            while held := self._held.get(topic):
                item: Outgoing | None = held[0]
                if held[0].terminal:
                    item = await self._confirmed(topic, held[0])
                held.popleft()
                if item is None:
                    self._repair(topic)
                else:
                    self._offer_confirmed(topic, item)
        except SourceUnavailable:
            self._repair(topic)  # the catch-ups read the stream once it answers
        finally:
            self._held.pop(topic, None)

    async def _confirmed(self, topic: Topic, item: Outgoing) -> Outgoing | None:
        """The stream's own entry with ``item``'s id, or ``None`` (logged) when the stream has no such entry."""
        assert item.key is not None  # only stored entries are held
        rows = await self.source.read_after(topic, _predecessor(item.key), 1) if item.key > (0, 0) else []
        if rows and rows[0][0] == item.entry_id:
            return self.decode(topic, *rows[0])
        logger.warning(
            "Ignoring live entry %s of %s %r: the stream has no such entry", item.entry_id, topic.kind, topic.name
        )
        return None

    def _offer_confirmed(self, topic: Topic, item: Outgoing) -> None:
        for subscriber in self.subscribers(topic):
            position = subscriber.position.key
            if item.key is not None and position is not None and position > item.key and not subscriber.catching_up:
                # ahead of an entry the stream has: the position came from an id the stream never issued
                subscriber.rewind(GapReason.AHEAD_OF_STREAM)
                self._tally.gaps[GapReason.AHEAD_OF_STREAM] += 1
                subscriber.begin_catch_up()
                self._schedule(subscriber)
            else:
                subscriber.offer_live(item)

    def _repair(self, topic: Topic) -> None:
        """Read the stream after each subscriber's position instead of trusting a live announcement."""
        for subscriber in self.subscribers(topic):
            if not subscriber.closed:
                subscriber.begin_catch_up()
                self._schedule(subscriber)

    def _forget_confirmation(self, topic: Topic, task: asyncio.Task[None]) -> None:
        if self._confirming.get(topic) is task:
            del self._confirming[topic]

    # -- catch-up -------------------------------------------------------------------------------------------------

    def _schedule(self, subscriber: Subscriber) -> None:
        task = self._catch_ups.get(subscriber)
        if task is not None and not task.done():
            subscriber.rerun = True
            return
        task = asyncio.get_running_loop().create_task(self._catch_up(subscriber))
        self._catch_ups[subscriber] = task
        task.add_done_callback(lambda done: self._forget_task(subscriber, done))

    def _forget_task(self, subscriber: Subscriber, task: asyncio.Task[None]) -> None:
        if self._catch_ups.get(subscriber) is task:
            del self._catch_ups[subscriber]

    async def _catch_up(self, subscriber: Subscriber) -> None:
        try:
            await self._catch_up_rounds(subscriber)
        except Exception:  # a task boundary: end this one connection, never the process
            logger.exception("Catch-up of %s %r failed", subscriber.topic.kind, subscriber.topic.name)
            subscriber.outbox.abort(*close.INTERNAL_ERROR)

    async def _catch_up_rounds(self, subscriber: Subscriber) -> None:
        delay = RETRY_FIRST_SECONDS
        while not subscriber.closed:
            subscriber.rerun = False
            try:
                await self.source.ensure(subscriber.topic)
                await self._read_history(subscriber)
            except SourceUnavailable:
                if not self.source.available:
                    return  # the source calls on_restored once it is back, which schedules another round
                await asyncio.sleep(delay)  # a command failed while the live connection is up: retry, backing off
                delay = min(delay * 2, self._retry_max_seconds)
                continue
            if await subscriber.end_catch_up():
                return

    async def _read_history(self, subscriber: Subscriber) -> None:
        topic, position = subscriber.topic, subscriber.position
        run_id = self.source.run_id(topic)
        if position.key is not None:
            info = await self.source.info(topic)
            lost = position.restarted(run_id) and (info is None or not await self._has_entry(topic, position.key))
            reason = gap_reason(info, position.key, restart_lost=lost)
            if reason is not None:
                self._tally.gaps[reason] += 1
            if reason is GapReason.AHEAD_OF_STREAM:
                subscriber.rewind(reason)  # not an id of this stream: send it from its start
            elif reason is not None:
                subscriber.note_gap(reason)
            elif info is not None and info.last is not None and self._finished(topic, position.key, *info.last):
                subscriber.outbox.close(*close.COMPLETED)  # resumed at the terminal entry: nothing will come
                return
        position.run_id = run_id
        cursor = position.last_id
        while True:
            batch = await self.source.read_after(topic, cursor, self._history_batch)
            for entry_id, message in batch:
                cursor = entry_id
                item = self.decode(topic, entry_id, message)
                if item is not None and not await subscriber.deliver_history(item):
                    return
            if len(batch) < self._history_batch:
                return

    async def _has_entry(self, topic: Topic, key: StreamId) -> bool:
        """Whether the stream still holds the entry with id ``key``."""
        rows = await self.source.read_after(topic, _predecessor(key), 1) if key > (0, 0) else []
        return bool(rows) and parse_stream_id(rows[0][0]) == key

    def _finished(self, topic: Topic, position: StreamId, newest_id: str, message: bytes | str | None) -> bool:
        """Whether a subscriber at ``position`` has everything of an operation that ended (see ``is_finished``)."""
        parsed = self._parse(topic, newest_id, message) if topic.kind is TopicKind.OPERATION else None
        return parsed is not None and is_finished(position, *parsed)

    def decode(self, topic: Topic, entry_id: str, message: bytes | str | None) -> Outgoing | None:
        """Decode a stored entry once; log and skip anything that is not a valid entry."""
        parsed = self._parse(topic, entry_id, message)
        if parsed is None:
            return None
        key, entry = parsed
        return Outgoing.stored(entry_id, key, entry, terminal=topic.kind is TopicKind.OPERATION and is_terminal(entry))

    def _parse(
        self, topic: Topic, entry_id: str, message: bytes | str | None
    ) -> tuple[StreamId, dict[str, Any]] | None:
        try:
            if message is None:
                raise MalformedEntry("entry has no `message` field")
            if len(message) > self._max_entry_bytes:
                raise MalformedEntry(f"entry is {len(message)} bytes; the limit is {self._max_entry_bytes}")
            return parse_stream_id(entry_id), decode_entry(message)
        except MalformedEntry as exc:
            logger.warning("Skipping entry %s of %s %r: %s", entry_id, topic.kind, topic.name, exc)
            return None


def _predecessor(key: StreamId) -> str:
    """The greatest id before ``key``: reading after it starts at ``key`` itself."""
    millis, sequence = key
    return f"{millis}-{sequence - 1}" if sequence else f"{millis - 1}-{2**64 - 1}"
