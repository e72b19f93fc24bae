"""Ordered, outage-tolerant writes: one connection per process, a bounded buffer, one warning per outage.

Every entry passes through the buffer and leaves it oldest first, written by one thread at a time (``_io_lock``), so
the entries of an operation reach Redis in the order they were made. The buffer and the health state are guarded by a
lock the owner passes in (it enqueues atomically with its own decisions); that lock is never held during I/O.
After a failed write nothing but a probe (the owner's background retry, or a flush) touches the network until a write
succeeds again, so no caller waits for an unreachable Redis more than once per outage. A server that answers but
cannot take writes now (a replica's ``READONLY``, ``LOADING``, ``MASTERDOWN``...: ``_core.redis_errors.OUTAGE``) is an
outage like an unreachable one; an entry Redis refuses for good (``WRONGTYPE``, ``OOM``...) is logged and skipped.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any

import redis
from redis.cluster import RedisCluster

from .._core import metrics
from .._core.append import ConnectionAppend, ScriptAppend, WriteCall
from .._core.clients import describe_url, writer_client
from .._core.policy import terminal_status_of
from .._core.redis_errors import OUTAGE, REDIS_FAILURES, describe
from .._core.schemas import CHUNKING_PROGRESS
from .._core.sentinel import MasterCheck, master_check
from .._core.settings import ProgressSettings
from .buffer import EntryBuffer, Rank
from .metrics import Runner, metered

logger = logging.getLogger(__name__)


class PublishResult(StrEnum):
    """What happened to one published or reported entry."""

    SENT = "sent"
    """Written to Redis (accepted by a master) before the call returned."""
    THROTTLED = "throttled"
    """Held back by the throttle; the newest held value is published when the interval ends."""
    BUFFERED = "buffered"
    """Redis is unreachable or cannot take writes now (a replica, loading, no master): kept in memory and written,
    in order, when it takes writes again."""
    DROPPED = "dropped"
    """Not written and never will be: Redis cannot take writes and the buffer is full of entries that matter more,
    or Redis refused this entry for good (e.g. ``WRONGTYPE``, ``OOM``: logged with the error)."""


def rank_of(entry_type: str, data: dict[str, Any]) -> Rank:
    """How long an entry is kept when the buffer overflows."""
    if entry_type == CHUNKING_PROGRESS:
        return Rank.PROGRESS
    if terminal_status_of(entry_type, data) is not None:
        return Rank.TERMINAL
    return Rank.EVENT


class StreamWriter:
    """Writes script calls to Redis oldest first and keeps them in a bounded buffer while Redis is unreachable.

    ``on_backlog`` is called, with ``lock`` held, whenever entries wait for Redis to come back (so the owner can
    schedule ``drain(probe=True)`` after ``retry_at``). A ready-made ``client`` is used as it is; otherwise each process
    opens its own single connection (``_core.clients.writer_client``). A call's ``on_reply`` gets the script's reply.
    """

    def __init__(
        self,
        settings: ProgressSettings,
        client: redis.Redis | None,
        lock: threading.Lock,
        on_backlog: Callable[[], None],
    ) -> None:
        self.settings = settings
        self.buffer: EntryBuffer[WriteCall] = EntryBuffer(settings.pending_buffer_size)
        self.healthy = True
        self.retry_at = 0.0
        self._given_client = client
        self._lock = lock
        self._on_backlog = on_backlog
        self._io_lock = threading.Lock()
        self._connected: tuple[redis.Redis | RedisCluster, Runner] | None = None
        self._master_check: MasterCheck | None = None
        self._connected_pid = 0
        self._awaited: dict[int, PublishResult | None] = {}
        """``id()`` of each call a caller will ask about in ``write_now`` -> what became of it (``None``: buffered)."""

    def enqueue(self, call: WriteCall, rank: Rank) -> PublishResult | None:
        """Buffer ``call`` (lock held); ``None`` means: call ``write_now(call, None)`` after releasing the lock."""
        if not self.buffer.append(call, rank):
            return PublishResult.DROPPED
        if not self.healthy:
            self._on_backlog()
            return PublishResult.BUFFERED
        self._awaited[id(call)] = None  # the caller holds ``call`` until write_now: its id names it until then
        return None

    def write_now(self, call: WriteCall, result: PublishResult | None) -> PublishResult:
        """Finish what ``enqueue`` started: drain the buffer unless the entry was already buffered or dropped, and
        say what became of ``call`` (whichever thread wrote it)."""
        if result is not None:
            return result
        try:
            self.drain()
        finally:
            with self._lock:
                outcome = self._awaited.pop(id(call), None)
        return PublishResult.BUFFERED if outcome is None else outcome

    def drain(self, probe: bool = False) -> bool:
        """Write buffered entries oldest first; ``True`` once the buffer is empty, ``False`` if Redis failed.

        While Redis is marked down only a ``probe`` touches the network.
        """
        written = 0
        with self._io_lock:
            while True:
                with self._lock:
                    if not (self.healthy or probe):
                        return False
                    taken = self.buffer.pop()
                if taken is None:
                    break
                call, rank = taken
                try:
                    append = self._connect()[1]
                    reply = append(call)
                except OUTAGE as exc:
                    with self._lock:
                        self.buffer.put_back(call, rank)
                    self._went_down(exc)
                    return False
                except REDIS_FAILURES as exc:  # a refusal for good (wrong key type, OOM...): retrying would not help
                    self._settle(call, PublishResult.DROPPED)
                    logger.warning(
                        "celery-progress-ws: Redis refused an entry for %s (%s); skipped", call.keys[0], describe(exc)
                    )
                else:
                    self._settle(call, PublishResult.SENT)
                    written += 1
                    handler = call.on_reply
                    if handler is not None:
                        try:
                            handler(reply)
                        except Exception:  # a bug in a handler must not keep the calls behind it from Redis
                            logger.exception("celery-progress-ws: handling the reply for %s failed", call.keys[0])
        if written and not self.healthy:
            self._came_back(written)
        return True

    def check(self) -> bool:
        """Ping Redis once; on failure log the outage warning (once) and return ``False``. Never raises."""
        with self._io_lock:
            try:
                client = self._connect()[0]
                client.ping()
            except OUTAGE as exc:
                self._went_down(exc)
                return False
            except REDIS_FAILURES as exc:  # e.g. an ACL that forbids PING: the writes may still work
                logger.warning("celery-progress-ws: Redis at %s refused PING (%s)", self._where(), describe(exc))
                return False
        self._came_back(0)
        return True

    def get(self, key: str) -> bytes | None:
        """One GET on this writer's connection; ``None`` while Redis is marked down or if it fails. Never raises."""
        with self._io_lock:
            with self._lock:
                if not self.healthy:
                    return None
            try:
                value = self._connect()[0].get(key)
            except OUTAGE as exc:
                self._went_down(exc)
                return None
            except REDIS_FAILURES as exc:
                logger.warning("celery-progress-ws: Redis refused to read %s (%s)", key, describe(exc))
                return None
        return value.encode() if isinstance(value, str) else value if isinstance(value, bytes) else None

    def close(self) -> None:
        """Close the connection this writer opened (a later write reopens one); a given client is left open."""
        with self._io_lock:
            if self._connected is not None and self._given_client is None:
                self._connected[0].close()
            self._connected = None
            self._master_check = None

    def _connect(self) -> tuple[redis.Redis | RedisCluster, Runner]:
        """This process's client and script runner, created on first use (``_io_lock`` held; may raise).

        Our own client holds a single connection that the runner drives directly: writes are serialised by
        ``_io_lock`` anyway, and skipping the pool and redis-py's command layers is a measurable part of a round trip.
        On a Sentinel service it also confirms, once a second, that it still talks to the master the sentinels name.
        """
        pid = os.getpid()
        if self._connected is None or self._connected_pid != pid:
            if self._given_client is not None:
                self._connected = (self._given_client, metered(ScriptAppend(self._given_client)))
            else:
                client = writer_client(self.settings)
                if isinstance(client, RedisCluster):  # EVALSHA routed by the key's slot; MOVED/ASK followed by it
                    self._connected = (client, metered(ScriptAppend(client)))
                else:
                    assert client.connection is not None  # writer_client checks it
                    self._connected = (client, metered(ConnectionAppend(client.connection)))
                    self._master_check = master_check(client.connection)
            self._connected_pid = pid
        if self._master_check is not None:
            self._master_check()
        return self._connected

    def _settle(self, call: WriteCall, outcome: PublishResult) -> None:
        """Note what became of ``call`` if a caller waits to hear it (``_io_lock`` held)."""
        key = id(call)
        if key in self._awaited:
            with self._lock:
                if key in self._awaited:
                    self._awaited[key] = outcome

    def _went_down(self, exc: Exception) -> None:
        with self._lock:
            first = self.healthy
            self.healthy = False
            metrics.worker.redis_up(False)
            self.retry_at = time.monotonic() + self.settings.retry_interval_seconds
            self._on_backlog()
        if first:
            logger.warning(
                "celery-progress-ws: Redis at %s cannot take writes (%s); keeping up to %d entries in memory and "
                "retrying every %.1f s",
                self._where(),
                describe(exc),
                self.settings.pending_buffer_size,
                self.settings.retry_interval_seconds,
            )

    def _came_back(self, written: int) -> None:
        with self._lock:
            if self.healthy:
                return
            self.healthy = True
            metrics.worker.reconnected()
            dropped, self.buffer.dropped = self.buffer.dropped, 0
        logger.info(
            "celery-progress-ws: Redis at %s answers again; wrote %d buffered entries, %d were dropped meanwhile",
            self._where(),
            written,
            dropped,
        )

    def _where(self) -> str:
        if self._given_client is not None:
            return repr(self._given_client)
        return describe_url(self.settings.redis_url)
