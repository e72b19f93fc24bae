"""The Redis client factory: each kind of client gets the options its callers rely on; bad URLs fail at once."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from celery_progress_ws import ProgressPublisher, ProgressSettings
from celery_progress_ws._core import clients
from celery_progress_ws._core.cluster import ClusterTarget, parse_cluster_url
from celery_progress_ws._core.sentinel import parse_sentinel_url
from celery_progress_ws.web import ProgressManager
from celery_progress_ws.web._cluster_source import ClusterSource
from devtools.cluster import PrivateCluster
from devtools.servers import PrivateRedis

SETTINGS = ProgressSettings(redis_url="redis://127.0.0.1:6390/3", socket_timeout_seconds=0.7)


def retry_of(kwargs: dict[str, object]) -> tuple[int, tuple[type[BaseException], ...], type[object]]:
    """A connection's retry policy: how many retries, on which errors, with which backoff."""
    retry = kwargs["retry"]
    return retry._retries, tuple(retry._supported_errors), type(retry._backoff)  # type: ignore[attr-defined]


def test_writer_client_is_one_connection_with_the_socket_timeout_and_one_reconnect(private_redis: PrivateRedis) -> None:
    """The writer's client owns a single connection: socket timeouts, one immediate retry on connection errors only."""
    client = clients.writer_client(SETTINGS.model_copy(update={"redis_url": private_redis.url}))
    try:
        assert client.connection is not None
        kwargs = client.connection_pool.connection_kwargs
        assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("127.0.0.1", private_redis.port, 0)
        assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (0.7, 0.7)
        assert client.info("clients")["connected_clients"] == 1
        assert retry_of(kwargs) == (1, (RedisConnectionError,), NoBackoff)
    finally:
        client.close()


def test_registration_client_allows_ten_socket_timeouts_for_the_reply() -> None:
    """track()'s own client waits ten socket timeouts for its one large pipeline; the rest is redis-py's default."""
    client = clients.registration_client(SETTINGS)
    try:
        kwargs = client.connection_pool.connection_kwargs
        assert kwargs["socket_timeout"] == pytest.approx(7.0)
        assert "socket_connect_timeout" not in kwargs
        assert client.connection is None
    finally:
        client.close()


def test_watch_client_decodes_and_never_retries() -> None:
    """The watch command's client decodes replies, names itself, and leaves every failure to the watcher."""
    client = clients.watch_client(SETTINGS)
    try:
        kwargs = client.connection_pool.connection_kwargs
        assert kwargs["decode_responses"] is True
        assert (kwargs["socket_connect_timeout"], kwargs["socket_timeout"]) == (5.0, 10.0)
        assert kwargs["client_name"] == "celery-progress-ws-watch"
        assert retry_of(kwargs)[0] == 0
    finally:
        client.close()


async def test_async_command_client_is_a_bounded_blocking_pool_of_one() -> None:
    """The web command client: one connection, waited for at most a socket timeout, one retry on connection errors."""
    client = clients.async_command_client(SETTINGS)
    try:
        pool = client.connection_pool
        assert isinstance(pool, redis.asyncio.BlockingConnectionPool)
        assert (pool.max_connections, pool.timeout) == (1, 0.7)
        kwargs = pool.connection_kwargs
        assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (0.7, 0.7)
        assert retry_of(kwargs) == (1, (RedisConnectionError,), NoBackoff)
    finally:
        await client.aclose()


async def test_async_pubsub_client_never_reconnects_on_its_own() -> None:
    """The pub/sub client has one connection and no retry, alone or derived from the app's command client."""
    commands = redis.asyncio.Redis.from_url("redis://127.0.0.1:6391/0", decode_responses=True, socket_timeout=3)
    for client in (clients.async_pubsub_client(SETTINGS), clients.async_pubsub_client(SETTINGS, commands)):
        try:
            pool = client.connection_pool
            assert pool.max_connections == 1
            assert retry_of(pool.connection_kwargs) == (0, (), NoBackoff)
            assert not pool.connection_kwargs.get("decode_responses", False)
        finally:
            await client.aclose()
    derived = clients.async_pubsub_client(SETTINGS, commands).connection_pool.connection_kwargs
    assert (derived["port"], derived["socket_timeout"]) == (6391, 3)
    await commands.aclose()


@pytest.mark.parametrize("url", ["redis://h:6379/0", "rediss://h/1", "unix:///tmp/redis.sock?db=2"])
def test_single_server_urls_are_standalone(url: str) -> None:
    """redis://, rediss:// and unix:// URLs name one server."""
    assert clients.topology_of(url) is clients.Topology.STANDALONE


async def test_cluster_urls_build_cluster_clients_for_both_halves_without_connecting() -> None:
    """A cluster URL builds a publisher, and the manager on an asyncio cluster client with the per-shard source;
    nothing connects before the first command."""
    settings = ProgressSettings(redis_url="rediss+cluster://h:7000,h:7001")
    ProgressPublisher(settings).close()
    assert clients.topology_of(settings.redis_url) is clients.Topology.CLUSTER
    command = clients.async_command_client(settings)
    assert isinstance(command, AsyncRedisCluster)
    await command.aclose()
    manager = ProgressManager(settings)
    assert isinstance(manager.redis, AsyncRedisCluster)
    assert isinstance(manager._source, ClusterSource)
    await manager.shutdown()


def test_a_cluster_url_names_its_startup_nodes_credentials_and_tls() -> None:
    """Several nodes (default port 6379, IPv6 in brackets), the credentials, TLS for rediss+; logs show no password."""
    target = parse_cluster_url("rediss+cluster://user:p%40ss@h1:7000,h2,[::1]:7002/0")
    assert target == ClusterTarget((("h1", 7000), ("h2", 6379), ("::1", 7002)), "user", "p@ss", True)
    assert parse_cluster_url("redis+cluster://h:1").ssl is False
    described = clients.describe_url("redis+cluster://:p%40ss@h:1")
    assert "p@ss" not in described
    assert "h:1" in described


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+cluster://", "at least one node"),
        ("redis+cluster://h:7000/1", "database 0 only"),
        ("redis+cluster://h:7000?db=0", "no query options"),
        ("redis+cluster://h:0", "no valid port"),
        ("redis+cluster://h:1,:2", "has no host"),
        ("redis+cluster://h:x", "no valid port"),
    ],
)
def test_a_malformed_cluster_url_is_a_value_error_saying_what_is_wrong(url: str, problem: str) -> None:
    """Every part of a cluster URL is checked when the publisher is built."""
    with pytest.raises(ValueError, match=problem):
        ProgressPublisher(ProgressSettings(redis_url=url))


@pytest.mark.parametrize(
    ("url", "problem"),
    [("http://h:6379", "scheme"), ("redis://h:port/0", "Port"), ("redis:///no-host?db=x", "'db'")],
)
def test_malformed_urls_are_a_value_error_when_a_manager_is_built(url: str, problem: str) -> None:
    """A URL no client could use fails when the manager or publisher is built, not at its first use."""
    with pytest.raises(ValueError, match=problem):
        ProgressManager(ProgressSettings(redis_url=url))
    with pytest.raises(ValueError, match=problem):
        ProgressPublisher(ProgressSettings(redis_url=url))


def test_a_given_client_needs_no_valid_url() -> None:
    """A publisher given its client never reads the settings' URL."""
    given = redis.Redis()
    try:
        ProgressPublisher(ProgressSettings(redis_url="redis+cluster://h:7000"), client=given)
    finally:
        given.close()


def test_a_sentinel_url_names_its_sentinels_service_database_and_master_credentials() -> None:
    """Several sentinels (default port 26379, IPv6 in brackets), the service, the database and the master's password."""
    target = parse_sentinel_url("rediss+sentinel://:p%40ss@h1:26380,h2,[::1]:26381/my-master/3")
    assert target.sentinels == (("h1", 26380), ("h2", 26379), ("::1", 26381))
    assert (target.service_name, target.db, target.username, target.password, target.ssl) == (
        "my-master",
        3,
        None,
        "p@ss",
        True,
    )
    plain = parse_sentinel_url("redis+sentinel://user:pw@h:1/svc")
    assert (plain.db, plain.username, plain.password, plain.ssl) == (0, "user", "pw", False)
    assert clients.topology_of("redis+sentinel://h/svc") is clients.Topology.SENTINEL
    assert "pw" not in clients.describe_url("redis+sentinel://user:pw@h:1/svc")


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+sentinel://h:26379", "path is /service_name"),
        ("redis+sentinel://h:26379/", "path is /service_name"),
        ("redis+sentinel://h:26379/svc/x", "database must be"),
        ("redis+sentinel://h:26379/svc/0/extra", "path is /service_name"),
        ("redis+sentinel:///svc", "at least one sentinel"),
        ("redis+sentinel://h:0/svc", "no valid port"),
        ("redis+sentinel://h:1,:2/svc", "has no host"),
        ("redis+sentinel://h:1/svc?db=1", "no query options"),
        ("redis+sentinel://h:1/my%20svc", "white space"),
    ],
)
def test_a_malformed_sentinel_url_is_a_value_error_saying_what_is_wrong(url: str, problem: str) -> None:
    """Every part of a Sentinel URL is checked when the publisher or the manager is built."""
    with pytest.raises(ValueError, match=problem):
        ProgressPublisher(ProgressSettings(redis_url=url))
    with pytest.raises(ValueError, match=problem):
        ProgressManager(ProgressSettings(redis_url=url))


async def test_every_client_of_a_sentinel_url_connects_through_the_sentinels() -> None:
    """Each builder's pool is a Sentinel master pool keeping the options the builder sets (and the URL's database)."""
    settings = SETTINGS.model_copy(update={"redis_url": "redis+sentinel://127.0.0.1:1/svc/2"})
    sync_clients = [clients.registration_client(settings), clients.watch_client(settings)]
    for client in sync_clients:
        assert isinstance(client.connection_pool, redis.sentinel.SentinelConnectionPool)
        assert (client.connection_pool.service_name, client.connection_pool.connection_kwargs["db"]) == ("svc", 2)
        client.close()
    command = clients.async_command_client(settings)
    pubsub = clients.async_pubsub_client(settings)
    for pool in (command.connection_pool, pubsub.connection_pool):
        assert isinstance(pool, redis.asyncio.sentinel.SentinelConnectionPool)
    assert isinstance(command.connection_pool, redis.asyncio.BlockingConnectionPool)
    assert (command.connection_pool.max_connections, command.connection_pool.timeout) == (1, 0.7)
    assert retry_of(pubsub.connection_pool.connection_kwargs) == (0, (), NoBackoff)
    await command.aclose()
    await pubsub.aclose()


async def test_a_burst_on_the_async_cluster_client_waits_for_turns_within_the_connection_cap(
    redis_cluster: PrivateCluster,
) -> None:
    """600 commands at once (history reads, lease renewals, pipelines) all succeed, and no node ever holds more than
    the web half's few command connections: a burst waits instead of failing past redis-py's per-node cap."""
    client = clients.async_command_client(ProgressSettings(redis_url=redis_cluster.url))
    assert isinstance(client, AsyncRedisCluster)
    name = f"cpws-burst-{uuid.uuid4().hex[:8]}"
    try:
        await client.initialize()
        for node in client.get_nodes():
            node.connection_kwargs["client_name"] = name
        keys = [f"cpws-burst:{{{i}}}" for i in range(200)]

        async def pipelined(key: str) -> list[object]:
            pipe = client.pipeline()
            pipe.get(key)
            pipe.exists(key)
            return await pipe.execute()

        replies = await asyncio.gather(
            *(client.get(key) for key in keys), *(client.xrange(key) for key in keys), *(pipelined(key) for key in keys)
        )
        assert replies[:400] == [None] * 200 + [[]] * 200
        assert replies[400:] == [[None, 0]] * 200
        per_node = []
        for node in client.get_nodes():
            listed = await client.client_list(target_nodes=node)
            per_node.append(sum(1 for entry in listed if entry["name"] == name))
        assert 0 < max(per_node) <= clients.WEB_CLUSTER_COMMAND_CONNECTIONS
    finally:
        await client.aclose()
