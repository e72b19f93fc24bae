"""A WebSocket and an event stream of one operation end the same way: on its terminal entry, on overflow and on
shutdown, each keeping its slot until its route has finished with its socket."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from celery_progress_ws import ProgressSettings
from celery_progress_ws.web._async_publisher import AsyncProgressPublisher
from tests.support.harness import ThreadServer, eventually, receive_json, sse_events, ws_url

pytestmark = pytest.mark.integration

BLOB_BYTES = 40_000


@asynccontextmanager
async def event_stream(server: ThreadServer, operation: str, user: str) -> AsyncIterator[asyncio.Task[list[str]]]:
    """An event-stream client that has received its first event; yields the task that reads it, which returns the
    event types once the stream ends."""
    url = f"{server.http}/progress/operations/{operation}/events"
    first = asyncio.Event()

    async def read(response: httpx.Response) -> list[str]:
        events = []
        async for item in sse_events(response.aiter_lines()):
            if not isinstance(item, str):
                events.append(item["event"])
                first.set()
        return events

    async with httpx.AsyncClient(timeout=30) as client, client.stream("GET", url, headers={"x-user": user}) as response:
        assert response.status_code == 200
        reader = asyncio.create_task(read(response))
        try:
            await asyncio.wait_for(first.wait(), 10)
            yield reader
        finally:
            reader.cancel()


async def close_of(websocket: ClientConnection) -> tuple[int | None, str | None]:
    """Read until the server closes; its close code and reason."""
    async with asyncio.timeout(15):
        try:
            while True:
                await websocket.recv()
        except ConnectionClosed as exc:
            return (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd is not None else (None, None)


async def test_both_transports_end_on_the_terminal_entry_and_free_their_slots(
    server: ThreadServer, web_publisher: AsyncProgressPublisher
) -> None:
    """The WebSocket closes with 1000 "Operation completed", the stream ends after the same entry; both slots free."""
    operation = f"op-{uuid.uuid4().hex[:8]}"
    await web_publisher.publish(operation, "status_update", {"status": "started"})
    async with connect(ws_url(server, operation)) as websocket, event_stream(server, operation, "bob") as stream:
        await receive_json(websocket)
        await eventually(lambda: server.manager.connection_count == 2)
        await web_publisher.publish(operation, "status_update", {"status": "completed"})
        assert await close_of(websocket) == (1000, "Operation completed")
        assert await asyncio.wait_for(stream, 10) == ["status_update", "status_update"]
        await eventually(lambda: server.manager.connection_count == 0)


async def test_both_transports_end_on_shutdown(
    serve: Callable[..., ThreadServer], web_settings: ProgressSettings, web_publisher: AsyncProgressPublisher
) -> None:
    """Shutting the manager down closes the WebSocket with 1001 and ends the stream; no slot stays taken."""
    server = serve(web_settings)
    operation = f"op-{uuid.uuid4().hex[:8]}"
    await web_publisher.publish(operation, "status_update", {"status": "started"})
    async with connect(ws_url(server, operation)) as websocket, event_stream(server, operation, "bob") as stream:
        await receive_json(websocket)
        await eventually(lambda: server.manager.connection_count == 2)
        await server.call(server.manager.shutdown())
        assert await close_of(websocket) == (1001, "Server shutting down")
        assert await asyncio.wait_for(stream, 10) == ["status_update"]
        assert server.manager.connection_count == 0


def frozen_socket(port: int, request: bytes) -> socket.socket:
    """A client with a tiny receive buffer that sends ``request``, reads the response head, then never reads."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(request)
    sock.settimeout(10)
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        assert chunk, "the server closed before answering"
        head += chunk
    assert head.split(b" ", 2)[1] in (b"101", b"200"), head
    return sock


async def test_both_transports_are_dropped_on_overflow_and_free_their_slots_once_their_routes_are_done(
    serve: Callable[..., ThreadServer], web_settings: ProgressSettings, web_publisher: AsyncProgressPublisher
) -> None:
    """Clients that stop reading overflow, are dropped within the send timeout, and only then free their slots."""
    server = serve(web_settings, client_queue_size=8, send_timeout_seconds=1.0)
    operation = f"op-{uuid.uuid4().hex[:8]}"
    await web_publisher.publish(operation, "status_update", {"status": "started"})
    path = f"/progress/operations/{operation}"
    frozen = [
        frozen_socket(
            server.port,
            f"GET {path}/ws HTTP/1.1\r\nHost: test\r\nx-user: ws\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode(),
        ),
        frozen_socket(server.port, f"GET {path}/events HTTP/1.1\r\nHost: test\r\nx-user: sse\r\n\r\n".encode()),
    ]
    try:
        await eventually(lambda: server.manager.connection_count == 2)
        for _ in range(250):  # until their socket buffers and queues are full
            data = {"blob": os.urandom(BLOB_BYTES // 2).hex()}
            await web_publisher.publish(operation, "chunking_progress", data)
            if server.manager.connection_count == 0:
                break
        await eventually(lambda: server.manager.connection_count == 0, within=15)
    finally:
        for sock in frozen:
            sock.close()
