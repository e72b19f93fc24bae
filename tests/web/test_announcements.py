"""Live announcements are not trusted blindly: forged or buggy ones neither blind clients nor end them, and a resume
id the stream never issued gets a gap and the stream from its start, never "finished"."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from redis.asyncio import Redis
from websockets.asyncio.client import connect

from celery_progress_ws import ProgressSettings
from celery_progress_ws._core.keys import KeySpace
from celery_progress_ws.web._async_publisher import AsyncProgressPublisher
from tests.support.harness import (
    SseEvent,
    ThreadServer,
    new_operation,
    receive_json,
    receive_until_closed,
    sse_events,
    ws_url,
)

pytestmark = pytest.mark.integration

FAR_AHEAD = "99999999999999-0"


async def announce(
    client: Redis, settings: ProgressSettings, operation: str, entry_id: str, data: dict[str, str]
) -> None:
    """PUBLISH a live announcement of an entry that is not in the stream."""
    entry = {"timestamp": "t", "type": "status_update", "data": data}
    await client.publish(KeySpace(settings.key_prefix).live(operation), f"{entry_id} {json.dumps(entry)}")


async def test_a_live_id_far_ahead_of_redis_clock_is_ignored_and_later_entries_arrive(
    server: ThreadServer, web_settings: ProgressSettings, web_publisher: AsyncProgressPublisher, raw_redis: Redis
) -> None:
    """An announced id far ahead of Redis' clock is not delivered; the real entries after it and `completed` are."""
    operation = new_operation()
    first = await web_publisher.publish(operation, "status_update", {"status": "started"})
    async with connect(ws_url(server, operation)) as websocket:
        assert (await receive_json(websocket))["id"] == first
        await announce(raw_redis, web_settings, operation, FAR_AHEAD, {"status": "started"})
        later = [
            await web_publisher.publish(operation, "chunking_progress", {"documents_processed": n}) for n in (1, 2)
        ]
        later.append(await web_publisher.publish(operation, "status_update", {"status": "completed"}))
        assert [message["id"] for message in await receive_until_closed(websocket)] == later
        assert websocket.close_code == 1000


async def test_a_terminal_announcement_missing_from_the_stream_does_not_end_the_connection(
    server: ThreadServer, web_settings: ProgressSettings, web_publisher: AsyncProgressPublisher, raw_redis: Redis
) -> None:
    """A `completed` announced live but absent from the stream is not delivered and does not close the socket."""
    operation = new_operation()
    first = await web_publisher.publish(operation, "status_update", {"status": "started"})
    millis, sequence = first.split("-")
    async with connect(ws_url(server, operation)) as websocket:
        assert (await receive_json(websocket))["id"] == first
        await announce(raw_redis, web_settings, operation, f"{millis}-{int(sequence) + 1}", {"status": "completed"})
        later = [await web_publisher.publish(operation, "chunking_progress", {"documents_processed": 1})]
        later.append(await web_publisher.publish(operation, "status_update", {"status": "completed"}))
        messages = await receive_until_closed(websocket)
        assert [message["id"] for message in messages] == later
        assert websocket.close_code == 1000


async def test_a_plausible_forged_id_is_repaired_when_the_real_terminal_entry_comes(
    server: ThreadServer, web_settings: ProgressSettings, web_publisher: AsyncProgressPublisher, raw_redis: Redis
) -> None:
    """A forged id a little ahead of the stream hides the entries behind it only until the real terminal entry, which
    is confirmed from the stream: the client then gets an `ahead_of_stream` gap and the stream from its start."""
    operation = new_operation()
    first = await web_publisher.publish(operation, "status_update", {"status": "started"})
    forged = f"{int(time.time() * 1000) + 4000}-0"
    async with connect(ws_url(server, operation)) as websocket:
        assert (await receive_json(websocket))["id"] == first
        await announce(raw_redis, web_settings, operation, forged, {"status": "started"})
        assert (await receive_json(websocket))["id"] == forged
        middle = await web_publisher.publish(operation, "chunking_progress", {"documents_processed": 1})
        last = await web_publisher.publish(operation, "status_update", {"status": "completed"})
        messages = await receive_until_closed(websocket)
        assert messages[0]["type"] == "history_gap"
        assert messages[0]["data"] == {"reason": "ahead_of_stream", "after_id": forged, "resumes_at": first}
        assert [message["id"] for message in messages[1:]] == [first, middle, last]
        assert websocket.close_code == 1000


async def test_a_websocket_resuming_ahead_of_the_stream_gets_a_gap_then_the_whole_stream(
    server: ThreadServer, web_publisher: AsyncProgressPublisher
) -> None:
    """A resume id after the stream's newest (terminal) entry is not "finished": a gap, then the whole stream."""
    operation = new_operation()
    ids = [
        await web_publisher.publish(operation, "status_update", {"status": status})
        for status in ("started", "completed")
    ]
    async with connect(ws_url(server, operation, last_event_id=FAR_AHEAD)) as websocket:
        messages = await receive_until_closed(websocket)
    assert messages[0]["type"] == "history_gap"
    assert messages[0]["data"] == {"reason": "ahead_of_stream", "after_id": FAR_AHEAD, "resumes_at": ids[0]}
    assert [message["id"] for message in messages[1:]] == ids
    assert websocket.close_code == 1000


async def test_an_sse_client_resuming_ahead_of_the_stream_gets_the_stream_not_no_content(
    server: ThreadServer, web_publisher: AsyncProgressPublisher
) -> None:
    """SSE answers 204 only for the terminal entry's own id; an id after it gets a gap and the stream."""
    operation = new_operation()
    ids = [
        await web_publisher.publish(operation, "status_update", {"status": status}) for status in ("started", "failed")
    ]
    events: list[SseEvent] = []
    async with httpx.AsyncClient(timeout=10) as client:
        url = f"{server.http}/progress/operations/{operation}/events"
        async with client.stream("GET", url, headers={"x-user": "alice", "Last-Event-ID": FAR_AHEAD}) as response:
            assert response.status_code == 200
            async for item in sse_events(response.aiter_lines()):
                if isinstance(item, SseEvent):
                    events.append(item)
    assert events[0]["event"] == "history_gap"
    assert json.loads(events[0]["data"])["data"]["reason"] == "ahead_of_stream"
    assert [event["id"] for event in events[1:]] == ids
