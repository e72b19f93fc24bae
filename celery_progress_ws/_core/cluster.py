"""Redis Cluster: the ``redis+cluster://`` URL and the cluster clients (sync and asyncio) built from it.

The client learns the slot map from any startup node and routes each command (an EVALSHA by its keys, which share
one operation's hash tag) to the slot's primary, following ``MOVED`` and ``ASK`` itself. What it still raises while
the cluster reconfigures (a killed primary is unreachable until its replica is promoted) is an outage to the caller
(``_core.redis_errors``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio.cluster
from redis.cluster import ClusterNode, RedisCluster

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


def async_cluster_client(target: ClusterTarget, **kwargs: Any) -> redis.asyncio.cluster.RedisCluster:
    """``cluster_client`` for asyncio; it does no I/O here: the slot map is read at its first command or
    ``initialize()``."""
    nodes = [redis.asyncio.cluster.ClusterNode(host, port) for host, port in target.nodes]
    return redis.asyncio.cluster.RedisCluster(
        startup_nodes=nodes, username=target.username, password=target.password, ssl=target.ssl, **kwargs
    )
