"""Clients that send too much: a flood of messages is closed with 1008, a huge frame is refused by uvicorn itself."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from celery_progress_ws import ProgressSettings
from celery_progress_ws.web import ProgressManager, uvicorn_options
from celery_progress_ws.web._async_publisher import AsyncProgressPublisher
from celery_progress_ws.web._websocket import MessageRate
from tests.support.harness import ThreadServer, receive_json, ws_url

pytestmark = pytest.mark.integration

FLOOD_MESSAGES = 100_000


async def flood_until_closed(websocket: ClientConnection) -> int:
    """Send tiny messages until the server closes the socket (or FLOOD_MESSAGES were sent); return how many went."""
    sent = 0
    try:
        async with asyncio.timeout(30):
            while sent < FLOOD_MESSAGES:
                await websocket.send("x")
                sent += 1
                if sent % 100 == 0:
                    await asyncio.sleep(0)  # let the close frame be read
    except ConnectionClosed:
        pass
    return sent


async def closed_code(websocket: ClientConnection) -> tuple[int | None, str | None]:
    """Read until the server closes the socket (within 10 s) and return the close code and reason."""
    async with asyncio.timeout(10):
        with contextlib.suppress(ConnectionClosed):
            while True:
                await websocket.recv()
    return websocket.close_code, websocket.close_reason


async def test_a_flooding_socket_is_closed_while_a_viewer_keeps_receiving(
    serve: Callable[..., ThreadServer], web_settings: ProgressSettings, web_publisher: AsyncProgressPublisher
) -> None:
    """Four sockets sending as fast as they can are closed with 1008 "Too many messages" long before 100k messages;
    a viewer of the same server receives every entry published meanwhile."""
    server = serve(web_settings)
    operation = f"op-{uuid.uuid4().hex[:8]}"
    await web_publisher.publish(operation, "status_update", {"status": "started"})
    async with connect(ws_url(server, operation, user="viewer")) as viewer:
        assert (await receive_json(viewer))["data"]["status"] == "started"
        flooders = [await connect(ws_url(server, operation, user=f"flooder-{n}")) for n in range(4)]
        try:
            floods = [asyncio.create_task(flood_until_closed(flooder)) for flooder in flooders]
            for step in range(20):
                await web_publisher.publish(operation, "chunking_progress", {"progress_percentage": step})
                assert (await receive_json(viewer))["data"]["progress_percentage"] == step
            sent = await asyncio.gather(*floods)
            closes = [await closed_code(flooder) for flooder in flooders]
        finally:
            for flooder in flooders:
                await flooder.close()
    assert closes == [(1008, "Too many messages")] * 4
    assert max(sent) < FLOOD_MESSAGES


async def test_messages_within_the_rate_keep_the_socket_open(
    serve: Callable[..., ThreadServer], web_settings: ProgressSettings, web_publisher: AsyncProgressPublisher
) -> None:
    """A burst up to client_message_burst is ignored like any client message; the next one over the rate closes."""
    server = serve(web_settings, client_message_burst=5, client_messages_per_second=0.01)
    operation = f"op-{uuid.uuid4().hex[:8]}"
    async with connect(ws_url(server, operation)) as websocket:
        for _ in range(5):
            await websocket.send("ping")
        await web_publisher.publish(operation, "status_update", {"status": "started"})
        assert (await receive_json(websocket))["data"]["status"] == "started"  # still open after the burst
        await websocket.send("one too many")
        assert await closed_code(websocket) == (1008, "Too many messages")


@pytest.mark.parametrize("limited", [True, False])
async def test_uvicorn_refuses_a_frame_over_ws_max_size_before_the_app_reads_it(
    web_settings: ProgressSettings, limited: bool
) -> None:
    """With uvicorn_options(settings) uvicorn itself refuses a 10 MB frame (close 1009 with its own reason) and the
    app never receives it; without them the app closes with 1009 only after uvicorn buffered the whole frame."""
    manager = ProgressManager(settings=web_settings)
    server = ThreadServer(manager, **(uvicorn_options(web_settings) if limited else {}))
    server.start()
    try:
        async with connect(ws_url(server, f"op-{uuid.uuid4().hex[:8]}"), compression=None) as websocket:
            sender = asyncio.create_task(websocket.send(b"x" * 10_000_000))
            code, reason = await closed_code(websocket)
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
    finally:
        server.stop()
    assert code == 1009
    app_reason = f"Message too big (limit {web_settings.max_client_message_bytes} bytes)"
    assert (reason != app_reason) is limited


def test_uvicorn_options_follow_the_settings() -> None:
    """The recommended uvicorn arguments: ws_max_size from the message limit, a graceful-shutdown timeout, and a
    concurrency limit above max_total_connections."""
    settings = ProgressSettings(max_client_message_bytes=1000, max_total_connections=50)
    options = uvicorn_options(settings)
    assert options["ws_max_size"] == 1000
    assert options["timeout_graceful_shutdown"] > 0
    assert options["limit_concurrency"] > 50


def test_the_rate_refills_with_time_up_to_the_burst() -> None:
    """The token bucket allows `burst` messages at once, one more per 1/per_second, and never saves up more."""
    rate = MessageRate(per_second=2, burst=3, now=0)
    assert [rate.take(0) for _ in range(4)] == [True, True, True, False]
    assert [rate.take(0.5), rate.take(0.5)] == [True, False]
    assert [rate.take(100) for _ in range(4)] == [True, True, True, False]
