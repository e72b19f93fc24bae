"""Aggregate operations at scale: round trips and aggregate entries per child update, and the aggregate's lag.

A fast simulated publisher drives groups of 100 / 1,000 / 10,000 children through the same hooks the Celery signals
call (``child_status`` for started and completed, ``child_progress`` for ``report_progress``), inside a task scope as
``task_prerun`` pushes it, from 4 threads standing in for 4 worker processes. Each child reports ``started``, 4 progress
values and ``completed``. Lag: from the moment the last ``completed`` hook call begins (any thread) to the id (Redis
clock, 1 ms resolution) of the aggregate's terminal entry: the terminal is written by that very call, so the lag is one
round trip.

    .venv/bin/python benchmarks/bench_aggregate.py            # print the table (bounded: about a minute at most)

Redis: ``CELERY_PROGRESS_WS_REDIS_URL`` or redis://127.0.0.1:6379/0; every key is under a unique prefix, deleted after.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from typing import Any

import redis
from celery import Celery
from celery._state import _task_stack

from celery_progress_ws import ProgressPublisher, ProgressSettings
from celery_progress_ws._aggregate.track import AGGREGATE_HEADER, _register
from celery_progress_ws._core.codec import decode_fields
from celery_progress_ws._core.keys import KeySpace
from celery_progress_ws._core.schemas import TaskStatus
from celery_progress_ws._worker import context
from celery_progress_ws._worker.aggregate_updater import child_progress, child_status

SIZES = (100, 1_000, 10_000)
THREADS = 4
REPORTS = 4
TIME_BUDGET_SECONDS = 60.0


def run(size: int, settings: ProgressSettings, client: redis.Redis) -> dict[str, Any]:
    """Drive one group of ``size`` children; return the measurements."""
    keys = KeySpace(settings.key_prefix)
    operation_id = f"bench-{size}"
    children = [f"{operation_id}-{index}" for index in range(size)]
    started = time.perf_counter()
    _register(settings, keys, operation_id, "group", children, [False] * size, [1.0] * size)
    register_ms = (time.perf_counter() - started) * 1000
    publisher = ProgressPublisher(settings)
    app = Celery("bench", set_as_current=False)

    @app.task(name="bench.child", shared=False)
    def child_task() -> None:
        """Never run: only its request stack is used, as ``task_prerun`` would see it."""

    task = app.tasks["bench.child"]
    last_call: list[float] = [0.0]
    deadline = time.monotonic() + TIME_BUDGET_SECONDS

    def drive(part: list[str]) -> None:
        for child in part:
            if time.monotonic() > deadline:
                return
            task.push_request(id=child, **{AGGREGATE_HEADER: operation_id})
            _task_stack.push(task)
            scope = context.TaskScope(child, publisher)
            context.push(scope)
            try:
                child_status(publisher, child, TaskStatus.STARTED, {})
                for step in range(1, REPORTS + 1):
                    child_progress(publisher, operation_id, child, step, REPORTS)
                last_call[0] = max(last_call[0], time.time())  # when the latest completion began, over threads
                child_status(publisher, child, TaskStatus.COMPLETED, {})
            finally:
                context.pop(child)
                _task_stack.pop()
                task.pop_request()

    threads = [threading.Thread(target=drive, args=(children[index::THREADS],)) for index in range(THREADS)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    updates = size * (REPORTS + 2)
    entries = [(entry_id, decode_fields(fields)) for entry_id, fields in client.xrange(keys.stream(operation_id))]
    aggregate_entries = sum(1 for _, entry in entries if entry["type"] == "chunking_progress")
    ends = [(entry_id, entry) for entry_id, entry in entries if entry["type"] == "status_update"]
    lag_ms = None
    if ends:
        lag_ms = int(ends[-1][0].split("-")[0]) - last_call[0] * 1000
    round_trips = publisher._aggregates.calls
    publisher.close()
    return {
        "size": size,
        "register_ms": register_ms,
        "updates": updates,
        "round_trips": round_trips,
        "entries": aggregate_entries,
        "status": ends[-1][1]["data"]["status"] if ends else "none (time budget)",
        "lag_ms": lag_ms,
        "wall": wall,
    }


def main() -> None:
    """Print the table."""
    url = os.environ.get("CELERY_PROGRESS_WS_REDIS_URL", "redis://127.0.0.1:6379/0")
    prefix = f"cpws-bench:{uuid.uuid4().hex[:12]}:"
    settings = ProgressSettings(redis_url=url, key_prefix=prefix, throttle_seconds=0.5, stream_maxlen=100_000)
    client = redis.Redis.from_url(url, decode_responses=True)
    rows = []
    try:
        for size in SIZES:
            rows.append(run(size, settings, client))
    finally:
        stale = list(client.scan_iter(match=prefix + "*", count=1000))
        for start in range(0, len(stale), 1000):
            client.delete(*stale[start : start + 1000])
        client.close()
    print(f"{THREADS} driver threads, {REPORTS} progress reports per child, throttle {settings.throttle_seconds} s\n")
    print("| children | register (1 round trip) | child updates | round trips / update | aggregate entries "
          "| entries / update | terminal | lag last child -> aggregate terminal | wall |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    for row in rows:
        lag = "n/a" if row["lag_ms"] is None else f"{row['lag_ms']:.0f} ms" if row["lag_ms"] >= 1 else "< 1 ms"
        print(
            f"| {row['size']:,} | {row['register_ms']:.1f} ms | {row['updates']:,} | "
            f"{row['round_trips'] / row['updates']:.3f} | {row['entries']:,} | {row['entries'] / row['updates']:.5f} | "
            f"{row['status']} | {lag} | {row['wall']:.2f} s |"
        )


if __name__ == "__main__":
    main()
