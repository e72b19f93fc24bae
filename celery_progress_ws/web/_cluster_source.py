"""The stream source over a Redis Cluster: sharded pub/sub (``SSUBSCRIBE``) on each primary that serves a watched
topic, history reads through the cluster client (``StreamReads``). ``_redis_source`` is its one-server counterpart.

Each primary that holds a live channel of a local subscriber gets one pub/sub connection (a ``Shard``). A channel
leaves its shard when that connection drops or when the server unsubscribes it (``sunsubscribe``: its slot moved to
another node, by a failover or a migration). Then the hub is told those topics' live entries may be missed
(``on_lost``), the slot map is read again, the channel is subscribed on its new owner, and once that is confirmed the
hub repairs from the stream (``on_restored``), as after a one-server reconnect. Other shards keep delivering. Each
shard's ``run_id`` is its node's: a topic whose slot moved to another node is looked up in the stream on its next
catch-up, and a gap is reported only if its last delivered entry is missing there.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import SlotNotCoveredError

from .._core.codec import decode_live
from .._core.errors import MalformedEntry, SourceUnavailable
from .._core.settings import ProgressSettings
from .._core.streams import SourceListener, Topic
from ._cluster_shard import FAILURES, Shard
from ._metrics import WebTally
from ._stream_reads import StreamReads
from ._tasks import stop_task

logger = logging.getLogger(__name__)

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
        self._shards: dict[str, Shard] = {}
        """Node name -> the pub/sub connection to that primary."""
        self._home: dict[bytes, Shard] = {}
        """Channel -> the shard it is subscribed (or being subscribed) on."""
        self._homeless: set[bytes] = set()
        self._confirmed: set[bytes] = set()
        self._lost: set[bytes] = set()
        """Channels whose shard was lost: the hub is told when they are confirmed again."""
        self._waiting: dict[bytes, list[asyncio.Future[None]]] = {}
        self._wake = asyncio.Event()
        self._refresh = False
        self._mapped = False
        self._setbacks = 0
        self._available = False
        self._first_attempt = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def available(self) -> bool:
        """Whether the cluster answered the last reading of its slot map (a shard that is down delays only its own
        topics)."""
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

    def confirm(self, shard: Shard, channel: bytes) -> None:
        if self._home.get(channel) is not shard:
            return
        shard.confirmed_any = True
        self._setbacks = 0
        self._confirmed.add(channel)
        for future in self._waiting.pop(channel, ()):
            if not future.done():
                future.set_result(None)
        topic = self._wanted.get(channel)
        if channel in self._lost:
            self._lost.discard(channel)
            if not shard.restored:  # counted once per connection that takes over lost channels
                shard.restored = True
                self._tally.reconnects += 1
            if topic is not None and self._listener is not None:
                self._listener.on_restored([topic])

    def orphan(self, shard: Shard, channels: set[bytes]) -> None:
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

    def dispatch(self, shard: Shard, channel: bytes, payload: bytes) -> None:
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
                if not self._homeless and not self._lost:
                    self._setbacks = 0  # everything lost was placed again (or dropped)
            except Exception as exc:  # a task boundary: whatever went wrong, keep trying
                failures += 1
                self._refresh = True
                self._available = False  # the hub waits for on_restored; lost shards already told it their topics
                level = logging.WARNING if failures == 1 else logging.DEBUG
                if isinstance(exc, FAILURES):
                    logger.log(level, "Redis Cluster unreachable for live progress (%s); retrying", exc)
                else:
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
        if self._refresh or not self._available:
            self._refresh = False
            if self._mapped:
                await self._cluster.nodes_manager.initialize()
            else:
                await self._cluster.initialize()
                self._mapped = True
            if not self._available:
                asked = time.time() * 1000
                self._note_clock(await self._cluster.info("server", target_nodes=RedisCluster.RANDOM), asked)
                self._available = True
                if self._listener is not None:
                    self._listener.on_restored()
        for channel in list(self._homeless):
            if channel not in self._wanted:
                self._homeless.discard(channel)
                continue
            node = self._cluster.get_node_from_key(channel.decode())
            if node is None:
                raise SlotNotCoveredError(f"no primary serves the slot of {channel!r}")
            shard = self._shards.get(node.name)
            if shard is None or shard.closing:
                shard = self._shards[node.name] = Shard(self, self._cluster, node, self._ping_interval)
                shard.start()
            self._homeless.discard(channel)
            self._home[channel] = shard
            await shard.add(channel)
