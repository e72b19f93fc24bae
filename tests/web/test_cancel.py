"""Cancellation through the router: a running Celery task is revoked and its viewers see `cancelled` at once."""

from __future__ import annotations

import uuid

import httpx
import pytest
import redis
from celery import Celery, group
from celery.worker import state as worker_state
from websockets.asyncio.client import connect

from celery_progress_ws import ProgressSettings, track
from celery_progress_ws._aggregate.track import aggregate_children_async
from celery_progress_ws.web import ProgressManager
from devtools.servers import PrivateRedis
from tests.support.harness import ThreadServer, eventually, receive_json, receive_until_closed, ws_url
from tests.support.serverapp import build_app

pytestmark = pytest.mark.integration


def cancel_url(server: ThreadServer, operation_id: str) -> str:
    return f"{server.http}/progress/operations/{operation_id}/cancel"


async def test_cancel_revokes_a_running_task_and_viewers_see_cancelled(
    cancel_server: ThreadServer, progress_worker: Celery, module_settings: ProgressSettings
) -> None:
    """POST cancel answers 202, the worker learns the revoke, and the viewer gets `cancelled` then close 1000."""
    release = f"{module_settings.key_prefix}release-{uuid.uuid4().hex[:8]}"
    task_id = progress_worker.send_task("cpws.wait_for_key", args=(module_settings.redis_url, release, 30)).id
    async with connect(ws_url(cancel_server, task_id)) as websocket:
        while (await receive_json(websocket, within=20))["type"] != "chunking_progress":
            pass  # the task is running once it reports
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.post(cancel_url(cancel_server, task_id), headers={"x-user": "alice"})
            assert response.status_code == 202
            assert response.json() == {"operation_id": task_id, "status": "cancelled", "revoked": 1, "terminate": False}
            messages = await receive_until_closed(websocket)
            again = await client.post(cancel_url(cancel_server, task_id), headers={"x-user": "alice"})
    try:
        assert websocket.close_code == 1000
        assert [m["data"]["status"] for m in messages if m["type"] == "status_update"] == ["cancelled"]
        assert again.status_code == 409
        await eventually(lambda: task_id in worker_state.revoked, within=10)
    finally:
        await cancel_server.call(cancel_server.manager.redis.set(release, 1, ex=60))


@pytest.mark.parametrize(
    ("operation", "status"),
    [("bad%20id", 400), ("forbidden-op", 403), ("op-unknown", 404), ("op-done", 409)],
)
async def test_cancel_refusals(cancel_server: ThreadServer, operation: str, status: int) -> None:
    """Invalid ids answer 400, unauthorized users 403, unknown operations 404 and finished ones 409."""
    operation = operation.replace("op-", f"op-{uuid.uuid4().hex[:8]}-")
    if operation.endswith("-done"):
        await cancel_server.call(cancel_server.manager.send_update(operation, "status_update", {"status": "completed"}))
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(cancel_url(cancel_server, operation), headers={"x-user": "alice"})
    assert response.status_code == status
    assert response.json()["detail"]


async def test_without_celery_app_there_is_no_cancel_route(server: ThreadServer) -> None:
    """A router built without celery_app does not offer the cancel route."""
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(cancel_url(server, "op-1"), headers={"x-user": "alice"})
    assert response.status_code in (404, 405)
    assert response.json()["detail"] in ("Not Found", "Method Not Allowed")


async def test_cancel_of_an_aggregate_revokes_every_child(
    cancel_server: ThreadServer, progress_worker: Celery, module_settings: ProgressSettings
) -> None:
    """Cancelling a tracked group revokes each child and ends the aggregate's own stream with `cancelled`."""
    release = f"{module_settings.key_prefix}release-{uuid.uuid4().hex[:8]}"
    waiting = progress_worker.signature("cpws.wait_for_key", args=(module_settings.redis_url, release, 30))
    operation = track(group(waiting.clone(), waiting.clone()), settings=module_settings)
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.post(cancel_url(cancel_server, operation), headers={"x-user": "alice"})
        assert response.status_code == 202
        assert response.json()["revoked"] == 2
        async with connect(ws_url(cancel_server, operation)) as websocket:
            messages = await receive_until_closed(websocket)
        assert messages[-1]["type"] == "status_update"
        assert messages[-1]["data"]["status"] == "cancelled"
        manager = cancel_server.manager
        children = await cancel_server.call(aggregate_children_async(operation, module_settings, manager.redis))
        assert children is not None
        await eventually(lambda: all(child in worker_state.revoked for child in children), within=10)
    finally:
        await cancel_server.call(cancel_server.manager.redis.set(release, 1, ex=60))


async def test_cancels_use_the_managers_connections_not_one_per_request(
    progress_worker: Celery, web_settings: ProgressSettings, private_redis: PrivateRedis
) -> None:
    """50 cancel requests (404s, 202s and 409s) open no Redis connection of their own (`total_connections_received`)."""
    settings = web_settings.model_copy(update={"redis_url": private_redis.url, "cancel_terminate": False})
    manager = ProgressManager(settings=settings)
    server = ThreadServer(manager, build_app(manager, celery_app=progress_worker))
    server.start()
    counter = redis.Redis.from_url(private_redis.url)
    try:
        running = [f"op-{uuid.uuid4().hex[:8]}" for _ in range(10)]
        for operation in running:
            await server.call(manager.send_update(operation, "status_update", {"status": "started"}))
        targets = running * 2 + [f"op-unknown-{n}" for n in range(30)]
        async with httpx.AsyncClient(timeout=10, headers={"x-user": "alice"}) as client:
            await client.post(cancel_url(server, "op-warm-up"))  # the manager's command connection exists now
            before = counter.info("stats")["total_connections_received"]
            statuses = [(await client.post(cancel_url(server, operation))).status_code for operation in targets]
            after = counter.info("stats")["total_connections_received"]
        assert sorted(set(statuses)) == [202, 404, 409]
        assert after - before <= 1  # the counting client's own reconnect, at most
    finally:
        counter.close()
        server.stop()
