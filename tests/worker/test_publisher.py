"""ProgressPublisher against a real Redis: wire shape, live announcement, TTLs, max length, throttling, order, fork."""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any

import pytest
import redis

from celery_progress_ws import InvalidOperationId, ProgressPublisher, ProgressSettings, PublishResult
from celery_progress_ws._core.append import AppendCall
from celery_progress_ws._core.codec import decode_live
from celery_progress_ws._core.keys import KeySpace
from celery_progress_ws._worker.meter import RawProgress
from tests.support.streams import kinds, progress_values, read, stream_key, wait_for
from tests.support.worker_tasks import Named, Unprintable

pytestmark = pytest.mark.integration

BAD_IDS = ["", "x" * 129, "a b", "tab\there", "new\nline", "nul\x00", "del\x7f", "star*", "what?", "br[ack]et"]
BAD_IDS += ["back\\"]


def test_publish_writes_one_wire_entry_and_announces_it_live(
    publisher: ProgressPublisher, settings: ProgressSettings, redis_client: redis.Redis
) -> None:
    """An entry lands in the stream as {timestamp,type,data} and is announced live with its stream id."""
    pubsub = redis_client.pubsub()
    pubsub.subscribe(KeySpace(settings.key_prefix).live("op-1"))
    subscribed = pubsub.get_message(timeout=2)
    assert subscribed is not None
    assert subscribed["type"] == "subscribe"
    try:
        assert publisher.publish("op-1", "chunking_started", {"documents": 3}) is PublishResult.SENT
        [(entry_id, fields)] = redis_client.xrange(stream_key(settings, "op-1"))
        [entry] = read(redis_client, settings, "op-1")
        assert set(entry) == {"timestamp", "type", "data"}
        assert entry["type"] == "chunking_started"
        assert entry["data"] == {"documents": 3}
        assert entry["timestamp"].endswith("+00:00")
        announcement = pubsub.get_message(timeout=2)
        assert announcement is not None
        assert decode_live(announcement["data"]) == (entry_id, fields["message"])
    finally:
        pubsub.close()


@pytest.mark.parametrize(
    ("entry_type", "data", "ttl"),
    [
        ("chunking_started", {}, 86400),
        ("status_update", {"status": "started"}, 86400),
        ("status_update", {"status": "completed"}, 300),
        ("status_update", {"status": "cancelled"}, 300),
        ("status_update", {"status": "failed"}, 60),
    ],
)
def test_each_entry_sets_the_stream_ttl_of_its_kind(
    redis_url: str, key_prefix: str, redis_client: redis.Redis, entry_type: str, data: dict[str, str], ttl: int
) -> None:
    """The stream's TTL is 86400 s while running, 300 s after completed/cancelled and 60 s after failed."""
    settings = ProgressSettings(redis_url=redis_url, key_prefix=key_prefix)
    with ProgressPublisher(settings) as publisher:
        publisher.publish("op-ttl", "status_update", {"status": "started"})
        publisher.publish("op-ttl", entry_type, data)
    assert ttl - 5 <= redis_client.ttl(stream_key(settings, "op-ttl")) <= ttl


def test_stream_keeps_at_most_maxlen_entries(redis_url: str, key_prefix: str, redis_client: redis.Redis) -> None:
    """With stream_maxlen=10, 25 entries leave exactly the newest 10."""
    settings = ProgressSettings(redis_url=redis_url, key_prefix=key_prefix, stream_maxlen=10)
    with ProgressPublisher(settings) as publisher:
        for i in range(25):
            publisher.publish("op-max", "tick", {"i": i})
    entries = read(redis_client, settings, "op-max")
    assert [entry["data"]["i"] for entry in entries] == list(range(15, 25))


@pytest.mark.parametrize("bad_id", BAD_IDS, ids=repr)
def test_invalid_operation_ids_are_refused_before_redis_is_touched(bad_id: str, key_prefix: str) -> None:
    """Bad ids raise InvalidOperationId (a ValueError) before any attempt to reach Redis."""
    settings = ProgressSettings(redis_url="redis://127.0.0.1:1/0", key_prefix=key_prefix, socket_timeout_seconds=0.2)
    with ProgressPublisher(settings) as publisher:
        with pytest.raises(InvalidOperationId):
            publisher.publish(bad_id, "tick", {})
        with pytest.raises(ValueError, match="operation id"):
            publisher.progress(bad_id, 1, 2)
        assert publisher.healthy
        assert publisher.buffered == 0


def test_a_valid_id_does_reach_for_redis(key_prefix: str) -> None:
    """The control for the test above: with a valid id the same unreachable publisher tries Redis and buffers."""
    settings = ProgressSettings(redis_url="redis://127.0.0.1:1/0", key_prefix=key_prefix, socket_timeout_seconds=0.2)
    with ProgressPublisher(settings) as publisher:
        assert publisher.progress("fine", 1, 2) is PublishResult.BUFFERED
        assert not publisher.healthy
        assert publisher.buffered == 1


def test_a_malformed_redis_url_is_refused_at_construction() -> None:
    """A URL redis-py cannot use is a ValueError when the publisher is built, not later inside a task."""
    with pytest.raises(ValueError, match="scheme"):
        ProgressPublisher(ProgressSettings(redis_url="http://localhost:6379/0"))


def test_a_rejected_id_leaves_no_throttle_state(publisher: ProgressPublisher) -> None:
    """After an invalid id is refused, the same id is refused again rather than silently held back."""
    for _ in range(2):
        with pytest.raises(InvalidOperationId):
            publisher.progress("bad id", 1, 10)


def test_progress_is_throttled_but_first_forced_and_final_values_are_sent(
    publisher: ProgressPublisher, settings: ProgressSettings, redis_client: redis.Redis
) -> None:
    """First, force=True and current == total are sent at once; others in the interval are held."""
    assert publisher.progress("op-t", 1, 10) is PublishResult.SENT
    assert publisher.progress("op-t", 2, 10) is PublishResult.THROTTLED
    assert publisher.progress("op-t", 3, 10) is PublishResult.THROTTLED
    assert publisher.progress("op-t", 4, 10, force=True) is PublishResult.SENT
    assert publisher.progress("op-t", 10, 10) is PublishResult.SENT
    assert progress_values(read(redis_client, settings, "op-t")) == [1, 4, 10]


def test_held_back_value_is_published_when_the_interval_ends(
    publisher: ProgressPublisher, settings: ProgressSettings, redis_client: redis.Redis
) -> None:
    """With no further calls, the background thread writes the newest held-back value once the interval is over."""
    started = time.monotonic()
    publisher.progress("op-trail", 1, 10)
    publisher.progress("op-trail", 2, 10)
    publisher.progress("op-trail", 3, 10)
    entries = wait_for(redis_client, settings, "op-trail", lambda e: len(e) == 2, timeout=5)
    assert time.monotonic() - started >= settings.throttle_seconds
    assert progress_values(entries) == [1, 3]
    assert entries[1]["data"]["rate"] is not None


def test_an_event_lands_after_the_progress_reported_before_it(
    publisher: ProgressPublisher, settings: ProgressSettings, redis_client: redis.Redis
) -> None:
    """publish() writes the held-back progress first, so no event precedes older progress."""
    publisher.progress("op-order", 1, 10)
    publisher.progress("op-order", 2, 10)
    publisher.publish("op-order", "chunking_document_complete", {"document": "a"})
    assert kinds(read(redis_client, settings, "op-order")) == ["progress:1", "progress:2", "chunking_document_complete"]


def test_final_entry_resets_the_operation(publisher: ProgressPublisher) -> None:
    """After a final entry (the end of a task attempt) the next report counts as a first report again."""
    publisher.progress("op-final", 1, 10)
    publisher.publish("op-final", "status_update", {"status": "retrying"}, final=True)
    assert publisher.progress("op-final", 1, 10) is PublishResult.SENT


def test_flush_writes_every_held_back_value(
    publisher: ProgressPublisher, settings: ProgressSettings, redis_client: redis.Redis
) -> None:
    """flush() writes the held-back value of every operation at once."""
    for operation_id in ("op-a", "op-b"):
        publisher.progress(operation_id, 1, 10)
        publisher.progress(operation_id, 5, 10)
    assert publisher.flush(timeout=2)
    for operation_id in ("op-a", "op-b"):
        assert progress_values(read(redis_client, settings, operation_id)) == [1, 5]


def test_concurrent_threads_keep_each_operations_order(
    publisher: ProgressPublisher, settings: ProgressSettings, redis_client: redis.Redis
) -> None:
    """Eight threads publishing to their own operations at once lose nothing and keep each stream in order."""

    def work(index: int) -> None:
        for i in range(50):
            publisher.publish(f"op-thread-{index}", "tick", {"i": i})
            publisher.progress(f"op-thread-{index}", i, 49)

    threads = [threading.Thread(target=work, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert publisher.flush(timeout=5)
    for index in range(8):
        entries = read(redis_client, settings, f"op-thread-{index}")
        assert [entry["data"]["i"] for entry in entries if entry["type"] == "tick"] == list(range(50))
        values = progress_values(entries)
        assert values == sorted(values)
        assert values[0] == 0
        assert values[-1] == 49


def test_held_back_values_racing_the_background_thread_are_never_stranded(
    redis_url: str, key_prefix: str, redis_client: redis.Redis
) -> None:
    """Four reporters on the lock-free path, switching threads as often as the interpreter allows, beside the thread
    that takes trailing values: each operation's last value arrives without a flush, and no value twice or out of
    order. (The exact interleaving that needs the recheck rule is pinned down in test_throttle.)"""
    settings = ProgressSettings(redis_url=redis_url, key_prefix=key_prefix, throttle_seconds=0.0005)
    last = 19_999
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        with ProgressPublisher(settings) as publisher:

            def work(index: int) -> None:
                for i in range(last + 1):
                    publisher.progress(f"op-race-{index}", i, 10**6)

            threads = [threading.Thread(target=work, args=(index,)) for index in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            for index in range(4):
                entries = wait_for(
                    redis_client, settings, f"op-race-{index}", lambda e: progress_values(e)[-1:] == [last], timeout=5
                )
                values = progress_values(entries)
                assert values == sorted(set(values))
    finally:
        sys.setswitchinterval(switch_interval)


def test_a_refused_write_is_logged_and_the_publisher_carries_on(
    publisher: ProgressPublisher,
    settings: ProgressSettings,
    redis_client: redis.Redis,
    progress_log: list[object],
) -> None:
    """A Redis error that is not an outage (the key holds a string) is logged once and never raised."""
    redis_client.set(stream_key(settings, "op-string"), "not a stream")
    publisher.publish("op-string", "tick", {})
    assert publisher.healthy
    assert len(progress_log) == 1
    assert publisher.publish("op-fine", "tick", {}) is PublishResult.SENT


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_uses_its_own_connection_and_state(
    publisher: ProgressPublisher, settings: ProgressSettings, redis_client: redis.Redis
) -> None:
    """A child forked after the parent published opens its own connection, and does not inherit held-back values."""
    publisher.progress("op-fork", 1, 10)
    publisher.progress("op-fork", 2, 10)  # held back in the parent
    parent_connected = publisher._writer._connection._connected
    assert parent_connected is not None
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        ok = publisher.buffered == 0 and publisher._writer._connection._connected is None
        publisher.flush(timeout=2)  # must not write the parent's held-back value
        ok = ok and publisher.publish("op-fork", "child", {"pid": os.getpid()}) is PublishResult.SENT
        child_connected = publisher._writer._connection._connected
        ok = ok and child_connected is not None and child_connected[0] is not parent_connected[0]
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert publisher.flush(timeout=2)
    assert kinds(read(redis_client, settings, "op-fork")) == ["progress:1", "child", "progress:2"]


def circular() -> dict[str, object]:
    loop: dict[str, object] = {}
    loop["self"] = loop
    return loop


def test_a_refused_value_raises_at_the_call_and_nothing_is_stored(
    publisher: ProgressPublisher, settings: ProgressSettings, redis_client: redis.Redis
) -> None:
    """Tuple keys, cycles and raising __str__ raise TypeError/ValueError naming the field, held back or not; nothing
    is buffered, held back or counted by the throttle."""
    with pytest.raises(TypeError, match="bad"):
        publisher.progress("op-refused", 1, 10, fields={"bad": Unprintable()})
    assert publisher.progress("op-refused", 1, 10) is PublishResult.SENT  # the refused first report counted for nothing
    refused: list[tuple[dict[object, object], type[Exception], str]] = [
        ({"bad": {(1, 2): 3}}, TypeError, r"bad\[\(1, 2\)\]"),
        ({"bad": circular()}, ValueError, r"bad\.self: circular"),
        ({"bad": [Unprintable()]}, TypeError, r"bad\[0\]"),
        ({(1, 2): "a tuple as a field name"}, TypeError, r"\(1, 2\)"),
    ]
    for fields, error, where in refused:
        with pytest.raises(error, match=where):
            publisher.progress("op-refused", 2, 10, fields=fields)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="message"):
        publisher.progress("op-refused", 2, 10, message=Unprintable())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"data\.bad"):
        publisher.publish("op-refused", "tick", {"bad": {(1, 2): 3}})
    assert publisher.buffered == 0
    assert publisher.flush(timeout=2)
    assert kinds(read(redis_client, settings, "op-refused")) == ["progress:1"]


def test_converted_values_are_written_converted_held_back_or_not(
    publisher: ProgressPublisher, settings: ProgressSettings, redis_client: redis.Redis
) -> None:
    """A published and a held-back report carry their extra values converted: ISO datetimes, sorted sets, str()."""
    when = datetime(2026, 1, 1, 12, tzinfo=UTC)
    publisher.progress("op-converted", 1, 10, fields={"when": when, 3: math.nan})  # type: ignore[dict-item]
    fields: dict[str, Any] = {"tags": {"b", "a"}, "raw": b"\xff", "obj": Named()}
    held = publisher.progress("op-converted", 2, 10, message=Named(), fields=fields)  # type: ignore[arg-type]
    assert held is PublishResult.THROTTLED
    fields["tags"].add("c")  # changes after the call do not reach the held-back value
    fields["late"] = {(1, 2): "would be refused"}
    assert publisher.flush(timeout=2)
    first, held_back = (entry["data"] for entry in read(redis_client, settings, "op-converted"))
    assert (first["when"], first["3"]) == ("2026-01-01T12:00:00+00:00", None)
    assert (held_back["tags"], held_back["raw"], held_back["obj"]) == (["a", "b"], "\ufffd", "named!")
    assert held_back["message"] == "named!"
    assert "late" not in held_back


class FailingPass(ProgressPublisher):
    """A publisher whose background thread meets an unexpected error in its next ``failures`` passes (a fault no
    real Redis can cause: a bug in the loop itself)."""

    failures = 1

    def _next_wake(self, sweep_at: float) -> float:
        if self.failures > 0:
            self.failures -= 1
            raise RuntimeError("injected failure")
        return super()._next_wake(sweep_at)


def test_an_unexpected_error_in_the_background_thread_is_logged_and_it_carries_on(
    settings: ProgressSettings, redis_client: redis.Redis, progress_log: list[logging.LogRecord]
) -> None:
    """The failure is logged with its traceback and the thread goes on writing held-back values when they are due."""
    settings = settings.model_copy(update={"retry_interval_seconds": 0.1})
    with FailingPass(settings) as publisher:
        publisher.progress("op-survivor", 1, 10)  # starts the thread, whose first pass fails
        wait_for_log(progress_log, 1)
        publisher.progress("op-survivor", 2, 10)
        publisher.progress("op-survivor", 3, 10)  # held back: only the thread writes it, with no flush
        entries = wait_for(redis_client, settings, "op-survivor", lambda e: progress_values(e) == [1, 3], timeout=5)
        assert len(entries) == 2
    [record] = progress_log
    assert record.exc_info is not None
    assert "injected failure" in str(record.exc_info[1])


def test_a_background_thread_that_keeps_failing_pauses_between_passes(
    settings: ProgressSettings, progress_log: list[logging.LogRecord]
) -> None:
    """Failing every pass, the thread waits retry_interval_seconds before the next one instead of spinning."""
    settings = settings.model_copy(update={"retry_interval_seconds": 0.2})
    with FailingPass(settings) as publisher:
        publisher.failures = 10**6
        publisher.progress("op-spin", 1, 10)
        wait_for_log(progress_log, 3)
        publisher.failures = 0
    times = [record.created for record in progress_log[:3]]
    assert times[1] - times[0] >= 0.19
    assert times[2] - times[1] >= 0.19


def wait_for_log(records: list[logging.LogRecord], count: int, timeout: float = 5.0) -> None:
    """Poll until ``records`` holds at least ``count`` records."""
    deadline = time.monotonic() + timeout
    while len(records) < count:
        assert time.monotonic() < deadline, f"only {len(records)} of {count} log records within {timeout} s"
        time.sleep(0.01)


class FailingTrailing(ProgressPublisher):
    """A publisher that cannot render a held-back value (trailing calls carry their report's timestamp): a fault the
    call-time conversion rules out, injected to prove it could not block the terminal status."""

    def _progress_call(self, operation_id: str, raw: RawProgress, timestamp: str | None = None) -> AppendCall:
        if timestamp is not None:
            raise RuntimeError("injected render failure")
        return super()._progress_call(operation_id, raw, timestamp)


def test_a_held_back_value_that_fails_to_render_never_blocks_the_terminal_status(
    settings: ProgressSettings, redis_client: redis.Redis, progress_log: list[logging.LogRecord]
) -> None:
    """publish(final=True) logs and skips a held-back value it cannot render, and writes the terminal status."""
    with FailingTrailing(settings.model_copy(update={"throttle_seconds": 60})) as publisher:
        publisher.progress("op-final-render", 1, 10)
        publisher.progress("op-final-render", 2, 10)
        assert publisher.publish("op-final-render", "status_update", {"status": "completed"}, final=True) is (
            PublishResult.SENT
        )
    assert kinds(read(redis_client, settings, "op-final-render")) == ["progress:1", "status:completed"]
    [record] = progress_log
    assert record.exc_info is not None
