"""ProgressBootstep with a real in-process Celery worker: lifecycle entries, their order, TTLs and the throttle."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from celery import Celery

from celery_progress_ws import ProgressPublisher, ProgressSettings, PublishResult
from celery_progress_ws._core.keys import KeySpace
from celery_progress_ws._worker.app_config import client_for_app
from celery_progress_ws._worker.signals import bindings, disable_events, enable_worker_events
from tests.support.streams import ended, kinds, progress_values, read, statuses, stream_key, wait_for
from tests.support.worker_tasks import check_odd_value_runs, create_app

pytestmark = pytest.mark.integration


def run(app: Celery, client: redis.Redis, settings: ProgressSettings, name: str, *args: object) -> tuple[str, list]:
    """Send a task, wait for its result (or failure), then for its terminal status; return its id and stream."""
    result = app.tasks[name].delay(*args)
    result.get(timeout=20, propagate=False)
    return result.id, wait_for(client, settings, result.id, ended)


def test_success_writes_queued_started_progress_completed(
    progress_worker: Celery, module_settings: ProgressSettings, redis_client: redis.Redis
) -> None:
    """Success reads queued, started, progress (first, last), completed, with the seed's fields; TTL 300."""
    task_id, entries = run(progress_worker, redis_client, module_settings, "cpws.count", 3)
    assert kinds(entries) == ["status:queued", "status:started", "progress:1", "progress:3", "status:completed"]
    assert entries[1]["data"] == {"status": "started", "task_name": "cpws.count", "message": "Task started"}
    last = entries[3]["data"]
    assert last["progress_percentage"] == 100.0
    assert last["total_documents"] == 3
    assert last["chunks_created"] == 6
    assert last["current_document"] == "doc-3"
    assert last["message"] == "item 3"
    assert last["eta_seconds"] == 0.0
    assert last["rate"] is not None
    assert 250 < redis_client.ttl(stream_key(module_settings, task_id)) <= 300


def test_failure_writes_failed_with_error_and_a_60_second_ttl(
    progress_worker: Celery, module_settings: ProgressSettings, redis_client: redis.Redis
) -> None:
    """A failing task ends with `failed` carrying the error type and message (no traceback by default); TTL 60 s."""
    task_id, entries = run(progress_worker, redis_client, module_settings, "cpws.fail", "boom")
    assert kinds(entries) == ["status:queued", "status:started", "progress:1", "status:failed"]
    failed = entries[-1]["data"]
    assert failed["error_type"] == "ValueError"
    assert failed["error_message"] == "boom"
    assert failed["task_name"] == "cpws.fail"
    assert "traceback" not in failed
    assert 50 < redis_client.ttl(stream_key(module_settings, task_id)) <= 60


def test_retry_writes_retrying_then_a_second_attempt(
    progress_worker: Celery, module_settings: ProgressSettings, redis_client: redis.Redis
) -> None:
    """A retried task shows retrying (with the reason) between its two attempts and no second `queued`."""
    result = progress_worker.tasks["cpws.flaky"].delay()
    assert result.get(timeout=20) == "recovered"
    entries = wait_for(redis_client, module_settings, result.id, ended)
    assert kinds(entries) == [
        "status:queued",
        "status:started",
        "progress:1",
        "status:retrying",
        "status:started",
        "progress:2",
        "status:completed",
    ]
    assert "flaky dependency" in entries[3]["data"]["message"]


def test_revoked_task_writes_cancelled_with_a_300_second_ttl(
    progress_worker: Celery, module_settings: ProgressSettings, redis_client: redis.Redis
) -> None:
    """A task revoked before the worker receives it is never started: queued, then cancelled; TTL 300 s."""
    task_id = str(uuid.uuid4())
    replies = progress_worker.control.revoke(task_id, reply=True, limit=1, timeout=5)
    assert replies, "the worker did not acknowledge the revoke"
    progress_worker.tasks["cpws.count"].apply_async((3,), task_id=task_id)
    entries = wait_for(redis_client, module_settings, task_id, ended)
    assert statuses(entries) == ["queued", "cancelled"]
    assert entries[-1]["data"]["message"] == "Task revoked"
    assert 250 < redis_client.ttl(stream_key(module_settings, task_id)) <= 300


def test_expired_task_writes_cancelled(
    progress_worker: Celery, module_settings: ProgressSettings, redis_client: redis.Redis
) -> None:
    """A task whose expiry passed before it ran is reported as cancelled, saying so."""
    expired = datetime.now(UTC) - timedelta(minutes=1)
    result = progress_worker.tasks["cpws.count"].apply_async((3,), expires=expired)
    entries = wait_for(redis_client, module_settings, result.id, ended)
    assert statuses(entries) == ["queued", "cancelled"]
    assert "expired" in entries[-1]["data"]["message"]


def test_events_and_domain_operations(
    progress_worker: Celery, module_settings: ProgressSettings, redis_client: redis.Redis
) -> None:
    """Events land between statuses; a domain id gets its own stream, flushed when the task ends."""
    domain_id = f"batch-{uuid.uuid4().hex[:8]}"
    result = progress_worker.tasks["cpws.events"].delay(domain_id)
    result.get(timeout=20)
    entries = wait_for(redis_client, module_settings, result.id, ended)
    assert kinds(entries) == ["status:queued", "status:started", "chunking_started", "status:completed"]
    domain = read(redis_client, module_settings, domain_id)
    assert kinds(domain) == ["progress:1", "chunking_document_complete", "progress:2"]


def test_throttle_keeps_about_one_entry_per_interval_and_the_true_last_value(
    progress_worker: Celery, module_settings: ProgressSettings, redis_client: redis.Redis
) -> None:
    """10,000 reports in ~1 s give ~1/THROTTLE entries, first to last, the last right before completed."""
    result = progress_worker.tasks["cpws.burst"].delay(10_000, 1.0)
    duration = result.get(timeout=30)
    entries = wait_for(redis_client, module_settings, result.id, ended)
    values = progress_values(entries)
    expected = duration / module_settings.throttle_seconds
    assert expected - 2 <= len(values) <= expected + 3, (duration, values)
    assert values[0] == 1
    assert values == sorted(values)
    assert kinds(entries)[-2:] == ["progress:10000", "status:completed"]


def test_traceback_is_included_only_when_enabled(
    redis_url: str, key_prefix: str, broker_namespace: str, redis_client: redis.Redis
) -> None:
    """With include_traceback, `failed` carries the traceback text (the task runs eagerly: signals still fire)."""
    settings = ProgressSettings(redis_url=redis_url, key_prefix=key_prefix, include_traceback=True)
    app = create_app(redis_url, broker_namespace, "unused", settings)
    with ProgressPublisher(settings) as publisher:
        enable_worker_events(app, publisher)
        try:
            result = app.tasks["cpws.fail"].apply(("with traceback",))
        finally:
            disable_events(app)
    entries = read(redis_client, settings, result.id)
    assert statuses(entries) == ["started", "failed"]
    assert "ValueError: with traceback" in entries[-1]["data"]["traceback"]


def test_apps_without_the_step_are_left_alone(redis_url: str, broker_namespace: str, redis_client: redis.Redis) -> None:
    """A task of an app that never enabled the plugin gets no entries, even while another app has it enabled."""
    app = create_app(redis_url, broker_namespace, "unused")
    other = create_app(redis_url, broker_namespace, "unused")

    @app.task(name="cpws.plain", shared=False)
    def plain() -> int:
        return 1

    settings = ProgressSettings(redis_url=redis_url, key_prefix="cpws-test-untouched:")
    with ProgressPublisher(settings) as publisher:
        enable_worker_events(other, publisher)
        try:
            result = plain.apply()
        finally:
            disable_events(other)
    assert result.get() == 1
    assert not list(redis_client.scan_iter(match="*" + KeySpace().stream(result.id)))
    assert all(binding.publisher is not publisher for binding in bindings())


def test_odd_extra_values_are_converted_or_refused_and_never_stop_the_publisher(
    progress_worker: Celery, module_settings: ProgressSettings, redis_client: redis.Redis
) -> None:
    """Each odd extra value (tuple keys, a cycle, a raising __str__, datetime, set, bytes, NaN, Enum, objects...) in a
    real worker: the task ends with completed/failed, later held-back values of it and of other tasks still flow."""
    check_odd_value_runs(progress_worker, redis_client, module_settings, pause=0.6)


class BrokenPublisher(ProgressPublisher):
    """A publisher whose ``publish`` fails unexpectedly (a bug, not a Redis outage: no server can cause it)."""

    def publish(self, *args: Any, **kwargs: Any) -> PublishResult:
        raise RuntimeError("injected publish failure")


def test_a_status_that_cannot_be_published_is_logged_and_never_reaches_celery(
    redis_url: str,
    key_prefix: str,
    broker_namespace: str,
    progress_log: list[logging.LogRecord],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An unexpected error while writing started/completed is logged by the plugin; no signal handler raises."""
    settings = ProgressSettings(redis_url=redis_url, key_prefix=key_prefix)
    app = create_app(redis_url, broker_namespace, "unused", settings)
    with BrokenPublisher(settings) as publisher:
        enable_worker_events(app, publisher)
        try:
            result = app.tasks["cpws.count"].apply((2,))
        finally:
            disable_events(app)
    assert result.get() == 2
    # Only this task's records: the module's worker thread may still be logging about tasks of earlier tests.
    ours = [record for record in caplog.records if result.id in record.getMessage()]
    assert [record.getMessage() for record in ours if record.name.split(".")[0] == "celery"] == []
    logged = [record for record in progress_log if record.exc_info is not None and result.id in record.getMessage()]
    assert len(logged) == 2  # started and completed


class FlushFailing(ProgressPublisher):
    """A publisher whose ``flush_operation`` fails unexpectedly (a bug no Redis outage can cause)."""

    def flush_operation(self, operation_id: str) -> None:
        raise RuntimeError("injected flush failure")


def test_a_domain_flush_that_fails_never_keeps_the_terminal_status_back(
    redis_url: str, key_prefix: str, broker_namespace: str, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """A task that reported to a domain id still gets `completed` when flushing that domain's value fails."""
    settings = ProgressSettings(redis_url=redis_url, key_prefix=key_prefix)
    app = create_app(redis_url, broker_namespace, "unused", settings)
    with FlushFailing(settings) as publisher:
        enable_worker_events(app, publisher)
        try:
            result = app.tasks["cpws.events"].apply((f"batch-{uuid.uuid4().hex[:8]}",))
        finally:
            disable_events(app)
    assert statuses(read(redis_client, settings, result.id)) == ["started", "completed"]
    assert [record.getMessage() for record in caplog.records if record.name.split(".")[0] == "celery"] == []


def test_an_app_client_that_is_not_a_client_or_factory_is_refused_by_name() -> None:
    """``app.conf.celery_progress_ws_client`` must be a client or a function making one; anything else: TypeError."""
    app = Celery("cpws_client_conf", set_as_current=False)
    assert client_for_app(app) is None
    app.conf.celery_progress_ws_client = "redis://localhost:6379/0"
    with pytest.raises(TypeError, match="celery_progress_ws_client"):
        client_for_app(app)
