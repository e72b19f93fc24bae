"""The web half through cluster faults mid-stream: a graceful ``CLUSTER FAILOVER``, a SIGKILLed primary (its replica
is promoted) and a slot migrated to another primary, while a worker publisher writes to an operation on every shard
and a WebSocket viewer watches each."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import pytest
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster
from redis.crc import key_slot
from websockets.asyncio.client import ClientConnection, connect

from celery_progress_ws import ProgressPublisher, ProgressSettings, PublishResult
from celery_progress_ws._core.keys import KeySpace
from celery_progress_ws.web import ProgressManager
from devtools.cluster import PrivateCluster
from tests.support.cluster_ops import cluster_publisher, operations_on_every_shard
from tests.support.harness import ThreadServer, receive_json, receive_until_closed, ws_url

pytestmark = pytest.mark.integration

WRITE_PAUSE_SECONDS = 0.005
WRITES_AFTER_RECOVERY = 30


@pytest.fixture
def cluster_settings(web_settings: ProgressSettings, redis_cluster: PrivateCluster) -> ProgressSettings:
    """The test's settings on the private cluster, with quick retries and a buffer that holds a whole failover."""
    return web_settings.model_copy(
        update={
            "redis_url": redis_cluster.url,
            "retry_interval_seconds": 0.1,
            "socket_timeout_seconds": 0.5,
            "pending_buffer_size": 10_000,
            "stream_maxlen": 100_000,
        }
    )


@dataclass
class Writes:
    """Progress 1, 2, 3... to each operation in turn, written by a thread, with what each call returned and when."""

    publisher: ProgressPublisher
    operations: list[str]
    results: dict[str, list[tuple[int, PublishResult, float]]] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        number = 0
        while not self.stop.is_set():
            number += 1
            for operation in self.operations:
                result = self.publisher.progress(operation, number, 1_000_000, force=True)
                self.results.setdefault(operation, []).append((number, result, time.monotonic()))
            time.sleep(WRITE_PAUSE_SECONDS)

    def count(self) -> int:
        return len(self.results.get(self.operations[-1], []))

    def sent(self, operation: str) -> list[int]:
        return [number for number, result, _ in self.results[operation] if result is PublishResult.SENT]


@dataclass
class Viewer:
    """A WebSocket client that records every message with the time it arrived."""

    websocket: ClientConnection
    messages: list[tuple[float, dict[str, object]]] = field(default_factory=list)

    async def run(self) -> None:
        async for raw in self.websocket:
            self.messages.append((time.monotonic(), json.loads(raw)))

    def ids(self) -> list[str]:
        return [str(message["id"]) for _, message in self.messages if "id" in message]

    def types(self) -> list[object]:
        return [message["type"] for _, message in self.messages]

    def received_between(self, start: float, end: float) -> int:
        return sum(1 for at, message in self.messages if start <= at <= end and message["type"] == "chunking_progress")


def stored(client: RedisCluster, settings: ProgressSettings, operation: str) -> list[tuple[str, int | None]]:
    """Each stored entry's id and, for progress, its number."""
    rows = client.xrange(KeySpace(settings.key_prefix).stream(operation))
    result = []
    for entry_id, fields in rows:
        entry = json.loads(fields["message"])
        result.append((entry_id, entry["data"].get("documents_processed")))
    return result


async def run_through_fault(
    serve: Callable[..., ThreadServer],
    settings: ProgressSettings,
    cluster: PrivateCluster,
    cluster_client: RedisCluster,
    fault: Callable[[str], None],
) -> None:
    """Write to an operation on every shard while a viewer watches each, run ``fault(first operation)``, keep writing,
    then check: nothing reported sent is missing, every viewer got every stored entry once and in order with no gap
    notice (every node that took over a slot holds its data), and the viewers of the other shards kept receiving
    during the fault."""
    server = serve(settings)
    operations = operations_on_every_shard(cluster, settings)
    publisher = ProgressPublisher(settings)
    for operation in operations:
        assert publisher.publish(operation, "status_update", {"status": "started"}) is PublishResult.SENT
    writes = Writes(publisher, operations)
    viewers = []
    for operation in operations:
        websocket = await connect(ws_url(server, operation))
        assert (await receive_json(websocket))["data"]["status"] == "started"
        viewers.append(Viewer(websocket))
    readers = [asyncio.create_task(viewer.run()) for viewer in viewers]
    writer = threading.Thread(target=writes.run)
    writer.start()
    try:
        await asyncio.to_thread(wait_until, lambda: writes.count() >= 20)
        fault_started = time.monotonic()
        await asyncio.to_thread(fault, operations[0])
        fault_ended = time.monotonic()
        after = writes.count()
        await asyncio.to_thread(wait_until, lambda: writes.count() >= after + WRITES_AFTER_RECOVERY)
    finally:
        writes.stop.set()
        writer.join()
    for operation in operations:
        publisher.publish(operation, "status_update", {"status": "completed"}, final=True)
    assert publisher.flush(timeout=15)
    publisher.close()
    async with asyncio.timeout(30):
        await asyncio.gather(*readers)

    print(f"\nfault took {fault_ended - fault_started:.2f} s")
    for operation, viewer in zip(operations, viewers, strict=True):
        entries = stored(cluster_client, settings, operation)
        numbers = [number for _, number in entries if number is not None]
        assert not set(writes.sent(operation)) - set(numbers), "an entry reported sent is missing"
        assert viewer.ids() == [entry_id for entry_id, _ in entries[1:]], "not every stored entry, once, in order"
        assert "history_gap" not in viewer.types(), "a gap reported where the stream lost nothing"
        assert viewer.websocket.close_code == 1000
    for viewer in viewers[1:]:  # the other shards' viewers were not held up by the fault
        assert viewer.received_between(fault_started, fault_ended) > 0


def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        time.sleep(0.01)


async def test_viewers_get_every_entry_once_through_a_graceful_failover(
    serve: Callable[..., ThreadServer],
    cluster_settings: ProgressSettings,
    redis_cluster: PrivateCluster,
    cluster_client: RedisCluster,
) -> None:
    """``CLUSTER FAILOVER`` on the replica of one operation's shard: its viewer is resubscribed on the new primary
    and repaired from the stream; nothing is lost, nothing doubled, the other shards carry on."""

    def failover(operation: str) -> None:
        shard = redis_cluster.shard_of(
            redis_cluster.primary_for_key(KeySpace(cluster_settings.key_prefix).live(operation))
        )
        redis_cluster.failover(redis_cluster.replicas_of(shard)[0])

    await run_through_fault(serve, cluster_settings, redis_cluster, cluster_client, failover)


async def test_viewers_get_every_entry_once_through_a_killed_primary(
    serve: Callable[..., ThreadServer],
    cluster_settings: ProgressSettings,
    redis_cluster: PrivateCluster,
    cluster_client: RedisCluster,
) -> None:
    """SIGKILL of one operation's primary (its replica is promoted): the writer buffers, the viewer of that shard
    resumes on the promoted replica from the stream, the other shards carry on."""

    def kill(operation: str) -> None:
        shard = redis_cluster.shard_of(
            redis_cluster.primary_for_key(KeySpace(cluster_settings.key_prefix).live(operation))
        )
        redis_cluster.kill_primary(shard)

    await run_through_fault(serve, cluster_settings, redis_cluster, cluster_client, kill)


async def test_viewers_get_every_entry_once_through_a_slot_migration(
    serve: Callable[..., ThreadServer],
    cluster_settings: ProgressSettings,
    redis_cluster: PrivateCluster,
    cluster_client: RedisCluster,
) -> None:
    """One operation's slot migrated to another primary mid-stream (ASK, then MOVED): its viewer follows the slot and
    is repaired from the stream."""

    def migrate(operation: str) -> None:
        live = KeySpace(cluster_settings.key_prefix).live(operation)
        shard = redis_cluster.shard_of(redis_cluster.primary_for_key(live))
        redis_cluster.migrate_slot(key_slot(live.encode()), (shard + 1) % redis_cluster.primaries, batch=1)

    await run_through_fault(serve, cluster_settings, redis_cluster, cluster_client, migrate)


async def test_a_cluster_restarted_empty_is_reported_as_a_restart_gap_and_delivery_resumes(
    serve: Callable[..., ThreadServer], cluster_settings: ProgressSettings, redis_cluster: PrivateCluster
) -> None:
    """Every node stopped: /health turns 503; the nodes come back without their data (no persistence): /health is
    200 again and the viewer gets a `redis_restarted` gap notice (its node's run_id changed and its entry is gone),
    then the entries written after."""
    server = serve(cluster_settings)
    operation = operations_on_every_shard(redis_cluster, cluster_settings)[0]
    health = f"{server.http}/progress/health"
    async with connect(ws_url(server, operation)) as websocket, httpx.AsyncClient(timeout=10) as client:
        async with cluster_publisher(cluster_settings) as publisher:
            before = await publisher.publish(operation, "status_update", {"status": "started"})
            assert (await receive_json(websocket))["id"] == before
        redis_cluster.stop()
        await eventually_status(client, health, 503)
        await asyncio.to_thread(redis_cluster.heal)
        await eventually_status(client, health, 200)
        async with cluster_publisher(cluster_settings) as publisher:
            after = [await publisher.publish(operation, "chunking_progress", {"n": n}) for n in range(3)]
            after.append(await publisher.publish(operation, "status_update", {"status": "completed"}))
        messages = await receive_until_closed(websocket, within=30)
    gaps = [message for message in messages if message["type"] == "history_gap"]
    assert [gap["data"]["reason"] for gap in gaps] == ["redis_restarted"]
    assert gaps[0]["data"]["after_id"] == before
    assert [message["id"] for message in messages if "id" in message] == after


async def test_an_injected_async_cluster_client_serves_every_shard(
    cluster_settings: ProgressSettings, redis_cluster: PrivateCluster
) -> None:
    """``ProgressManager(redis=RedisCluster(...))``: the application's own cluster client carries history and live
    delivery on every shard (the manager opens only its per-shard pub/sub connections itself)."""
    client = AsyncRedisCluster(startup_nodes=[AsyncClusterNode(host, port) for host, port in redis_cluster.addresses])
    manager = ProgressManager(settings=cluster_settings, redis=client)
    server = ThreadServer(manager)
    server.start()
    try:
        async with cluster_publisher(cluster_settings) as publisher:
            for operation in operations_on_every_shard(redis_cluster, cluster_settings):
                first = await publisher.publish(operation, "status_update", {"status": "started"})
                async with connect(ws_url(server, operation)) as websocket:
                    assert (await receive_json(websocket))["id"] == first
                    last = await publisher.publish(operation, "status_update", {"status": "completed"})
                    assert [message["id"] for message in await receive_until_closed(websocket)] == [last]
    finally:
        await server.call(client.aclose())  # its connections belong to the server's event loop
        server.stop()


async def eventually_status(client: httpx.AsyncClient, url: str, status: int, within: float = 30) -> None:
    """Poll ``url`` until it answers ``status``."""
    async with asyncio.timeout(within):
        while (await client.get(url)).status_code != status:  # noqa: ASYNC110 - the server's state has no event here
            await asyncio.sleep(0.05)
