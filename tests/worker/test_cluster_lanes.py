"""One shard of a cluster that cannot take writes holds back only its own operations: the others' entries are sent at
once, in order, while its own wait in memory and land in order when it answers again."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator

import pytest
from redis.cluster import RedisCluster

from celery_progress_ws import ProgressPublisher, ProgressSettings, PublishResult
from devtools.cluster import PrivateCluster
from tests.worker.test_cluster_writes import ids_on_every_shard, read

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def partial_cluster() -> Iterator[PrivateCluster]:
    """Three primaries without replicas; the two that stay up keep serving (a majority, no full coverage required)."""
    with PrivateCluster(primaries=3, replicas=0, node_timeout_ms=1000, full_coverage=False) as cluster:
        yield cluster


@pytest.fixture
def settings(partial_cluster: PrivateCluster) -> ProgressSettings:
    partial_cluster.heal()
    return ProgressSettings(
        redis_url=partial_cluster.url,
        key_prefix=f"cpws-lanes:{uuid.uuid4().hex[:12]}:",
        throttle_seconds=0,
        retry_interval_seconds=0.1,
        socket_timeout_seconds=1.0,
    )


@pytest.fixture
def reader(partial_cluster: PrivateCluster) -> Iterator[RedisCluster]:
    client = RedisCluster(startup_nodes=partial_cluster.startup_nodes, decode_responses=True, socket_timeout=5)
    try:
        yield client
    finally:
        client.close()


def values(reader: RedisCluster, settings: ProgressSettings, operation_id: str) -> list[int]:
    return [entry["data"]["i"] for entry in read(reader, settings, operation_id)]


@pytest.mark.parametrize("fault", ["stalled", "killed"])
def test_a_shard_that_cannot_take_writes_holds_back_only_its_own_operations(
    partial_cluster: PrivateCluster, settings: ProgressSettings, reader: RedisCluster, fault: str
) -> None:
    """Shard 0's primary frozen (every write times out) or killed: writes to shard 1 stay ``sent`` and land at once,
    ``healthy`` says something is down, and shard 0's entries are written in order once it is back."""
    shards = ids_on_every_shard(partial_cluster, settings)
    held, flowing = shards[0][0], shards[1][0]
    victim = partial_cluster.nodes[partial_cluster.primary_of(0)]
    publisher = ProgressPublisher(settings)
    try:
        assert publisher.publish(held, "tick", {"i": 0}) is PublishResult.SENT
        assert publisher.publish(flowing, "tick", {"i": 0}) is PublishResult.SENT
        pid = victim.pid
        assert pid is not None
        if fault == "stalled":
            os.kill(pid, signal.SIGSTOP)
        else:
            victim.kill()
        try:
            held_results = [publisher.publish(held, "tick", {"i": i}) for i in range(1, 4)]
            assert held_results == [PublishResult.BUFFERED] * 3
            assert not publisher.healthy
            flowing_results = [publisher.publish(flowing, "tick", {"i": i}) for i in range(1, 21)]
            assert flowing_results == [PublishResult.SENT] * 20
            assert values(reader, settings, flowing) == list(range(21))
            assert not publisher.healthy  # shard 0 still cannot take its entries
            assert publisher.buffered == 3
        finally:
            if fault == "stalled":
                os.kill(pid, signal.SIGCONT)
        partial_cluster.heal()
        assert publisher.flush(timeout=30)
        assert publisher.healthy
        assert publisher.publish(held, "tick", {"i": 4}) is PublishResult.SENT
    finally:
        publisher.close()
    written = values(reader, settings, held)
    # A killed node without disk lost entry 0; a frozen one ran the write in flight when it froze, whose reply never
    # came: sent again, it finds itself in the stream and is not written twice.
    assert written == ([1, 2, 3, 4] if fault == "killed" else [0, 1, 2, 3, 4])
    assert values(reader, settings, flowing) == list(range(21))


def test_a_plain_url_at_one_cluster_node_buffers_what_other_nodes_serve_and_never_calls_it_sent(
    partial_cluster: PrivateCluster, settings: ProgressSettings, reader: RedisCluster
) -> None:
    """A single-server URL pointed at one primary: writes for its own slots are sent; a write another primary serves
    is answered MOVED, which is an outage (buffered, ``healthy`` False), not ``sent``, and the call returns at once."""
    node = partial_cluster.primary_of(0)
    plain = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{partial_cluster.nodes[node].port}/0"})
    shards = ids_on_every_shard(partial_cluster, settings)
    own, elsewhere = shards[0][0], shards[1][0]
    publisher = ProgressPublisher(plain)
    try:
        assert publisher.publish(own, "tick", {"i": 0}) is PublishResult.SENT
        assert publisher.publish(elsewhere, "tick", {"i": 0}) is PublishResult.BUFFERED
        assert not publisher.healthy
    finally:
        publisher.close(timeout=0.5)
    assert values(reader, settings, own) == [0]
    assert values(reader, settings, elsewhere) == []
