"""Aggregate operations: track() of groups, chords and chains against real Redis and real workers."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
from celery import Celery, chain, chord, group

from celery_progress_ws import ProgressPublisher, ProgressSettings, track
from celery_progress_ws._aggregate.track import _register, aggregate_children_async, cancel_aggregate_async
from celery_progress_ws._core.keys import KeySpace
from celery_progress_ws._worker.aggregate_updater import AggregateUpdates
from devtools.servers import PrivateRedis
from tests.support.streams import Entries, read, wait_for

pytestmark = pytest.mark.integration


def aggregate_ended(entries: Entries) -> bool:
    """Whether the stream holds the aggregate's terminal status."""
    return any(entry["type"] == "status_update" and entry["data"].get("aggregate") for entry in entries)


def aggregate_ended_child(entries: Entries) -> bool:
    """Whether a child's stream holds its `failed` status."""
    return any(entry["data"].get("status") == "failed" for entry in entries)


def aggregates(entries: Entries) -> list[dict[str, Any]]:
    """The data of each aggregate ``chunking_progress`` entry, in order."""
    return [
        entry["data"] for entry in entries if entry["type"] == "chunking_progress" and entry["data"].get("aggregate")
    ]


def children_of(client: redis.Redis, settings: ProgressSettings, operation_id: str) -> list[str]:
    """The child ids an aggregate's hash lists."""
    return list(json.loads(client.hget(KeySpace(settings.key_prefix).aggregate(operation_id), "children")))


def terminal(entries: Entries) -> dict[str, Any]:
    """The data of the single aggregate terminal status."""
    ends = [entry["data"] for entry in entries if entry["type"] == "status_update" and entry["data"].get("aggregate")]
    assert len(ends) == 1, ends
    return ends[0]


def test_group_of_50_on_prefork_worker_reaches_exactly_100_percent(
    prefork_worker: tuple[Celery, Path],
    settings: ProgressSettings,
    redis_client: redis.Redis,
) -> None:
    """A group of 50 children on a prefork worker (concurrency 2) ends `completed` at exactly 100 %."""
    app, log = prefork_worker
    operation_id = track(group(app.tasks["cpws.count"].si(3) for _ in range(50)), settings=settings)
    entries = wait_for(redis_client, settings, operation_id, aggregate_ended, timeout=90)
    end = terminal(entries)
    assert end["status"] == "completed", log.read_text()[-3000:]
    assert end["progress_percentage"] == 100
    assert end["counts"] == {"queued": 0, "started": 0, "completed": 50, "failed": 0, "cancelled": 0}
    assert aggregates(entries)[-1]["progress_percentage"] == 100
    assert entries[0]["type"] == "aggregate_started"
    assert len(entries[0]["data"]["children"]) == 50
    assert entries[-1]["type"] == "status_update"


def test_chord_whose_header_child_fails_ends_failed_naming_it(
    progress_worker: Celery, module_settings: ProgressSettings, redis_client: redis.Redis
) -> None:
    """A chord whose header child fails ends `failed` at once, naming the failed child and its error."""
    app = progress_worker
    failing = app.tasks["cpws.fail"].si("header broke")
    canvas = chord([app.tasks["cpws.count"].si(2), failing], app.tasks["cpws.count"].si(1))
    operation_id = track(canvas, settings=module_settings)
    entries = wait_for(redis_client, module_settings, operation_id, aggregate_ended, timeout=30)
    end = terminal(entries)
    assert end["status"] == "failed"
    assert end["failed_child"] == entries[0]["data"]["children"][1]
    assert wait_for(redis_client, module_settings, end["failed_child"], aggregate_ended_child)[1]["data"]["status"]
    assert end["error_type"] == "ValueError"
    assert end["error_message"] == "header broke"
    assert entries[0]["data"]["kind"] == "chord"


def test_chain_reports_its_steps_in_order(
    progress_worker: Celery, module_settings: ProgressSettings, redis_client: redis.Redis
) -> None:
    """A chain's steps run in order; the aggregate's progression is monotonic and ends at 100 %."""
    burst = progress_worker.tasks["cpws.burst"]
    steps = [burst.si(200, 0.6).set(task_id=f"step-{uuid.uuid4().hex}") for _ in range(3)]
    operation_id = track(chain(*steps), settings=module_settings)
    entries = wait_for(redis_client, module_settings, operation_id, aggregate_ended, timeout=30)
    children = entries[0]["data"]["children"]
    assert children == [step.options["task_id"] for step in steps]
    assert terminal(entries)["status"] == "completed"
    percentages = [data["progress_percentage"] for data in aggregates(entries)]
    assert percentages == sorted(percentages)
    assert percentages[-1] == 100
    assert len(set(percentages)) >= 4, percentages  # intermediate values within steps, not only step boundaries
    started_at = [read(redis_client, module_settings, child)[0]["timestamp"] for child in children]
    assert started_at == sorted(started_at)
    assert children_of(redis_client, module_settings, operation_id) == children


@pytest.fixture
def publisher(settings: ProgressSettings) -> Iterator[ProgressPublisher]:
    """A publisher of the test's settings, closed after the test."""
    with ProgressPublisher(settings) as publisher:
        yield publisher


@pytest.fixture
def updates(publisher: ProgressPublisher) -> AggregateUpdates:
    """The aggregate side of ``publisher``: what the worker hooks call."""
    return publisher._aggregates


def registered(settings: ProgressSettings, count: int, kind: str = "group", required: bool = False) -> list[str]:
    """Register an aggregate ``op`` with ``count`` fake children directly; return their ids."""
    children = [f"child-{index}" for index in range(count)]
    _register(settings, KeySpace(settings.key_prefix), "op", kind, children, [required] * count, [1.0] * count)
    return children


def test_concurrent_updates_from_many_threads_yield_exact_counters(
    settings: ProgressSettings, redis_client: redis.Redis
) -> None:
    """Eight threads updating 400 children at once leave exact counters and one `completed`."""
    children = registered(settings, 400)
    publishers = [ProgressPublisher(settings) for _ in range(8)]

    def drive(index: int) -> None:
        updates = publishers[index]._aggregates
        for child in children[index::8]:
            updates.status("op", child, "started")
            updates.progress("op", child, 0.5)
            updates.status("op", child, "failed" if child == "child-7" else "completed")

    threads = [threading.Thread(target=drive, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for publisher in publishers:
        assert publisher.close()
    stored = redis_client.hgetall(KeySpace(settings.key_prefix).aggregate("op"))
    assert (stored["queued"], stored["started"], stored["completed"], stored["failed"]) == ("0", "0", "399", "1")
    assert float(stored["sum"]) == pytest.approx(399.5)
    end = terminal(read(redis_client, settings, "op"))
    assert end["status"] == "failed"
    assert end["failed_children"] == ["child-7"]
    assert end["counts"]["completed"] == 399


def test_throttled_aggregate_keeps_few_entries_and_the_true_last_value(
    settings: ProgressSettings, redis_client: redis.Redis, updates: AggregateUpdates
) -> None:
    """2,000 child progress updates make a handful of aggregate entries; the trailing one holds the true state."""
    children = registered(settings, 20)
    for step in range(1, 101):
        for child in children:
            updates.progress("op", child, step / 200)

    def at_half(entries: Entries) -> bool:  # the publisher's thread writes held-back values, then the dirty aggregate
        written = aggregates(entries)
        return bool(written) and written[-1]["progress_percentage"] == 50

    written = aggregates(wait_for(redis_client, settings, "op", at_half))
    assert 1 <= len(written) <= 2000 / 20
    assert written[-1]["counts"]["started"] == 20
    for child in children:
        updates.status("op", child, "completed")
    entries = read(redis_client, settings, "op")
    assert aggregates(entries)[-1]["progress_percentage"] == 100
    assert terminal(entries)["status"] == "completed"


async def test_cancel_aggregate_writes_cancelled_once(
    settings: ProgressSettings, redis_client: redis.Redis, redis_url: str, updates: AggregateUpdates
) -> None:
    """cancel_aggregate_async ends the operation `cancelled`; later child updates and cancels write nothing."""
    children = registered(settings, 3, kind="chain", required=True)
    updates.status("op", children[0], "completed")
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        assert await cancel_aggregate_async("op", settings, client)
        assert not await cancel_aggregate_async("op", settings, client)
    finally:
        await client.aclose()
    updates.status("op", children[1], "completed")
    entries = read(redis_client, settings, "op")
    assert terminal(entries)["status"] == "cancelled"
    assert entries[-1]["type"] == "status_update"
    assert redis_client.ttl(KeySpace(settings.key_prefix).stream("op")) <= settings.completed_ttl_seconds


def test_revoked_chain_step_cancels_the_aggregate(
    progress_worker: Celery, module_settings: ProgressSettings, redis_client: redis.Redis, redis_url: str
) -> None:
    """A chain step revoked before it runs ends the aggregate `cancelled`, found through the child->parent key."""
    release = f"{module_settings.key_prefix}release-{uuid.uuid4().hex}"
    second = progress_worker.tasks["cpws.count"].si(2).set(task_id=f"second-{uuid.uuid4().hex}")
    canvas = chain(progress_worker.tasks["cpws.wait_for_key"].si(redis_url, release, 20), second)
    operation_id = track(canvas, settings=module_settings)
    progress_worker.control.revoke(second.options["task_id"])
    time.sleep(0.5)  # the worker applies the revoke before the first step ends
    redis_client.set(release, "1", ex=60)
    entries = wait_for(redis_client, module_settings, operation_id, aggregate_ended, timeout=30)
    end = terminal(entries)
    assert end["status"] == "cancelled"
    assert end["cancelled_child"] == second.options["task_id"]


@pytest.fixture
def memory_app() -> Celery:
    """An app whose broker is in memory: track() registers in Redis and sends, nothing runs."""
    app = Celery("cpws_memory", broker="memory://", set_as_current=False)
    app.task(name="cpws.noop", shared=False)(noop)
    return app


def noop(*_: object) -> None:
    """A task body that is never run."""


def test_weights_and_nested_canvases_register_required_children(
    memory_app: Celery, settings: ProgressSettings, redis_client: redis.Redis, updates: AggregateUpdates
) -> None:
    """Weights set each child's share; a failure inside a group's chain ends the operation at once."""
    noop_task = memory_app.tasks["cpws.noop"]
    canvas = group(chain(noop_task.si(1), noop_task.si(2)), noop_task.si(3))
    operation_id = track(canvas, weights=[2, 1, 1], settings=settings)
    first, second, third = read(redis_client, settings, operation_id)[0]["data"]["children"]
    updates.status(operation_id, third, "completed")
    time.sleep(settings.throttle_seconds)
    updates.progress(operation_id, first, 0.5)
    assert aggregates(read(redis_client, settings, operation_id))[-1]["progress_percentage"] == 50
    updates.status(operation_id, second, "failed", "KeyError", "gone")
    end = terminal(read(redis_client, settings, operation_id))
    assert (end["status"], end["failed_child"], end["error_type"]) == ("failed", second, "KeyError")
    with pytest.raises(ValueError, match="weights"):
        track(group(noop_task.si(1)), weights=[1, 2], settings=settings)
    with pytest.raises(TypeError):
        track(noop_task.si(1), settings=settings)  # type: ignore[arg-type]


def test_many_children_spill_into_aggregate_children_entries(
    memory_app: Celery, settings: ProgressSettings, redis_client: redis.Redis
) -> None:
    """Child ids that do not fit in aggregate_started follow in aggregate_children entries, in order."""
    small = settings.model_copy(update={"max_entry_bytes": 4096})
    canvas = group(memory_app.tasks["cpws.noop"].si(n) for n in range(120))
    operation_id = track(canvas, settings=small)
    entries = read(redis_client, small, operation_id)
    assert [entry["type"] for entry in entries[:2]] == ["aggregate_started", "aggregate_children"]
    ids = [child for entry in entries for child in entry["data"]["children"]]
    assert ids == children_of(redis_client, small, operation_id)
    assert len(ids) == 120
    assert entries[-1]["data"]["complete"]


def test_retried_child_keeps_its_parent_and_the_group_completes(
    progress_worker: Celery, module_settings: ProgressSettings, redis_client: redis.Redis
) -> None:
    """A child that retries once keeps its aggregate header, so the group still ends `completed`."""
    canvas = group(progress_worker.tasks["cpws.flaky"].si(), progress_worker.tasks["cpws.count"].si(2))
    operation_id = track(canvas, settings=module_settings)
    end = terminal(wait_for(redis_client, module_settings, operation_id, aggregate_ended, timeout=30))
    assert end["status"] == "completed"
    assert end["counts"]["completed"] == 2


async def test_async_helpers_cancel_and_list_children(settings: ProgressSettings, redis_url: str) -> None:
    """The asyncio variants list the children and cancel the aggregate once."""
    children = registered(settings, 2)
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        assert await aggregate_children_async("op", settings, client) == children
        assert await aggregate_children_async("other", settings, client) is None
        assert await cancel_aggregate_async("op", settings, client)
        assert not await cancel_aggregate_async("op", settings, client)
    finally:
        await client.aclose()


def test_track_registers_through_the_given_client(memory_app: Celery, private_redis: PrivateRedis) -> None:
    """track(..., client=) registers on that client: Redis accepts no new connection for it."""
    settings = ProgressSettings(redis_url=private_redis.url, key_prefix="cpws-given:")
    client = redis.Redis.from_url(private_redis.url, decode_responses=True)
    try:
        client.ping()
        accepted = client.info("stats")["total_connections_received"]
        operation_id = track(
            group(memory_app.tasks["cpws.noop"].si(n) for n in range(3)), settings=settings, client=client
        )
        assert client.info("stats")["total_connections_received"] == accepted
        assert len(children_of(client, settings, operation_id)) == 3
    finally:
        client.close()


def library_threads() -> list[threading.Thread]:
    """The library's live threads in this process."""
    return [thread for thread in threading.enumerate() if thread.name.startswith("celery-progress-ws")]


def test_held_back_child_progress_is_written_by_the_publishers_thread_which_close_stops(
    settings: ProgressSettings, redis_client: redis.Redis
) -> None:
    """A held-back child value reaches the aggregate through the publisher's one thread; close() leaves none running."""
    children = registered(settings, 2)
    before = library_threads()
    publisher = ProgressPublisher(settings)
    publisher._aggregates.progress("op", children[0], 0.1)
    publisher._aggregates.progress("op", children[0], 0.6)  # held back: the interval has not ended

    def at_30(entries: Entries) -> bool:
        return any(data["progress_percentage"] == 30 for data in aggregates(entries))

    wait_for(redis_client, settings, "op", at_30)
    assert [thread.name for thread in library_threads() if thread not in before] == ["celery-progress-ws-publisher"]
    assert publisher.close()
    assert [thread for thread in library_threads() if thread not in before] == []


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_starts_without_the_parents_aggregate_work(
    settings: ProgressSettings, redis_client: redis.Redis, publisher: ProgressPublisher
) -> None:
    """A child forked while the parent holds a child value back inherits nothing to write; the parent writes it."""
    children = registered(settings, 2)
    publisher._aggregates.progress("op", children[0], 0.2)
    publisher._aggregates.progress("op", children[0], 0.8)  # held back in the parent
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        with publisher._lock:
            ok = publisher._aggregates.next_due() is None
        os._exit(0 if ok and publisher.flush(timeout=2) and publisher._aggregates.calls == 0 else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert publisher.flush(timeout=2)
    stored = redis_client.hget(KeySpace(settings.key_prefix).aggregate("op"), "c:" + children[0])
    assert stored is not None
    assert stored.startswith("s|0.8")
