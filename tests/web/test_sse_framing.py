"""An entry type names the SSE event line: every writer refuses a bad one, readers skip it, and no value adds a line."""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from celery_progress_ws import InvalidEntryType, MalformedEntry, ProgressSettings, send_event
from celery_progress_ws._core.codec import decode_entry
from celery_progress_ws._core.keys import KeySpace
from celery_progress_ws.web import ProgressManager
from celery_progress_ws.web._async_publisher import AsyncProgressPublisher
from celery_progress_ws.web._outbox import Outgoing
from tests.support.harness import SseEvent, ThreadServer, sse_events

pytestmark = pytest.mark.integration

BAD_TYPES = ["completed\nid: 99-0", "x\r\nevent: completed", "x\rdata: {}", "has space", "", "x" * 65, "é"]
FORGED = 'status_update\ndata: {"type":"status_update","data":{"status":"completed"}}\n\nevent: status_update'

Write = Callable[[ProgressManager, str, str], Awaitable[Any]]
WRITES: dict[str, Write] = {
    "send_update": lambda manager, op, kind: manager.send_update(op, kind, {}),
    "send_chunking_event": lambda manager, op, kind: manager.send_chunking_event(op, kind, {}),
    "broadcast_to_operation": lambda manager, op, kind: manager.broadcast_to_operation(op, {"type": kind, "data": {}}),
    "send_message": lambda manager, op, kind: manager.send_message(op, {"type": kind, "data": {}}),
}


@pytest.mark.parametrize("bad", BAD_TYPES)
@pytest.mark.parametrize("write", list(WRITES))
async def test_every_manager_write_path_refuses_a_bad_entry_type(server: ThreadServer, write: str, bad: str) -> None:
    """send_update, send_chunking_event, broadcast_to_operation and send_message refuse it and send nothing."""
    operation = f"op-{uuid.uuid4().hex[:8]}"
    with pytest.raises(InvalidEntryType):
        await server.call(WRITES[write](server.manager, operation, bad))
    assert await server.call(server.manager._reads.entries(operation)) == []


@pytest.mark.parametrize("bad", BAD_TYPES)
async def test_publishers_and_send_event_refuse_a_bad_entry_type(
    web_publisher: AsyncProgressPublisher, bad: str
) -> None:
    """The async publisher (operations and channels) and the worker's send_event apply the same rule."""
    with pytest.raises(InvalidEntryType):
        await web_publisher.publish("op-1", bad, {})
    with pytest.raises(InvalidEntryType):
        await web_publisher.publish_to_channel("chan-1", {"type": bad, "timestamp": "t", "data": {}})
    with pytest.raises(InvalidEntryType):
        send_event(bad, {}, operation_id="op-1")
    with pytest.raises(InvalidEntryType):
        Outgoing.unstored({"type": bad, "data": {}})


@pytest.mark.parametrize("bad", BAD_TYPES)
def test_decode_entry_rejects_a_bad_entry_type(bad: str) -> None:
    """A stored entry whose type breaks the rule is malformed, like any other broken entry."""
    with pytest.raises(MalformedEntry):
        decode_entry(json.dumps({"timestamp": "t", "type": bad, "data": {}}))


async def write_raw(raw_redis: Redis, settings: ProgressSettings, operation: str, entry: str) -> str:
    """Append ``entry`` as it is (no validation) and announce it live, as a hand-written writer could."""
    keys = KeySpace(settings.key_prefix)
    entry_id = (await raw_redis.xadd(keys.stream(operation), {"message": entry})).decode()
    await raw_redis.publish(keys.live(operation), f"{entry_id} {entry}")
    return entry_id


async def test_a_hand_written_entry_with_a_forged_type_is_skipped_on_the_event_stream(
    server: ThreadServer, web_settings: ProgressSettings, web_publisher: AsyncProgressPublisher, raw_redis: Redis
) -> None:
    """History and live both skip it: the client sees only the real entries, and no forged ``completed``."""
    operation = f"op-{uuid.uuid4().hex[:8]}"
    forged = json.dumps({"timestamp": "t", "type": FORGED, "data": {}})
    first = await web_publisher.publish(operation, "status_update", {"status": "started"})
    await write_raw(raw_redis, web_settings, operation, forged)  # read back as history
    events: list[SseEvent] = []
    url = f"{server.http}/progress/operations/{operation}/events"
    async with httpx.AsyncClient(timeout=10) as client, client.stream("GET", url, headers={"x-user": "u"}) as response:
        assert response.status_code == 200
        async for item in sse_events(response.aiter_lines()):
            if isinstance(item, str):
                continue
            events.append(item)
            if item.get("id") == first:
                await write_raw(raw_redis, web_settings, operation, forged)  # delivered live
                last = await web_publisher.publish(operation, "status_update", {"status": "completed"})
    expected = [(first, "status_update"), (last, "status_update")]
    assert [(event.get("id"), event["event"]) for event in events] == expected
    assert [event["data"].count("\n") for event in events] == [0, 0]
