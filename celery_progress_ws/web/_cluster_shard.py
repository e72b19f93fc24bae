"""One sharded pub/sub connection of the cluster source (``_cluster_source``): the ``SSUBSCRIBE``s of the channels
whose slots one primary serves, and what that primary sends back.

It never reconnects: when its connection drops, or the server unsubscribes a channel (``sunsubscribe``: the slot
moved to another node), it hands the channels back to its owner, which places them again after reading the slot map.
A shard left without channels closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from typing import Protocol

from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .._core.redis_errors import REDIS_FAILURES
from ._tasks import stop_task

logger = logging.getLogger(__name__)

FAILURES: tuple[type[Exception], ...] = (*REDIS_FAILURES, OSError)
"""What a lost node, a reconfiguring cluster or the cluster client's own errors raise."""


class ShardOwner(Protocol):
    """What a shard tells the cluster source."""

    def confirm(self, shard: Shard, channel: bytes) -> None:
        """The primary confirmed the subscription of ``channel``."""

    def orphan(self, shard: Shard, channels: set[bytes]) -> None:
        """``channels`` are no longer subscribed on this shard (its connection was lost, or their slot moved)."""

    def dispatch(self, shard: Shard, channel: bytes, payload: bytes) -> None:
        """A live announcement arrived on ``channel``."""


class Shard:
    """One pub/sub connection to one primary, holding the sharded subscriptions of the channels it serves."""

    def __init__(self, owner: ShardOwner, cluster: RedisCluster, node: ClusterNode, ping_interval: float) -> None:
        self.node = node
        self.run_id: str | None = None
        self.closing = False
        self.restored = False
        self.confirmed_any = False
        self._owner = owner
        self._cluster = cluster
        self._ping_interval = ping_interval
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
            server = await self._cluster.info("server", target_nodes=self.node)
            self.run_id = str(server.get("run_id", "")) or None
            self._ready = True
            await self._send("SSUBSCRIBE", list(self._channels))
            await self._listen()
        except FAILURES as exc:
            level = logging.WARNING if self.confirmed_any else logging.DEBUG  # not once per attempt on a dead node
            logger.log(level, "Live progress lost cluster node %s (%s); resubscribing", self.node.name, exc)
        except Exception:  # a task boundary: hand the channels back whatever went wrong
            logger.exception("Live progress listener of cluster node %s failed", self.node.name)
        finally:
            self.closing = True
            self._ready = False
            self._owner.orphan(self, set(self._channels))
            await self._close()

    async def _listen(self) -> None:
        awaiting_pong = False
        while self._channels or self._leaving:
            connection = self._pubsub.connection
            if connection is None or not connection.is_connected:  # never let redis-py reconnect silently
                raise RedisConnectionError("the pub/sub connection was closed")
            message = await self._pubsub.get_message(timeout=self._ping_interval)
            if message is None:
                if awaiting_pong:
                    raise RedisTimeoutError(f"no answer to PING within {self._ping_interval} s")
                async with self._send_lock:
                    await self._pubsub.ping()
                awaiting_pong = True
                continue
            awaiting_pong = False
            kind, channel = message["type"], message["channel"]
            if kind == "smessage":
                self._owner.dispatch(self, channel, message["data"])
            elif kind == "ssubscribe":
                self._owner.confirm(self, channel)
            elif kind == "sunsubscribe":
                if self._leaving[channel] > 0:
                    self._leaving[channel] -= 1
                    if not self._leaving[channel]:
                        del self._leaving[channel]
                elif channel in self._channels:  # the server's own: the slot moved to another node
                    logger.info("Cluster node %s gave up %r (its slot moved); resubscribing", self.node.name, channel)
                    self._channels.discard(channel)
                    self._owner.orphan(self, {channel})

    async def _close(self) -> None:
        with contextlib.suppress(*FAILURES):
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]
        with contextlib.suppress(*FAILURES):
            await self._pool.disconnect()
