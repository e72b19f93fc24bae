"""The worker half's Prometheus endpoint: real workers of every pool; a prefork worker's children count and its main
process serves."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from celery_progress_ws import ProgressSettings
from devtools.processes import free_port
from tests.support.metrics import Samples, scrape, value
from tests.support.streams import ended, statuses, wait_for
from tests.support.worker_process import worker_process

pytestmark = pytest.mark.integration

TASKS = 6
CALLS = 150


POOLS = {
    "prefork": ["--pool=prefork", "--concurrency=2"],
    "threads": ["--pool=threads", "--concurrency=2"],
    "solo": ["--pool=solo"],
    "gevent": ["--pool=gevent", "--concurrency=4"],
}


@pytest.mark.parametrize("pool", list(POOLS))
def test_a_worker_serves_exact_totals_of_all_its_processes(
    pool: str,
    redis_url: str,
    broker_namespace: str,
    settings: ProgressSettings,
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    """One scrape of the worker's endpoint shows exactly the entries written and reports throttled by every process
    and thread that ran tasks (both children of a prefork worker)."""
    port = free_port()
    log = tmp_path / "worker.log"
    options = POOLS[pool]
    with worker_process(
        redis_url, broker_namespace, settings, log, options, {"CELERY_PROGRESS_WS_METRICS_PORT": str(port)}
    ) as app:
        results = [app.tasks["cpws.tally"].delay(CALLS, 0.6) for _ in range(TASKS)]
        answers = [result.get(timeout=60) for result in results]
        streams = [wait_for(redis_client, settings, result.id, ended) for result in results]
        if pool == "prefork":
            assert len({pid for pid, _ in answers}) == 2, log.read_text()  # both children ran tasks

        throttled = sum(held for _, held in answers)
        progress = sum(entry["type"] == "chunking_progress" for entries in streams for entry in entries)
        worker_statuses = sum(status != "queued" for entries in streams for status in statuses(entries))
        assert worker_statuses == 2 * TASKS  # started and completed; `queued` is the sender's
        expected = {
            ("entries_written_total", "chunking_progress"): progress,
            ("entries_written_total", "status_update"): worker_statuses,
            ("reports_throttled_total", ""): throttled,
        }

        def observed(samples: Samples) -> dict[tuple[str, str], float]:
            return {
                (name, kind): value(samples, name, type=kind) if kind else value(samples, name)
                for name, kind in expected
            }

        deadline = time.monotonic() + 10
        samples = scrape(f"http://127.0.0.1:{port}/metrics")
        while observed(samples) != expected and time.monotonic() < deadline:  # the last fold follows the last write
            time.sleep(0.1)
            samples = scrape(f"http://127.0.0.1:{port}/metrics")
        assert observed(samples) == expected
        assert value(samples, "write_seconds_count") == progress + worker_statuses
        assert value(samples, "redis_up", half="worker") == 1
        assert value(samples, "entries_dropped_total", reason="buffer_full") == 0
