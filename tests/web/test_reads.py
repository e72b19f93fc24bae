"""One-off reads (the JSON snapshot) are bounded in size and time, and do not crowd out delivery's reads."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from websockets.asyncio.client import connect

from celery_progress_ws import ProgressSettings
from celery_progress_ws._core.keys import KeySpace
from celery_progress_ws._core.streams import Topic, TopicKind
from celery_progress_ws.web._async_publisher import AsyncProgressPublisher
from devtools.servers import PrivateRedis
from tests.support.harness import ThreadServer, new_operation, receive_json, ws_url

pytestmark = pytest.mark.integration


def snapshot_url(server: ThreadServer, operation: str) -> str:
    return f"{server.http}/progress/operations/{operation}"


@pytest.fixture
async def private_client(private_redis: PrivateRedis) -> AsyncIterator[Redis]:
    """A client of the test's private Redis."""
    client = Redis.from_url(private_redis.url)
    try:
        yield client
    finally:
        await client.aclose()


async def test_an_oversized_entry_is_left_out_of_the_snapshot(
    server: ThreadServer, web_settings: ProgressSettings, web_publisher: AsyncProgressPublisher, raw_redis: Redis
) -> None:
    """A 5 MB entry is skipped as delivery skips it; the status and progress around it are reported."""
    operation = new_operation()
    await web_publisher.publish(operation, "status_update", {"status": "started"})
    huge = {"timestamp": "t", "type": "status_update", "data": {"status": "huge", "blob": "x" * 5_000_000}}
    await raw_redis.xadd(KeySpace(web_settings.key_prefix).stream(operation), {"message": json.dumps(huge)})
    last = await web_publisher.publish(operation, "chunking_progress", {"documents_processed": 2})
    async with httpx.AsyncClient(headers={"x-user": "alice"}, timeout=10) as client:
        response = await client.get(snapshot_url(server, operation))
    found = response.json()
    assert (found["status"], found["progress"], found["last_event_id"]) == ("started", {"documents_processed": 2}, last)
    entries = await server.call(server.manager._reads.entries(operation))
    assert [entry["type"] for entry in entries] == ["chunking_progress", "status_update"]


async def test_during_a_redis_stall_snapshots_answer_503_and_connects_do_not_queue(
    serve: Callable[..., ThreadServer],
    web_settings: ProgressSettings,
    private_redis: PrivateRedis,
    private_client: Redis,
) -> None:
    """With Redis paused (SIGSTOP), concurrent snapshots answer 503 and WebSocket connects are accepted, all within
    a bound far below their sum; once Redis resumes, snapshots answer again and the sockets get their entries."""
    server = serve(web_settings, redis_url=private_redis.url)
    publisher = AsyncProgressPublisher(private_client, web_settings.model_copy(update={"redis_url": private_redis.url}))
    operations = [new_operation() for _ in range(5)]
    firsts = [await publisher.publish(operation, "status_update", {"status": "started"}) for operation in operations]
    assert private_redis.pid is not None
    async with httpx.AsyncClient(headers={"x-user": "alice"}, timeout=30) as client:
        os.kill(private_redis.pid, signal.SIGSTOP)
        try:
            async with asyncio.timeout(5):  # a liveness bound: each request alone may take up to ~2 s
                snapshots = [client.get(snapshot_url(server, operation)) for operation in operations]
                sockets = [
                    connect(ws_url(server, operation, user=f"user-{n}")) for n, operation in enumerate(operations)
                ]
                results: list[Any] = await asyncio.gather(*snapshots, *sockets)
        finally:
            os.kill(private_redis.pid, signal.SIGCONT)
        responses, websockets = results[: len(operations)], results[len(operations) :]
        try:
            assert [response.status_code for response in responses] == [503] * len(operations)
            for websocket, first in zip(websockets, firsts, strict=True):
                assert (await receive_json(websocket, within=20))["id"] == first
            answered = await client.get(snapshot_url(server, operations[0]))
            assert answered.status_code == 200
            assert answered.json()["last_event_id"] == firsts[0]
        finally:
            for websocket in websockets:
                await websocket.close()


async def test_concurrent_snapshots_do_not_queue_ahead_of_a_catch_up_read(
    server: ThreadServer, web_settings: ProgressSettings, web_publisher: AsyncProgressPublisher
) -> None:
    """While 20 snapshots are in flight, a connection's catch-up read waits for at most a couple of their commands:
    snapshots take turns one command at a time instead of queueing all at once on the shared command connection."""
    operation = new_operation()
    for status in ("queued", "started"):
        await web_publisher.publish(operation, "status_update", {"status": status})
    await web_publisher.publish(operation, "chunking_progress", {"documents_processed": 1})
    manager = server.manager
    topic = Topic(TopicKind.OPERATION, operation)

    async def snapshots_done_when_a_catch_up_read_returns() -> int:
        snapshots = [asyncio.ensure_future(manager.snapshot(operation)) for _ in range(20)]
        await asyncio.sleep(0)  # every snapshot has asked for the connection (or for its turn)
        history = await manager._source.read_after(topic, None, web_settings.history_batch)
        done = sum(snapshot.done() for snapshot in snapshots)
        assert len(history) == 3
        assert all(found is not None for found in await asyncio.gather(*snapshots))
        return done

    assert await server.call(snapshots_done_when_a_catch_up_read_returns()) <= 3
