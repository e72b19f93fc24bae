"""The stream source over a Redis Cluster: sharded pub/sub (``SSUBSCRIBE``) on each primary that serves a watched
topic, history reads through the cluster client (``StreamReads``). ``_redis_source`` is its one-server counterpart.

Each primary that holds a live channel of a local subscriber gets one pub/sub connection (a ``_Shard``). A channel
leaves its shard when that connection drops or when the server unsubscribes it (``sunsubscribe``: its slot moved to
another node, by a failover or a migration). Then the hub is told those topics' live entries may be missed
(``on_lost``), the slot map is read again, the channel is subscribed on its new owner, and once that is confirmed the
hub repairs from the stream (``on_restored``), as after a one-server reconnect. Other shards keep delivering. Each
shard's ``run_id`` is its node's: a topic whose slot moved to another node is looked up in the stream on its next
catch-up, and a gap is reported only if its last delivered entry is missing there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter

from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import SlotNotCoveredError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .._core.codec import decode_live
from .._core.errors import MalformedEntry, SourceUnavailable
from .._core.redis_errors import REDIS_FAILURES
from .._core.settings import ProgressSettings
from .._core.streams import SourceListener, Topic
from ._metrics import WebTally
from ._stream_reads import StreamReads
from ._tasks import stop_task

logger = logging.getLogger(__name__)

FAILURES: tuple[type[Exception], ...] = (*REDIS_FAILURES, OSError)
"""What a lost node, a reconfiguring cluster or the cluster client's own errors raise."""
BACKOFF_FIRST_SECONDS = 0.05


class ClusterSource(StreamReads):
    """``StreamSource`` over a Redis Cluster; call ``bind`` with the listener, then ``start``."""

    def __init__(self, settings: ProgressSettings, *, commands: RedisCluster, tally: WebTally | None = None) -> None:
        super().__init__(settings, commands, tally)
        self._cluster = commands
        self._ping_interval = settings.heartbeat_seconds
        self._backoff_max = settings.reconnect_max_seconds
        self._listener: SourceListener | None = None
        self._wanted: dict[bytes, Topic] = {}
        self._shards: dict[str, _Shard] = {}
        """Node name -> the pub/sub connection to that primary."""
        self._home: dict[bytes, _Shard] = {}
        """Channel -> the shard it is subscribed (or being subscribed) on."""
        self._homeless: set[bytes] = set()
        self._confirmed: set[bytes] = set()
        self._lost: set[bytes] = set()
        """Channels whose shard was lost: the hub is told when they are confirmed again."""
        self._waiting: dict[bytes, list[asyncio.Future[None]]] = {}
        self._wake = asyncio.Event()
        self._refresh = False
        self._setbacks = 0
        self._available = False
        self._first_attempt = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def available(self) -> bool:
        """Whether the cluster's slot map is known (a shard that is down delays only its own topics)."""
        return self._available

    def run_id(self, topic: Topic) -> str | None:
        shard = self._home.get(self._channel(topic))
        return shard.run_id if shard is not None else None

    def bind(self, listener: SourceListener) -> None:
        self._listener = listener

    async def start(self) -> None:
        """Read the slot map in the background; return after the first attempt, whether it succeeded or not."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="celery-progress-ws cluster source")
        await self._first_attempt.wait()

    async def stop(self) -> None:
        task, self._task = self._task, None
        await stop_task(task)
        shards = list(self._shards.values())
        self._shards.clear()
        for shard in shards:
            await shard.stop()

    # -- subscriptions --------------------------------------------------------------------------------------------

    async def ensure(self, topic: Topic) -> None:
        """Return once ``topic``'s channel is subscribed on its primary, waiting through failovers of its shard."""
        channel = self._channel(topic)
        self._wanted[channel] = topic
        if not self._available:
            raise SourceUnavailable("the cluster's slot map is not known")
        if channel in self._confirmed:
            return
        if channel not in self._home:
            self._homeless.add(channel)
            self._wake.set()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiting = self._waiting.setdefault(channel, [])
        waiting.append(future)
        try:
            await future
        finally:
            if future in waiting:
                waiting.remove(future)

    async def drop(self, topic: Topic) -> None:
        channel = self._channel(topic)
        self._wanted.pop(channel, None)
        self._homeless.discard(channel)
        self._confirmed.discard(channel)
        self._lost.discard(channel)
        shard = self._home.pop(channel, None)
        if shard is not None:
            await shard.remove(channel)

    def _confirm(self, shard: _Shard, channel: bytes) -> None:
        if self._home.get(channel) is not shard:
            return
        self._setbacks = 0
        self._confirmed.add(channel)
        for future in self._waiting.pop(channel, ()):
            if not future.done():
                future.set_result(None)
        topic = self._wanted.get(channel)
        if channel in self._lost:
            self._lost.discard(channel)
            self._tally.reconnects += 1
            if topic is not None and self._listener is not None:
                self._listener.on_restored([topic])

    def _orphan(self, shard: _Shard, channels: set[bytes]) -> None:
        """``channels`` left ``shard``: tell the hub, and subscribe them again where the new slot map says."""
        topics = []
        for channel in channels:
            if self._home.get(channel) is not shard:
                continue
            del self._home[channel]
            self._confirmed.discard(channel)
            topic = self._wanted.get(channel)
            if topic is not None:
                self._homeless.add(channel)
                self._lost.add(channel)
                topics.append(topic)
        if self._shards.get(shard.node.name) is shard and shard.closing:
            del self._shards[shard.node.name]
        if topics:
            self._refresh = True
            self._setbacks += 1
            self._wake.set()
            if self._listener is not None:
                self._listener.on_lost(topics)

    def _dispatch(self, shard: _Shard, channel: bytes, payload: bytes) -> None:
        topic = self._wanted.get(channel)
        if topic is None or self._home.get(channel) is not shard or self._listener is None:
            return
        try:
            entry_id, message = decode_live(payload)
        except MalformedEntry as exc:
            logger.warning("Skipping a live announcement on %r: %s", channel, exc)
            return
        self._listener.on_entry(topic, entry_id, message)

    # -- placing channels on their primaries ----------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                await self._place()
                failures = 0
            except FAILURES as exc:
                failures += 1
                level = logging.WARNING if failures == 1 else logging.DEBUG
                logger.log(level, "Redis Cluster unreachable for live progress (%s); retrying in the background", exc)
            except Exception:  # a task boundary: whatever went wrong, keep trying
                failures += 1
                logger.exception("Placing live progress subscriptions on the cluster failed; retrying")
            self._first_attempt.set()
            if failures or self._setbacks:
                await asyncio.sleep(self._backoff(max(failures, self._setbacks)))
                if failures:
                    continue
            await self._wake.wait()
            self._wake.clear()

    def _backoff(self, failures: int) -> float:
        ceiling = min(self._backoff_max, BACKOFF_FIRST_SECONDS * 2.0 ** (failures - 1))
        return ceiling * random.uniform(0.5, 1.0)

    async def _place(self) -> None:
        """Read the slot map if needed, then give every homeless channel to the shard of its slot's primary."""
        if not self._available:
            await self._cluster.initialize()
            asked = time.time() * 1000
            self._note_clock(await self._cluster.info("server", target_nodes=RedisCluster.RANDOM), asked)
            self._available = True
            self._refresh = False
            if self._listener is not None:
                self._listener.on_restored()
        elif self._refresh:
            self._refresh = False
            await self._cluster.nodes_manager.initialize()
        for channel in list(self._homeless):
            if channel not in self._wanted:
                self._homeless.discard(channel)
                continue
            node = self._cluster.get_node_from_key(channel.decode())
            if node is None:
                raise SlotNotCoveredError(f"no primary serves the slot of {channel!r}")
            shard = self._shards.get(node.name)
            if shard is None or shard.closing:
                shard = self._shards[node.name] = _Shard(self, node)
                shard.start()
            self._homeless.discard(channel)
            self._home[channel] = shard
            await shard.add(channel)


class _Shard:
    """One pub/sub connection to one primary, holding the sharded subscriptions of the channels it serves."""

    def __init__(self, source: ClusterSource, node: ClusterNode) -> None:
        self.node = node
        self.run_id: str | None = None
        self.closing = False
        self._source = source
        self._channels: set[bytes] = set()
        self._leaving: Counter[bytes] = Counter()
        """Channels this process unsubscribed: their ``sunsubscribe`` replies are expected."""
        never = Retry(NoBackoff(), 0, supported_errors=())
        kwargs = {**node.connection_kwargs, "retry": never}
        self._pool = ConnectionPool(connection_class=node.connection_class, max_connections=1, **kwargs)
        self._pubsub = PubSub(self._pool)
        self._ready = False
        self._send_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        name = f"celery-progress-ws shard {self.node.name}"
        self._task = asyncio.get_running_loop().create_task(self._run(), name=name)

    async def stop(self) -> None:
        self.closing = True
        task, self._task = self._task, None
        await stop_task(task)
        await self._close()

    async def add(self, channel: bytes) -> None:
        self._channels.add(channel)
        if self._ready:
            await self._send("SSUBSCRIBE", [channel])

    async def remove(self, channel: bytes) -> None:
        self._channels.discard(channel)
        if self._ready:
            self._leaving[channel] += 1
            await self._send("SUNSUBSCRIBE", [channel])

    async def _send(self, command: str, channels: list[bytes]) -> None:
        """Send ``command`` per slot (a sharded subscription names channels of one slot); a failure is noticed, and
        the channels handed back, by the listening loop."""
        by_slot: dict[int, list[bytes]] = {}
        for channel in channels:
            by_slot.setdefault(key_slot(channel), []).append(channel)
        with contextlib.suppress(*FAILURES):
            async with self._send_lock:
                for group in by_slot.values():
                    connection = self._pubsub.connection
                    if connection is None or not connection.is_connected:
                        return  # sending would reconnect silently, without the subscriptions
                    await self._pubsub.execute_command(command, *group)

    async def _run(self) -> None:
        try:
            await self._pubsub.connect()  # type: ignore[no-untyped-call]
            server = await self._source._cluster.info("server", target_nodes=self.node)
            self.run_id = str(server.get("run_id", "")) or None
            self._ready = True
            await self._send("SSUBSCRIBE", list(self._channels))
            await self._listen()
        except FAILURES as exc:
            logger.warning("Live progress lost cluster node %s (%s); resubscribing its channels", self.node.name, exc)
        except Exception:  # a task boundary: hand the channels back whatever went wrong
            logger.exception("Live progress listener of cluster node %s failed", self.node.name)
        finally:
            self.closing = True
            self._ready = False
            self._source._orphan(self, set(self._channels))
            await self._close()

    async def _listen(self) -> None:
        awaiting_pong = False
        while self._channels or self._leaving:
            connection = self._pubsub.connection
            if connection is None or not connection.is_connected:  # never let redis-py reconnect silently
                raise RedisConnectionError("the pub/sub connection was closed")
            message = await self._pubsub.get_message(timeout=self._source._ping_interval)
            if message is None:
                if awaiting_pong:
                    raise RedisTimeoutError(f"no answer to PING within {self._source._ping_interval} s")
                async with self._send_lock:
                    await self._pubsub.ping()
                awaiting_pong = True
                continue
            awaiting_pong = False
            kind, channel = message["type"], message["channel"]
            if kind == "smessage":
                self._source._dispatch(self, channel, message["data"])
            elif kind == "ssubscribe":
                self._source._confirm(self, channel)
            elif kind == "sunsubscribe":
                if self._leaving[channel] > 0:
                    self._leaving[channel] -= 1
                    if not self._leaving[channel]:
                        del self._leaving[channel]
                elif channel in self._channels:  # the server's own: the slot moved to another node
                    self._channels.discard(channel)
                    self._source._orphan(self, {channel})

    async def _close(self) -> None:
        with contextlib.suppress(*FAILURES):
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]
        with contextlib.suppress(*FAILURES):
            await self._pool.disconnect()
