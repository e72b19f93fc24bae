"""The ``watch`` command's live subscription: classic pub/sub on one server, sharded pub/sub on a cluster.

Both hand the watcher messages shaped alike (``type`` ``subscribe``, ``message`` or ``pong``, ``channel``, ``data``).
On a cluster each channel is subscribed (``SSUBSCRIBE``) on the primary of its slot, one connection per primary, and
polled in turn. A connection that drops raises, and so does the server unsubscribing a channel (its slot moved to
another node): the watcher then opens a new session, which reads the slot map again and resumes from the streams.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import redis
from redis.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import SlotNotCoveredError

Message = dict[str, Any]


class LiveFeed(Protocol):
    """Subscriptions to live channels and the messages they bring."""

    def subscribe(self, channels: Sequence[str]) -> None: ...

    def get_message(self, timeout: float) -> Message | None: ...

    def ping(self) -> None: ...

    def close(self) -> None: ...


class ClassicFeed:
    """``SUBSCRIBE`` on one connection to one server."""

    def __init__(self, client: redis.Redis) -> None:
        self._pubsub = client.pubsub(ignore_subscribe_messages=False)  # type: ignore[no-untyped-call]

    def subscribe(self, channels: Sequence[str]) -> None:
        self._pubsub.subscribe(*channels)

    def get_message(self, timeout: float) -> Message | None:
        message: Message | None = self._pubsub.get_message(timeout=timeout)
        return message

    def ping(self) -> None:
        self._pubsub.ping()

    def close(self) -> None:
        self._pubsub.close()


class ShardedFeed:
    """``SSUBSCRIBE`` on the primary of each channel's slot, one connection per primary, read in turn."""

    _KINDS = {"ssubscribe": "subscribe", "smessage": "message", "pong": "pong"}

    def __init__(self, client: RedisCluster) -> None:
        self._client = client
        self._pubsubs: dict[str, redis.client.PubSub] = {}
        self._next = 0

    def subscribe(self, channels: Sequence[str]) -> None:
        """Read the slot map afresh (a session may follow a failover), then subscribe each channel where it lives."""
        self._client.nodes_manager.initialize()
        for channel in channels:
            node = self._client.get_node_from_key(channel)  # type: ignore[no-untyped-call]
            if node is None or node.redis_connection is None:
                raise SlotNotCoveredError(f"no primary serves the slot of {channel!r}")
            pubsub = self._pubsubs.get(node.name)
            if pubsub is None:
                pubsub = self._pubsubs[node.name] = node.redis_connection.pubsub(ignore_subscribe_messages=False)
            pubsub.ssubscribe(channel)

    def get_message(self, timeout: float) -> Message | None:
        """The next message of the next connection in turn, waiting up to ``timeout`` in all."""
        pubsubs = list(self._pubsubs.values())
        if not pubsubs:
            return None
        for _ in range(len(pubsubs)):
            self._next = (self._next + 1) % len(pubsubs)
            message = pubsubs[self._next].get_message(timeout=timeout / len(pubsubs))
            if message is None:
                continue
            kind = str(message["type"])
            if kind == "sunsubscribe":  # never asked for: the slot moved to another node
                raise RedisConnectionError(f"the cluster moved {message['channel']!r} to another node")
            if kind in self._KINDS:
                return {**message, "type": self._KINDS[kind]}
        return None

    def ping(self) -> None:
        for pubsub in self._pubsubs.values():
            pubsub.ping()

    def close(self) -> None:
        for pubsub in self._pubsubs.values():
            pubsub.close()
        self._pubsubs.clear()


def live_feed(client: redis.Redis | RedisCluster) -> LiveFeed:
    """The subscription that fits ``client``'s topology."""
    return ShardedFeed(client) if isinstance(client, RedisCluster) else ClassicFeed(client)
