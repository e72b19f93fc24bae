"""Redis Cluster: the ``redis+cluster://`` URL and the cluster clients (sync and asyncio) built from it.

The client learns the slot map from any startup node and routes each command (an EVALSHA by its keys, which share
one operation's hash tag) to the slot's primary, following ``MOVED`` and ``ASK`` itself. What it still raises while
the cluster reconfigures (a killed primary is unreachable until its replica is promoted) is an outage to the caller
(``_core.redis_errors``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio.cluster
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError

from .urls import credentials, host_addresses

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
DEFAULT_PORT = 6379


@dataclass(frozen=True, slots=True)
class ClusterTarget:
    """What a ``redis+cluster://`` URL names: the nodes to learn the cluster from, and the credentials and TLS."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None
    password: str | None
    ssl: bool

    def describe(self) -> str:
        """Where the data lives, for log lines (no password)."""
        return "cluster " + ",".join(f"{host}:{port}" for host, port in self.nodes)


def parse_cluster_url(url: str) -> ClusterTarget:
    """``redis+cluster://[[user]:password@]host[:port][,host[:port]...][/0]`` (``rediss+`` for TLS); ``ValueError``
    naming what is wrong. A cluster has database 0 only."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in CLUSTER_SCHEMES:
        raise ValueError(f"a Cluster URL starts with redis+cluster:// or rediss+cluster://, not {scheme + '://'!r}")
    if parts.query or parts.fragment:
        raise ValueError("a redis+cluster:// URL takes no query options or fragment")
    if parts.path not in ("", "/", "/0"):
        raise ValueError("a redis+cluster:// URL has no path but /0: a Redis Cluster has database 0 only")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    if not hosts:
        raise ValueError("a redis+cluster:// URL names at least one node: redis+cluster://host:port[,host:port...]")
    username, password = credentials(userinfo)
    nodes = host_addresses(hosts, DEFAULT_PORT, "cluster node")
    return ClusterTarget(nodes, username, password, scheme.startswith("rediss"))


def cluster_client(target: ClusterTarget, **kwargs: Any) -> RedisCluster:
    """A cluster client starting from the target's nodes, with ``kwargs`` as client and connection options.

    It asks a startup node for the slot map at once: raises redis-py's errors if none answers.
    """
    nodes = [ClusterNode(host, port) for host, port in target.nodes]  # type: ignore[no-untyped-call]
    return RedisCluster(
        startup_nodes=nodes, username=target.username, password=target.password, ssl=target.ssl, **kwargs
    )


def async_cluster_client(
    target: ClusterTarget, *, connections: int, wait_seconds: float, **kwargs: Any
) -> redis.asyncio.cluster.RedisCluster:
    """``cluster_client`` for asyncio, with at most ``connections`` commands in flight (see ``BoundedAsyncCluster``);
    it does no I/O here: the slot map is read at its first command or ``initialize()``."""
    nodes = [redis.asyncio.cluster.ClusterNode(host, port) for host, port in target.nodes]
    return BoundedAsyncCluster(
        startup_nodes=nodes,
        username=target.username,
        password=target.password,
        ssl=target.ssl,
        connections=connections,
        wait_seconds=wait_seconds,
        **kwargs,
    )


class BoundedAsyncCluster(redis.asyncio.cluster.RedisCluster):
    """An async cluster client whose commands wait for one of ``connections`` turns, then fail as an outage
    (``ConnectionError``) after ``wait_seconds``.

    redis-py's async cluster client opens a connection per command in flight on each node and, past its per-node cap,
    fails at once (``MaxConnectionsError``). Here a command or pipeline holds at most one connection per node during
    its turn, so no node's pool outgrows ``connections`` and a burst waits, as on one server's blocking pool.
    """

    def __init__(self, *, connections: int, wait_seconds: float, **kwargs: Any) -> None:
        super().__init__(max_connections=connections, **kwargs)
        self._turns = asyncio.Semaphore(connections)
        self._wait_seconds = wait_seconds

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Hold one of the client's turns."""
        try:
            await asyncio.wait_for(self._turns.acquire(), self._wait_seconds)
        except TimeoutError:
            raise RedisConnectionError(
                f"no free connection to the cluster within {self._wait_seconds:g} s: every one is busy"
            ) from None
        try:
            yield
        finally:
            self._turns.release()

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with self.turn():
            return await super().execute_command(*args, **kwargs)

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> _BoundedPipeline:
        if shard_hint:
            return super().pipeline(transaction, shard_hint)  # type: ignore[return-value]  # raises
        return _BoundedPipeline(self, transaction)  # type: ignore[abstract]  # as redis-py's own pipeline()


class _BoundedPipeline(redis.asyncio.cluster.ClusterPipeline):
    """A cluster pipeline that runs in one of its client's turns."""

    cluster_client: BoundedAsyncCluster

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> list[Any]:
        async with self.cluster_client.turn():
            return await super().execute(raise_on_error, allow_redirections)
