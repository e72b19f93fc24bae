"""The per-user connection limit across web processes: counted in Redis, released on disconnect or lease expiry."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from celery_progress_ws import ProgressSettings
from celery_progress_ws._core.keys import KeySpace
from celery_progress_ws.web._async_publisher import AsyncProgressPublisher
from celery_progress_ws.web._user_count import RedisUserCount
from devtools.servers import PrivateRedis, free_port
from tests.support.harness import ProcessServer, ThreadServer, eventually, receive_json, ws_url

pytestmark = pytest.mark.integration

USER_LIMIT = (1008, "User connection limit exceeded")
LEASE_SECONDS = 1.5


@pytest.fixture
def processes(monkeypatch: pytest.MonkeyPatch, web_settings: ProgressSettings) -> Iterator[list[ProcessServer]]:
    """Two uvicorn subprocesses on the test's Redis and prefix, with a per-user limit of 3 and a short lease."""
    monkeypatch.setenv("CELERY_PROGRESS_WS_MAX_CONNECTIONS_PER_USER", "3")
    monkeypatch.setenv("CELERY_PROGRESS_WS_CONNECTION_LEASE_SECONDS", str(LEASE_SECONDS))
    servers = [ProcessServer(web_settings), ProcessServer(web_settings)]
    try:
        for server in servers:
            server.wait_ready()
        yield servers
    finally:
        for server in servers:
            server.stop()


async def opened(url: str) -> ClientConnection | None:
    """A socket that received its first message, or ``None`` when the server closed it (refused)."""
    websocket = await connect(url)
    try:
        await receive_json(websocket)
    except ConnectionClosed:
        return None
    return websocket


async def admitted(url: str, within: float) -> ClientConnection:
    """Retry connecting until the server accepts (a slot was freed elsewhere), failing after ``within`` seconds."""
    async with asyncio.timeout(within):
        while (websocket := await opened(url)) is None:  # noqa: ASYNC110 - the freed slot is in another process
            await asyncio.sleep(0.05)
    return websocket


async def refusal(url: str) -> tuple[int | None, str | None]:
    """Connect to a server expected to refuse; the close code and reason."""
    async with connect(url) as websocket:
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(10):
                await websocket.recv()
        return websocket.close_code, websocket.close_reason


async def open_many(urls: list[str]) -> list[ClientConnection]:
    sockets = []
    for url in urls:
        websocket = await opened(url)
        assert websocket is not None, url
        sockets.append(websocket)
    return sockets


async def started_operation(publisher: AsyncProgressPublisher) -> str:
    operation = f"op-{uuid.uuid4().hex[:8]}"
    await publisher.publish(operation, "status_update", {"status": "started"})
    return operation


async def test_one_user_limit_holds_across_two_processes(
    processes: list[ProcessServer], web_publisher: AsyncProgressPublisher
) -> None:
    """Limit 3: two sockets on A and one on B are accepted, the 4th is refused on either; leaving frees a slot."""
    a, b = processes
    operation = await started_operation(web_publisher)
    sockets = await open_many([ws_url(a, operation), ws_url(a, operation), ws_url(b, operation)])
    try:
        assert await refusal(ws_url(a, operation)) == USER_LIMIT
        assert await refusal(ws_url(b, operation)) == USER_LIMIT
        other = await opened(ws_url(b, operation, user="bob"))
        assert other is not None
        await other.close()
        await sockets[0].close()
        sockets.append(await admitted(ws_url(b, operation), within=10))
        assert await refusal(ws_url(a, operation)) == USER_LIMIT
    finally:
        for websocket in sockets:
            await websocket.close()


async def test_a_killed_process_releases_its_connections_within_the_lease(
    processes: list[ProcessServer],
    web_publisher: AsyncProgressPublisher,
    web_settings: ProgressSettings,
    redis_client: redis.Redis,
) -> None:
    """After SIGKILL, A's slots stay counted until their lease ends; B's own lease keeps being renewed meanwhile."""
    a, b = processes
    key = KeySpace(web_settings.key_prefix).user_connections("alice")
    operation = await started_operation(web_publisher)
    sockets = await open_many([ws_url(a, operation), ws_url(a, operation)])
    on_a = set(redis_client.zrange(key, 0, -1))
    sockets += await open_many([ws_url(b, operation)])
    try:
        scores = redis_client.zrange(key, 0, -1, withscores=True)
        ((on_b, first_expiry),) = [(member, score) for member, score in scores if member not in on_a]
        a.process.kill()
        a.process.wait()
        killed_at = time.monotonic()
        assert redis_client.zcard(key) == 3  # nothing released them: only the lease can
        sockets.append(await admitted(ws_url(b, operation), within=LEASE_SECONDS + 5))
        sockets.append(await admitted(ws_url(b, operation), within=LEASE_SECONDS + 5))
        assert time.monotonic() - killed_at <= LEASE_SECONDS + 1.5
        assert not on_a & set(redis_client.zrange(key, 0, -1))
        renewed = redis_client.zscore(key, on_b)
        assert renewed is not None
        assert renewed > first_expiry  # B kept renewing its own lease meanwhile
        assert await refusal(ws_url(b, operation)) == USER_LIMIT
    finally:
        for websocket in sockets:
            await websocket.close()


async def test_without_redis_the_per_process_count_still_limits_users(
    serve: Callable[..., ThreadServer], web_settings: ProgressSettings
) -> None:
    """Degraded mode: with Redis unreachable, connections are admitted up to the per-process per-user limit."""
    unreachable = f"redis://127.0.0.1:{free_port()}/0"
    server = serve(web_settings, redis_url=unreachable, max_connections_per_user=2)
    operation = f"op-{uuid.uuid4().hex[:8]}"
    sockets = [await connect(ws_url(server, operation)) for _ in range(2)]
    try:
        await eventually(lambda: server.manager.connection_count == 2, within=10)
        assert await refusal(ws_url(server, operation)) == USER_LIMIT
    finally:
        for websocket in sockets:
            await websocket.close()


async def test_counts_are_restored_in_redis_after_an_outage(private_redis: PrivateRedis) -> None:
    """Admitted while Redis is down, counted again by the first renewal after it; releases meanwhile are removed."""
    client = Redis.from_url(private_redis.url, socket_timeout=1, socket_connect_timeout=1)
    count = RedisUserCount(client, KeySpace("t:"), limit=2, lease_seconds=30)
    key = KeySpace("t:").user_connections("alice")
    try:
        assert await count.acquire("alice", "kept")
        assert await count.acquire("alice", "gone")
        assert not await count.acquire("alice", "third")
        private_redis.stop()
        await count.release("alice", "gone")
        assert count.degraded
        assert await count.acquire("alice", "while-down")  # only the per-process limit holds now
        private_redis.start()
        await count.renew()
        assert not count.degraded
        assert sorted(await client.zrange(key, 0, -1)) == [b"kept", b"while-down"]
        await count.release("alice", "kept")
        assert await client.zrange(key, 0, -1) == [b"while-down"]
    finally:
        await client.aclose()
