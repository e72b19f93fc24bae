"""A client that stops reading never slows the others and is closed once its queue overflows."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Callable

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from celery_progress_ws import ProgressSettings
from celery_progress_ws.web._async_publisher import AsyncProgressPublisher
from tests.support.harness import ThreadServer, receive_json, ws_url

pytestmark = pytest.mark.integration

ENTRIES = 250
BLOB_BYTES = 40_000


def small_buffer_socket(port: int) -> socket.socket:
    """A client socket with a tiny receive buffer, so a client that stops reading backs up quickly."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


async def receive_ids(websocket: ClientConnection, count: int) -> list[str]:
    return [(await receive_json(websocket))["id"] for _ in range(count)]


async def count_until_closed(websocket: ClientConnection) -> int:
    """How many messages arrive before the server closes the socket (with any code)."""
    count = 0
    async with asyncio.timeout(20):
        try:
            while True:
                await websocket.recv()
                count += 1
        except ConnectionClosed:
            return count


async def test_client_that_never_reads_does_not_delay_others_and_is_closed(
    serve: Callable[..., ThreadServer], web_settings: ProgressSettings, web_publisher: AsyncProgressPublisher
) -> None:
    """A fast client gets every entry while a stalled one backs up; the stalled one is then closed with 1013."""
    server = serve(web_settings, client_queue_size=16)
    operation = f"op-{uuid.uuid4().hex[:8]}"
    first = await web_publisher.publish(operation, "status_update", {"status": "started"})
    slow_url = ws_url(server, operation, user="slow")
    async with (
        connect(ws_url(server, operation, user="fast"), compression=None) as fast,
        connect(slow_url, sock=small_buffer_socket(server.port), compression=None, max_queue=1) as slow,
    ):
        assert (await receive_json(fast))["id"] == first
        assert (await receive_json(slow))["id"] == first  # registered and caught up; from now on it reads nothing

        fast_reader = asyncio.create_task(receive_ids(fast, ENTRIES))
        ids = []
        for number in range(ENTRIES):
            blob = os.urandom(BLOB_BYTES // 2).hex()
            data = {"documents_processed": number, "blob": blob}
            ids.append(await web_publisher.publish(operation, "chunking_progress", data))
        assert await fast_reader == ids  # all of them, while the slow client still has not read a single one

        slow_received = await count_until_closed(slow)
        assert slow.close_code == 1013
        assert slow.close_reason == "Client too slow"
        assert slow_received < ENTRIES
