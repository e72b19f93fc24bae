"""Shared fixtures: a real Redis (the configured one, localhost:6379, or a private embedded server), a key prefix
per test whose keys are deleted afterwards, and settings pointing at both."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery
from redis.cluster import RedisCluster

from celery_progress_ws import ProgressPublisher, ProgressSettings, set_default_publisher
from devtools.cluster import PrivateCluster
from devtools.sentinel import PrivateSentinelSet
from devtools.servers import PrivateRedis, resolve_redis
from tests.support.worker_process import worker_process
from tests.support.worker_tasks import create_app, threads_worker


def delete_keys_under(client: redis.Redis, prefix: str) -> None:
    """Delete every key that starts with ``prefix`` (only what a test wrote: prefixes are unique per test)."""
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of the shared Redis the tests write to (under their own key prefixes only)."""
    url, server = resolve_redis()
    try:
        yield url
    finally:
        if server is not None:
            server.stop()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A plain synchronous client that decodes responses."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def key_prefix(redis_client: redis.Redis) -> Iterator[str]:
    """A key prefix unique to this test; every key under it is deleted afterwards."""
    prefix = f"cpws-test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    delete_keys_under(redis_client, prefix)


@pytest.fixture
def settings(redis_url: str, key_prefix: str) -> ProgressSettings:
    """Settings for this test's Redis and key prefix, with a short throttle."""
    return ProgressSettings(redis_url=redis_url, key_prefix=key_prefix, throttle_seconds=0.2)


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    """A Redis-compatible server of this test's own, on a free port; only it is ever stopped or restarted."""
    with PrivateRedis() as server:
        yield server


# -- Celery and publisher fixtures (worker half) --------------------------------------------------------------------


@pytest.fixture(scope="session")
def broker_namespace(redis_url: str) -> Iterator[str]:
    """A name unique to this session for Celery queues, exchanges and broker/result keys; its keys are deleted after."""
    namespace = f"cpws-test-{uuid.uuid4().hex[:12]}"
    yield namespace
    with redis.Redis.from_url(redis_url) as client:
        delete_keys_under(client, namespace)


class _Records(logging.Handler):
    """Keeps every record it is given."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def progress_log() -> Iterator[list[logging.LogRecord]]:
    """Every record of INFO and above logged by celery_progress_ws during the test, from any thread."""
    handler = _Records()
    logger = logging.getLogger("celery_progress_ws")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


@pytest.fixture
def publisher(settings: ProgressSettings) -> Iterator[ProgressPublisher]:
    """A publisher for this test's Redis and key prefix, closed afterwards."""
    with ProgressPublisher(settings) as instance:
        yield instance


@pytest.fixture
def default_publisher(publisher: ProgressPublisher) -> Iterator[ProgressPublisher]:
    """``publisher``, installed as the process default that report_progress uses outside tasks."""
    previous = set_default_publisher(publisher)
    try:
        yield publisher
    finally:
        set_default_publisher(previous)


@pytest.fixture(scope="module")
def module_settings(redis_url: str) -> Iterator[ProgressSettings]:
    """Settings for one test module's worker, under a key prefix whose keys are deleted after the module."""
    prefix = f"cpws-test:{uuid.uuid4().hex[:12]}:"
    yield ProgressSettings(redis_url=redis_url, key_prefix=prefix, throttle_seconds=0.2, retry_interval_seconds=0.2)
    with redis.Redis.from_url(redis_url) as client:
        delete_keys_under(client, prefix)


@pytest.fixture(scope="module")
def progress_worker(redis_url: str, broker_namespace: str, module_settings: ProgressSettings) -> Iterator[Celery]:
    """An app with ProgressBootstep and the tasks of tests.support.worker_tasks, run by an in-process threads worker."""
    app = create_app(redis_url, broker_namespace, f"{broker_namespace}-{uuid.uuid4().hex[:6]}", module_settings)
    with threads_worker(app):
        yield app


# -- Real ``celery worker`` subprocesses, one per test, each with its log file -----------------------------------------


@pytest.fixture
def prefork_worker(
    redis_url: str, broker_namespace: str, settings: ProgressSettings, tmp_path: Path
) -> Iterator[tuple[Celery, Path]]:
    """A prefork worker with two children, and its log file."""
    log = tmp_path / "worker.log"
    with worker_process(redis_url, broker_namespace, settings, log, ["--pool=prefork", "--concurrency=2"]) as app:
        yield app, log


@pytest.fixture
def gevent_worker(
    redis_url: str, broker_namespace: str, settings: ProgressSettings, tmp_path: Path
) -> Iterator[tuple[Celery, Path]]:
    """A gevent worker (the standard library monkey-patched by Celery) running up to 8 tasks at once, and its log."""
    log = tmp_path / "worker.log"
    with worker_process(redis_url, broker_namespace, settings, log, ["--pool=gevent", "--concurrency=8"]) as app:
        yield app, log


@pytest.fixture
def solo_worker(
    redis_url: str, broker_namespace: str, settings: ProgressSettings, tmp_path: Path
) -> Iterator[tuple[Celery, Path]]:
    """A solo worker (tasks run one at a time in the worker's main thread), and its log."""
    log = tmp_path / "worker.log"
    with worker_process(redis_url, broker_namespace, settings, log, ["--pool=solo"]) as app:
        yield app, log


# -- Private Redis Cluster and Sentinel sets (embedded valkey-server processes, stopped by pid) ---------------------
# Forming either takes about 2-3 s, so each test module gets one; the function-scoped fixtures restart whatever a
# previous test of the module stopped and wait until the topology has settled again.


@pytest.fixture(scope="module")
def redis_cluster_module() -> Iterator[PrivateCluster]:
    """A private cluster of 3 primaries and 3 replicas for one test module, node timeout 1 s."""
    with PrivateCluster(primaries=3, replicas=1, node_timeout_ms=1000) as cluster:
        yield cluster


@pytest.fixture
def redis_cluster(redis_cluster_module: PrivateCluster) -> PrivateCluster:
    """The module's private cluster with every node running and every node agreeing on the topology."""
    redis_cluster_module.heal()
    return redis_cluster_module


@pytest.fixture(scope="module")
def sentinel_set_module() -> Iterator[PrivateSentinelSet]:
    """A private master, 2 replicas and 3 sentinels (quorum 2, down after 3 s: only deliberate faults, not a loaded
    machine's slow replies, fail it over) for one test module."""
    with PrivateSentinelSet(replicas=2, sentinels=3, down_after_ms=3000) as sentinels:
        yield sentinels


@pytest.fixture
def sentinel_set(sentinel_set_module: PrivateSentinelSet) -> PrivateSentinelSet:
    """The module's private sentinel set with every process running, one agreed master and every replica following."""
    sentinel_set_module.heal()
    return sentinel_set_module


@pytest.fixture
def cluster_client(redis_cluster: PrivateCluster) -> Iterator[RedisCluster]:
    """A plain synchronous redis-py cluster client of the private cluster (decoded replies)."""
    client = RedisCluster(startup_nodes=redis_cluster.startup_nodes, decode_responses=True, socket_timeout=2)
    try:
        yield client
    finally:
        client.close()
