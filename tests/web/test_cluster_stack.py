"""The whole stack on a Redis Cluster: a real prefork ``celery worker`` reports tasks on every shard to WebSocket and
SSE viewers of one web process; the per-user limit holds across two web processes; cancellation ends an operation."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis
from celery import Celery, group
from redis.cluster import RedisCluster
from websockets.asyncio.client import connect

from celery_progress_ws import ProgressSettings, track
from celery_progress_ws._core.clients import async_command_client
from celery_progress_ws._core.keys import KeySpace
from celery_progress_ws.web import ProgressManager
from celery_progress_ws.web._user_count import RedisUserCount
from devtools.cluster import PrivateCluster
from tests.support.cluster_ops import cluster_publisher, operations_on_every_shard
from tests.support.harness import ProcessServer, ThreadServer, receive_json, receive_until_closed, sse_events, ws_url
from tests.support.serverapp import build_app
from tests.support.worker_process import worker_process
from tests.web.test_shared_limits import USER_LIMIT, admitted, open_many, opened, refusal

pytestmark = pytest.mark.integration

LEASE_SECONDS = 1.5


@pytest.fixture
def cluster_settings(web_settings: ProgressSettings, redis_cluster: PrivateCluster) -> ProgressSettings:
    """The test's settings on the private cluster's URL."""
    return web_settings.model_copy(update={"redis_url": redis_cluster.url})


@pytest.fixture
def cluster_worker(
    redis_url: str, broker_namespace: str, cluster_settings: ProgressSettings, tmp_path: Path
) -> Iterator[tuple[Celery, Path]]:
    """A prefork worker (two children) whose broker is the test Redis and whose progress goes to the cluster."""
    log = tmp_path / "worker.log"
    environment = {"CELERY_PROGRESS_WS_REDIS_URL": cluster_settings.redis_url}
    options = ["--pool=prefork", "--concurrency=2"]
    with worker_process(redis_url, broker_namespace, cluster_settings, log, options, environment) as app:
        yield app, log


async def test_a_prefork_worker_reports_tasks_on_every_shard_to_completion(
    serve: Callable[..., ThreadServer],
    cluster_settings: ProgressSettings,
    redis_cluster: PrivateCluster,
    cluster_worker: tuple[Celery, Path],
    cluster_client: RedisCluster,
) -> None:
    """Two tasks per shard (task ids chosen per shard): each WebSocket viewer, connected before the task is sent,
    gets queued, started, progress up to 100 % and `completed`; an SSE viewer of each gets the same ids; every
    stream has its completed TTL."""
    app, log = cluster_worker
    server = serve(cluster_settings)
    operations = operations_on_every_shard(redis_cluster, cluster_settings, per_shard=2)
    sockets = [await connect(ws_url(server, operation)) for operation in operations]
    for operation in operations:
        app.tasks["cpws.count"].apply_async(args=(5,), task_id=operation)
    try:
        received = [await receive_until_closed(websocket, within=60) for websocket in sockets]
    except TimeoutError:
        pytest.fail(log.read_text())
    async with httpx.AsyncClient(timeout=10) as client:
        for operation, messages in zip(operations, received, strict=True):
            statuses = [m["data"]["status"] for m in messages if m["type"] == "status_update"]
            assert statuses == ["queued", "started", "completed"], (operation, messages)
            progress = [m["data"]["progress_percentage"] for m in messages if m["type"] == "chunking_progress"]
            assert progress[-1] == 100
            stream = KeySpace(cluster_settings.key_prefix).stream(operation)
            assert [m["id"] for m in messages] == [entry_id for entry_id, _ in cluster_client.xrange(stream)]
            assert cluster_settings.completed_ttl_seconds - 30 < cluster_client.ttl(stream)
            url = f"{server.http}/progress/operations/{operation}/events"
            async with client.stream("GET", url, headers={"x-user": "alice"}) as response:
                ids = [event["id"] async for event in sse_events(response.aiter_lines()) if not isinstance(event, str)]
            assert ids == [m["id"] for m in messages]


@pytest.fixture
def cluster_processes(
    monkeypatch: pytest.MonkeyPatch, cluster_settings: ProgressSettings
) -> Iterator[list[ProcessServer]]:
    """Two uvicorn subprocesses on the cluster, with a per-user limit of 3 and a short lease."""
    monkeypatch.setenv("CELERY_PROGRESS_WS_MAX_CONNECTIONS_PER_USER", "3")
    monkeypatch.setenv("CELERY_PROGRESS_WS_CONNECTION_LEASE_SECONDS", str(LEASE_SECONDS))
    servers = [ProcessServer(cluster_settings), ProcessServer(cluster_settings)]
    try:
        for server in servers:
            server.wait_ready()
        yield servers
    finally:
        for server in servers:
            server.stop()


async def test_the_user_limit_holds_across_two_processes_on_the_cluster(
    cluster_processes: list[ProcessServer],
    cluster_settings: ProgressSettings,
    redis_cluster: PrivateCluster,
    cluster_client: RedisCluster,
) -> None:
    """Limit 3 on the cluster: two sockets on A and one on B, the 4th refused on either, also after several lease
    periods (the renewals reach the cluster); leaving frees a slot for the other process."""
    a, b = cluster_processes
    operation = operations_on_every_shard(redis_cluster, cluster_settings)[0]
    async with cluster_publisher(cluster_settings) as publisher:
        await publisher.publish(operation, "status_update", {"status": "started"})
    sockets = await open_many([ws_url(a, operation), ws_url(a, operation), ws_url(b, operation)])
    key = KeySpace(cluster_settings.key_prefix).user_connections("alice")
    try:
        assert await refusal(ws_url(b, operation)) == USER_LIMIT
        first = max(score for _, score in cluster_client.zrange(key, 0, -1, withscores=True))
        deadline = time.monotonic() + 3 * LEASE_SECONDS
        while time.monotonic() < deadline:  # noqa: ASYNC110 - the renewals happen in the other processes
            await asyncio.sleep(0.1)
        assert min(score for _, score in cluster_client.zrange(key, 0, -1, withscores=True)) > first
        assert await refusal(ws_url(a, operation)) == USER_LIMIT
        other = await opened(ws_url(b, operation, user="bob"))
        assert other is not None
        await other.close()
        await sockets[0].close()
        sockets.append(await admitted(ws_url(b, operation), within=10))
        assert await refusal(ws_url(a, operation)) == USER_LIMIT
    finally:
        for websocket in sockets:
            await websocket.close()


async def test_lease_renewal_reaches_every_node_and_reloads_a_flushed_script(
    cluster_settings: ProgressSettings, redis_cluster: PrivateCluster, cluster_client: RedisCluster
) -> None:
    """Connections of users whose sets live on every primary are renewed in one call, also after SCRIPT FLUSH."""
    commands = async_command_client(cluster_settings)
    keys = KeySpace(cluster_settings.key_prefix)
    count = RedisUserCount(commands, keys, limit=2, lease_seconds=30)
    users = [f"user-{n}" for n in range(24)]
    try:
        for user in users:
            assert await count.acquire(user, "c1")
        nodes = {cluster_client.get_node_from_key(keys.user_connections(user)).name for user in users}
        assert len(nodes) == 3
        before = {user: cluster_client.zscore(keys.user_connections(user), "c1") for user in users}
        for node in redis_cluster.nodes:
            node.command("SCRIPT", "FLUSH")
        await count.renew()
        assert not count.degraded
        after = {user: cluster_client.zscore(keys.user_connections(user), "c1") for user in users}
        assert all(after[user] > before[user] for user in users)  # type: ignore[operator]
    finally:
        await commands.aclose()


@pytest.fixture
def cluster_cancel_server(progress_worker: Celery, cluster_settings: ProgressSettings) -> Iterator[ThreadServer]:
    """A web process on the cluster whose router has the in-process worker's app, so it offers the cancel route."""
    manager = ProgressManager(settings=cluster_settings.model_copy(update={"cancel_terminate": False}))
    server = ThreadServer(manager, build_app(manager, celery_app=progress_worker))
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_cancel_on_the_cluster_ends_the_operation_for_its_viewers(
    cluster_cancel_server: ThreadServer, cluster_settings: ProgressSettings, redis_cluster: PrivateCluster
) -> None:
    """POST cancel on a web process on the cluster: 202, the viewer gets `cancelled` then close 1000, and the stream
    on its shard ends with it; a second cancel answers 409."""
    server = cluster_cancel_server
    for operation in operations_on_every_shard(redis_cluster, cluster_settings):
        async with cluster_publisher(cluster_settings) as publisher:
            await publisher.publish(operation, "status_update", {"status": "started"})
        async with connect(ws_url(server, operation)) as websocket, httpx.AsyncClient(timeout=10) as client:
            url = f"{server.http}/progress/operations/{operation}/cancel"
            response = await client.post(url, headers={"x-user": "alice"})
            assert response.status_code == 202, response.text
            messages = await receive_until_closed(websocket)
            again = await client.post(url, headers={"x-user": "alice"})
        statuses = [m["data"]["status"] for m in messages if m["type"] == "status_update"]
        assert statuses == ["started", "cancelled"]
        assert websocket.close_code == 1000
        assert again.status_code == 409
        with redis.cluster.RedisCluster(startup_nodes=redis_cluster.startup_nodes) as client_sync:
            last = client_sync.xrevrange(KeySpace(cluster_settings.key_prefix).stream(operation), count=1)
            assert json.loads(last[0][1][b"message"])["data"]["status"] == "cancelled"


async def test_cancel_of_an_aggregate_on_the_cluster_revokes_its_children(
    cluster_cancel_server: ThreadServer,
    progress_worker: Celery,
    module_settings: ProgressSettings,
    cluster_settings: ProgressSettings,
) -> None:
    """A group tracked on the cluster (default child ids, in many slots): cancel revokes both children and the
    aggregate's viewer gets its `cancelled`, announced by the update script's SPUBLISH."""
    release = f"{module_settings.key_prefix}release-{uuid.uuid4().hex[:8]}"
    waiting = progress_worker.signature("cpws.wait_for_key", args=(module_settings.redis_url, release, 30))
    operation = track(group(waiting.clone(), waiting.clone()), settings=cluster_settings)
    try:
        async with connect(ws_url(cluster_cancel_server, operation)) as websocket:
            assert (await receive_json(websocket))["type"] == "aggregate_started"
            async with httpx.AsyncClient(timeout=10) as client:
                url = f"{cluster_cancel_server.http}/progress/operations/{operation}/cancel"
                response = await client.post(url, headers={"x-user": "alice"})
            assert response.status_code == 202, response.text
            assert response.json()["revoked"] == 2
            messages = await receive_until_closed(websocket)
        assert messages[-1]["type"] == "status_update"
        assert messages[-1]["data"]["status"] == "cancelled"
    finally:
        with redis.Redis.from_url(module_settings.redis_url) as client_sync:
            client_sync.set(release, 1, ex=60)
