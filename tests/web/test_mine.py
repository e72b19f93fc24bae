"""A user's own operations over real uvicorn and Redis: /me/operations, the /me/ws and /me/events feed, owner_only."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from celery import Celery, group
from fastapi import FastAPI
from starlette.requests import HTTPConnection
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from celery_progress_ws import ProgressPublisher, ProgressSettings, track
from celery_progress_ws._core.keys import KeySpace
from celery_progress_ws.web import ProgressManager, create_progress_app, create_progress_router, owner_only
from tests.support.harness import ThreadServer, new_operation, receive_json, sse_events

pytestmark = pytest.mark.integration


def anonymous_or_user(connection: HTTPConnection) -> str | None:
    """The ``user`` query parameter or ``x-user`` header; nobody (``None``) without one."""
    return connection.headers.get("x-user") or connection.query_params.get("user")


@pytest.fixture
def mine_settings(settings: ProgressSettings) -> ProgressSettings:
    """Short stream TTLs after the end, so a test can watch a summary outlive its stream."""
    return settings.model_copy(update={"failed_ttl_seconds": 1, "completed_ttl_seconds": 1, "heartbeat_seconds": 2.0})


@pytest.fixture
def owned_server(mine_settings: ProgressSettings) -> Iterator[ThreadServer]:
    """uvicorn serving the routes with ``authorize=owner_only(manager)``."""
    manager = ProgressManager(settings=mine_settings)
    app = FastAPI(lifespan=manager.lifespan)
    router = create_progress_router(manager, get_user_id=anonymous_or_user, authorize=owner_only(manager))
    app.include_router(router, prefix="/progress")
    server = ThreadServer(manager, app)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def writer(mine_settings: ProgressSettings) -> Iterator[ProgressPublisher]:
    """The worker half's publisher on the test's Redis."""
    with ProgressPublisher(mine_settings) as publisher:
        yield publisher


def queue(writer: ProgressPublisher, user: str, task_name: str = "ingest") -> str:
    """Record a new operation of ``user`` as the sender does: its `queued` entry with the owner."""
    operation = new_operation()
    data = {"status": "queued", "task_name": task_name, "message": "Task queued"}
    writer.publish(operation, "status_update", data, owner=user)
    return operation


def finish(writer: ProgressPublisher, user: str, operation: str, status: str = "completed", **extra: Any) -> None:
    """Start an operation, report half of it and end it with ``status``, as a worker does."""
    writer.own(operation, user)
    writer.publish(operation, "status_update", {"status": "started", "message": "Task started"})
    writer.progress(operation, 1, 2, force=True)
    writer.publish(operation, "status_update", {"status": status, "message": f"Task {status}", **extra}, final=True)


async def my_list(server: ThreadServer, user: str | None, **params: Any) -> httpx.Response:
    headers = {"x-user": user} if user else {}
    async with httpx.AsyncClient(base_url=server.http, headers=headers, timeout=10) as client:
        return await client.get("/progress/me/operations", params=params)


async def test_each_user_lists_exactly_their_own_newest_first_with_cursor_and_status(
    owned_server: ThreadServer, writer: ProgressPublisher
) -> None:
    """alice's three operations come newest first in pages of two with a cursor; ?status= filters; bob sees his one;
    a bad cursor is 400 and an anonymous request 403."""
    first, second, third = (queue(writer, "alice") for _ in range(3))
    finish(writer, "alice", first, "failed", error_type="ValueError", error_message="bad row")
    bobs = queue(writer, "bob")
    page = (await my_list(owned_server, "alice", limit=2)).json()
    assert [summary["operation_id"] for summary in page["operations"]] == [third, second]
    assert set(page["operations"][0]) == {
        "operation_id", "task_name", "status", "progress_percentage", "message", "error_type", "error_message",
        "queued_at", "started_at", "finished_at",
    }  # fmt: skip
    rest = (await my_list(owned_server, "alice", limit=2, cursor=page["next_cursor"])).json()
    assert [summary["operation_id"] for summary in rest["operations"]] == [first]
    assert rest["next_cursor"] is None
    failed = (await my_list(owned_server, "alice", status="failed")).json()["operations"]
    assert [(s["operation_id"], s["error_type"], s["progress_percentage"]) for s in failed] == [
        (first, "ValueError", 50)
    ]
    queued = (await my_list(owned_server, "alice", status="queued,started")).json()["operations"]
    assert {summary["operation_id"] for summary in queued} == {second, third}
    assert [s["operation_id"] for s in (await my_list(owned_server, "bob")).json()["operations"]] == [bobs]
    assert (await my_list(owned_server, "alice", cursor="nonsense")).status_code == 400
    assert (await my_list(owned_server, "alice", status="running")).status_code == 400
    assert (await my_list(owned_server, None)).status_code == 403


async def test_the_feed_sends_history_then_live_updates_and_resumes_by_id(
    owned_server: ThreadServer, writer: ProgressPublisher
) -> None:
    """/me/ws sends the user's stored operation_update entries, then live ones (never another user's); a client
    resuming from an id gets only what followed it; the feed does not end when an operation does."""
    earlier = queue(writer, "alice")
    url = f"{owned_server.ws}/progress/me/ws?user=alice"
    async with connect(url) as websocket:
        stored = await receive_json(websocket)
        assert (stored["type"], stored["data"]["operation_id"]) == ("operation_update", earlier)
        queue(writer, "bob")
        finish(writer, "alice", earlier)
        updates = [await receive_json(websocket) for _ in range(3)]
        assert [update["data"]["status"] for update in updates] == ["started", "started", "completed"]
        assert updates[1]["data"]["progress_percentage"] == 50
        later = queue(writer, "alice")
        assert (await receive_json(websocket))["data"]["operation_id"] == later
    async with connect(f"{url}&last_event_id={updates[-1]['id']}") as websocket:
        resumed = await receive_json(websocket)
        assert resumed["data"]["operation_id"] == later
        with pytest.raises(TimeoutError):
            await receive_json(websocket, within=0.5)  # still open: a feed never finishes


async def test_the_feed_over_sse_honours_last_event_id(owned_server: ThreadServer, writer: ProgressPublisher) -> None:
    """/me/events frames operation_update entries with their ids; Last-Event-ID skips what the client had."""
    first, second = queue(writer, "carol"), queue(writer, "carol")
    events: list[dict[str, str]] = []
    async with httpx.AsyncClient(timeout=10) as client:
        url = f"{owned_server.http}/progress/me/events"
        async with client.stream("GET", url, headers={"x-user": "carol"}) as response:
            assert response.status_code == 200
            async for item in sse_events(response.aiter_lines()):
                if not isinstance(item, str):
                    events.append(item)
                if len(events) == 2:
                    break
        assert [json.loads(event["data"])["data"]["operation_id"] for event in events] == [first, second]
        assert {event["event"] for event in events} == {"operation_update"}
        third = queue(writer, "carol")
        headers = {"x-user": "carol", "Last-Event-ID": events[0]["id"]}
        async with client.stream("GET", url, headers=headers) as response:
            resumed = []
            async for item in sse_events(response.aiter_lines()):
                if not isinstance(item, str):
                    resumed.append(json.loads(item["data"])["data"]["operation_id"])
                if len(resumed) == 2:
                    break
        assert resumed == [second, third]
        assert (await client.get(url)).status_code == 403


async def test_owner_only_grants_an_operation_to_its_owner_alone(
    owned_server: ThreadServer, writer: ProgressPublisher
) -> None:
    """Under owner_only alice may watch and read her operation; bob is refused on the socket, the stream and the
    snapshot, and an anonymous socket to /me/ws is refused too."""
    operation = queue(writer, "alice")
    async with connect(f"{owned_server.ws}/progress/operations/{operation}/ws?user=alice") as websocket:
        assert (await receive_json(websocket))["data"]["status"] == "queued"
    async with connect(f"{owned_server.ws}/progress/operations/{operation}/ws?user=bob") as websocket:
        with pytest.raises(ConnectionClosed):
            await receive_json(websocket)
        assert (websocket.close_code, websocket.close_reason) == (1008, "Not authorized")
    async with connect(f"{owned_server.ws}/progress/me/ws") as websocket:
        with pytest.raises(ConnectionClosed):
            await receive_json(websocket)
        assert websocket.close_code == 1008
    async with httpx.AsyncClient(base_url=owned_server.http, timeout=10) as client:
        assert (await client.get(f"/progress/operations/{operation}", headers={"x-user": "bob"})).status_code == 403
        events = f"/progress/operations/{operation}/events"
        assert (await client.get(events, headers={"x-user": "bob"})).status_code == 403
        assert (await client.get(f"/progress/operations/{operation}", headers={"x-user": "alice"})).status_code == 200


async def test_a_failed_operation_keeps_its_error_after_its_stream_expired(
    owned_server: ThreadServer, writer: ProgressPublisher, mine_settings: ProgressSettings
) -> None:
    """failed_ttl_seconds=1: once the stream is gone the list still shows `failed` with its error and times."""
    operation = queue(writer, "dave")
    finish(writer, "dave", operation, "failed", error_type="KeyError", error_message="'row'")
    stream = KeySpace(mine_settings.key_prefix).stream(operation)
    with redis.Redis.from_url(mine_settings.redis_url) as client:
        deadline = time.monotonic() + 10
        while client.exists(stream):
            assert time.monotonic() < deadline, "the stream never expired"
            await asyncio.sleep(0.1)
    [summary] = (await my_list(owned_server, "dave")).json()["operations"]
    assert (summary["status"], summary["error_type"], summary["error_message"]) == ("failed", "KeyError", "'row'")
    assert summary["finished_at"] is not None


async def test_a_second_client_finds_the_running_operation_and_attaches_to_its_stream(
    owned_server: ThreadServer, writer: ProgressPublisher
) -> None:
    """Mid-task, a new tab lists the running operation, subscribes to its stream and sees its progress and end."""
    operation = queue(writer, "erin")
    writer.own(operation, "erin")
    writer.publish(operation, "status_update", {"status": "started", "message": "Task started"})
    writer.progress(operation, 1, 4, force=True)
    [running] = (await my_list(owned_server, "erin", status="started")).json()["operations"]
    assert (running["operation_id"], running["progress_percentage"]) == (operation, 25)
    async with connect(f"{owned_server.ws}/progress/operations/{running['operation_id']}/ws?user=erin") as websocket:
        history = [await receive_json(websocket) for _ in range(3)]
        assert [entry["type"] for entry in history] == ["status_update", "status_update", "chunking_progress"]
        writer.progress(operation, 4, 4)
        writer.publish(operation, "status_update", {"status": "completed"}, final=True)
        assert (await receive_json(websocket))["data"]["progress_percentage"] == 100
        assert (await receive_json(websocket))["data"]["status"] == "completed"


async def test_two_users_of_a_real_prefork_worker_each_see_only_their_own(
    prefork_worker: tuple[Celery, Any], owned_server: ThreadServer, mine_settings: ProgressSettings
) -> None:
    """alice's task and bob's tracked group, run by a prefork worker: alice's feed carries her task to `completed`
    (never bob's), bob's SSE feed his group; each list holds exactly their own operation."""
    app, _ = prefork_worker
    async with connect(f"{owned_server.ws}/progress/me/ws?user=alice") as feed:
        task = app.tasks["cpws.count"].apply_async((3,), headers={"progress_owner": "alice"})
        grouped = track(group(app.tasks["cpws.count"].s(2), app.tasks["cpws.count"].s(2)), settings=mine_settings,
                        owner="bob")  # fmt: skip
        seen: list[dict[str, Any]] = []
        while not seen or seen[-1]["status"] != "completed":
            seen.append((await receive_json(feed, within=30))["data"])
    assert {summary["operation_id"] for summary in seen} == {task.id}
    assert seen[0]["status"] == "queued"
    assert seen[-1]["progress_percentage"] == 100
    async with httpx.AsyncClient(timeout=30) as client:
        url = f"{owned_server.http}/progress/me/events"
        async with client.stream("GET", url, headers={"x-user": "bob"}) as response:
            async for item in sse_events(response.aiter_lines()):
                if not isinstance(item, str) and json.loads(item["data"])["data"]["status"] == "completed":
                    assert json.loads(item["data"])["data"]["operation_id"] == grouped
                    break
    alice = (await my_list(owned_server, "alice")).json()["operations"]
    bob = (await my_list(owned_server, "bob")).json()["operations"]
    assert [(s["operation_id"], s["status"]) for s in alice] == [(task.id, "completed")]
    assert [(s["operation_id"], s["task_name"], s["status"]) for s in bob] == [(grouped, "group", "completed")]


async def test_cancelling_an_owned_operation_from_the_web_marks_its_summary_cancelled(
    cancel_server: ThreadServer, module_settings: ProgressSettings
) -> None:
    """POST cancel of a queued owned operation answers 202 and its owner's summary says `cancelled` at once."""
    with ProgressPublisher(module_settings) as publisher:
        operation = queue(publisher, "frank")
    async with httpx.AsyncClient(base_url=cancel_server.http, headers={"x-user": "frank"}, timeout=10) as client:
        response = await client.post(f"/progress/operations/{operation}/cancel")
        assert response.status_code == 202
        [summary] = (await client.get("/progress/me/operations")).json()["operations"]
    assert (summary["operation_id"], summary["status"], summary["message"]) == (
        operation,
        "cancelled",
        "Cancelled on request",
    )
    assert summary["finished_at"] is not None


async def test_a_feed_resumed_after_trimmed_entries_gets_a_gap_first(mine_settings: ProgressSettings) -> None:
    """history_feed_maxlen=2: a client resuming from an id the feed has trimmed gets history_gap (trimmed), then the
    two kept entries; past max_connections_per_user a second /me/ws is refused with 1008."""
    settings = mine_settings.model_copy(update={"history_feed_maxlen": 2, "max_connections_per_user": 1})
    manager = ProgressManager(settings=settings)
    app = FastAPI(lifespan=manager.lifespan)
    app.include_router(
        create_progress_router(manager, get_user_id=anonymous_or_user, authorize=owner_only(manager)),
        prefix="/progress",
    )
    server = ThreadServer(manager, app)
    server.start()
    try:
        with ProgressPublisher(settings) as trimming:
            first = queue(trimming, "hank")
            url = f"{server.ws}/progress/me/ws?user=hank"
            async with connect(url) as websocket:
                seen = await receive_json(websocket)
                assert seen["data"]["operation_id"] == first
            kept = [queue(trimming, "hank") for _ in range(3)][1:]
        async with connect(f"{url}&last_event_id={seen['id']}") as websocket:
            gap = await receive_json(websocket)
            assert (gap["type"], gap["data"]["reason"]) == ("history_gap", "trimmed")
            assert [(await receive_json(websocket))["data"]["operation_id"] for _ in kept] == kept
            async with connect(url) as second:
                with pytest.raises(ConnectionClosed):
                    await receive_json(second)
                assert (second.close_code, second.close_reason) == (1008, "User connection limit exceeded")
    finally:
        server.stop()


async def test_create_progress_app_serves_the_same_routes(
    mine_settings: ProgressSettings, writer: ProgressPublisher
) -> None:
    """The plain ASGI app shares the router: /me/operations lists the user's operation there too."""
    manager = ProgressManager(settings=mine_settings)
    server = ThreadServer(
        manager, create_progress_app(manager, get_user_id=anonymous_or_user, authorize=owner_only(manager))
    )
    server.start()
    try:
        operation = queue(writer, "kim")
        async with httpx.AsyncClient(base_url=server.http, headers={"x-user": "kim"}, timeout=10) as client:
            listed = (await client.get("/me/operations")).json()
    finally:
        server.stop()
    assert [summary["operation_id"] for summary in listed["operations"]] == [operation]
