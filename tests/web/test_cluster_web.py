"""The web half on a Redis Cluster (``redis+cluster://``): WebSocket and SSE clients of one web process watch
operations on every shard, live over sharded pub/sub, with history, resume and the JSON snapshot."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest
from websockets.asyncio.client import connect

from celery_progress_ws import ProgressSettings
from devtools.cluster import PrivateCluster
from tests.support.cluster_ops import cluster_publisher, operations_on_every_shard
from tests.support.harness import SseEvent, ThreadServer, receive_json, receive_until_closed, sse_events, ws_url

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster_settings(web_settings: ProgressSettings, redis_cluster: PrivateCluster) -> ProgressSettings:
    """The test's settings on the private cluster's URL."""
    return web_settings.model_copy(update={"redis_url": redis_cluster.url})


async def test_websocket_clients_get_history_then_live_entries_on_every_shard(
    serve: Callable[..., ThreadServer], cluster_settings: ProgressSettings, redis_cluster: PrivateCluster
) -> None:
    """For an operation on each shard: stored entries first, then live ones (SPUBLISH on that shard), then the
    socket closes after `completed`; every id in stream order."""
    server = serve(cluster_settings)
    operations = operations_on_every_shard(redis_cluster, cluster_settings)
    async with cluster_publisher(cluster_settings) as publisher:
        for operation in operations:
            written = [await publisher.publish(operation, "chunking_progress", {"n": n}) for n in range(3)]
            async with connect(ws_url(server, operation)) as websocket:
                history = [(await receive_json(websocket))["id"] for _ in range(3)]
                assert history == written
                for n in range(3, 10):
                    written.append(await publisher.publish(operation, "chunking_progress", {"n": n}))
                    assert (await receive_json(websocket))["id"] == written[-1]
                written.append(await publisher.publish(operation, "status_update", {"status": "completed"}))
                rest = await receive_until_closed(websocket)
            assert [message["id"] for message in rest] == written[-1:]
            assert websocket.close_code == 1000


async def test_sse_resumes_and_the_snapshot_reads_on_every_shard(
    serve: Callable[..., ThreadServer], cluster_settings: ProgressSettings, redis_cluster: PrivateCluster
) -> None:
    """SSE with Last-Event-ID sends exactly the entries after it, live included, and the JSON snapshot of an
    operation on each shard names its newest status and progress."""
    server = serve(cluster_settings)
    operations = operations_on_every_shard(redis_cluster, cluster_settings)
    async with cluster_publisher(cluster_settings) as publisher, httpx.AsyncClient(timeout=10) as client:
        for operation in operations:
            await publisher.publish(operation, "status_update", {"status": "started"})
            ids = [await publisher.publish(operation, "chunking_progress", {"n": n}) for n in range(4)]
            reply = await client.get(f"{server.http}/progress/operations/{operation}", headers={"x-user": "alice"})
            snapshot = reply.json()
            assert snapshot["status"] == "started"
            assert snapshot["last_event_id"] == ids[-1]
            events: list[SseEvent] = []
            url = f"{server.http}/progress/operations/{operation}/events"
            headers = {"x-user": "alice", "Last-Event-ID": str(ids[1])}
            async with client.stream("GET", url, headers=headers) as response:
                assert response.status_code == 200
                async for item in sse_events(response.aiter_lines()):
                    if isinstance(item, str):
                        continue
                    events.append(item)
                    if len(events) == 2:
                        ids.append(await publisher.publish(operation, "status_update", {"status": "completed"}))
            assert [event["id"] for event in events] == ids[2:]
            assert json.loads(events[-1]["data"])["data"]["status"] == "completed"
