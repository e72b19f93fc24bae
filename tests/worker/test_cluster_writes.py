"""The worker half on a real Redis Cluster URL: publishers and prefork workers write every shard's operations, and a
killed primary costs buffered (never lost, never reordered) entries until its replica takes over."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from celery import group
from redis.cluster import RedisCluster
from redis.crc import key_slot

from celery_progress_ws import ProgressPublisher, ProgressSettings, PublishResult, track
from celery_progress_ws._core.codec import decode_fields
from celery_progress_ws._core.keys import KeySpace
from celery_progress_ws._core.policy import ttl_for
from devtools.cluster import PrivateCluster
from devtools.processes import free_port
from tests.support.streams import Entries, ended, kinds, progress_values, statuses
from tests.support.worker_process import worker_process

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster_settings(redis_cluster: PrivateCluster) -> ProgressSettings:
    """Settings on the cluster URL under a prefix of this test's own (the private cluster is thrown away after)."""
    return ProgressSettings(
        redis_url=redis_cluster.url,
        key_prefix=f"cpws-cluster:{uuid.uuid4().hex[:12]}:",
        throttle_seconds=0,
        retry_interval_seconds=0.1,
        socket_timeout_seconds=2.0,
        pending_buffer_size=10_000,  # a failover's worth of entries at the tests' pace, with room to spare
    )


@pytest.fixture
def reader(redis_cluster: PrivateCluster) -> Iterator[RedisCluster]:
    """A plain cluster client that reads what the library wrote."""
    client = RedisCluster(startup_nodes=redis_cluster.startup_nodes, decode_responses=True, socket_timeout=5)
    try:
        yield client
    finally:
        client.close()


def ids_on_every_shard(cluster: PrivateCluster, settings: ProgressSettings, per_shard: int = 1) -> dict[int, list[str]]:
    """``per_shard`` fresh operation ids whose streams live on each shard's primary, by shard."""
    keys = KeySpace(settings.key_prefix)
    owners = {cluster.primary_of(shard): shard for shard in range(cluster.primaries)}
    found: dict[int, list[str]] = {shard: [] for shard in range(cluster.primaries)}
    while any(len(ids) < per_shard for ids in found.values()):
        operation = str(uuid.uuid4())
        shard = owners[cluster.primary_for_key(keys.stream(operation))]
        if len(found[shard]) < per_shard:
            found[shard].append(operation)
    return found


def read(client: RedisCluster, settings: ProgressSettings, operation_id: str) -> Entries:
    """Every entry of the operation's stream on the cluster, decoded, oldest first."""
    return [decode_fields(fields) for _, fields in client.xrange(KeySpace(settings.key_prefix).stream(operation_id))]


def wait_for(
    client: RedisCluster, settings: ProgressSettings, operation_id: str, condition: Callable[[Entries], bool]
) -> Entries:
    """Poll the cluster until the operation's stream meets ``condition`` (generous deadline for a loaded machine)."""
    deadline = time.monotonic() + 60
    while True:
        entries = read(client, settings, operation_id)
        if condition(entries):
            return entries
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met; stream of {operation_id} holds {entries}")
        time.sleep(0.05)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.02)


def replicated(cluster: PrivateCluster, primary: int, replica: int) -> bool:
    """Whether ``replica`` has processed everything ``primary`` has written."""
    offset = cluster.nodes[primary].info("replication")["master_repl_offset"]
    return cluster.nodes[replica].info("replication")["master_repl_offset"] == offset


def test_publisher_on_a_cluster_url_writes_operations_on_every_shard(
    redis_cluster: PrivateCluster, cluster_settings: ProgressSettings, reader: RedisCluster
) -> None:
    """A ProgressPublisher built from a redis+cluster:// URL writes each shard's operations whole, with their TTL."""
    shards = ids_on_every_shard(redis_cluster, cluster_settings, per_shard=2)
    publisher = ProgressPublisher(cluster_settings)
    try:
        for operations in shards.values():
            for operation in operations:
                assert publisher.publish(operation, "status_update", {"status": "started"}) is PublishResult.SENT
                for i in range(1, 4):
                    assert publisher.progress(operation, i, 3) is PublishResult.SENT
                done = publisher.publish(operation, "status_update", {"status": "completed"}, final=True)
                assert done is PublishResult.SENT
        assert publisher.healthy
    finally:
        publisher.close()
    keys = KeySpace(cluster_settings.key_prefix)
    for shard, operations in shards.items():
        for operation in operations:
            key = keys.stream(operation)
            assert redis_cluster.shard_of(redis_cluster.primary_for_key(key)) == shard
            entries = read(reader, cluster_settings, operation)
            assert kinds(entries) == ["status:started", "progress:1", "progress:2", "progress:3", "status:completed"]
            ttl = ttl_for(cluster_settings, "status_update", {"status": "completed"})
            assert ttl - 30 < reader.ttl(key) <= ttl


def test_a_killed_primary_buffers_writes_until_its_replica_takes_over_and_loses_none(
    redis_cluster: PrivateCluster, cluster_settings: ProgressSettings, reader: RedisCluster
) -> None:
    """SIGKILL of the operation's primary mid-sequence: sent entries stay, the rest are buffered and land in order."""
    operation = ids_on_every_shard(redis_cluster, cluster_settings)[0][0]
    publisher = ProgressPublisher(cluster_settings)
    results: list[PublishResult] = []
    health: list[bool] = []
    stop, go, idle = threading.Event(), threading.Event(), threading.Event()
    go.set()

    def write() -> None:
        i = 0
        while not stop.is_set():
            if not go.is_set():
                idle.set()
                go.wait()
            results.append(publisher.publish(operation, "tick", {"i": i}))
            health.append(publisher.healthy)
            i += 1
            time.sleep(0.005)  # pacing: a steady writer, about 200 entries a second

    writer = threading.Thread(target=write)
    writer.start()
    try:
        wait_until(lambda: len(results) >= 20, "the publisher has written a few entries")
        # Replication is asynchronous: a write acknowledged in the last instant before a SIGKILL may be lost with the
        # primary. The writer pauses until the replica holds every acknowledged entry, and resumes as the kill lands.
        go.clear()
        assert idle.wait(60)
        victim = redis_cluster.primary_of(0)
        replica = redis_cluster.replicas_of(0)[0]
        wait_until(lambda: replicated(redis_cluster, victim, replica), "the replica has every acknowledged entry")
        redis_cluster.nodes[victim].kill()
        go.set()
        wait_until(lambda: redis_cluster.settled() and redis_cluster.primary_of(0) != victim, "shard 0 fails over")
        wait_until(lambda: PublishResult.BUFFERED in results, "a write was buffered")
        first_buffered = results.index(PublishResult.BUFFERED)
        wait_until(lambda: results[first_buffered:].count(PublishResult.SENT) >= 20, "writes are sent again")
    finally:
        stop.set()
        writer.join(timeout=60)
    try:
        assert publisher.flush(timeout=30)
        assert publisher.healthy
        assert publisher.check()  # PING reaches every node of the new shape, the killed one no longer among them
    finally:
        publisher.close()
    assert set(results) <= {PublishResult.SENT, PublishResult.BUFFERED}, results
    assert False in health
    assert health[-1] is True
    written = [entry["data"]["i"] for entry in read(reader, cluster_settings, operation)]
    assert written == list(range(len(results)))  # every entry, sent or buffered, exactly once and in order


def test_writes_follow_a_slot_migration_through_ask_and_moved(
    redis_cluster: PrivateCluster, cluster_settings: ProgressSettings, reader: RedisCluster
) -> None:
    """While an operation's slot migrates to another shard (ASK) and after (MOVED), every write is sent, in order."""
    keys = KeySpace(cluster_settings.key_prefix)
    moved = str(uuid.uuid4())
    slot = key_slot(keys.stream(moved).encode())
    fresh = next(
        candidate
        for candidate in (str(uuid.uuid4()) for _ in range(1_000_000))
        if key_slot(keys.stream(candidate).encode()) == slot
    )  # a second operation of the same slot, first written while the slot is half migrated
    source = redis_cluster.shard_of(redis_cluster.primary_for_slot(slot))
    target = (source + 1) % redis_cluster.primaries
    publisher = ProgressPublisher(cluster_settings)
    during: list[PublishResult] = []

    def write_while_migrating(_: list[str]) -> None:
        during.append(publisher.publish(moved, "tick", {"i": 1}))
        during.append(publisher.publish(fresh, "tick", {"i": 0}))

    try:
        assert publisher.publish(moved, "tick", {"i": 0}) is PublishResult.SENT
        redis_cluster.migrate_slot(slot, target, batch=1, on_batch=write_while_migrating)
        assert publisher.publish(moved, "tick", {"i": 2}) is PublishResult.SENT
        assert publisher.publish(fresh, "tick", {"i": 1}) is PublishResult.SENT
        assert publisher.healthy
    finally:
        publisher.close()
    assert during == [PublishResult.SENT, PublishResult.SENT]
    assert redis_cluster.shard_of(redis_cluster.primary_for_slot(slot)) == target
    assert [entry["data"]["i"] for entry in read(reader, cluster_settings, moved)] == [0, 1, 2]
    assert [entry["data"]["i"] for entry in read(reader, cluster_settings, fresh)] == [0, 1]


def test_an_unreachable_cluster_is_an_outage_that_buffers_entries() -> None:
    """No startup node answers: the publisher is built, and entries are buffered (healthy false), never raised."""
    settings = ProgressSettings(
        redis_url=f"redis+cluster://127.0.0.1:{free_port()},127.0.0.1:{free_port()}", socket_timeout_seconds=0.5
    )
    publisher = ProgressPublisher(settings)
    try:
        assert publisher.publish("op-down", "status_update", {"status": "started"}) is PublishResult.BUFFERED
        assert not publisher.healthy
        assert publisher.buffered == 1
        assert not publisher.check()
    finally:
        publisher.close(timeout=0)


def test_prefork_worker_on_a_cluster_url_publishes_lifecycles_on_every_shard(
    redis_cluster: PrivateCluster,
    cluster_settings: ProgressSettings,
    reader: RedisCluster,
    redis_url: str,
    broker_namespace: str,
    tmp_path: Path,
) -> None:
    """A prefork worker on the cluster URL writes queued, started, progress and completed of tasks on every shard."""
    operations = [op for ops in ids_on_every_shard(redis_cluster, cluster_settings, per_shard=2).values() for op in ops]
    log = tmp_path / "worker.log"
    environment = {"CELERY_PROGRESS_WS_REDIS_URL": redis_cluster.url}
    prefork = ["--pool=prefork", "--concurrency=2"]
    with worker_process(redis_url, broker_namespace, cluster_settings, log, prefork, environment) as app:
        results = [app.tasks["cpws.count"].apply_async((3,), task_id=operation) for operation in operations]
        for result in results:
            assert result.get(timeout=60) == 3, log.read_text()
        for operation in operations:
            entries = wait_for(reader, cluster_settings, operation, ended)
            assert statuses(entries) == ["queued", "started", "completed"], entries
            assert kinds(entries)[:2] == ["status:queued", "status:started"]
            assert progress_values(entries) == [1, 2, 3]
    assert "celery-progress-ws" not in log.read_text(), log.read_text()


def test_track_on_a_cluster_registers_a_group_that_a_prefork_worker_completes(
    redis_cluster: PrivateCluster,
    cluster_settings: ProgressSettings,
    reader: RedisCluster,
    redis_url: str,
    broker_namespace: str,
    tmp_path: Path,
) -> None:
    """track(group, settings=<cluster>) registers on the cluster; the children's updates bring it to 100 %."""
    log = tmp_path / "worker.log"
    environment = {"CELERY_PROGRESS_WS_REDIS_URL": redis_cluster.url}
    prefork = ["--pool=prefork", "--concurrency=2"]
    with worker_process(redis_url, broker_namespace, cluster_settings, log, prefork, environment) as app:
        children = group(app.tasks["cpws.count"].si(2) for _ in range(6))
        operation_id = track(children, settings=cluster_settings)
        entries = wait_for(reader, cluster_settings, operation_id, ended)
    end = [entry["data"] for entry in entries if entry["type"] == "status_update"][-1]
    assert (end["status"], end["progress_percentage"], end["counts"]["completed"]) == ("completed", 100, 6)
    assert "celery-progress-ws" not in log.read_text(), log.read_text()


def test_a_lane_marked_down_by_a_read_comes_back_on_its_own_once_its_node_is_replaced(
    redis_cluster: PrivateCluster, cluster_settings: ProgressSettings
) -> None:
    """A read that finds a primary dead marks its lane down with nothing buffered; once the replica took over, the
    background probes see the old node is gone and ``healthy`` is true again without any write."""
    operation = ids_on_every_shard(redis_cluster, cluster_settings)[0][0]
    publisher = ProgressPublisher(cluster_settings)
    try:
        assert publisher.publish(operation, "tick", {"i": 0}) is PublishResult.SENT
        victim = redis_cluster.primary_of(0)
        redis_cluster.nodes[victim].kill()
        assert publisher._writer.get(KeySpace(cluster_settings.key_prefix).aggregate_parent(operation)) is None
        assert not publisher.healthy
        wait_until(lambda: redis_cluster.settled() and redis_cluster.primary_of(0) != victim, "shard 0 fails over")
        wait_until(lambda: publisher.healthy, "the writer finds every primary it writes to answering")
        assert publisher.publish(operation, "tick", {"i": 1}) is PublishResult.SENT
    finally:
        publisher.close()
