"""A user's operation history in a real Redis: the summary merge never regresses, the index is capped and expires,
the feed carries each change, and pages follow the index newest first."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import redis

from celery_progress_ws import ProgressSettings
from celery_progress_ws._core.append import ScriptAppend
from celery_progress_ws._core.errors import InvalidCursor, InvalidStatusFilter
from celery_progress_ws._core.history import SUMMARY_FIELDS, UserHistory, summary_patch
from celery_progress_ws._core.history_pages import PageBuilder, decode_cursor, index_rows, parse_statuses
from celery_progress_ws._core.keys import KeySpace, user_digest
from celery_progress_ws._core.schemas import OperationSummary, TaskStatus

pytestmark = pytest.mark.integration

T0 = "2026-01-01T00:00:00+00:00"
T1 = "2026-01-01T00:00:01+00:00"
T2 = "2026-01-01T00:00:02+00:00"


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    """A client that decodes responses."""
    with redis.Redis.from_url(redis_url, decode_responses=True) as instance:
        yield instance


def history(key_prefix: str, redis_url: str, **options: int) -> UserHistory:
    return UserHistory(ProgressSettings(redis_url=redis_url, key_prefix=key_prefix, **options))  # type: ignore[arg-type]


def summary(client: redis.Redis, key_prefix: str, user: str, operation_id: str) -> dict[str, object] | None:
    raw = client.hget(KeySpace(key_prefix).user_summaries(user_digest(user)), operation_id)
    return None if raw is None else json.loads(raw)  # type: ignore[arg-type]


def test_the_merge_never_regresses_under_out_of_order_writes(
    client: redis.Redis, key_prefix: str, redis_url: str
) -> None:
    """completed written before started, queued and a progress keeps `completed`; the late writes fill only times."""
    run = ScriptAppend(client)
    calls = history(key_prefix, redis_url)
    me = user_digest("alice")
    done = {"status": "completed", "task_name": "ingest", "message": "Task completed"}
    assert run(calls.record(me, "op", done, T2, 3000)) == 1
    assert run(calls.record(me, "op", {"status": "started", "message": "Task started"}, T1, 2000)) == 1
    assert run(calls.record(me, "op", {"status": "queued", "message": "Task queued"}, T0, 1000)) == 1
    assert run(calls.record(me, "op", {"progress_percentage": 40.0, "message": "late"}, T1, 2000)) == 0
    found = summary(client, key_prefix, "alice", "op")
    assert found is not None
    assert found["status"] == "completed"
    assert found["message"] == "Task completed"
    assert (found["queued_at"], found["started_at"], found["finished_at"]) == (T0, T1, T2)
    assert found["progress_percentage"] is None
    assert set(found) == set(SUMMARY_FIELDS)
    OperationSummary.model_validate(found)
    assert client.zscore(KeySpace(key_prefix).user_index(me), "op") == 1000  # the earliest time seen


def test_queued_never_replaces_a_later_status_and_failed_keeps_its_error(
    client: redis.Redis, key_prefix: str, redis_url: str
) -> None:
    """started then a late queued stays started; failed records error type/message and is final."""
    run = ScriptAppend(client)
    calls = history(key_prefix, redis_url)
    me = user_digest("bob")
    run(calls.record(me, "op", {"status": "started"}, T1))
    run(calls.record(me, "op", {"status": "queued"}, T0))
    assert summary(client, key_prefix, "bob", "op")["status"] == "started"  # type: ignore[index]
    run(calls.record(me, "op", {"progress_percentage": 50.0}, T1))
    failed = {"status": "failed", "error_type": "ValueError", "error_message": "bad row", "message": "Task failed"}
    run(calls.record(me, "op", failed, T2))
    run(calls.record(me, "op", {"status": "cancelled"}, T2))
    found = summary(client, key_prefix, "bob", "op")
    assert found is not None
    assert (found["status"], found["error_type"], found["error_message"]) == ("failed", "ValueError", "bad row")
    assert found["progress_percentage"] == 50


def test_each_change_is_appended_to_the_feed_and_announced(
    client: redis.Redis, key_prefix: str, redis_url: str
) -> None:
    """A change becomes an operation_update entry whose data is the summary; an unchanged write adds none."""
    run = ScriptAppend(client)
    calls = history(key_prefix, redis_url)
    me = user_digest("carol")
    keys = KeySpace(key_prefix)
    with client.pubsub() as pubsub:
        pubsub.subscribe(keys.user_feed_live(me))
        assert pubsub.get_message(timeout=2)["type"] == "subscribe"  # type: ignore[index]
        run(calls.record(me, "op", {"status": "started", "task_name": "t"}, T1))
        run(calls.record(me, "op", {"status": "started", "task_name": "t"}, T1))
        announced = pubsub.get_message(timeout=2)
    entries = client.xrange(keys.user_feed(me))
    assert len(entries) == 1
    entry = json.loads(entries[0][1]["message"])
    assert entry["type"] == "operation_update"
    assert entry["data"]["status"] == "started"
    assert announced is not None
    assert announced["data"].startswith(entries[0][0] + " ")
    assert 0 < client.ttl(keys.user_feed(me)) <= 7 * 86400


def test_the_index_is_capped_oldest_out_with_their_summaries(
    client: redis.Redis, key_prefix: str, redis_url: str
) -> None:
    """Beyond history_max_per_user the oldest ids leave the index and the hash in the same script."""
    run = ScriptAppend(client)
    calls = history(key_prefix, redis_url, history_max_per_user=3, history_ttl_seconds=30)
    me = user_digest("dave")
    for number in range(5):
        run(calls.record(me, f"op{number}", {"status": "queued"}, T0, 1000 + number))
    keys = KeySpace(key_prefix)
    assert client.zrange(keys.user_index(me), 0, -1) == ["op2", "op3", "op4"]
    assert sorted(client.hkeys(keys.user_summaries(me))) == ["op2", "op3", "op4"]
    assert run(calls.record(me, "op0", {"status": "completed"}, T2, 1000)) == 0  # older than all kept: not recorded
    assert client.hlen(keys.user_summaries(me)) == 3
    assert 0 < client.ttl(keys.user_index(me)) <= 30
    assert 0 < client.ttl(keys.user_summaries(me)) <= 30


def test_an_owned_append_records_the_owner_in_the_operation_s_slot(
    client: redis.Redis, key_prefix: str, redis_url: str
) -> None:
    """The status entry and the owner key are written by one call; the owner key holds the digest, with a TTL."""
    from celery_progress_ws._core.append import OperationAppender

    run = ScriptAppend(client)
    calls = history(key_prefix, redis_url, history_ttl_seconds=60)
    keys = KeySpace(key_prefix)
    plain = OperationAppender(keys, "op", maxlen=10)('{"timestamp":"t","type":"x","data":{}}', ttl=30)
    assert run(calls.owned(plain, "op", user_digest("erin")))
    assert client.get(keys.operation_owner("op")) == user_digest("erin")
    assert 0 < client.ttl(keys.operation_owner("op")) <= 60
    assert client.xlen(keys.stream("op")) == 1


def test_summary_patches_take_status_and_progress_fields_only() -> None:
    """A status entry patches status, name, message and error; a progress entry its percentage and message."""
    status = summary_patch("status_update", {"status": "failed", "task_name": "t", "error_type": "E", "retries": 1})
    assert status == {"status": "failed", "task_name": "t", "error_type": "E"}
    assert summary_patch("chunking_progress", {"progress_percentage": 5.0, "documents_processed": 1}) == {
        "progress_percentage": 5.0
    }
    assert summary_patch("chunking_document_complete", {}) is None


def test_pages_follow_the_index_newest_first_with_cursor_and_status_filter() -> None:
    """Three pages of two; a status filter skips others; next_cursor is null on the last page; bad cursors raise."""
    rows = index_rows([(f"op{n}", 1000 + n) for n in (6, 5, 4, 3, 2, 1)])
    stored = {
        f"op{n}": json.dumps({"operation_id": f"op{n}", "status": "failed" if n % 2 else "completed"})
        for n in range(1, 7)
    }

    def run(builder: PageBuilder) -> dict[str, object]:
        while wanted := builder.wanted():
            builder.add([stored.get(name) for name in wanted])
        return builder.result()

    first = run(PageBuilder(rows, limit=2))
    assert [op["operation_id"] for op in first["operations"]] == ["op6", "op5"]  # type: ignore[attr-defined]
    second = run(PageBuilder(rows, cursor=first["next_cursor"], limit=2))  # type: ignore[arg-type]
    third = run(PageBuilder(rows, cursor=second["next_cursor"], limit=2))  # type: ignore[arg-type]
    assert [op["operation_id"] for op in third["operations"]] == ["op2", "op1"]  # type: ignore[attr-defined]
    assert third["next_cursor"] is None
    failed = run(PageBuilder(rows, statuses=parse_statuses(["failed"]), limit=3))
    assert [op["operation_id"] for op in failed["operations"]] == ["op5", "op3", "op1"]  # type: ignore[attr-defined]
    assert failed["next_cursor"] is None
    assert parse_statuses(["queued,started"]) == {TaskStatus.QUEUED, TaskStatus.STARTED}
    with pytest.raises(InvalidCursor):
        decode_cursor("not-a-cursor")
    with pytest.raises(InvalidStatusFilter, match="unknown status"):
        parse_statuses(["running"])


def test_a_user_s_history_expires_history_ttl_after_its_last_update(
    client: redis.Redis, key_prefix: str, redis_url: str
) -> None:
    """history_ttl_seconds=1: summaries, index and feed are gone about a second after the last write."""
    import time

    run = ScriptAppend(client)
    me = user_digest("gina")
    run(history(key_prefix, redis_url, history_ttl_seconds=1).record(me, "op", {"status": "queued"}, T0))
    keys = KeySpace(key_prefix)
    names = [keys.user_summaries(me), keys.user_index(me), keys.user_feed(me)]
    assert client.exists(*names) == 3
    deadline = time.monotonic() + 5
    while client.exists(*names):
        assert time.monotonic() < deadline, "the history never expired"
        time.sleep(0.05)
