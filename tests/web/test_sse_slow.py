"""An event-stream client that stops reading keeps its slot while its socket lives, and is dropped within bounds."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx
import pytest

from celery_progress_ws import ProgressSettings
from celery_progress_ws.web._async_publisher import AsyncProgressPublisher
from tests.support.harness import ThreadServer, eventually, sse_events

pytestmark = pytest.mark.integration

BLOB_BYTES = 40_000
ENTRIES = 250


class FrozenClient:
    """A raw event-stream client that reads its response head and first event, then never reads again."""

    def __init__(self, port: int, operation: str, user: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect(("127.0.0.1", port))
        request = f"GET /progress/operations/{operation}/events HTTP/1.1\r\nHost: test\r\nx-user: {user}\r\n\r\n"
        self.sock.sendall(request.encode())
        self.sock.settimeout(10)
        self.head = b""
        while b"\r\n\r\n" not in self.head or (self.status == 200 and b"\n\n" not in self.body):
            chunk = self.sock.recv(4096)
            assert chunk, "the server closed the stream before its first event"
            self.head += chunk

    @property
    def body(self) -> bytes:
        return self.head.partition(b"\r\n\r\n")[2]

    @property
    def status(self) -> int:
        return int(self.head.split(b" ", 2)[1])

    async def wait_closed(self, within: float = 5) -> None:
        """Read (now) until the server's end of the socket is gone: end of stream or a reset."""

        def drain() -> None:
            self.sock.settimeout(within)
            try:
                while self.sock.recv(65536):
                    pass
            except ConnectionResetError:
                pass

        await asyncio.to_thread(drain)

    def close(self) -> None:
        self.sock.close()


async def publish_blobs(publisher: AsyncProgressPublisher, operation: str, count: int) -> str:
    """Publish ``count`` large entries; return the last id."""
    last = ""
    for number in range(count):
        data = {"documents_processed": number, "blob": os.urandom(BLOB_BYTES // 2).hex()}
        last = str(await publisher.publish(operation, "chunking_progress", data))
    return last


async def status_of(server: ThreadServer, operation: str, user: str) -> int:
    """The status code of a new event-stream request (its stream is not read)."""
    url = f"{server.http}/progress/operations/{operation}/events"
    async with httpx.AsyncClient(timeout=10) as client, client.stream("GET", url, headers={"x-user": user}) as response:
        return response.status_code


@asynccontextmanager
async def watching(server: ThreadServer, operation: str, user: str) -> AsyncIterator[Callable[[str], Any]]:
    """A reading client; yields ``seen(entry_id)``, which waits until that entry has arrived."""
    url = f"{server.http}/progress/operations/{operation}/events"
    ids: list[str] = []
    arrived = asyncio.Event()

    async def read(response: httpx.Response) -> None:
        async for item in sse_events(response.aiter_lines()):
            if not isinstance(item, str) and "id" in item:
                ids.append(item["id"])
                arrived.set()

    async def seen(entry_id: str) -> None:
        async with asyncio.timeout(20):
            while entry_id not in ids:
                arrived.clear()
                await arrived.wait()

    async with httpx.AsyncClient(timeout=30) as client, client.stream("GET", url, headers={"x-user": user}) as response:
        assert response.status_code == 200
        reader = asyncio.create_task(read(response))
        try:
            yield seen
        finally:
            reader.cancel()


async def test_sse_client_that_never_reads_is_dropped_and_frees_its_slot_only_then(
    serve: Callable[..., ThreadServer], web_settings: ProgressSettings, web_publisher: AsyncProgressPublisher
) -> None:
    """Its queue overflows, its socket is aborted within the send timeout, and only then is its slot free."""
    server = serve(web_settings, client_queue_size=8, send_timeout_seconds=1.0)
    operation = f"op-{uuid.uuid4().hex[:8]}"
    await web_publisher.publish(operation, "status_update", {"status": "started"})
    frozen = FrozenClient(server.port, operation, "frozen")
    try:
        assert frozen.status == 200
        await eventually(lambda: server.manager.connection_count == 1)
        for _ in range(ENTRIES):  # until its socket buffers (megabytes on loopback) and its queue are full
            await publish_blobs(web_publisher, operation, 1)
            if server.manager.connection_count == 0:
                break
        await eventually(lambda: server.manager.connection_count == 0, within=15)
        assert not server.server.server_state.connections  # the socket was gone before the slot was freed
        await frozen.wait_closed()
    finally:
        frozen.close()


@pytest.mark.parametrize(
    ("limits", "same_user"),
    [({"max_connections_per_user": 3}, True), ({"max_total_connections": 4}, False)],
    ids=["per-user", "total"],
)
async def test_never_reading_sse_clients_keep_their_slots_while_their_sockets_live(
    serve: Callable[..., ThreadServer],
    web_settings: ProgressSettings,
    web_publisher: AsyncProgressPublisher,
    limits: dict[str, int],
    same_user: bool,
) -> None:
    """Three clients that overflowed and stopped reading still fill the limit: more connections get 429."""
    server = serve(web_settings, client_queue_size=32, send_timeout_seconds=60.0, **limits)
    operation = f"op-{uuid.uuid4().hex[:8]}"
    await web_publisher.publish(operation, "status_update", {"status": "started"})
    users = ["frozen"] * 5 if same_user else [f"frozen-{number}" for number in range(5)]
    frozen = [FrozenClient(server.port, operation, user) for user in users[:3]]
    try:
        assert [client.status for client in frozen] == [200, 200, 200]
        async with AsyncExitStack() as stack:
            seen = await stack.enter_async_context(watching(server, operation, "watcher"))
            last = await publish_blobs(web_publisher, operation, ENTRIES)
            await seen(last)  # every subscriber has been offered every entry: the frozen ones overflowed
            assert [await status_of(server, operation, user) for user in users[3:]] == [429, 429]
            assert server.manager.connection_count == 4
    finally:
        for client in frozen:
            client.close()
