"""Ownership recorded by the worker half: the `progress_owner` header (or the owner hook) makes each status and
progress of a task update its owner's summary, from the sender's `queued` to a real prefork worker's terminal status."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery, group

from celery_progress_ws import ProgressPublisher, ProgressSettings, PublishResult, enable_queued_events, track
from celery_progress_ws._core.keys import KeySpace, user_digest
from devtools.servers import PrivateRedis

pytestmark = pytest.mark.integration

TERMINAL = ("completed", "failed", "cancelled")


def summaries(client: redis.Redis, settings: ProgressSettings, user: str) -> dict[str, dict[str, Any]]:
    """A user's summaries by operation id."""
    raw = client.hgetall(KeySpace(settings.key_prefix).user_summaries(user_digest(user)))
    return {str(key): json.loads(value) for key, value in raw.items()}  # type: ignore[union-attr]


def wait_for_summaries(
    client: redis.Redis, settings: ProgressSettings, user: str, operation_ids: set[str], timeout: float = 30
) -> dict[str, dict[str, Any]]:
    """Poll until each of ``operation_ids`` has a terminal summary; fail with what is there at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        found = summaries(client, settings, user)
        if all(found.get(op, {}).get("status") in TERMINAL for op in operation_ids):
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"summaries of {user} never all ended: {found}")
        time.sleep(0.05)


@pytest.fixture
def owned_worker(redis_url: str, broker_namespace: str, settings: ProgressSettings, tmp_path: Path) -> Iterator[Celery]:
    """A prefork worker (2 children); the sender's owner hook names user 7 for `cpws.hold_then_wait`."""
    from tests.support.worker_process import worker_process

    def owner(task_name: str, headers: Mapping[str, Any]) -> int | None:
        return 7 if task_name == "cpws.hold_then_wait" else None  # a numeric user id, as Django's

    log = tmp_path / "worker.log"
    with worker_process(redis_url, broker_namespace, settings, log, ["--pool=prefork", "--concurrency=2"]) as app:
        enable_queued_events(app, settings, owner=owner)
        yield app


def test_two_users_each_get_exactly_their_own_operations_from_a_prefork_worker(
    owned_worker: Celery, settings: ProgressSettings, redis_client: redis.Redis
) -> None:
    """alice's header-owned tasks (one fails, one retries), user 7's hook-owned task and bob's tracked group each land
    in their owner's summaries with final status, progress, times and error; an unowned task lands in nobody's."""
    tasks = owned_worker.tasks
    counted = tasks["cpws.count"].apply_async((4,), headers={"progress_owner": "alice"})
    failed = tasks["cpws.fail"].apply_async(("bad row",), headers={"progress_owner": "alice"})
    retried = tasks["cpws.flaky"].apply_async(headers={"progress_owner": "alice"})
    hooked = tasks["cpws.hold_then_wait"].apply_async((0.1,))
    unowned = tasks["cpws.count"].apply_async((2,))
    grouped = track(group(tasks["cpws.count"].s(2), tasks["cpws.count"].s(3)), settings=settings, owner="bob")
    for result in (counted, failed, retried, hooked, unowned):
        result.get(timeout=60, propagate=False)

    alice = wait_for_summaries(redis_client, settings, "alice", {counted.id, failed.id, retried.id})
    bob = wait_for_summaries(redis_client, settings, "bob", {grouped})
    seven = wait_for_summaries(redis_client, settings, "7", {hooked.id})
    assert set(alice) == {counted.id, failed.id, retried.id}
    assert set(bob) == {grouped}
    assert seven[hooked.id]["status"] == "completed"
    done = alice[counted.id]
    assert (done["status"], done["progress_percentage"], done["task_name"]) == ("completed", 100, "cpws.count")
    assert done["queued_at"] <= done["started_at"] <= done["finished_at"]
    assert (alice[failed.id]["error_type"], alice[failed.id]["error_message"]) == ("ValueError", "bad row")
    assert alice[failed.id]["status"] == "failed"
    assert alice[retried.id]["status"] == "completed"
    assert (bob[grouped]["status"], bob[grouped]["task_name"], bob[grouped]["progress_percentage"]) == (
        "completed",
        "group",
        100,
    )
    keys = KeySpace(settings.key_prefix)
    assert redis_client.get(keys.operation_owner(counted.id)) == user_digest("alice")
    assert redis_client.get(keys.operation_owner(grouped)) == user_digest("bob")
    assert redis_client.get(keys.operation_owner(unowned.id)) is None
    index = redis_client.zrevrange(keys.user_index(user_digest("alice")), 0, -1)
    assert index[-1] == counted.id  # oldest last: the index is ordered by queued time


@pytest.fixture
def outage_settings(private_redis: PrivateRedis) -> ProgressSettings:
    """Settings on a private server with short timeouts."""
    return ProgressSettings(
        redis_url=private_redis.url,
        key_prefix=f"cpws-own-{uuid.uuid4().hex[:6]}:",
        retry_interval_seconds=0.2,
        socket_timeout_seconds=0.5,
    )


def test_summaries_recorded_during_an_outage_are_buffered_and_land_in_order(
    private_redis: PrivateRedis, outage_settings: ProgressSettings
) -> None:
    """With Redis down, owned statuses and progress are buffered (never raised); once it is back, the summary ends
    `completed` with the last progress and the owner key is set."""
    with (
        ProgressPublisher(outage_settings) as publisher,
        redis.Redis.from_url(private_redis.url, decode_responses=True) as client,
    ):
        data = {"status": "queued", "task_name": "t", "message": "Task queued"}
        assert publisher.publish("op", "status_update", data, owner="alice") is PublishResult.SENT
        private_redis.stop()
        publisher.own("op", "alice")
        assert publisher.publish("op", "status_update", {"status": "started"}) is PublishResult.BUFFERED
        publisher.progress("op", 3, 4)
        done = {"status": "completed", "message": "Task completed"}
        assert publisher.publish("op", "status_update", done, final=True) is PublishResult.BUFFERED
        private_redis.start()
        assert publisher.flush(timeout=10)
        found = summaries(client, outage_settings, "alice")
        owner = client.get(KeySpace(outage_settings.key_prefix).operation_owner("op"))
    assert (found["op"]["status"], found["op"]["progress_percentage"]) == ("completed", 75)
    assert owner == user_digest("alice")


def test_a_terminated_owned_task_is_marked_cancelled_by_the_worker_s_main_process(
    owned_worker: Celery, settings: ProgressSettings, redis_client: redis.Redis
) -> None:
    """A running owned task revoked with terminate: the worker's main process reads the owner from the request and
    its `cancelled` reaches the owner's summary."""
    release = f"{settings.key_prefix}never-{uuid.uuid4().hex[:6]}"
    task = owned_worker.tasks["cpws.wait_for_key"].apply_async(
        (settings.redis_url, release, 30), headers={"progress_owner": "carol"}
    )
    deadline = time.monotonic() + 30
    while summaries(redis_client, settings, "carol").get(task.id, {}).get("message") != "waiting":
        assert time.monotonic() < deadline, "the task never reported"
        time.sleep(0.05)
    owned_worker.control.revoke(task.id, terminate=True, signal="SIGTERM")
    found = wait_for_summaries(redis_client, settings, "carol", {task.id})
    assert found[task.id]["status"] == "cancelled"
    assert found[task.id]["message"].startswith("Task terminated")


def test_owned_operations_on_every_shard_of_a_cluster_land_in_one_user_s_slot(redis_cluster: Any) -> None:
    """On redis+cluster://, owned statuses of operations spread over the shards and a tracked group's registration
    record each owner key in its operation's slot and every summary in the user's one slot."""
    from redis.cluster import RedisCluster

    settings = ProgressSettings(
        redis_url=redis_cluster.url, key_prefix=f"cpws-own:{uuid.uuid4().hex[:8]}:", socket_timeout_seconds=2.0
    )
    keys = KeySpace(settings.key_prefix)
    operations = [str(uuid.uuid4()) for _ in range(12)]
    with ProgressPublisher(settings) as publisher:
        for operation in operations:
            data = {"status": "queued", "task_name": "t"}
            assert publisher.publish(operation, "status_update", data, owner="ivy") is PublishResult.SENT
            done = {"status": "completed", "task_name": "t"}
            assert publisher.publish(operation, "status_update", done, final=True, owner="ivy") is PublishResult.SENT
    app = Celery("cluster-own", broker="memory://", set_as_current=False)

    @app.task(name="cpws.noop", shared=False)
    def noop() -> None:
        """Never run: the group is only sent to the in-memory broker."""

    grouped = track(group(noop.s(), noop.s()), settings=settings, owner="ivy")
    client = RedisCluster(startup_nodes=redis_cluster.startup_nodes, decode_responses=True, socket_timeout=5)
    try:
        assert len({redis_cluster.primary_for_key(keys.operation_owner(op)) for op in operations}) > 1
        assert all(client.get(keys.operation_owner(op)) == user_digest("ivy") for op in [*operations, grouped])
        found = {op: json.loads(raw) for op, raw in client.hgetall(keys.user_summaries(user_digest("ivy"))).items()}
    finally:
        client.close()
        app.close()
    assert {op: summary["status"] for op, summary in found.items()} == {
        **dict.fromkeys(operations, "completed"),
        grouped: "queued",
    }


def test_summary_progress_follows_the_progress_throttle_and_lands_before_the_terminal_status(
    settings: ProgressSettings, redis_client: redis.Redis
) -> None:
    """200 quick reports of an owned task: the feed gets one progress update per written progress entry (a handful),
    and the summary reaches the last value before `completed`."""
    keys = KeySpace(settings.key_prefix)
    with ProgressPublisher(settings) as publisher:
        publisher.own("op", "judy")
        publisher.publish("op", "status_update", {"status": "started"})
        for current in range(1, 200):
            publisher.progress("op", current, 200)
        publisher.publish("op", "status_update", {"status": "completed"}, final=True)
    written = [
        json.loads(fields["message"])
        for _, fields in redis_client.xrange(keys.stream("op"))
        if json.loads(fields["message"])["type"] == "chunking_progress"
    ]
    feed = [
        json.loads(fields["message"])["data"] for _, fields in redis_client.xrange(keys.user_feed(user_digest("judy")))
    ]
    progress_updates = [data["progress_percentage"] for data in feed if data["status"] == "started"][1:]
    assert len(progress_updates) == len(written) < 10
    assert progress_updates[-1] == written[-1]["data"]["progress_percentage"] == 99.5
    assert (feed[-1]["status"], feed[-1]["progress_percentage"]) == ("completed", 99.5)
