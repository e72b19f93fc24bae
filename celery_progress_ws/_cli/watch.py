"""The watcher behind ``celery-progress-ws watch``: follows operations straight from Redis into a sink (bars, JSON).

It subscribes to each operation's live channel first, then reads the stream's history, and drops every entry whose
id it has already shown, so nothing written meanwhile is missed or shown twice. When Redis drops it reconnects and
resumes after the last id it showed, reporting a ``history_gap`` when entries were lost in between (by the same rule
as the web half, ``gap_reason``). On a cluster it subscribes per shard (``live``), follows a failover or a moved slot
the same way, and judges a restart by the ``run_id`` of the node that serves each operation.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import redis
from redis.cluster import RedisCluster

from .._core.clients import validate_url, watch_client
from .._core.codec import decode_entry, decode_fields, decode_live, delivered, parse_stream_id
from .._core.errors import MalformedEntry
from .._core.keys import KeySpace
from .._core.policy import terminal_status
from .._core.redis_errors import OUTAGE
from .._core.schemas import HISTORY_GAP, GapReason, TaskStatus, utc_now_iso
from .._core.settings import ProgressSettings
from .._core.streams import StreamInfo, gap_reason, stream_info
from .live import LiveFeed, live_feed
from .output import Sink, WatchedOperation

EXIT_COMPLETED = 0
EXIT_FAILED = 1
EXIT_CANCELLED = 2
EXIT_TIMEOUT = 3
EXIT_USAGE = 64
EXIT_UNAVAILABLE = 69
EXIT_INTERRUPTED = 130

PING_INTERVAL_SECONDS = 10.0
"""A silent pub/sub connection is pinged this often, to notice a connection that died without a reset."""
PING_TIMEOUT_SECONDS = 10.0
SUBSCRIBE_TIMEOUT_SECONDS = 10.0
POLL_SECONDS = 0.5
FIRST_RETRY_SECONDS = 0.1


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Watcher:
    """Follows operations in Redis until each reaches a final status or the deadline passes."""

    def __init__(
        self,
        settings: ProgressSettings,
        operation_ids: Sequence[str],
        sink: Sink,
        *,
        timeout: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        keys = KeySpace(settings.key_prefix)
        self._operations = [
            WatchedOperation(operation_id, keys.stream(operation_id), keys.live(operation_id))
            for operation_id in operation_ids
        ]
        self._by_channel = {operation.live: operation for operation in self._operations}
        self._settings = settings
        self._sink = sink
        self._clock = clock
        self._deadline = None if timeout is None else clock() + timeout
        self._failures = 0
        validate_url(settings)
        self._client: redis.Redis | RedisCluster | None = None  # built in the retry loop

    @property
    def client(self) -> redis.Redis | RedisCluster:
        if self._client is None:
            self._client = watch_client(self._settings)  # no retries: a reconnect always resumes from the stream
        return self._client

    def run(self) -> int:
        """Watch until done; return the exit status (see ``EPILOG``)."""
        try:
            while not self._finished() and not self._expired():
                try:
                    self._session()
                except (redis.exceptions.AuthenticationError, redis.exceptions.AuthorizationError) as exc:
                    self._sink.warn(f"Redis refused the connection: {exc}")
                    return EXIT_UNAVAILABLE
                except OUTAGE as exc:  # unreachable, or a cluster reconfiguring: resume from the streams
                    delay = min(self._settings.reconnect_max_seconds, FIRST_RETRY_SECONDS * 2**self._failures)
                    delay *= 0.5 + random.random() / 2
                    self._failures += 1
                    self._sink.warn(f"Redis connection lost ({exc or type(exc).__name__}); retrying in {delay:.1f} s")
                    time.sleep(min(delay, self._remaining(delay)))
                except redis.exceptions.ResponseError as exc:
                    self._sink.warn(f"Redis refused a command: {exc}")
                    return EXIT_UNAVAILABLE
        finally:
            if self._client is not None:
                self._client.close()
        return self._exit_status()

    def _session(self) -> None:
        """One connection's life: subscribe, catch up from the streams, then follow the live channels."""
        pubsub = live_feed(self.client)
        try:
            pending = self._subscribe(pubsub)
            if pending is None:
                return
            for operation in self._operations:
                if operation.final is None:
                    self._catch_up(operation, self._server_run_id(operation))
            for message in pending:
                self._on_live(message)
            self._failures = 0
            self._follow(pubsub)
        finally:
            pubsub.close()

    def _server_run_id(self, operation: WatchedOperation) -> str | None:
        """The ``run_id`` of the Redis serving ``operation`` (on a cluster: its slot's primary), which changes when it
        restarts or another node takes over; ``None`` where INFO is not permitted."""
        client = self.client
        try:
            if isinstance(client, RedisCluster):
                server = client.info("server", target_nodes=client.get_node_from_key(operation.stream))  # type: ignore[no-untyped-call]
            else:
                server = client.info("server")
        except redis.exceptions.ResponseError:
            return None
        return str(server.get("run_id", "")) or None

    def _subscribe(self, pubsub: LiveFeed) -> list[dict[str, Any]] | None:
        """Subscribe to every live channel and wait until Redis confirms; return messages that arrived meanwhile."""
        channels = [operation.live for operation in self._operations if operation.final is None]
        pubsub.subscribe(channels)
        confirmed: set[str] = set()
        pending: list[dict[str, Any]] = []
        give_up = self._clock() + SUBSCRIBE_TIMEOUT_SECONDS
        while len(confirmed) < len(channels):
            if self._expired():
                return None
            if self._clock() > give_up:
                raise redis.exceptions.TimeoutError("Redis did not confirm the subscription")
            message = pubsub.get_message(timeout=self._remaining(POLL_SECONDS))
            if message is None:
                continue
            if message["type"] == "subscribe":
                confirmed.add(message["channel"])
            elif message["type"] == "message":
                pending.append(message)
        return pending

    def _follow(self, pubsub: LiveFeed) -> None:
        """Deliver live announcements until every operation ended or the deadline passed."""
        heard = self._clock()
        ping_sent: float | None = None
        while not self._finished() and not self._expired():
            message = pubsub.get_message(timeout=self._remaining(POLL_SECONDS))
            now = self._clock()
            if message is not None:
                heard, ping_sent = now, None
                if message["type"] == "message":
                    self._on_live(message)
            elif ping_sent is not None and now - ping_sent > PING_TIMEOUT_SECONDS:
                raise redis.exceptions.TimeoutError("Redis did not answer a ping")
            elif ping_sent is None and now - heard > PING_INTERVAL_SECONDS:
                pubsub.ping()
                ping_sent = now

    def _catch_up(self, operation: WatchedOperation, run_id: str | None) -> None:
        """Deliver the stream's entries after the operation's position, preceded by a gap notice if some were lost."""
        position = operation.position
        info = self._info(operation.stream)
        lost = position.restarted(run_id) and (info is None or not self._has_entry(operation.stream, position.last_id))
        reason = gap_reason(info, position.key, restart_lost=lost)
        after_id = position.last_id
        if reason is GapReason.AHEAD_OF_STREAM:
            position.forget()  # not an id of this stream: show it from its start
        position.run_id = run_id
        start = "-" if position.last_id is None else "(" + position.last_id
        batch_size = self._settings.history_batch
        first = True
        while operation.final is None:
            batch = self._xrange(operation.stream, start, "+", batch_size)
            if first and reason is not None:
                self._report_gap(operation, reason, after_id, batch[0][0] if batch else None)
            first = False
            for entry_id, fields in batch:
                self._deliver(operation, entry_id, partial(decode_fields, fields))
            if len(batch) < batch_size:
                return
            start = "(" + batch[-1][0]

    def _info(self, stream: str) -> StreamInfo | None:
        """The stream's metadata, or ``None`` when it does not exist."""
        if not self.client.exists(stream):
            return None
        return stream_info(self.client.xinfo_stream(stream))

    def _has_entry(self, stream: str, entry_id: str | None) -> bool:
        return entry_id is not None and bool(self.client.xrange(stream, entry_id, entry_id, 1))

    def _xrange(self, stream: str, start: str, end: str, count: int) -> list[tuple[str, dict[Any, Any]]]:
        """XRANGE with ids as text and field maps never ``None``."""
        entries = self.client.xrange(stream, start, end, count) or []
        return [(_text(entry_id), fields or {}) for entry_id, fields in entries]

    def _report_gap(
        self, operation: WatchedOperation, reason: GapReason, after_id: str | None, resumes_at: str | None
    ) -> None:
        data = {"reason": str(reason), "after_id": after_id, "resumes_at": resumes_at}
        self._sink.gap(operation, {"type": HISTORY_GAP, "timestamp": utc_now_iso(), "data": data})

    def _on_live(self, message: dict[str, Any]) -> None:
        operation = self._by_channel.get(message["channel"])
        if operation is None or operation.final is not None:
            return
        try:
            entry_id, text = decode_live(message["data"])
        except MalformedEntry as exc:
            self._sink.warn(f"{operation.operation_id}: ignored a live announcement: {exc}")
            return
        self._deliver(operation, entry_id, partial(decode_entry, text))

    def _deliver(self, operation: WatchedOperation, entry_id: str, decode: Callable[[], dict[str, Any]]) -> None:
        """Show one entry unless its id was already shown; note a final status."""
        if operation.final is not None:
            return
        key = parse_stream_id(entry_id)
        if not operation.position.admits(key):
            return
        operation.position.advance(entry_id, key)
        try:
            entry = decode()
        except MalformedEntry as exc:
            self._sink.warn(f"{operation.operation_id}: skipped entry {entry_id}: {exc}")
            return
        self._sink.entry(operation, delivered(entry_id, entry))
        operation.final = terminal_status(entry)

    def _finished(self) -> bool:
        return all(operation.final is not None for operation in self._operations)

    def _expired(self) -> bool:
        return self._deadline is not None and self._clock() >= self._deadline

    def _remaining(self, cap: float) -> float:
        return cap if self._deadline is None else max(0.0, min(cap, self._deadline - self._clock()))

    def _exit_status(self) -> int:
        finals = {operation.final for operation in self._operations}
        if None in finals:
            return EXIT_TIMEOUT
        if TaskStatus.FAILED in finals:
            return EXIT_FAILED
        if TaskStatus.CANCELLED in finals:
            return EXIT_CANCELLED
        return EXIT_COMPLETED
