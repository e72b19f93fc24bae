"""The progress routes as a plain ASGI application mounted in a Starlette host that does not forward lifespan events."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from litestar import Litestar, asgi, get
from litestar.types import Receive as LitestarReceive
from litestar.types import Scope as LitestarScope
from litestar.types import Send as LitestarSend
from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Origin

from celery_progress_ws import ProgressSettings
from celery_progress_ws.web import ProgressManager, create_progress_app
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
from tests.support.serverapp import may_view

pytestmark = pytest.mark.integration


def sync_user(connection: HTTPConnection) -> str:
    return connection.query_params.get("user") or connection.headers.get("x-user", "")


async def async_user(connection: HTTPConnection) -> str:
    return sync_user(connection)


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("host route")


HostFactory = Callable[[Callable[[HTTPConnection], Any]], ThreadServer]


@pytest.fixture
def mounted(web_settings: ProgressSettings) -> Iterator[HostFactory]:
    """Start a Starlette host with the progress app under ``/progress``; its manager is shut down by the test's end."""
    servers: list[ThreadServer] = []

    def start(get_user_id: Callable[[HTTPConnection], Any]) -> ThreadServer:
        manager = ProgressManager(settings=web_settings)
        progress = create_progress_app(manager, get_user_id=get_user_id, authorize=may_view)
        host = Starlette(routes=[Route("/hello", hello), Mount("/progress", app=progress)])  # no lifespan forwarded
        server = ThreadServer(manager, host)
        server.start()
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


@pytest.fixture(params=[sync_user, async_user], ids=["sync-user", "async-user"])
async def server(request: pytest.FixtureRequest, mounted: HostFactory) -> AsyncIterator[ThreadServer]:
    """A mounted progress app with a sync or an async ``get_user_id``; the host stops the manager itself."""
    server = mounted(request.param)
    try:
        yield server
    finally:
        await server.call(server.manager.shutdown())


async def test_websocket_receives_history_and_live_entries_to_completed(
    server: ThreadServer, web_publisher: AsyncProgressPublisher
) -> None:
    """A WebSocket of the mounted app gets the history, then live entries up to `completed`, then close 1000."""
    operation = new_operation()
    first = await web_publisher.publish(operation, "status_update", {"status": "started"})
    async with connect(ws_url(server, operation)) as websocket:
        assert (await receive_json(websocket))["id"] == first
        ids = [
            await web_publisher.publish(operation, "chunking_progress", {"documents_processed": n}) for n in range(3)
        ]
        ids.append(await web_publisher.publish(operation, "status_update", {"status": "completed"}))
        assert [message["id"] for message in await receive_until_closed(websocket)] == ids
        assert websocket.close_code == 1000


async def test_event_stream_receives_history_and_live_entries_to_completed(
    server: ThreadServer, web_publisher: AsyncProgressPublisher
) -> None:
    """The SSE route of the mounted app streams the history, then live entries up to `completed`, then ends."""
    operation = new_operation()
    ids = [await web_publisher.publish(operation, "status_update", {"status": "started"})]
    url = f"{server.http}/progress/operations/{operation}/events"
    received: list[str] = []
    async with httpx.AsyncClient(timeout=15) as client, client.stream("GET", url, params={"user": "alice"}) as response:
        assert response.status_code == 200
        async for event in sse_events(response.aiter_lines()):
            if not isinstance(event, SseEvent) or "id" not in event:
                continue
            received.append(event["id"])
            if len(received) == 1:
                ids.append(await web_publisher.publish(operation, "chunking_progress", {"documents_processed": 1}))
                ids.append(await web_publisher.publish(operation, "status_update", {"status": "completed"}))
    assert received == ids


async def test_snapshot_and_health_answer_without_a_forwarded_lifespan(
    server: ThreadServer, web_publisher: AsyncProgressPublisher
) -> None:
    """Snapshot and health requests start the manager themselves: health is 200, the snapshot has the status."""
    operation = new_operation()
    entry = await web_publisher.publish(operation, "status_update", {"status": "started"})
    async with httpx.AsyncClient(base_url=f"{server.http}/progress", timeout=10) as client:
        health = await client.get("/health")
        snapshot = await client.get(f"/operations/{operation}", params={"user": "alice"})
    assert health.status_code == 200
    assert snapshot.status_code == 200
    assert snapshot.json()["last_event_id"] == entry


async def test_unauthorized_user_is_refused(server: ThreadServer) -> None:
    """`authorize` applies to the mounted app: the WebSocket closes with 1008 and the snapshot is 403."""
    operation = f"forbidden-{uuid.uuid4().hex[:8]}"
    async with connect(ws_url(server, operation)) as websocket:
        with pytest.raises(ConnectionClosed):
            await receive_json(websocket)
        assert websocket.close_code == 1008
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(f"{server.http}/progress/operations/{operation}", params={"user": "alice"})
    assert response.status_code == 403


async def test_other_origin_is_refused(server: ThreadServer) -> None:
    """The origin check applies under the mount: a page of another origin gets 403, the server's own origin 200."""
    operation = new_operation()
    with pytest.raises(InvalidStatus) as refused:
        async with connect(ws_url(server, operation), origin=Origin("https://evil.example")):
            pass
    assert refused.value.response.status_code == 403
    async with httpx.AsyncClient(base_url=server.http, timeout=10) as client:
        other = await client.get("/progress/client.js", headers={"Origin": "https://evil.example"})
        own = await client.get("/progress/client.js", headers={"Origin": server.http})
    assert other.status_code == 403
    assert own.status_code == 200


async def test_host_routes_still_work(server: ThreadServer) -> None:
    """The host's own routes are served by the same server next to the mounted progress app."""
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(f"{server.http}/hello")
    assert response.text == "host route"


async def test_forwarded_lifespan_starts_and_stops_the_manager(web_settings: ProgressSettings) -> None:
    """Served as the whole application, its lifespan starts the manager before any request and stops it at exit."""
    manager = ProgressManager(settings=web_settings)
    server = ThreadServer(manager, create_progress_app(manager, get_user_id=sync_user, authorize=may_view))
    server.start()
    try:
        assert manager.redis_available
    finally:
        await asyncio.to_thread(server.stop)
    assert not manager.redis_available


def litestar_host(manager: ProgressManager) -> Litestar:
    """A Litestar application with the progress app mounted under ``/progress`` and the manager in its lifespan."""
    progress_app = create_progress_app(manager, get_user_id=async_user, authorize=may_view)

    @asgi("/progress", is_mount=True, copy_scope=True)
    async def progress(scope: LitestarScope, receive: LitestarReceive, send: LitestarSend) -> None:
        await progress_app(scope, receive, send)  # type: ignore[arg-type]  # Litestar types scopes as TypedDicts

    @get("/hello")
    async def litestar_hello() -> str:
        return "host route"

    return Litestar([progress, litestar_hello], lifespan=[manager.lifespan])


async def test_litestar_mount_serves_the_routes(
    web_settings: ProgressSettings, web_publisher: AsyncProgressPublisher
) -> None:
    """Mounted in Litestar, the WebSocket, the snapshot and the refusals work as in FastAPI, next to host routes."""
    manager = ProgressManager(settings=web_settings)
    server = ThreadServer(manager, litestar_host(manager))  # type: ignore[arg-type]  # an ASGI app all the same
    server.start()
    try:
        operation = new_operation()
        first = await web_publisher.publish(operation, "status_update", {"status": "started"})
        async with connect(ws_url(server, operation)) as websocket:
            assert (await receive_json(websocket))["id"] == first
            last = await web_publisher.publish(operation, "status_update", {"status": "completed"})
            assert [message["id"] for message in await receive_until_closed(websocket)] == [last]
        async with httpx.AsyncClient(base_url=server.http, timeout=10) as client:
            snapshot = await client.get(f"/progress/operations/{operation}", params={"user": "alice"})
            forbidden = await client.get("/progress/operations/forbidden-op", params={"user": "alice"})
            other = await client.get("/progress/client.js", headers={"Origin": "https://evil.example"})
            hello = await client.get("/hello")
        assert snapshot.json()["last_event_id"] == last
        assert forbidden.status_code == 403
        assert other.status_code == 403
        assert hello.text == "host route"
    finally:
        await asyncio.to_thread(server.stop)


async def test_concurrent_first_requests_all_find_the_manager_started(mounted: HostFactory) -> None:
    """Requests arriving together before the manager started all wait for its start: every health check is 200."""
    server = mounted(sync_user)
    try:
        async with httpx.AsyncClient(base_url=f"{server.http}/progress", timeout=10) as client:
            answers = await asyncio.gather(*(client.get("/health") for _ in range(8)))
        assert [answer.status_code for answer in answers] == [200] * 8
    finally:
        await server.call(server.manager.shutdown())
