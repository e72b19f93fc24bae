"""Writes a real server refuses: a replica's READONLY and MASTERDOWN are outages (buffered, retried, never ``sent``),
an error retrying cannot fix is logged and reported ``dropped``."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import redis

from celery_progress_ws import ProgressPublisher, ProgressSettings, PublishResult
from devtools.servers import PrivateRedis, free_port
from tests.support.streams import read, stream_key, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def refusing_settings(private_redis: PrivateRedis) -> ProgressSettings:
    """Settings on the private server, with short retries so the tests stay quick."""
    return ProgressSettings(
        redis_url=private_redis.url,
        key_prefix="cpws-refused:",
        retry_interval_seconds=0.1,
        socket_timeout_seconds=0.5,
    )


@pytest.fixture
def admin(private_redis: PrivateRedis) -> Iterator[redis.Redis]:
    """A client of the private server that turns it into a replica of nothing and back."""
    client = redis.Redis.from_url(private_redis.url, decode_responses=True)
    try:
        yield client
    finally:
        client.replicaof("NO", "ONE")
        client.close()


def become_replica_of_nothing(admin: redis.Redis) -> None:
    """Make the server a replica of a port nothing listens on: it keeps its data and refuses writes."""
    admin.replicaof("127.0.0.1", free_port())


def numbers(client: redis.Redis, settings: ProgressSettings, operation_id: str) -> list[int]:
    return [entry["data"]["documents_processed"] for entry in read(client, settings, operation_id)]


def write_through_refusal(publisher: ProgressPublisher, admin: redis.Redis) -> list[PublishResult]:
    """Publish 1..10, make the server refuse writes, publish 11..20; return the 20 results."""
    results = [publisher.progress("op", i, 20, force=True) for i in range(1, 11)]
    become_replica_of_nothing(admin)
    results += [publisher.progress("op", i, 20, force=True) for i in range(11, 21)]
    return results


def test_a_server_turned_replica_buffers_writes_until_it_is_a_master_again(
    refusing_settings: ProgressSettings, admin: redis.Redis, progress_log: list[logging.LogRecord]
) -> None:
    """READONLY is an outage: calls say ``buffered``, ``healthy`` is False, and every entry lands in order later."""
    with ProgressPublisher(refusing_settings) as publisher:
        results = write_through_refusal(publisher, admin)
        assert results[:10] == [PublishResult.SENT] * 10
        assert results[10:] == [PublishResult.BUFFERED] * 10
        assert not publisher.healthy
        assert publisher.buffered == 10
        admin.replicaof("NO", "ONE")
        assert publisher.flush(timeout=5)
        assert publisher.healthy
    assert numbers(admin, refusing_settings, "op") == list(range(1, 21))
    warnings = [record.getMessage() for record in progress_log if record.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "ReadOnlyError: " in warnings[0]  # the type, then str(exc): not a repr


def test_the_background_thread_writes_what_a_replica_refused_once_it_is_promoted(
    refusing_settings: ProgressSettings, admin: redis.Redis
) -> None:
    """Nothing reported ``sent`` is missing, and the retry thread alone writes the buffered entries after promotion."""
    with ProgressPublisher(refusing_settings) as publisher:
        results = write_through_refusal(publisher, admin)
        admin.replicaof("NO", "ONE")
        entries = wait_for(admin, refusing_settings, "op", lambda entries: len(entries) >= 20, timeout=5)
        assert publisher.healthy
    sent = [i for i, result in enumerate(results, start=1) if result is PublishResult.SENT]
    written = [entry["data"]["documents_processed"] for entry in entries]
    assert written == list(range(1, 21))
    assert set(sent) <= set(written)


def test_masterdown_from_a_replica_that_serves_no_stale_data_is_an_outage(
    refusing_settings: ProgressSettings, admin: redis.Redis
) -> None:
    """MASTERDOWN (a replica whose master is gone, ``replica-serve-stale-data no``) is buffered and retried too."""
    admin.config_set("replica-serve-stale-data", "no")
    with ProgressPublisher(refusing_settings) as publisher:
        results = write_through_refusal(publisher, admin)
        assert results[10:] == [PublishResult.BUFFERED] * 10
        assert not publisher.healthy
        admin.replicaof("NO", "ONE")
        assert publisher.flush(timeout=5)
    assert numbers(admin, refusing_settings, "op") == list(range(1, 21))


def test_an_error_retrying_cannot_fix_is_logged_and_reported_dropped(
    refusing_settings: ProgressSettings, admin: redis.Redis, progress_log: list[logging.LogRecord]
) -> None:
    """WRONGTYPE (a string under the stream's key) is skipped with a warning naming it; the call says ``dropped``."""
    admin.set(stream_key(refusing_settings, "taken"), "not a stream")
    with ProgressPublisher(refusing_settings) as publisher:
        assert publisher.publish("taken", "tick", {}) is PublishResult.DROPPED
        assert publisher.healthy
        assert publisher.buffered == 0
        assert publisher.publish("other", "tick", {}) is PublishResult.SENT
    warnings = [record.getMessage() for record in progress_log if record.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "ResponseError: WRONGTYPE" in warnings[0]


def test_noreplicas_from_a_master_short_of_in_sync_replicas_is_an_outage(
    refusing_settings: ProgressSettings, admin: redis.Redis
) -> None:
    """NOREPLICAS (``min-replicas-to-write`` and too few replicas in sync) is buffered and retried, never dropped."""
    with ProgressPublisher(refusing_settings) as publisher:
        results = [publisher.progress("op", i, 20, force=True) for i in range(1, 11)]
        admin.config_set("min-replicas-to-write", 1)
        try:
            results += [publisher.progress("op", i, 20, force=True) for i in range(11, 21)]
            assert results[10:] == [PublishResult.BUFFERED] * 10
            assert not publisher.healthy
        finally:
            admin.config_set("min-replicas-to-write", 0)
        assert publisher.flush(timeout=5)
    assert numbers(admin, refusing_settings, "op") == list(range(1, 21))
