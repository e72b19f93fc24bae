"""The stream source over one Redis server (or a Sentinel service's master): one pub/sub connection for live entries,
a small command pool for history (``StreamReads``). ``_cluster_source`` is its counterpart on a Redis Cluster.

The pub/sub connection is subscribed to the live channel of every topic with a local subscriber. Each announcement
carries its stream id (``APPEND_SCRIPT`` publishes ``"<id> <json>"``), so nothing is read back for live delivery.
When the connection drops, the source tells the hub (which starts buffering and re-reading), reconnects with capped
exponential backoff for as long as it takes, resubscribes, notes Redis' ``run_id`` and tells the hub again.

Commands are bounded in time: each one fails after the socket timeout (a timeout is not retried) and waiting for the
command connection is bounded by the same timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .._core.codec import decode_live
from .._core.errors import MalformedEntry, SourceUnavailable
from .._core.settings import ProgressSettings
from .._core.streams import SourceListener, Topic
from ._metrics import WebTally
from ._stream_reads import StreamReads
from ._tasks import stop_task

logger = logging.getLogger(__name__)

DOWN = (RedisConnectionError, RedisTimeoutError, OSError)
"""What a lost or unreachable Redis raises."""
SUBSCRIBE_CHUNK = 256
BACKOFF_FIRST_SECONDS = 0.05


class RedisSource(StreamReads):
    """``StreamSource`` over one Redis; call ``bind`` with the listener, then ``start``."""

    def __init__(
        self, settings: ProgressSettings, *, commands: Redis, pubsub: Redis, tally: WebTally | None = None
    ) -> None:
        super().__init__(settings, commands, tally)
        self._info_client = commands
        self._client = pubsub
        self._ping_interval = settings.heartbeat_seconds
        self._backoff_max = settings.reconnect_max_seconds
        self._listener: SourceListener | None = None
        self._wanted: dict[bytes, Topic] = {}
        self._current: dict[bytes, asyncio.Future[bool]] = {}
        self._replies: dict[bytes, deque[asyncio.Future[bool]]] = {}
        self._pubsub: PubSub | None = None
        self._generation = 0
        self._send_lock = asyncio.Lock()
        self._run_id: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._first_attempt = asyncio.Event()
        self._available = False

    @property
    def available(self) -> bool:
        return self._available

    def run_id(self, topic: Topic) -> str | None:
        return self._run_id  # one server holds every topic

    def bind(self, listener: SourceListener) -> None:
        self._listener = listener

    async def start(self) -> None:
        """Connect in the background; return after the first attempt, whether it succeeded or not."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="celery-progress-ws live source")
        await self._first_attempt.wait()

    async def stop(self) -> None:
        task, self._task = self._task, None
        await stop_task(task)

    # -- subscriptions --------------------------------------------------------------------------------------------

    async def ensure(self, topic: Topic) -> None:
        channel = self._channel(topic)
        self._wanted[channel] = topic
        if not self._available:
            raise SourceUnavailable("Redis is not connected")
        future = self._current.get(channel)
        if future is None:
            future = self._expect_reply(channel)
            generation = self._generation
            try:
                async with self._send_lock:
                    if generation == self._generation and self._pubsub is not None:
                        await self._pubsub.subscribe(channel)
            except DOWN as exc:
                raise SourceUnavailable("SUBSCRIBE failed") from exc
        if not await asyncio.shield(future):
            raise SourceUnavailable("the live connection was lost before the subscription was confirmed")

    async def drop(self, topic: Topic) -> None:
        channel = self._channel(topic)
        self._wanted.pop(channel, None)
        self._current.pop(channel, None)
        if not self._available:
            return
        generation = self._generation
        with contextlib.suppress(*DOWN):  # a broken connection is noticed (and replaced) by the listening loop
            async with self._send_lock:
                if generation == self._generation and self._pubsub is not None and channel not in self._wanted:
                    await self._pubsub.unsubscribe(channel)

    def _expect_reply(self, channel: bytes) -> asyncio.Future[bool]:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._current[channel] = future
        self._replies.setdefault(channel, deque()).append(future)
        return future

    def _confirm(self, channel: bytes) -> None:
        replies = self._replies.get(channel)
        if replies:
            future = replies.popleft()
            if not replies:
                del self._replies[channel]
            if not future.done():
                future.set_result(True)

    # -- the connection loop --------------------------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        while True:
            pubsub: PubSub | None = None
            try:
                pubsub = await self._connect()
            except (*DOWN, RedisError) as exc:
                level = logging.WARNING if failures == 0 else logging.DEBUG
                logger.log(level, "Redis unreachable for live progress (%s); retrying in the background", exc)
            except Exception:  # a task boundary: whatever went wrong, keep trying
                logger.exception("Connecting live progress to Redis failed; retrying in the background")
            self._first_attempt.set()
            if pubsub is not None:
                if failures:
                    logger.warning("Live progress reconnected to Redis")
                    self._tally.reconnects += 1
                failures = 0
                try:
                    await self._listen(pubsub)
                except DOWN as exc:
                    logger.warning("Live progress lost its Redis connection (%s); reconnecting", exc)
                except Exception:  # a task boundary: keep the process delivering whatever went wrong here
                    logger.exception("Live progress listener failed; reconnecting")
                finally:
                    await self._disconnect(pubsub)
            failures += 1
            await asyncio.sleep(self._backoff(failures))

    def _backoff(self, failures: int) -> float:
        ceiling = min(self._backoff_max, BACKOFF_FIRST_SECONDS * 2.0 ** (failures - 1))
        return ceiling * random.uniform(0.5, 1.0)

    async def _connect(self) -> PubSub:
        pubsub = self._client.pubsub()
        try:
            await pubsub.connect()  # type: ignore[no-untyped-call]
            asked = time.time() * 1000
            server = await self._info_client.info("server")
            run_id = str(server.get("run_id", "")) or None
            self._note_clock(server, asked)
            async with self._send_lock:
                self._generation += 1
                self._pubsub = pubsub
                channels = list(self._wanted)
                for channel in channels:
                    self._expect_reply(channel)
                for start in range(0, len(channels), SUBSCRIBE_CHUNK):
                    await pubsub.subscribe(*channels[start : start + SUBSCRIBE_CHUNK])
                self._available = True
        except BaseException:
            await self._disconnect(pubsub)
            raise
        self._run_id = run_id
        if self._listener is not None:
            self._listener.on_restored()
        return pubsub

    async def _listen(self, pubsub: PubSub) -> None:
        awaiting_pong = False
        while True:
            connection = pubsub.connection
            if connection is None or not connection.is_connected:  # never let redis-py reconnect silently
                raise RedisConnectionError("the pub/sub connection was closed")
            message = await pubsub.get_message(timeout=self._ping_interval)
            if message is None:
                if awaiting_pong:
                    raise RedisTimeoutError(f"no answer to PING within {self._ping_interval} s")
                async with self._send_lock:
                    await pubsub.ping()
                awaiting_pong = True
                continue
            awaiting_pong = False
            kind = message["type"]
            if kind == "message":
                self._dispatch(message["channel"], message["data"])
            elif kind == "subscribe":
                self._confirm(message["channel"])

    def _dispatch(self, channel: bytes, payload: bytes) -> None:
        topic = self._wanted.get(channel)
        if topic is None or self._listener is None:
            return
        try:
            entry_id, message = decode_live(payload)
        except MalformedEntry as exc:
            logger.warning("Skipping a live announcement on %r: %s", channel, exc)
            return
        self._listener.on_entry(topic, entry_id, message)

    async def _disconnect(self, pubsub: PubSub) -> None:
        """Forget the connection: fail pending confirmations and tell the listener before anything is resubscribed."""
        was_available = self._available
        self._available = False
        if self._pubsub is pubsub:
            self._pubsub = None
            self._generation += 1
            for replies in self._replies.values():
                for future in replies:
                    if not future.done():
                        future.set_result(False)
            self._replies.clear()
            self._current.clear()
        if was_available and self._listener is not None:
            self._listener.on_lost()
        with contextlib.suppress(*DOWN):
            await pubsub.aclose()  # type: ignore[no-untyped-call]
