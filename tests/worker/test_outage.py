"""Redis outages on a private server: tasks never fail or stall, one warning per outage, buffered entries land later."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from celery import Celery, group
from celery.contrib.testing.worker import start_worker

from celery_progress_ws import ProgressPublisher, ProgressSettings, PublishResult, track
from celery_progress_ws._core.keys import KeySpace
from devtools._server_process import wait_until
from devtools.servers import PrivateRedis
from tests.support.streams import Entries, ended, kinds, progress_values, statuses, wait_for
from tests.support.worker_tasks import GATES, close_app, create_app, threads_worker

pytestmark = pytest.mark.integration


@pytest.fixture
def outage_settings(private_redis: PrivateRedis) -> ProgressSettings:
    """Settings pointing at the private server, with short timeouts so the tests stay quick."""
    return ProgressSettings(
        redis_url=private_redis.url,
        key_prefix="cpws-outage:",
        throttle_seconds=0.2,
        retry_interval_seconds=0.2,
        socket_timeout_seconds=0.5,
    )


@pytest.fixture
def private_client(private_redis: PrivateRedis) -> Iterator[redis.Redis]:
    """A client of the private server (it reconnects after restarts)."""
    client = redis.Redis.from_url(private_redis.url, decode_responses=True)
    try:
        yield client
    finally:
        client.close()


def aggregate_ended(entries: Entries) -> bool:
    """Whether an aggregate's stream holds its terminal status."""
    return any(entry["type"] == "status_update" and entry["data"].get("aggregate") for entry in entries)


def warnings_in(records: list[logging.LogRecord]) -> list[str]:
    return [record.getMessage() for record in records if record.levelno >= logging.WARNING]


def test_calls_during_an_outage_return_at_once_and_warn_once(
    private_redis: PrivateRedis,
    outage_settings: ProgressSettings,
    private_client: redis.Redis,
    progress_log: list[logging.LogRecord],
) -> None:
    """During an outage calls return at once, warn once, and their entries land in order afterwards."""
    with ProgressPublisher(outage_settings) as publisher:
        assert publisher.publish("op", "status_update", {"status": "started"}) is PublishResult.SENT
        private_redis.stop()
        slowest = 0.0
        for i in range(1, 21):
            began = time.monotonic()
            publisher.publish("op", "tick", {"i": i})
            publisher.progress("op", i, 20)
            if i > 1:
                slowest = max(slowest, time.monotonic() - began)
        assert publisher.publish("op", "status_update", {"status": "completed"}) is PublishResult.BUFFERED
        assert slowest < 0.2  # no call waits for Redis once it is known to be down
        assert len(warnings_in(progress_log)) == 1
        private_redis.start()
        entries = wait_for(private_client, outage_settings, "op", ended, timeout=5)
    assert [entry["data"]["i"] for entry in entries if entry["type"] == "tick"] == list(range(1, 21))
    assert progress_values(entries)[-1] == 20
    assert kinds(entries)[-1] == "status:completed"
    assert len(warnings_in(progress_log)) == 1
    assert [r.getMessage() for r in progress_log if r.levelno == logging.INFO and "answers again" in r.getMessage()]


def test_a_full_buffer_drops_progress_first_and_terminal_statuses_last(
    private_redis: PrivateRedis, private_client: redis.Redis, progress_log: list[logging.LogRecord]
) -> None:
    """A full buffer drops progress first, refuses it against terminal statuses, drops those oldest first."""
    settings = ProgressSettings(
        redis_url=private_redis.url, key_prefix="cpws-overflow:", pending_buffer_size=4, socket_timeout_seconds=0.5
    )
    with ProgressPublisher(settings) as publisher:
        private_redis.stop()
        for operation_id in ("a", "b", "c"):
            publisher.publish(operation_id, "status_update", {"status": "completed"})
        for i in range(1, 6):
            publisher.progress("d", i, 10, force=True)  # each evicts the previous one
        assert publisher.publish("e", "status_update", {"status": "failed"}) is PublishResult.BUFFERED  # evicts d's
        assert publisher.progress("d", 6, 10, force=True) is PublishResult.DROPPED
        publisher.publish("f", "status_update", {"status": "cancelled"})  # evicts a's, the oldest terminal one
        private_redis.start()
        assert publisher.flush(timeout=5)
    keys = KeySpace(settings.key_prefix)
    assert set(private_client.scan_iter("cpws-overflow:*")) == {keys.stream(operation) for operation in "bcef"}
    assert [r.getMessage() for r in progress_log if "7 were dropped" in r.getMessage()]


@pytest.fixture
def outage_worker(redis_url: str, broker_namespace: str, outage_settings: ProgressSettings) -> Iterator[Celery]:
    """An in-process worker whose broker is the shared Redis and whose progress goes to the private server."""
    app = create_app(redis_url, broker_namespace, f"{broker_namespace}-{uuid.uuid4().hex[:6]}", outage_settings)
    with threads_worker(app):
        yield app


def test_task_survives_an_outage_mid_task_and_its_terminal_status_lands_later(
    private_redis: PrivateRedis,
    outage_settings: ProgressSettings,
    private_client: redis.Redis,
    progress_log: list[logging.LogRecord],
    outage_worker: Celery,
) -> None:
    """Redis stops mid-task: the task succeeds, one warning, and everything through completed lands later."""
    token = uuid.uuid4().hex
    reached, release = GATES[token] = (threading.Event(), threading.Event())
    try:
        result = outage_worker.tasks["cpws.gated"].delay(token)
        assert reached.wait(10)
        private_redis.stop()
        release.set()
        assert result.get(timeout=15) == "ok"
        # The thread that found Redis gone (the task's, or the publisher's own for a held-back value) may still be
        # between marking the outage and logging it when the task returns.
        wait_until(lambda: bool(warnings_in(progress_log)), 5, "the outage is logged")
        assert len(warnings_in(progress_log)) == 1
        private_redis.start()
        entries = wait_for(private_client, outage_settings, result.id, ended, timeout=5)
    finally:
        GATES.pop(token, None)
    assert kinds(entries)[-3:] == ["chunking_document_complete", "progress:3", "status:completed"]
    assert len(warnings_in(progress_log)) == 1


def test_a_worker_whose_redis_is_down_starts_and_runs_tasks(
    private_redis: PrivateRedis,
    outage_settings: ProgressSettings,
    private_client: redis.Redis,
    progress_log: list[logging.LogRecord],
    redis_url: str,
    broker_namespace: str,
) -> None:
    """With Redis down at start the worker runs tasks (one warning); all entries land once it is back."""
    private_redis.stop()
    app = create_app(redis_url, broker_namespace, f"{broker_namespace}-{uuid.uuid4().hex[:6]}", outage_settings)
    try:
        with start_worker(app, pool="threads", concurrency=2, perform_ping_check=False, shutdown_timeout=20):
            result = app.tasks["cpws.count"].delay(3)
            assert result.get(timeout=15) == 3
            assert len(warnings_in(progress_log)) == 1
            private_redis.start()
            entries = wait_for(private_client, outage_settings, result.id, ended, timeout=5)
    finally:
        close_app(app)
    assert statuses(entries) == ["queued", "started", "completed"]
    assert progress_values(entries)[-1] == 3


def test_child_completed_during_an_outage_reaches_its_aggregate_when_redis_is_back(
    private_redis: PrivateRedis,
    outage_settings: ProgressSettings,
    private_client: redis.Redis,
    outage_worker: Celery,
) -> None:
    """A child's `completed` written while Redis is down is kept; the aggregate completes at 100 % once it is back."""
    token, child = uuid.uuid4().hex, f"child-{uuid.uuid4().hex}"
    reached, release = GATES[token] = (threading.Event(), threading.Event())
    try:
        signature = outage_worker.tasks["cpws.gated"].si(token).set(task_id=child)
        operation_id = track(group(signature), settings=outage_settings)
        assert reached.wait(10)
        private_client.save()  # the registered aggregate survives the restart
        private_redis.stop()
        release.set()
        assert outage_worker.AsyncResult(child).get(timeout=15) == "ok"
        private_redis.start()
        entries = wait_for(private_client, outage_settings, operation_id, aggregate_ended, timeout=10)
    finally:
        GATES.pop(token, None)
    end = [entry["data"] for entry in entries if entry["type"] == "status_update"][-1]
    assert (end["status"], end["progress_percentage"], end["counts"]["completed"]) == ("completed", 100, 1)
    assert statuses(wait_for(private_client, outage_settings, child, ended, timeout=5))[-1] == "completed"
