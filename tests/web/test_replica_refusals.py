"""The web half on a server that answers but cannot serve: a replica refuses writes (READONLY) or, without its
master and with ``replica-serve-stale-data no``, every read (MASTERDOWN)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from redis.asyncio import Redis
from websockets.asyncio.client import connect

from celery_progress_ws import ProgressSettings
from celery_progress_ws.web._async_publisher import AsyncProgressPublisher
from devtools.servers import PrivateRedis, free_port
from tests.support.harness import ThreadServer, receive_json, receive_until_closed, ws_url

pytestmark = pytest.mark.integration


@pytest.fixture
async def admin(private_redis: PrivateRedis) -> AsyncIterator[Redis]:
    """A client of the private server that turns it into a replica of nothing."""
    client = Redis.from_url(private_redis.url)
    try:
        yield client
    finally:
        await client.aclose()


async def become_replica_of_nothing(admin: Redis, *, serve_stale_data: bool) -> None:
    """Make the server a replica of a port nothing listens on: it keeps its data and refuses writes (and, without
    stale data, reads)."""
    await admin.config_set("replica-serve-stale-data", "yes" if serve_stale_data else "no")
    await admin.replicaof("127.0.0.1", free_port())


async def test_a_snapshot_from_a_replica_without_its_master_is_unavailable_not_unknown(
    serve: Callable[..., ThreadServer], web_settings: ProgressSettings, private_redis: PrivateRedis, admin: Redis
) -> None:
    """MASTERDOWN on a read is "store unavailable" (503), not "nothing is known about this operation" (404)."""
    server = serve(web_settings, redis_url=private_redis.url)
    operation = f"op-{uuid.uuid4().hex[:12]}"
    await AsyncProgressPublisher(admin, web_settings).publish(operation, "status_update", {"status": "started"})
    await become_replica_of_nothing(admin, serve_stale_data=False)
    async with httpx.AsyncClient(headers={"x-user": "alice"}, timeout=10) as client:
        response = await client.get(f"{server.http}/progress/operations/{operation}")
    assert response.status_code == 503


async def test_send_update_refused_by_a_replica_reaches_local_clients_and_is_logged(
    serve: Callable[..., ThreadServer],
    web_settings: ProgressSettings,
    private_redis: PrivateRedis,
    admin: Redis,
    progress_log: list[logging.LogRecord],
) -> None:
    """READONLY on send_update falls back to this process' clients, with a warning naming the refusal."""
    server = serve(web_settings, redis_url=private_redis.url)
    operation = f"op-{uuid.uuid4().hex[:12]}"
    first = await AsyncProgressPublisher(admin, web_settings).publish(operation, "status_update", {"status": "started"})
    async with connect(ws_url(server, operation)) as websocket:
        assert (await receive_json(websocket))["id"] == first
        await become_replica_of_nothing(admin, serve_stale_data=True)
        await server.call(server.manager.send_update(operation, "status_update", {"status": "completed"}))
        messages = await receive_until_closed(websocket)
    assert [(message.get("id"), message["data"]["status"]) for message in messages] == [(None, "completed")]
    warnings = [record.getMessage() for record in progress_log if record.levelno >= logging.WARNING]
    assert any("READONLY" in warning or "read only" in warning for warning in warnings)
