"""Faults over real sockets: malformed entries, Redis restarting or down at start, and several web processes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from websockets.asyncio.client import connect

from celery_progress_ws import ProgressSettings
from celery_progress_ws._core.keys import KeySpace
from celery_progress_ws.web._async_publisher import AsyncProgressPublisher
from devtools.servers import PrivateRedis
from tests.support.harness import ProcessServer, ThreadServer, new_operation, receive_json, receive_until_closed, ws_url

pytestmark = pytest.mark.integration


async def append_raw(client: Redis, keys: KeySpace, operation: str, message: bytes, announce: bytes | None) -> str:
    """Store ``message`` as an entry and publish ``announce`` (default ``"<id> <message>"``) as its live message."""
    entry_id = (await client.xadd(keys.stream(operation), {"message": message})).decode()
    payload = entry_id.encode() + b" " + message if announce is None else announce
    await client.publish(keys.live(operation), payload)
    return entry_id


async def test_malformed_entries_are_skipped_and_delivery_goes_on(
    serve: Callable[..., ThreadServer], web_settings: ProgressSettings, raw_redis: Redis
) -> None:
    """Entries that are not JSON, of the wrong shape, too big or badly announced are skipped, in history and live."""
    server = serve(web_settings, max_entry_bytes=2000)
    keys = KeySpace(web_settings.key_prefix)
    operation = new_operation()

    def good(number: int) -> bytes:
        return b'{"timestamp":"t","type":"note","data":{"n":%d}}' % number

    bad_messages = [
        b"not json",
        b'{"type": 1}',
        b"[1, 2]",
        b'{"timestamp":"t","type":"x","data":"' + b"y" * 3000 + b'"}',
    ]
    expected = [await append_raw(raw_redis, keys, operation, good(0), None)]
    for message in bad_messages:
        await append_raw(raw_redis, keys, operation, message, None)
    await raw_redis.xadd(keys.stream(operation), {"other-field": b"x"})
    expected.append(await append_raw(raw_redis, keys, operation, good(1), None))
    async with connect(ws_url(server, operation)) as websocket:
        history = [await receive_json(websocket) for _ in expected]
        assert [message["id"] for message in history] == expected
        for message in bad_messages:
            await append_raw(raw_redis, keys, operation, message, None)
        await raw_redis.publish(keys.live(operation), b"no-separator")
        await raw_redis.publish(keys.live(operation), b"\xff\xfe not utf-8")
        await raw_redis.publish(keys.live(operation), b"12-x {}")
        final = await append_raw(raw_redis, keys, operation, good(2), None)
        message = await receive_json(websocket)
        assert message["id"] == final
        assert message["data"] == {"n": 2}


@pytest.fixture
async def private_publisher(
    private_redis: PrivateRedis, web_settings: ProgressSettings
) -> AsyncIterator[AsyncProgressPublisher]:
    """A publisher writing to the test's private Redis (whose client reconnects after a restart)."""
    client = Redis.from_url(private_redis.url, retry=Retry(NoBackoff(), 2))
    try:
        yield AsyncProgressPublisher(client, web_settings.model_copy(update={"redis_url": private_redis.url}))
    finally:
        await client.aclose()


async def test_redis_restart_keeps_sockets_and_delivers_what_follows_after_a_gap_message(
    serve: Callable[..., ThreadServer],
    web_settings: ProgressSettings,
    private_redis: PrivateRedis,
    private_publisher: AsyncProgressPublisher,
) -> None:
    """After Redis restarts (losing its data) the socket stays open, a redis_restarted gap comes, then new entries."""
    server = serve(web_settings, redis_url=private_redis.url)
    operation = new_operation()
    before = [
        await private_publisher.publish(operation, "chunking_progress", {"documents_processed": n}) for n in range(3)
    ]
    async with connect(ws_url(server, operation)) as websocket:
        assert [(await receive_json(websocket))["id"] for _ in before] == before
        private_redis.restart()
        after = [
            await private_publisher.publish(operation, "chunking_progress", {"documents_processed": n})
            for n in range(3)
        ]
        gap = await receive_json(websocket, within=20)
        assert gap["type"] == "history_gap"
        assert gap["data"]["reason"] == "redis_restarted"
        assert gap["data"]["after_id"] == before[-1]
        assert [(await receive_json(websocket))["id"] for _ in after] == after
        after.append(await private_publisher.publish(operation, "status_update", {"status": "completed"}))
        assert [message["id"] for message in await receive_until_closed(websocket)] == after[-1:]
        assert websocket.close_code == 1000


async def test_redis_down_at_startup_degrades_then_delivers_once_it_is_up(
    serve: Callable[..., ThreadServer],
    web_settings: ProgressSettings,
    private_redis: PrivateRedis,
    private_publisher: AsyncProgressPublisher,
) -> None:
    """With Redis down the app starts and sends current_state; once Redis is up, live delivery begins."""
    private_redis.stop()
    server = serve(web_settings, redis_url=private_redis.url)
    assert not server.manager.redis_available
    server.manager.set_operation_getter(lambda operation_id: {"status": "queued"})
    operation = new_operation()
    async with connect(ws_url(server, operation)) as websocket:
        state = await receive_json(websocket)
        assert (state["type"], state["data"]) == ("current_state", {"status": "queued"})
        private_redis.start()
        entry_id = await private_publisher.publish(operation, "status_update", {"status": "started"})
        message = await receive_json(websocket, within=20)
        assert message["id"] == entry_id


async def test_send_update_without_redis_goes_straight_to_local_clients(
    serve: Callable[..., ThreadServer],
    web_settings: ProgressSettings,
    private_redis: PrivateRedis,
    private_publisher: AsyncProgressPublisher,
) -> None:
    """When Redis is down, send_update hands the entry to this process' clients directly (a terminal one closes)."""
    server = serve(web_settings, redis_url=private_redis.url)
    operation = new_operation()
    first = await private_publisher.publish(operation, "status_update", {"status": "started"})
    async with connect(ws_url(server, operation)) as websocket:
        assert (await receive_json(websocket))["id"] == first
        private_redis.stop()
        await server.call(server.manager.send_update(operation, "status_update", {"status": "completed"}))
        messages = await receive_until_closed(websocket)
        assert [(message.get("id"), message["data"]["status"]) for message in messages] == [(None, "completed")]
        assert websocket.close_code == 1000


async def test_two_web_processes_on_one_redis_both_deliver(
    web_settings: ProgressSettings, web_publisher: AsyncProgressPublisher
) -> None:
    """Two uvicorn processes on one Redis each deliver every entry to their own clients."""
    servers = [ProcessServer(web_settings), ProcessServer(web_settings)]
    try:
        for server in servers:
            server.wait_ready()
        operation = new_operation()
        first = await web_publisher.publish(operation, "status_update", {"status": "started"})
        async with connect(ws_url(servers[0], operation)) as one, connect(ws_url(servers[1], operation)) as two:
            assert (await receive_json(one))["id"] == (await receive_json(two))["id"] == first
            ids = [
                await web_publisher.publish(operation, "chunking_progress", {"documents_processed": n})
                for n in range(5)
            ]
            ids.append(await web_publisher.publish(operation, "status_update", {"status": "completed"}))
            for websocket in (one, two):
                assert [message["id"] for message in await receive_until_closed(websocket)] == ids
                assert websocket.close_code == 1000
    finally:
        for server in servers:
            server.stop()
