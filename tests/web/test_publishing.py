"""Web-side publishing against a real Redis: the async publisher's keys, TTLs and throttle, and send_update."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from websockets.asyncio.client import connect

from celery_progress_ws import EntryTooLarge, ProgressSettings
from celery_progress_ws._core.keys import KeySpace
from celery_progress_ws.web._async_publisher import AsyncProgressPublisher
from tests.support.harness import ThreadServer, new_operation, receive_json, receive_until_closed, ws_url

pytestmark = pytest.mark.integration


async def stored_data(client: Redis, stream: str) -> list[dict[str, object]]:
    return [json.loads(fields[b"message"])["data"] for _, fields in await client.xrange(stream)]


@pytest.fixture
async def live(raw_redis: Redis) -> AsyncIterator[PubSub]:
    """A pub/sub connection of the test's own, to await live announcements."""
    pubsub = raw_redis.pubsub(ignore_subscribe_messages=True)
    try:
        yield pubsub
    finally:
        await pubsub.aclose()


async def next_announcement(pubsub: PubSub) -> dict[str, object]:
    """The entry of the next live announcement (``"<id> <json>"``)."""
    async with asyncio.timeout(10):
        while (message := await pubsub.get_message(timeout=10)) is None:
            pass
    _, _, text = message["data"].decode().partition(" ")
    entry: dict[str, object] = json.loads(text)
    return entry


async def test_throttled_progress_keeps_the_last_value_for_a_trailing_write(
    web_publisher: AsyncProgressPublisher, raw_redis: Redis, live: PubSub, web_settings: ProgressSettings
) -> None:
    """Within one interval only the first value is written at once; the newest held value follows when it ends."""
    operation = new_operation()
    keys = KeySpace(web_settings.key_prefix)
    await live.subscribe(keys.live(operation))
    results = [
        await web_publisher.publish(operation, "chunking_progress", {"documents_processed": n}, throttle=True)
        for n in range(10)
    ]
    assert results[0] is not None
    assert results[1:] == [None] * 9
    assert (await next_announcement(live))["data"] == {"documents_processed": 0}
    assert (await next_announcement(live))["data"] == {"documents_processed": 9}
    assert await stored_data(raw_redis, keys.stream(operation)) == [{"documents_processed": n} for n in (0, 9)]


async def test_terminal_status_writes_the_held_value_first(
    web_publisher: AsyncProgressPublisher, raw_redis: Redis, web_settings: ProgressSettings
) -> None:
    """A held-back progress value is written before the operation's terminal status, never after or never."""
    operation = new_operation()
    keys = KeySpace(web_settings.key_prefix)
    for n in range(4):
        await web_publisher.publish(operation, "chunking_progress", {"documents_processed": n}, throttle=True)
    await web_publisher.publish(operation, "status_update", {"status": "completed"})
    assert await stored_data(raw_redis, keys.stream(operation)) == [
        {"documents_processed": 0},
        {"documents_processed": 3},
        {"status": "completed"},
    ]
    assert 0 < await raw_redis.ttl(keys.stream(operation)) <= web_settings.completed_ttl_seconds


async def test_channel_messages_get_the_channel_ttl_and_oversized_entries_are_refused(
    web_publisher: AsyncProgressPublisher, raw_redis: Redis, web_settings: ProgressSettings
) -> None:
    """Channel streams expire after channel_ttl_seconds; an entry above max_entry_bytes raises before any write."""
    keys = KeySpace(web_settings.key_prefix)
    await web_publisher.publish_to_channel("chan", {"timestamp": "t", "type": "note", "data": {}})
    assert 0 < await raw_redis.ttl(keys.channel_stream("chan")) <= web_settings.channel_ttl_seconds
    operation = new_operation()
    with pytest.raises(EntryTooLarge):
        await web_publisher.publish(operation, "note", {"blob": "x" * web_settings.max_entry_bytes})
    assert not await raw_redis.exists(keys.stream(operation))


async def test_manager_send_update_throttles_and_closes_clients_after_completed(server: ThreadServer) -> None:
    """Throttled progress keeps its first and last value, in call order before later entries; `completed` closes."""
    operation = new_operation()
    manager = server.manager

    async def report() -> None:
        for n in range(1, 6):
            await manager.send_chunking_progress(operation, n * 20.0, n, 5, 2 * n)
        await manager.send_chunking_event(operation, "chunking_completed", {"chunks": 10})
        await manager.send_update(operation, "status_update", {"status": "completed"})

    async with connect(ws_url(server, operation)) as websocket:
        await server.call(manager.send_update(operation, "status_update", {"status": "started"}))
        assert (await receive_json(websocket))["data"] == {"status": "started"}
        await server.call(report())
        messages = await receive_until_closed(websocket)
    progress = [
        message["data"]["documents_processed"] for message in messages if message["type"] == "chunking_progress"
    ]
    assert progress == [1, 5]
    types = [message["type"] for message in messages]
    assert types == ["chunking_progress", "chunking_progress", "chunking_completed", "status_update"]
    assert websocket.close_code == 1000


async def test_a_held_back_entry_is_written_as_it_was_published_whatever_its_data_becomes(
    web_publisher: AsyncProgressPublisher, live: PubSub, web_settings: ProgressSettings
) -> None:
    """A held-back entry is encoded when published: data the caller changes later (even to something JSON cannot
    hold) changes nothing, and the trailing write still lands."""
    operation = new_operation()
    await live.subscribe(KeySpace(web_settings.key_prefix).live(operation))
    await web_publisher.publish(operation, "chunking_progress", {"documents_processed": 0}, throttle=True)
    held: dict[object, object] = {"documents_processed": 1}
    assert await web_publisher.publish(operation, "chunking_progress", held, throttle=True) is None
    held[(1, 2)] = "a tuple key"
    held["documents_processed"] = 99
    assert (await next_announcement(live))["data"] == {"documents_processed": 0}
    assert (await next_announcement(live))["data"] == {"documents_processed": 1}
