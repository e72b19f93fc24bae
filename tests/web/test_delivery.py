"""End to end over real sockets: entries written to Redis reach WebSocket and SSE clients in order, exactly once."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from celery_progress_ws import ProgressSettings
from celery_progress_ws._core.keys import KeySpace
from celery_progress_ws.web import ProgressManager
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


async def test_entries_arrive_in_order_and_socket_closes_after_completed(
    server: ThreadServer, web_publisher: AsyncProgressPublisher
) -> None:
    """History and live entries arrive in order with their ids, and `completed` closes the socket with 1000."""
    operation = new_operation()
    first = await web_publisher.publish(operation, "status_update", {"status": "started"})
    async with connect(ws_url(server, operation)) as websocket:
        history = await receive_json(websocket)
        assert history["id"] == first
        assert set(history) == {"id", "timestamp", "type", "data"}
        ids = [
            await web_publisher.publish(operation, "chunking_progress", {"documents_processed": n}) for n in range(20)
        ]
        ids.append(await web_publisher.publish(operation, "status_update", {"status": "completed"}))
        messages = await receive_until_closed(websocket)
        assert [message["id"] for message in messages] == ids
        assert [message["data"].get("documents_processed") for message in messages[:-1]] == list(range(20))
        assert websocket.close_code == 1000
        assert websocket.close_reason == "Operation completed"


async def test_operation_not_started_yet_is_watched_until_its_first_entry(
    server: ThreadServer, web_publisher: AsyncProgressPublisher
) -> None:
    """A client of an operation without a stream yet receives its first entry as soon as it is written."""
    operation = new_operation()
    async with connect(ws_url(server, operation)) as websocket:
        entry_id = await web_publisher.publish(operation, "status_update", {"status": "queued"})
        message = await receive_json(websocket)
        assert message["id"] == entry_id


async def write_steadily(
    web_publisher: AsyncProgressPublisher, operation: str, count: int, ids: list[str], halfway: asyncio.Event
) -> None:
    """Write ``count`` progress entries (pacing them a little so clients connect mid-stream), then `completed`."""
    for number in range(count):
        entry_id = await web_publisher.publish(operation, "chunking_progress", {"documents_processed": number})
        assert entry_id is not None
        ids.append(entry_id)
        if number == count // 2:
            halfway.set()
        await asyncio.sleep(0.001)
    entry_id = await web_publisher.publish(operation, "status_update", {"status": "completed"})
    assert entry_id is not None
    ids.append(entry_id)


async def test_resume_mid_stream_gets_exactly_the_missing_entries(
    server: ThreadServer, web_publisher: AsyncProgressPublisher
) -> None:
    """Clients that join late or reconnect with last_event_id while a publisher writes get each entry exactly once."""
    operation = new_operation()
    written: list[str] = []
    halfway = asyncio.Event()
    writer = asyncio.create_task(write_steadily(web_publisher, operation, 400, written, halfway))

    async def reconnecting_client(leave_after: int) -> list[str]:
        received: list[str] = []
        async with connect(ws_url(server, operation)) as websocket:
            while len(received) < leave_after:
                received.append((await receive_json(websocket))["id"])
        async with connect(ws_url(server, operation, last_event_id=received[-1])) as websocket:
            received += [message["id"] for message in await receive_until_closed(websocket)]
            assert websocket.close_code == 1000
        return received

    async def late_client() -> list[str]:
        await halfway.wait()
        async with connect(ws_url(server, operation)) as websocket:
            return [message["id"] for message in await receive_until_closed(websocket)]

    results = await asyncio.gather(reconnecting_client(37), reconnecting_client(201), late_client())
    await writer
    for received in results:
        assert received == written


async def test_sse_resumes_after_last_event_id_and_ends_after_completed(
    serve: Callable[..., ThreadServer], web_settings: ProgressSettings, web_publisher: AsyncProgressPublisher
) -> None:
    """SSE honours Last-Event-ID, frames entries with id/event/data, sends heartbeats and ends after `completed`."""
    server = serve(web_settings, heartbeat_seconds=0.2)
    operation = new_operation()
    ids = [await web_publisher.publish(operation, "chunking_progress", {"documents_processed": n}) for n in range(5)]
    headers = {"x-user": "alice", "Last-Event-ID": str(ids[1])}
    events: list[SseEvent] = []
    heartbeats = 0
    async with httpx.AsyncClient(timeout=10) as client:
        url = f"{server.http}/progress/operations/{operation}/events"
        async with client.stream("GET", url, headers=headers) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            async for item in sse_events(response.aiter_lines()):
                if isinstance(item, str):
                    heartbeats += 1
                    if heartbeats == 1:
                        ids.append(await web_publisher.publish(operation, "status_update", {"status": "completed"}))
                    continue
                events.append(item)
    assert [event["id"] for event in events] == ids[2:]
    assert [event["event"] for event in events] == ["chunking_progress"] * 3 + ["status_update"]
    assert json.loads(events[-1]["data"])["data"]["status"] == "completed"
    assert heartbeats >= 1


async def test_sse_resume_after_the_terminal_entry_answers_no_content(
    server: ThreadServer, web_publisher: AsyncProgressPublisher
) -> None:
    """An SSE client resuming from the terminal entry gets 204, which tells EventSource to stop reconnecting."""
    operation = new_operation()
    await web_publisher.publish(operation, "status_update", {"status": "started"})
    last = await web_publisher.publish(operation, "status_update", {"status": "failed"})
    async with httpx.AsyncClient(timeout=10) as client:
        url = f"{server.http}/progress/operations/{operation}/events"
        response = await client.get(url, headers={"x-user": "alice", "Last-Event-ID": str(last)})
    assert response.status_code == 204


async def test_sse_resumes_from_the_query_parameter_and_the_header_wins(
    server: ThreadServer, web_publisher: AsyncProgressPublisher
) -> None:
    """SSE accepts ``?last_event_id=`` on a first connect; a ``Last-Event-ID`` header, when also sent, wins."""
    operation = new_operation()
    ids = [await web_publisher.publish(operation, "chunking_progress", {"documents_processed": n}) for n in range(4)]
    ids.append(await web_publisher.publish(operation, "status_update", {"status": "completed"}))
    url = f"{server.http}/progress/operations/{operation}/events"
    async with httpx.AsyncClient(timeout=10) as client:
        for params, headers, expected in (
            ({"last_event_id": ids[0]}, {}, ids[1:]),
            ({"last_event_id": ids[0]}, {"Last-Event-ID": ids[2]}, ids[3:]),
        ):
            async with client.stream("GET", url, params=params, headers={"x-user": "alice", **headers}) as response:
                assert response.status_code == 200
                received = [
                    item["id"] async for item in sse_events(response.aiter_lines()) if not isinstance(item, str)
                ]
            assert received == expected


async def test_current_state_comes_first_then_history(
    server: ThreadServer, web_publisher: AsyncProgressPublisher
) -> None:
    """With an operation getter set, `current_state` (no id) is sent before the history."""
    operation = new_operation()

    class Operation:
        status = "running"
        type = "ingest"
        error_message = None

    async def get_operation(operation_id: str) -> object | None:
        return Operation() if operation_id == operation else None

    server.manager.set_operation_getter(get_operation)
    entry_id = await web_publisher.publish(operation, "status_update", {"status": "started"})
    async with connect(ws_url(server, operation)) as websocket:
        state = await receive_json(websocket)
        assert state["type"] == "current_state"
        assert "id" not in state
        assert state["data"]["status"] == "running"
        assert state["data"]["operation_type"] == "ingest"
        assert (await receive_json(websocket))["id"] == entry_id


async def test_snapshot_reports_latest_status_progress_and_id(
    server: ThreadServer, web_publisher: AsyncProgressPublisher
) -> None:
    """GET /operations/{id} answers the latest status, latest progress and last id; 404 when nothing is known."""
    operation = new_operation()
    await web_publisher.publish(operation, "status_update", {"status": "started"})
    await web_publisher.publish(operation, "chunking_progress", {"documents_processed": 1, "total_documents": 4})
    last = await web_publisher.publish(operation, "chunking_progress", {"documents_processed": 2, "total_documents": 4})
    async with httpx.AsyncClient(base_url=server.http, headers={"x-user": "alice"}, timeout=10) as client:
        found: dict[str, Any] = (await client.get(f"/progress/operations/{operation}")).json()
        missing = await client.get(f"/progress/operations/{new_operation()}")
    assert found["status"] == "started"
    assert found["progress"]["documents_processed"] == 2
    assert found["last_event_id"] == last
    assert missing.status_code == 404


async def test_custom_channel_delivers_history_and_live_messages(
    server: ThreadServer, web_publisher: AsyncProgressPublisher
) -> None:
    """A channel WebSocket gets the channel's stored messages, then live ones, each with its id."""
    channel = f"chunking:{uuid.uuid4().hex[:8]}"
    first = await web_publisher.publish_to_channel(channel, {"timestamp": "t", "type": "note", "data": {"n": 1}})
    async with connect(f"{server.ws}/progress/channels/{channel}/ws?user=alice") as websocket:
        assert (await receive_json(websocket))["id"] == first
        second = await web_publisher.publish_to_channel(channel, {"timestamp": "t", "type": "note", "data": {"n": 2}})
        message = await receive_json(websocket)
        assert message["id"] == second
        assert message["data"] == {"n": 2}


async def test_router_serves_the_browser_client(server: ThreadServer) -> None:
    """The router serves the browser module and its declarations next to the routes."""
    async with httpx.AsyncClient(base_url=server.http, timeout=10) as client:
        module = await client.get("/progress/client.js")
        declarations = await client.get("/progress/client.d.ts")
    assert module.status_code == 200
    assert "export function subscribe" in module.text
    assert module.headers["content-type"].startswith("text/javascript")
    assert declarations.status_code == 200


async def test_resume_after_trimmed_entries_gets_a_gap_message_first(
    server: ThreadServer, raw_redis: Redis, web_settings: ProgressSettings
) -> None:
    """Resuming from an id the max length trimmed away yields `history_gap` (trimmed), then what remains."""
    short = AsyncProgressPublisher(raw_redis, web_settings.model_copy(update={"stream_maxlen": 5}))
    operation = new_operation()
    ids = [await short.publish(operation, "chunking_progress", {"documents_processed": n}) for n in range(10)]
    async with connect(ws_url(server, operation, last_event_id=str(ids[2]))) as websocket:
        gap = await receive_json(websocket)
        assert gap["type"] == "history_gap"
        assert gap["data"] == {"reason": "trimmed", "after_id": ids[2], "resumes_at": ids[5]}
        assert [(await receive_json(websocket))["id"] for _ in ids[5:]] == ids[5:]


async def test_resume_of_a_missing_stream_gets_a_gap_message_then_live_entries(
    server: ThreadServer, web_publisher: AsyncProgressPublisher
) -> None:
    """Resuming from an id of a stream that no longer exists yields `history_gap` (stream_missing), then live ones."""
    operation = new_operation()
    async with connect(ws_url(server, operation, last_event_id="1700000000000-0")) as websocket:
        gap = await receive_json(websocket)
        assert gap["data"] == {"reason": "stream_missing", "after_id": "1700000000000-0", "resumes_at": None}
        entry_id = await web_publisher.publish(operation, "status_update", {"status": "started"})
        assert (await receive_json(websocket))["id"] == entry_id


async def test_websocket_resume_at_the_terminal_entry_closes_at_once(
    server: ThreadServer, web_publisher: AsyncProgressPublisher
) -> None:
    """A WebSocket resuming from the terminal entry's id is closed with 1000 right away, with nothing to send."""
    operation = new_operation()
    last = await web_publisher.publish(operation, "status_update", {"status": "cancelled"})
    async with connect(ws_url(server, operation, last_event_id=str(last))) as websocket:
        assert await receive_until_closed(websocket) == []
        assert (websocket.close_code, websocket.close_reason) == (1000, "Operation completed")


async def test_manager_accepts_a_ready_made_decoding_client(
    web_settings: ProgressSettings, web_publisher: AsyncProgressPublisher
) -> None:
    """With `redis=` (here one that decodes responses) the manager reads history and live entries just the same."""
    client = Redis.from_url(web_settings.redis_url, decode_responses=True)
    server = ThreadServer(ProgressManager(settings=web_settings, redis=client))
    server.start()
    try:
        operation = new_operation()
        first = await web_publisher.publish(operation, "status_update", {"status": "started"})
        async with connect(ws_url(server, operation)) as websocket:
            assert (await receive_json(websocket))["id"] == first
            last = await web_publisher.publish(operation, "status_update", {"status": "completed"})
            assert [message["id"] for message in await receive_until_closed(websocket)] == [last]
        assert (await server.call(server.manager.snapshot(operation)) or {})["last_event_id"] == last
        await server.call(client.aclose())
    finally:
        server.stop()


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_the_greatest_stream_id_is_refused_as_a_resume_id(server: ThreadServer, transport: str) -> None:
    """`last_event_id` = the greatest stream id (nothing can follow it) is refused like any invalid id."""
    greatest = f"{2**64 - 1}-{2**64 - 1}"
    operation = new_operation()
    if transport == "sse":
        async with httpx.AsyncClient(timeout=10) as client:
            url = f"{server.http}/progress/operations/{operation}/events?last_event_id={greatest}"
            assert (await client.get(url, headers={"x-user": "alice"})).status_code == 400
        return
    async with connect(ws_url(server, operation, last_event_id=greatest)) as websocket:
        with pytest.raises(ConnectionClosed):
            await receive_json(websocket)
    assert websocket.close_code == 1008


async def test_an_unreadable_stream_logs_one_warning_not_one_per_connection(
    server: ThreadServer, web_settings: ProgressSettings, raw_redis: Redis, progress_log: list[logging.LogRecord]
) -> None:
    """A key of another type under a stream's name is reported once, however many clients connect to it."""
    operation = new_operation()
    await raw_redis.set(KeySpace(web_settings.key_prefix).stream(operation), "not a stream")
    for _ in range(3):
        async with connect(ws_url(server, operation, last_event_id="1-0")) as websocket:
            gap = await receive_json(websocket)  # sent once the stream has been read
            assert gap["data"]["reason"] == "stream_missing"
    warnings = [record for record in progress_log if record.levelno >= logging.WARNING]
    assert [record.getMessage() for record in warnings if "Cannot read" in record.getMessage()][1:] == []
