"""The writer's Redis client and script runner in this process: made on first use, again after a fork.

Our own single-server client holds one connection that the runner drives directly (the writer's lane lock serialises
its writes, and skipping the pool and redis-py's command layers is a measurable part of a round trip); on a Sentinel
service it also confirms, once a second, that it still talks to the master the sentinels name. A cluster client
(thread-safe) routes each call to its slot's primary. A client the caller gives, or one its factory makes, runs the
scripts through its own pool, retries and routing.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

import redis
from redis.cluster import RedisCluster

from .._core.append import ConnectionAppend, PublishCommand, ScriptAppend
from .._core.clients import describe_url, writer_client
from .._core.sentinel import MasterCheck, master_check
from .._core.settings import ProgressSettings
from .metrics import Runner, metered

ClientSource = redis.Redis | RedisCluster | Callable[[], redis.Redis | RedisCluster]
"""A ready-made client, or a factory called once in each process (after a fork too) that makes one."""


class WriterConnection:
    """This process's client and runner for one writer; thread-safe. ``on_cluster`` hears of each cluster client."""

    def __init__(
        self, settings: ProgressSettings, given: ClientSource | None, on_cluster: Callable[[RedisCluster], None]
    ) -> None:
        self._settings = settings
        self._given = given
        self._on_cluster = on_cluster
        self._lock = threading.Lock()
        self._connected: tuple[redis.Redis | RedisCluster, Runner] | None = None
        self._master_check: MasterCheck | None = None
        self._pid = 0

    def get(self) -> tuple[redis.Redis | RedisCluster, Runner]:
        """The client and runner, created on first use in this process (may raise redis-py's errors)."""
        with self._lock:
            pid = os.getpid()
            if self._connected is None or self._pid != pid:
                self._connected, self._master_check = self._open()
                self._pid = pid
            connected, check = self._connected, self._master_check
        if check is not None:
            check()
        return connected

    def close(self) -> None:
        """Close a client opened here (from the settings or the caller's factory); a given client is left open."""
        with self._lock:
            if self._connected is not None and not isinstance(self._given, (redis.Redis, RedisCluster)):
                self._connected[0].close()
            self._connected = None
            self._master_check = None

    def describe(self) -> str:
        """Where the writes go, for log lines (no password)."""
        return repr(self._given) if self._given is not None else describe_url(self._settings.redis_url)

    def _open(self) -> tuple[tuple[redis.Redis | RedisCluster, Runner], MasterCheck | None]:
        given = self._given
        client = given if given is None or isinstance(given, (redis.Redis, RedisCluster)) else given()
        if client is None:
            client = writer_client(self._settings)
        if isinstance(client, RedisCluster):  # EVALSHA routed by the key's slot; MOVED/ASK followed by it
            self._on_cluster(client)
            return (client, metered(ScriptAppend(client))), None
        if given is not None:
            return (client, metered(ScriptAppend(client))), None
        assert client.connection is not None  # writer_client checks it
        return (client, metered(ConnectionAppend(client.connection))), master_check(client.connection)


def node_runner(client: RedisCluster, name: str) -> tuple[Runner, redis.Connection] | None:
    """A runner on a connection of its own to the cluster node ``name`` (made here: may raise redis-py's errors),
    which drives it directly and in batches, announcing with ``SPUBLISH``; ``None`` if the client knows no such node.
    A ``MOVED`` or ``ASK`` answer on it means the slot moved: its caller goes through the cluster client instead."""
    node = client.get_node(node_name=name)  # type: ignore[no-untyped-call]
    if node is None:
        return None
    connection = client.get_redis_connection(node).connection_pool.get_connection()
    return metered(ConnectionAppend(connection, PublishCommand.SPUBLISH)), connection
