"""Refusals over real sockets: bad ids, missing authorization and connection limits get the documented codes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from celery_progress_ws import ProgressSettings
from celery_progress_ws.web._async_publisher import AsyncProgressPublisher
from tests.support.harness import ThreadServer, eventually, receive_json, ws_url

pytestmark = pytest.mark.integration


async def closed_with(url: str) -> tuple[int | None, str | None]:
    """Connect and return the close code and reason the server ends the socket with."""
    async with connect(url) as websocket:
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(10):
                await websocket.recv()
        return websocket.close_code, websocket.close_reason


@pytest.mark.parametrize(
    ("path", "reason_start"),
    [
        ("/progress/operations/bad%20id/ws?user=alice", "operation id 'bad id' contains"),
        ("/progress/operations/ok/ws?user=alice&last_event_id=abc", "Invalid last_event_id"),
        ("/progress/channels/bad%2Achannel/ws?user=alice", "channel name 'bad*channel' contains"),
        ("/progress/operations/forbidden-op/ws?user=alice", "Not authorized"),
        ("/progress/channels/forbidden-channel/ws?user=alice", "Not authorized"),
    ],
)
async def test_websocket_refusals_close_with_1008_and_a_reason(
    server: ThreadServer, path: str, reason_start: str
) -> None:
    """Invalid ids, invalid resume ids and unauthorized users are closed with 1008 and a readable reason."""
    code, reason = await closed_with(server.ws + path)
    assert code == 1008
    assert reason is not None
    assert reason.startswith(reason_start)


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/progress/operations/bad%20id", {}, 400),
        ("/progress/operations/bad%20id/events", {}, 400),
        ("/progress/operations/ok/events", {"Last-Event-ID": "12"}, 400),
        ("/progress/operations/forbidden-op", {}, 403),
        ("/progress/operations/forbidden-op/events", {}, 403),
    ],
)
async def test_http_refusals_answer_400_and_403(
    server: ThreadServer, path: str, headers: dict[str, str], status: int
) -> None:
    """HTTP routes refuse invalid ids with 400 and unauthorized users with 403."""
    async with httpx.AsyncClient(base_url=server.http, timeout=10) as client:
        response = await client.get(path, headers={"x-user": "alice", **headers})
    assert response.status_code == status
    assert response.json()["detail"]


async def test_missing_user_is_refused_before_the_handshake(server: ThreadServer) -> None:
    """When get_user_id raises HTTPException(401), the WebSocket handshake is rejected and no connection counts."""
    with pytest.raises(InvalidStatus):
        async with connect(f"{server.ws}/progress/operations/op/ws"):
            pass
    assert server.manager.connection_count == 0


async def open_and_wait_for_first(url: str) -> ClientConnection:
    """A connected socket that has received its first message (so the server has registered it)."""
    websocket = await connect(url)
    await receive_json(websocket)
    return websocket


async def test_user_limit_closes_the_extra_socket_and_frees_the_slot_on_disconnect(
    serve: Callable[..., ThreadServer], web_settings: ProgressSettings, web_publisher: AsyncProgressPublisher
) -> None:
    """Past max_connections_per_user the socket closes with 1008; other users are unaffected; leaving frees a slot."""
    server = serve(web_settings, max_connections_per_user=2)
    operation = f"op-{uuid.uuid4().hex[:8]}"
    await web_publisher.publish(operation, "status_update", {"status": "started"})
    first = await open_and_wait_for_first(ws_url(server, operation))
    second = await open_and_wait_for_first(ws_url(server, operation))
    try:
        assert await closed_with(ws_url(server, operation)) == (1008, "User connection limit exceeded")
        other = await open_and_wait_for_first(ws_url(server, operation, user="bob"))
        await other.close()
        async with httpx.AsyncClient(timeout=10) as client:
            url = f"{server.http}/progress/operations/{operation}/events"
            refused = await client.get(url, headers={"x-user": "alice"})
        assert refused.status_code == 429
        assert refused.json()["detail"] == "User connection limit exceeded"
        await first.close()
        await eventually(lambda: server.manager.connection_count == 1)  # only `second` is left
        third = await open_and_wait_for_first(ws_url(server, operation))
        await third.close()
    finally:
        await first.close()
        await second.close()


async def test_server_limit_closes_with_its_own_reason(
    serve: Callable[..., ThreadServer], web_settings: ProgressSettings, web_publisher: AsyncProgressPublisher
) -> None:
    """Past max_total_connections any user's socket closes with 1008 "Server connection limit exceeded"."""
    server = serve(web_settings, max_total_connections=1)
    operation = f"op-{uuid.uuid4().hex[:8]}"
    await web_publisher.publish(operation, "status_update", {"status": "started"})
    first = await open_and_wait_for_first(ws_url(server, operation))
    try:
        assert await closed_with(ws_url(server, operation, user="bob")) == (1008, "Server connection limit exceeded")
    finally:
        await first.close()


async def test_oversized_client_message_closes_with_1009(server: ThreadServer) -> None:
    """A client message above max_client_message_bytes closes the socket with 1009; small ones are ignored."""
    async with connect(ws_url(server, f"op-{uuid.uuid4().hex[:8]}")) as websocket:
        await websocket.send("hello")
        await websocket.send("x" * (server.manager.settings.max_client_message_bytes + 1))
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(10):
                await websocket.recv()
        assert websocket.close_code == 1009
