"""History reads of the Redis stream sources: XRANGE, XREVRANGE and XINFO on the command client, bounded in time.

Shared by the one-server source (``_redis_source``) and the cluster source (``_cluster_source``): a cluster client
routes each read to the primary of the stream's slot. Each command fails after the socket timeout (a timeout is not
retried) and while Redis is stalled reads fail fast (see ``StallGuard``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import ResponseError

from .._core.clients import AsyncClient
from .._core.errors import SourceUnavailable
from .._core.keys import KeySpace
from .._core.redis_errors import OUTAGE
from .._core.settings import ProgressSettings
from .._core.streams import RawEntry, StreamInfo, Topic, raw_entry, stream_info, topic_live, topic_stream
from ._metrics import WebTally
from ._stall import StallGuard

logger = logging.getLogger(__name__)

UNREADABLE: tuple[type[Exception], ...] = (*OUTAGE, OSError)
"""What a read raises while Redis cannot answer it now: unreachable, loading, or a replica without its master."""


class StreamReads:
    """The reading half of a Redis ``StreamSource``: the history of a topic's stream, and Redis' clock."""

    def __init__(self, settings: ProgressSettings, commands: AsyncClient, tally: WebTally | None) -> None:
        self._tally = tally if tally is not None else WebTally()
        self._keys = KeySpace(settings.key_prefix)
        self._commands = commands
        self._guard = StallGuard()
        self._clock_offset_ms = 0.0
        """Redis' clock minus this process' clock, measured at each connect (0 when the server does not tell)."""
        self._read_error_logged = False

    def now_ms(self) -> float:
        """Redis' current time in milliseconds (the time its new stream ids carry), as measured at the last connect."""
        return time.time() * 1000 + self._clock_offset_ms

    def _note_clock(self, server: dict[str, Any], asked_ms: float) -> None:
        """Measure the clock offset from an ``INFO server`` reply asked for at ``asked_ms`` (local clock)."""
        self._clock_offset_ms = _clock_offset_ms(server, (asked_ms + time.time() * 1000) / 2)

    def _channel(self, topic: Topic) -> bytes:
        return topic_live(self._keys, topic).encode()

    def _stream(self, topic: Topic) -> str:
        return topic_stream(self._keys, topic)

    async def read_after(self, topic: Topic, after: str | None, count: int) -> list[RawEntry]:
        start = "-" if after is None else "(" + after
        stream = self._stream(topic)
        return await self._read(topic, lambda: self._commands.xrange(stream, min=start, max="+", count=count))

    async def read_latest(self, topic: Topic, count: int, before: str | None = None) -> list[RawEntry]:
        end = "+" if before is None else "(" + before
        stream = self._stream(topic)
        return await self._read(topic, lambda: self._commands.xrevrange(stream, max=end, min="-", count=count))

    async def _read(self, topic: Topic, command: Callable[[], Awaitable[Any]]) -> list[RawEntry]:
        try:
            rows = await self._guard.run(command)
        except UNREADABLE as exc:
            raise SourceUnavailable("reading the stream failed") from exc
        except ResponseError as exc:  # e.g. a key of another type under the stream's name
            # Once per process at WARNING: whatever causes it must not log once per connection.
            level = logging.DEBUG if self._read_error_logged else logging.WARNING
            self._read_error_logged = True
            logger.log(level, "Cannot read the stream of %s %r: %s", topic.kind, topic.name, exc)
            return []
        return [raw_entry(entry_id, fields) for entry_id, fields in rows]

    async def info(self, topic: Topic) -> StreamInfo | None:
        stream = self._stream(topic)
        try:
            raw = await self._guard.run(lambda: self._commands.xinfo_stream(stream))
        except UNREADABLE as exc:
            raise SourceUnavailable("XINFO failed") from exc
        except ResponseError:  # no such key (or not a stream)
            return None
        return stream_info(raw)


def _clock_offset_ms(server: dict[str, Any], local_ms: float) -> float:
    """Redis' clock (``server_time_usec`` of ``INFO server``, Redis 7+) minus ``local_ms``; 0 when not reported."""
    reported = server.get("server_time_usec")
    try:
        return int(reported) / 1000 - local_ms if reported is not None else 0.0
    except (TypeError, ValueError):
        return 0.0
