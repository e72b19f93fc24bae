"""The README's demo command, in its non-interactive mode, runs a task to completion and leaves nothing running."""

from __future__ import annotations

import pytest
import redis

from tests.support.demo_run import run_demo

pytestmark = pytest.mark.integration


def test_demo_once_completes_a_task_and_stops_everything(
    redis_url: str, key_prefix: str, redis_client: redis.Redis
) -> None:
    """`demo --once` starts a worker and the web app, shows a sample task to completion, exits 0, and every process
    it started is gone afterwards, and so are the broker keys it made in the shared Redis."""
    run = run_demo(
        ["--once", "--documents", "3"],
        {"CELERY_PROGRESS_WS_REDIS_URL": redis_url, "CELERY_PROGRESS_WS_KEY_PREFIX": key_prefix},
    )
    assert run.code == 0, run.output
    assert "sample task completed" in run.output
    assert run.children, "the demo started no processes"
    assert not run.leftovers()
    queue = run.queue
    assert list(redis_client.scan_iter(match=f"*{queue}*")) == []
    # kombu's key is shared by every app on this Redis (other test runs included): only the demo's own names count
    assert [name for name in redis_client.zrange("_kombu.binding_deadlines", 0, -1) if queue in str(name)] == []
