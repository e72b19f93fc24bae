"""Every Redis client the library opens is built here, from ``ProgressSettings.redis_url``: the one place that knows
the deployment's topology and each client's timeouts and retries.

The URL's scheme names the topology: ``redis://``, ``rediss://`` and ``unix://`` one server;
``redis+sentinel://`` and ``rediss+sentinel://`` the current master of a Sentinel service (see ``_core.sentinel``:
every connection asks the sentinels where the master is when it connects); ``redis+cluster://`` and
``rediss+cluster://`` a Redis Cluster (see ``_core.cluster``: a cluster client per half, which routes each command
by its keys; live channels are followed per shard with sharded pub/sub). Each builder below makes its pool with
``_sync_pool``/``_async_pool``, the only places that branch on the topology besides the cluster branches. Building a
client does no I/O (it connects on first use), except for ``writer_client``, which opens its one connection at once,
and a synchronous cluster client, which reads the slot map at once.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry

from .cluster import ClusterTarget, async_cluster_client, cluster_client, parse_cluster_url
from .redis_errors import SYNC_PARSER
from .sentinel import SentinelTarget, async_master_pool, parse_sentinel_url, sync_master_pool
from .settings import ProgressSettings

WEB_COMMAND_CONNECTIONS = 1
"""Command connections of a web process; with the pub/sub connection, two reading connections in all."""
WEB_CLUSTER_COMMAND_CONNECTIONS = 4
"""Commands a web process has in flight on a cluster at most: at most this many connections to each node."""
REGISTRATION_TIMEOUT_FACTOR = 10
"""``track()``'s one pipelined registration may carry thousands of children: its reply may take this much longer."""
WATCH_CONNECT_TIMEOUT_SECONDS = 5.0
WATCH_SOCKET_TIMEOUT_SECONDS = 10.0
WATCH_CLIENT_NAME = "celery-progress-ws-watch"

AsyncClient = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster
"""What the web half runs its commands on: one server (or a Sentinel service's master), or a cluster."""


class Topology(StrEnum):
    """What a Redis URL points at."""

    STANDALONE = "standalone"
    CLUSTER = "cluster"
    SENTINEL = "sentinel"


_SCHEMES = {
    "redis": Topology.STANDALONE,
    "rediss": Topology.STANDALONE,
    "unix": Topology.STANDALONE,
    "redis+cluster": Topology.CLUSTER,
    "rediss+cluster": Topology.CLUSTER,
    "redis+sentinel": Topology.SENTINEL,
    "rediss+sentinel": Topology.SENTINEL,
}


def topology_of(url: str) -> Topology:
    """The topology ``url`` names, after checking it; ``ValueError`` if it is malformed or not supported yet."""
    scheme = urlsplit(url).scheme.lower()
    topology = _SCHEMES.get(scheme)
    if topology is None:
        raise ValueError(
            "Redis URL scheme must be redis://, rediss://, unix://, redis+sentinel:// or redis+cluster://, "
            f"not {scheme + '://'!r}"
        )
    if topology is Topology.CLUSTER:
        parse_cluster_url(url)
    elif topology is Topology.SENTINEL:
        parse_sentinel_url(url)
    else:
        redis.ConnectionPool.from_url(url)  # redis-py's own checks (port, database, query options); no I/O
    return topology


def validate_url(settings: ProgressSettings) -> None:
    """Raise ``ValueError`` now for a URL no client could use, rather than at the first write."""
    topology_of(settings.redis_url)


def describe_url(url: str) -> str:
    """Where ``url`` points, for log lines: ``host:port/db`` or the Sentinel service (never a password)."""
    topology = topology_of(url)
    if topology is Topology.SENTINEL:
        return parse_sentinel_url(url).describe()
    if topology is Topology.CLUSTER:
        return parse_cluster_url(url).describe()
    parts = urlsplit(url)
    if parts.scheme.lower() == "unix":
        return parts.path
    return f"{parts.hostname}:{parts.port or 6379}{parts.path or '/0'}"


def _sentinel(settings: ProgressSettings) -> SentinelTarget | None:
    """The Sentinel service the settings name, ``None`` for a single server (after checking the URL)."""
    if topology_of(settings.redis_url) is Topology.SENTINEL:
        return parse_sentinel_url(settings.redis_url)
    return None


def _cluster(settings: ProgressSettings) -> ClusterTarget | None:
    """The cluster the settings name, ``None`` for any other topology (after checking the URL)."""
    if topology_of(settings.redis_url) is Topology.CLUSTER:
        return parse_cluster_url(settings.redis_url)
    return None


def _sync_pool(settings: ProgressSettings, **kwargs: Any) -> redis.ConnectionPool:
    """A pool of connections (options ``kwargs``) to the server the settings name, or to the service's master."""
    target = _sentinel(settings)
    if target is None:
        return redis.ConnectionPool.from_url(settings.redis_url, **kwargs)
    return sync_master_pool(target, settings.socket_timeout_seconds, **kwargs)


def _async_pool(settings: ProgressSettings, *, blocking: bool = False, **kwargs: Any) -> redis.asyncio.ConnectionPool:
    """``_sync_pool`` for asyncio; ``blocking`` waits up to ``timeout`` (a kwarg) for a free connection."""
    target = _sentinel(settings)
    if target is None:
        pool_class = redis.asyncio.BlockingConnectionPool if blocking else redis.asyncio.ConnectionPool
        return pool_class.from_url(settings.redis_url, **kwargs)
    return async_master_pool(target, settings.socket_timeout_seconds, blocking=blocking, **kwargs)


def writer_client(settings: ProgressSettings) -> redis.Redis | RedisCluster:
    """The worker writer's client: one dedicated connection (``client.connection``, opened here: may raise redis-py's
    errors) that the writer drives directly; on a cluster, a cluster client (its slot map read here) that routes
    each call to its slot's primary.

    Socket and connect timeouts are the settings' socket timeout; a dropped connection is reopened once at once, a
    timeout is not retried (the writer buffers instead). ``NOREPLICAS`` replies raise ``NoReplicasError``. On a
    cluster, a failed call is retried once at once, after the client has re-read the slot map.
    """
    cluster = _cluster(settings)
    if cluster is not None:
        return cluster_client(
            cluster,
            socket_timeout=settings.socket_timeout_seconds,
            socket_connect_timeout=settings.socket_timeout_seconds,
            retry=Retry(NoBackoff(), 1),
        )
    pool = _sync_pool(
        settings,
        socket_timeout=settings.socket_timeout_seconds,
        socket_connect_timeout=settings.socket_timeout_seconds,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        parser_class=SYNC_PARSER,
    )
    try:
        client = redis.Redis(connection_pool=pool, single_connection_client=True)
    except BaseException:
        pool.disconnect()
        raise
    client.auto_close_connection_pool = True  # the pool is this client's alone
    if client.connection is None:
        raise RuntimeError("redis-py did not create the single connection it was asked for")
    return client


def registration_client(settings: ProgressSettings) -> redis.Redis | RedisCluster:
    """A pooled client for ``track()``'s registration: its reply may take ``REGISTRATION_TIMEOUT_FACTOR`` socket
    timeouts; connecting and retrying follow redis-py's defaults (on a cluster: the slot map is read here)."""
    cluster = _cluster(settings)
    if cluster is not None:
        return cluster_client(cluster, socket_timeout=settings.socket_timeout_seconds * REGISTRATION_TIMEOUT_FACTOR)
    return redis.Redis.from_pool(
        _sync_pool(settings, socket_timeout=settings.socket_timeout_seconds * REGISTRATION_TIMEOUT_FACTOR)
    )


def watch_client(settings: ProgressSettings) -> redis.Redis | RedisCluster:
    """The ``watch`` command's client: decoded replies, and no retry, so every failure reaches the watcher (which
    reconnects and resumes from the stream itself). On a cluster, a cluster client (its slot map read here)."""
    cluster = _cluster(settings)
    if cluster is not None:
        return cluster_client(
            cluster,
            decode_responses=True,
            retry=Retry(NoBackoff(), 0),
            socket_connect_timeout=WATCH_CONNECT_TIMEOUT_SECONDS,
            socket_timeout=WATCH_SOCKET_TIMEOUT_SECONDS,
            client_name=WATCH_CLIENT_NAME,
        )
    pool = _sync_pool(
        settings,
        decode_responses=True,
        retry=Retry(NoBackoff(), 0),
        socket_connect_timeout=WATCH_CONNECT_TIMEOUT_SECONDS,
        socket_timeout=WATCH_SOCKET_TIMEOUT_SECONDS,
        client_name=WATCH_CLIENT_NAME,
    )
    return redis.Redis.from_pool(pool)


def async_command_client(settings: ProgressSettings) -> AsyncClient:
    """The web half's command client, on a bounded blocking pool (redis-py's default pool stalls silently past its
    limit).

    Waiting for the connection is bounded by the socket timeout (then ``ConnectionError``); a dropped connection is
    retried once on a new one, a timeout is not (retrying a stalled server only doubles the wait). On a cluster, a
    cluster client (one pool per node, opened as needed) that re-reads the slot map and retries a failed call once.
    """
    cluster = _cluster(settings)
    if cluster is not None:
        return async_cluster_client(
            cluster,
            connections=WEB_CLUSTER_COMMAND_CONNECTIONS,
            wait_seconds=settings.socket_timeout_seconds,
            socket_timeout=settings.socket_timeout_seconds,
            socket_connect_timeout=settings.socket_timeout_seconds,
            retry=AsyncRetry(NoBackoff(), 1),
        )
    pool = _async_pool(
        settings,
        blocking=True,
        max_connections=WEB_COMMAND_CONNECTIONS,
        timeout=settings.socket_timeout_seconds,
        socket_timeout=settings.socket_timeout_seconds,
        socket_connect_timeout=settings.socket_timeout_seconds,
        retry=AsyncRetry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )
    return redis.asyncio.Redis.from_pool(pool)


def async_pubsub_client(settings: ProgressSettings, commands: redis.asyncio.Redis | None = None) -> redis.asyncio.Redis:
    """The web half's pub/sub client: one connection that never reconnects behind the caller's back (a lost message
    must be noticed). Given the app's own ``commands`` client, it connects where and how that one does. One server
    or a Sentinel service only: on a cluster the web half subscribes per shard (``web._cluster_source``)."""
    never = AsyncRetry(NoBackoff(), 0, supported_errors=())
    if commands is None:
        pool = _async_pool(
            settings,
            max_connections=1,
            socket_timeout=settings.socket_timeout_seconds,
            socket_connect_timeout=settings.socket_timeout_seconds,
            retry=never,
        )
    else:
        base = commands.connection_pool
        kwargs = {**base.connection_kwargs, "retry": never, "decode_responses": False}
        pool = redis.asyncio.ConnectionPool(connection_class=base.connection_class, max_connections=1, **kwargs)
    return redis.asyncio.Redis.from_pool(pool)
