"""Redis Sentinel: the ``redis+sentinel://`` URL and connection pools whose connections follow the current master.

Every connection of these pools asks the sentinels for the master's address each time it (re)connects (redis-py's
``SentinelManagedConnection``), so after a failover the next connection reaches the new master, and an old master
that comes back empty (briefly a master with no data, until the sentinels demote it) is never written to: the
sentinels no longer name it. A ``READONLY`` reply on such a connection closes it (redis-py turns it into a
``ConnectionError``), so a master demoted behind a live connection is left at the next attempt too.

A master the sentinels replaced while they could not reach it may still take writes from clients that can (a split
brain), until the sentinels demote it when they reach it again, and what it took is then lost. ``MasterCheck`` lets a
long-lived connection notice the new master sooner: at most once a ``MASTER_CHECK_INTERVAL_SECONDS`` it asks the
sentinels which master they name, and closes the connection if that is not the one it talks to.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from .urls import credentials, host_addresses

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
DEFAULT_SENTINEL_PORT = 26379
MASTER_CHECK_INTERVAL_SECONDS = 1.0
"""How often a long-lived connection confirms with the sentinels that it still talks to the master they name."""


@dataclass(frozen=True, slots=True)
class SentinelTarget:
    """What a ``redis+sentinel://`` URL names: the sentinels to ask, the service's name, and how to use its master."""

    sentinels: tuple[tuple[str, int], ...]
    service_name: str
    db: int
    username: str | None
    password: str | None
    ssl: bool

    def describe(self) -> str:
        """Where the data lives, for log lines (no password)."""
        hosts = ",".join(f"{host}:{port}" for host, port in self.sentinels)
        return f"sentinel service {self.service_name!r} (via {hosts})/{self.db}"

    def master_kwargs(self) -> dict[str, Any]:
        """Connection options of the master's connections (the URL's credentials go to the master, not sentinels)."""
        return {"db": self.db, "username": self.username, "password": self.password, "ssl": self.ssl}


def parse_sentinel_url(url: str) -> SentinelTarget:
    """``redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service_name[/db]`` (``rediss+`` for TLS);
    ``ValueError`` naming what is wrong."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in SENTINEL_SCHEMES:
        raise ValueError(f"a Sentinel URL starts with redis+sentinel:// or rediss+sentinel://, not {scheme + '://'!r}")
    if parts.query or parts.fragment:
        raise ValueError("a redis+sentinel:// URL takes no query options or fragment")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, password = credentials(userinfo)
    if not hosts:
        raise ValueError("a redis+sentinel:// URL names at least one sentinel: redis+sentinel://host:port/service")
    sentinels = host_addresses(hosts, DEFAULT_SENTINEL_PORT, "sentinel")
    path = parts.path.split("/")[1:]
    if not path or not path[0] or len(path) > 2 or (len(path) == 2 and not path[1]):
        raise ValueError("a redis+sentinel:// URL's path is /service_name or /service_name/db")
    service_name = unquote(path[0])
    if any(character.isspace() for character in service_name):
        raise ValueError(f"Sentinel service name {service_name!r} contains white space")
    db = 0
    if len(path) == 2:
        if not path[1].isdigit():
            raise ValueError(f"Redis database must be a non-negative integer, not {path[1]!r}")
        db = int(path[1])
    return SentinelTarget(sentinels, service_name, db, username, password, scheme == "rediss+sentinel")


def _sentinel_kwargs(target: SentinelTarget, timeout: float, retry: Retry | AsyncRetry) -> dict[str, Any]:
    """How the sentinels themselves are asked: bounded, never retried (an unreachable one is skipped for the next)."""
    return {"socket_timeout": timeout, "socket_connect_timeout": timeout, "ssl": target.ssl, "retry": retry}


def sync_master_pool(
    target: SentinelTarget, sentinel_timeout: float, /, **kwargs: Any
) -> redis.sentinel.SentinelConnectionPool:
    """A pool of connections to the service's current master, with ``kwargs`` as connection options; each sentinel
    is asked with ``sentinel_timeout``."""
    manager = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
        target.sentinels, sentinel_kwargs=_sentinel_kwargs(target, sentinel_timeout, Retry(NoBackoff(), 0))
    )
    return _OwningSyncPool(  # type: ignore[no-untyped-call]
        target.service_name, manager, is_master=True, **target.master_kwargs(), **kwargs
    )


def async_master_pool(
    target: SentinelTarget, sentinel_timeout: float, /, *, blocking: bool, **kwargs: Any
) -> redis.asyncio.sentinel.SentinelConnectionPool:
    """An asyncio pool of connections to the service's current master; ``blocking`` waits (up to ``timeout`` kwarg)
    for a free connection instead of failing."""
    manager = redis.asyncio.sentinel.Sentinel(  # type: ignore[no-untyped-call]
        target.sentinels,
        sentinel_kwargs=_sentinel_kwargs(target, sentinel_timeout, AsyncRetry(NoBackoff(), 0)),
    )
    pool_class = _OwningBlockingAsyncPool if blocking else _OwningAsyncPool
    return pool_class(  # type: ignore[no-untyped-call]
        target.service_name, manager, is_master=True, **target.master_kwargs(), **kwargs
    )


class MasterCheck:
    """Confirms, at most once an ``interval``, that a Sentinel-managed ``connection`` still talks to the master the
    sentinels name, and closes it otherwise (its next ``connect()`` asks them for the new one).

    Call it before using the connection. It raises ``MasterNotFoundError`` (a ``ConnectionError``) after closing the
    connection when no sentinel names an agreed, healthy master: the master may be failing over right now.
    """

    __slots__ = ("_connection", "_due", "_interval")

    def __init__(
        self, connection: redis.sentinel.SentinelManagedConnection, interval: float = MASTER_CHECK_INTERVAL_SECONDS
    ) -> None:
        self._connection = connection
        self._interval = interval
        self._due = time.monotonic() + interval

    def __call__(self) -> None:
        now = time.monotonic()
        if now < self._due:
            return
        self._due = now + self._interval
        connection = self._connection
        if not connection.is_connected:
            return  # connecting asks the sentinels anyway
        try:
            named = connection.connection_pool.get_master_address()
        except BaseException:
            connection.disconnect()  # type: ignore[no-untyped-call]
            raise
        if (connection.host, connection.port) != tuple(named):
            connection.disconnect()  # type: ignore[no-untyped-call]


def master_check(connection: object) -> MasterCheck | None:
    """A ``MasterCheck`` for ``connection`` if it follows a Sentinel service's master, ``None`` otherwise."""
    if isinstance(connection, redis.sentinel.SentinelManagedConnection):
        return MasterCheck(connection)
    return None


class _OwningSyncPool(redis.sentinel.SentinelConnectionPool):
    """Closes its sentinel clients too when its client closes it (a pool re-pointed at a new master does not)."""

    def disconnect(self, inuse_connections: bool = True) -> None:
        super().disconnect(inuse_connections)
        if inuse_connections:
            for sentinel in self.sentinel_manager.sentinels:
                sentinel.close()


class _OwningAsyncPool(redis.asyncio.sentinel.SentinelConnectionPool):
    """The asyncio ``_OwningSyncPool``."""

    async def disconnect(self, inuse_connections: bool = True) -> None:
        await super().disconnect(inuse_connections)
        if inuse_connections:
            await self.sentinel_manager.aclose()


class _OwningBlockingAsyncPool(_OwningAsyncPool, redis.asyncio.BlockingConnectionPool):
    """``_OwningAsyncPool`` that waits for a free connection (redis-py's plain pool stalls silently past its limit)."""
