"""A uvicorn process told to stop ends its event streams at once and exits cleanly, with no graceful-shutdown limit."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import uuid

import httpx
import pytest

from celery_progress_ws import ProgressSettings
from celery_progress_ws.web._async_publisher import AsyncProgressPublisher
from tests.support.harness import ProcessServer, sse_events

pytestmark = pytest.mark.integration

CLIENTS = 3


async def read_until_end(response: httpx.Response, first_read: asyncio.Event) -> list[str]:
    """The ids of the events received until the stream ends (cleanly: a broken one raises)."""
    ids = []
    async for item in sse_events(response.aiter_lines()):
        if not isinstance(item, str) and "id" in item:
            ids.append(item["id"])
            first_read.set()
    return ids


async def test_sigterm_ends_open_event_streams_and_the_process_exits_without_tracebacks(
    web_settings: ProgressSettings, web_publisher: AsyncProgressPublisher
) -> None:
    """Streams end cleanly (clients resume elsewhere with Last-Event-ID), the process exits, stderr stays clean."""
    server = ProcessServer(web_settings, stderr=subprocess.PIPE)
    try:
        server.wait_ready()
        operation = f"op-{uuid.uuid4().hex[:8]}"
        first = await web_publisher.publish(operation, "status_update", {"status": "started"})
        url = f"{server.http}/progress/operations/{operation}/events"
        async with httpx.AsyncClient(timeout=30) as client, asyncio.TaskGroup() as group:
            readers = []
            for number in range(CLIENTS):
                response = await client.send(
                    client.build_request("GET", url, headers={"x-user": f"user-{number}"}), stream=True
                )
                assert response.status_code == 200
                first_read = asyncio.Event()
                readers.append(group.create_task(read_until_end(response, first_read)))
                await asyncio.wait_for(first_read.wait(), 10)
            server.process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(10):
                results = [await reader for reader in readers]
        assert results == [[first]] * CLIENTS
        # uvicorn re-raises the signal it handled once it has shut down
        assert await asyncio.to_thread(server.process.wait, 10) in (0, -signal.SIGTERM)
    finally:
        server.stop()
        assert server.process.stderr is not None
        stderr = server.process.stderr.read().decode()
        server.process.stderr.close()
    assert "Traceback" not in stderr, stderr
    assert "ERROR" not in stderr, stderr
