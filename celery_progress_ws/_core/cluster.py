"""Redis Cluster: the ``redis+cluster://`` URL and the synchronous cluster client built from it.

The client learns the slot map from any startup node and routes each command (an EVALSHA by its keys, which share
one operation's hash tag) to the slot's primary, following ``MOVED`` and ``ASK`` itself. What it still raises while
the cluster reconfigures (a killed primary is unreachable until its replica is promoted) is an outage to the caller
(``_core.redis_errors``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.cluster import ClusterNode, RedisCluster

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
    user, colon, secret = userinfo.partition(":")
    username = unquote(user) or None
    password = unquote(secret) if colon else None
    return ClusterTarget(
        tuple(_address(item) for item in hosts.split(",")), username, password, scheme.startswith("rediss")
    )


def _address(item: str) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[v6]:port`` of one startup node."""
    if item.startswith("["):
        host, bracket, rest = item[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"malformed cluster node address {item!r}")
        port_text = rest[1:] if rest else ""
    else:
        host, _, port_text = item.partition(":")
    if not host:
        raise ValueError(f"cluster node address {item!r} has no host")
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"cluster node address {item!r} has no valid port")
    return host, int(port_text)


def cluster_client(target: ClusterTarget, **kwargs: Any) -> RedisCluster:
    """A cluster client starting from the target's nodes, with ``kwargs`` as client and connection options.

    It asks a startup node for the slot map at once: raises redis-py's errors if none answers.
    """
    nodes = [ClusterNode(host, port) for host, port in target.nodes]  # type: ignore[no-untyped-call]
    return RedisCluster(
        startup_nodes=nodes, username=target.username, password=target.password, ssl=target.ssl, **kwargs
    )
