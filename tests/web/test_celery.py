"""A real Celery task (worker with ProgressBootstep) watched over a real WebSocket, from queued to completed."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from celery import Celery
from websockets.asyncio.client import connect

from celery_progress_ws import ProgressSettings
from tests.support.harness import ThreadServer, receive_until_closed, ws_url

pytestmark = pytest.mark.integration


async def test_celery_task_entries_arrive_in_order_and_socket_closes_after_completed(
    progress_worker: Celery, module_settings: ProgressSettings, serve: Callable[..., ThreadServer]
) -> None:
    """A task's status and progress entries reach the client in stream order; `completed` closes it with 1000."""
    server = serve(module_settings)
    task_id = progress_worker.send_task("cpws.count", args=(6,)).id
    async with connect(ws_url(server, task_id)) as websocket:
        messages = await receive_until_closed(websocket, within=30)
    assert websocket.close_code == 1000
    ids = [tuple(map(int, message["id"].split("-"))) for message in messages]
    assert ids == sorted(set(ids))
    statuses = [message["data"]["status"] for message in messages if message["type"] == "status_update"]
    assert statuses[-1] == "completed"
    assert "started" in statuses
    progress = [message["data"] for message in messages if message["type"] == "chunking_progress"]
    assert progress[0]["documents_processed"] == 1
    assert progress[-1]["documents_processed"] == 6
    assert progress[-1]["progress_percentage"] == 100
