"""What recording ownership costs per task: owned vs unowned tasks in the same run, on a private Redis.

Each simulated task goes through the calls the Celery signals make, on one ``ProgressPublisher``: ``queued`` (as the
sender's ``before_task_publish`` writes it, with the owner for owned tasks), ``started`` (after ``own()``, as
``task_prerun`` does), ``PROGRESS`` forced progress reports and ``completed``. Owned and unowned tasks alternate, so
both see the same machine. Measured: scripts run (the private server's ``EVALSHA`` count, nothing else talks to
it), round trips (its ``total_reads_processed``: one per request batch the publisher sends, less this script's own
``INFO`` reads), the median time of one status change (``publish`` of ``started`` / ``completed``, in µs), and the
bytes each operation adds to Redis (``MEMORY USAGE``; for the shared per-user keys, their size over the operations
they hold).

    .venv/bin/python benchmarks/bench_ownership.py            # print the table (about ten seconds)
"""

from __future__ import annotations

import statistics
import time
import uuid
from typing import Any

import redis

from benchmarks._report import machine_line, table
from celery_progress_ws import ProgressPublisher, ProgressSettings
from celery_progress_ws._core.keys import KeySpace, user_digest
from devtools.servers import PrivateRedis

TASKS = 300
"""Tasks per mode."""
PROGRESS = 5
USER = "bench-user"


def counters(client: redis.Redis) -> tuple[int, int]:
    """The server's EVALSHA calls and read events so far (this call itself is one read event)."""
    calls = int(client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))
    return calls, int(client.info("stats")["total_reads_processed"])


def one_task(publisher: ProgressPublisher, client: redis.Redis, owned: bool, timings: list[float]) -> tuple[int, int]:
    """Run one task's lifecycle; return the scripts it ran and the round trips it took; append its status changes'
    durations (µs)."""
    operation = f"op-{uuid.uuid4().hex[:12]}"
    owner = USER if owned else None
    before = counters(client)
    publisher.publish(operation, "status_update", {"status": "queued", "task_name": "bench"}, owner=owner)
    if owned:
        publisher.own(operation, USER)
    began = time.perf_counter()
    publisher.publish(operation, "status_update", {"status": "started", "task_name": "bench"})
    timings.append((time.perf_counter() - began) * 1e6)
    for step in range(1, PROGRESS + 1):
        publisher.progress(operation, step, PROGRESS + 1, force=True)
    began = time.perf_counter()
    publisher.publish(operation, "status_update", {"status": "completed", "task_name": "bench"}, final=True)
    timings.append((time.perf_counter() - began) * 1e6)
    after = counters(client)
    return after[0] - before[0], after[1] - before[1] - 2  # the two INFO reads of ``counters`` that follow ``before``


def memory(client: redis.Redis, key: str) -> int:
    return int(client.memory_usage(key, samples=0) or 0)


def main() -> None:
    """Print the table."""
    with PrivateRedis() as server:
        settings = ProgressSettings(
            redis_url=server.url,
            key_prefix="bench:",
            history_max_per_user=TASKS + 10,
            stream_maxlen=1000,
        )
        client = redis.Redis.from_url(server.url)
        measured: dict[bool, dict[str, Any]] = {False: {"trips": [], "us": []}, True: {"trips": [], "us": []}}
        with ProgressPublisher(settings) as publisher:
            for _ in range(3):  # warm up: scripts loaded, connection open
                one_task(publisher, client, True, [])
                one_task(publisher, client, False, [])
            client.flushall()
            for number in range(2 * TASKS):
                owned = bool(number % 2)
                measured[owned]["trips"].append(one_task(publisher, client, owned, measured[owned]["us"]))
        keys = KeySpace(settings.key_prefix)
        streams = list(client.scan_iter(match=f"{keys.prefix}operation-progress:*", count=1000))
        stream_bytes = sum(memory(client, key) for key in streams) / len(streams)
        owners = list(client.scan_iter(match=f"{keys.prefix}operation-owner:*", count=1000))
        owner_bytes = sum(memory(client, key) for key in owners) / len(owners)
        digest = user_digest(USER)
        summaries = memory(client, keys.user_summaries(digest)) / TASKS
        index = memory(client, keys.user_index(digest)) / TASKS
        feed = memory(client, keys.user_feed(digest)) / TASKS
        feed_entries = int(client.xlen(keys.user_feed(digest)))
        summary_json = len(client.hget(keys.user_summaries(digest), client.zrange(keys.user_index(digest), 0, 0)[0]))
        client.close()
    rows = []
    for owned in (False, True):
        row = measured[owned]
        rows.append(
            [
                "owned" if owned else "unowned",
                f"{statistics.mean(trips[0] for trips in row['trips']):.1f}",
                f"{statistics.mean(trips[1] for trips in row['trips']):.1f}",
                f"{statistics.median(row['us']):.0f}",
                f"{stream_bytes:,.0f}",
                f"{owner_bytes + summaries + index + feed:,.0f}" if owned else "0",
            ]
        )
    print(machine_line())
    print(f"{TASKS} tasks per mode, each: queued, started, {PROGRESS} forced progress reports, completed\n")
    heading = ["tasks", "scripts / task", "round trips / task", "µs / status change (median)", "stream bytes"]
    print(table([*heading, "history bytes"], rows))
    print(
        f"\nhistory bytes per owned operation: owner key {owner_bytes:,.0f}, summary {summaries:,.0f} "
        f"(JSON {summary_json} bytes), index {index:,.0f}, feed {feed:,.0f} "
        f"({feed_entries / TASKS:.1f} entries per operation, feed max length {settings.history_feed_maxlen})"
    )


if __name__ == "__main__":
    main()
