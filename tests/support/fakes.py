"""An in-memory ``StreamSource`` for unit tests of the hub: streams, live announcements, outages, and yields.

Appending stores the entry and, if its topic is subscribed and the source is up, announces it at once (as the write
script's XADD + PUBLISH do). Every read yields to the event loop before and after taking its snapshot, so concurrent
writers interleave with catch-ups the way they do over a network.
"""

from __future__ import annotations

import asyncio
import bisect
import json
from typing import Any

from celery_progress_ws._core.codec import make_entry, parse_stream_id
from celery_progress_ws._core.errors import SourceUnavailable
from celery_progress_ws._core.streams import RawEntry, SourceListener, StreamInfo, Topic


class FakeSource:
    """``StreamSource`` over Python lists."""

    def __init__(self) -> None:
        self.streams: dict[Topic, list[tuple[str, str | None]]] = {}
        self.subscribed: set[Topic] = set()
        self.listener: SourceListener | None = None
        self.up = True
        self.trimmed: dict[Topic, int] = {}
        self.runs = 1
        self._sequence = 0

    @property
    def available(self) -> bool:
        return self.up

    def run_id(self, topic: Topic) -> str:
        return f"run-{self.runs}"

    def append(self, topic: Topic, entry_type: str = "note", data: dict[str, Any] | None = None) -> str:
        """Store an entry (ids increase) and announce it if the topic is subscribed and the source is up."""
        self._sequence += 1
        entry_id = f"{1000 + self._sequence}-0"
        message = json.dumps(make_entry(entry_type, data or {"n": self._sequence}))
        self.append_raw(topic, entry_id, message)
        return entry_id

    def append_raw(self, topic: Topic, entry_id: str, message: str | None) -> None:
        self.streams.setdefault(topic, []).append((entry_id, message))
        if self.up and topic in self.subscribed and self.listener is not None and message is not None:
            self.listener.on_entry(topic, entry_id, message)

    def trim(self, topic: Topic, keep: int) -> None:
        """Drop all but the newest ``keep`` entries (like MAXLEN)."""
        entries = self.streams.get(topic, [])
        self.trimmed[topic] = self.trimmed.get(topic, 0) + max(0, len(entries) - keep)
        self.streams[topic] = entries[-keep:]

    def go_down(self) -> None:
        self.up = False
        self.subscribed.clear()
        if self.listener is not None:
            self.listener.on_lost()

    def come_back(self, restarted: bool = False) -> None:
        """Reconnect; ``restarted`` gives the store a new run id (what it kept is up to the test)."""
        self.up = True
        self.runs += restarted
        if self.listener is not None:
            self.listener.on_restored()

    async def ensure(self, topic: Topic) -> None:
        if not self.up:
            raise SourceUnavailable("down")
        await asyncio.sleep(0)
        if not self.up:
            raise SourceUnavailable("down")
        self.subscribed.add(topic)

    async def drop(self, topic: Topic) -> None:
        self.subscribed.discard(topic)

    async def read_after(self, topic: Topic, after: str | None, count: int) -> list[RawEntry]:
        await asyncio.sleep(0)
        if not self.up:
            raise SourceUnavailable("down")
        entries = self.streams.get(topic, [])
        start = parse_stream_id(after) if after is not None else (-1, -1)
        first = bisect.bisect_right(entries, start, key=lambda entry: parse_stream_id(entry[0]))
        found = entries[first : first + count]
        await asyncio.sleep(0)
        return list(found)

    async def read_latest(self, topic: Topic, count: int) -> list[RawEntry]:
        await asyncio.sleep(0)
        return list(reversed(self.streams.get(topic, [])[-count:]))

    async def info(self, topic: Topic) -> StreamInfo | None:
        await asyncio.sleep(0)
        entries = self.streams.get(topic)
        if entries is None:
            return None
        first = parse_stream_id(entries[0][0]) if entries else None
        added = len(entries) + self.trimmed.get(topic, 0)
        return StreamInfo(len(entries), first, entries_added=added, last=entries[-1] if entries else None)
