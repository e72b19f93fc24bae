"""The Django demo (``dev.py demo --django``), in its non-interactive mode, runs a task to completion and leaves
nothing running."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from tests.support.demo_run import run_demo

pytestmark = pytest.mark.integration


def test_django_demo_once_completes_a_task_and_stops_everything(
    redis_url: str, key_prefix: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """`demo --django --once` sets up the Django example's database, starts a worker and uvicorn serving Django with
    the progress routes, logs in and starts a sample task, shows it to completion and exits 0; every process it
    started is gone afterwards, and so are its broker keys in the shared Redis."""
    run = run_demo(
        ["--django", "--once", "--documents", "3"],
        {
            "CELERY_PROGRESS_WS_REDIS_URL": redis_url,
            "CELERY_PROGRESS_WS_KEY_PREFIX": key_prefix,
            "DJANGO_DEMO_DB": str(tmp_path / "django.sqlite3"),
        },
    )
    assert run.code == 0, run.output
    assert "Log in as demo / demo" in run.output
    assert "sample task completed" in run.output
    assert (tmp_path / "django.sqlite3").exists()
    assert run.children, "the demo started no processes"
    assert not run.leftovers()
    queue = run.queue
    assert list(redis_client.scan_iter(match=f"*{queue}*")) == []
