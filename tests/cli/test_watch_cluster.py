"""`celery-progress-ws watch` on a Redis Cluster: operations on every shard followed to completion over sharded
pub/sub, and one followed through a failover of its shard."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from redis.cluster import RedisCluster

from celery_progress_ws import ProgressPublisher, ProgressSettings, PublishResult
from celery_progress_ws._core.keys import KeySpace
from devtools.cluster import PrivateCluster
from devtools.processes import OwnedProcess, stop_all
from tests.cli.test_watch import Watch, finish, read_lines, watch_process
from tests.support.cluster_ops import operations_on_every_shard, shard_of_operation

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster_settings(settings: ProgressSettings, redis_cluster: PrivateCluster) -> ProgressSettings:
    """The test's settings on the private cluster, with quick write retries through a failover."""
    return settings.model_copy(update={"redis_url": redis_cluster.url, "retry_interval_seconds": 0.1})


@pytest.fixture
def watch() -> Iterator[Watch]:
    """Starts watch commands; whichever still runs when the test ends is stopped by its pid."""
    started: list[OwnedProcess] = []

    def start(settings: ProgressSettings, *args: str) -> OwnedProcess:
        started.append(watch_process(settings, *args))
        return started[-1]

    yield start
    stop_all(started)
    for process in started:
        for pipe in (process.popen.stdout, process.popen.stderr):
            if pipe is not None:
                pipe.close()


def stored_ids(client: RedisCluster, settings: ProgressSettings, operation: str) -> list[str]:
    return [entry_id for entry_id, _ in client.xrange(KeySpace(settings.key_prefix).stream(operation))]


def test_watch_follows_operations_on_every_shard_to_completion(
    cluster_settings: ProgressSettings, redis_cluster: PrivateCluster, cluster_client: RedisCluster, watch: Watch
) -> None:
    """History, then live entries of an operation on each shard, each printed once in stream order; exit 0."""
    operations = operations_on_every_shard(redis_cluster, cluster_settings)
    with ProgressPublisher(cluster_settings) as publisher:
        for operation in operations:
            assert publisher.publish(operation, "status_update", {"status": "started"}) is PublishResult.SENT
        process = watch(cluster_settings, *operations)
        assert {line["operation_id"] for line in read_lines(process, 3)} == set(operations)
        for number in range(1, 5):
            for operation in operations:
                assert publisher.progress(operation, number, 4, force=True) is PublishResult.SENT
        for operation in operations:
            publisher.publish(operation, "status_update", {"status": "completed"}, final=True)
        assert publisher.flush(timeout=10)
        code, lines, stderr = finish(process)
    assert code == 0, stderr
    for operation in operations:
        printed = [line["id"] for line in lines if line["operation_id"] == operation]
        assert printed == stored_ids(cluster_client, cluster_settings, operation)[1:]


@pytest.mark.parametrize("fault", ["failover", "kill_primary"])
def test_watch_follows_its_operation_through_a_failover_of_its_shard(
    cluster_settings: ProgressSettings,
    redis_cluster: PrivateCluster,
    cluster_client: RedisCluster,
    watch: Watch,
    fault: str,
) -> None:
    """After ``CLUSTER FAILOVER`` or a SIGKILLed primary, the watcher resubscribes on the new primary and prints
    every entry once, in order, with no gap notice (the promoted replica holds the stream)."""
    operation = operations_on_every_shard(redis_cluster, cluster_settings)[0]
    shard = shard_of_operation(redis_cluster, cluster_settings, operation)
    faults: dict[str, Callable[[], object]] = {
        "failover": lambda: redis_cluster.failover(redis_cluster.replicas_of(shard)[0]),
        "kill_primary": lambda: redis_cluster.kill_primary(shard),
    }
    with ProgressPublisher(cluster_settings) as publisher:
        publisher.publish(operation, "status_update", {"status": "started"})
        publisher.progress(operation, 1, 4, force=True)
        process = watch(cluster_settings, operation)
        assert len(read_lines(process, 2)) == 2
        faults[fault]()
        for number in range(2, 5):
            publisher.progress(operation, number, 4, force=True)
        publisher.publish(operation, "status_update", {"status": "completed"}, final=True)
        assert publisher.flush(timeout=15)
        code, lines, stderr = finish(process)
    assert code == 0, stderr
    assert [line["type"] for line in lines].count("history_gap") == 0
    assert [line["id"] for line in lines] == stored_ids(cluster_client, cluster_settings, operation)[2:]
