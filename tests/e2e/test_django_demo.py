"""The Django demo (``dev.py demo --django``), in its non-interactive mode, runs a task to completion and leaves
nothing running."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import redis

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent.parent


def test_django_demo_once_completes_a_task_and_stops_everything(
    redis_url: str, key_prefix: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """`demo --django --once` sets up the Django example's database, starts a worker and uvicorn serving Django with
    the progress routes, logs in and starts a sample task, shows it to completion and exits 0; every process it
    started is gone afterwards, and so are its broker keys in the shared Redis."""
    env = {
        **os.environ,
        "CELERY_PROGRESS_WS_REDIS_URL": redis_url,
        "CELERY_PROGRESS_WS_KEY_PREFIX": key_prefix,
        "DJANGO_DEMO_DB": str(tmp_path / "django.sqlite3"),
    }
    children: set[int] = set()
    output_lines: list[str] = []
    with subprocess.Popen(
        [sys.executable, "-m", "example_project.demo", "--django", "--once", "--documents", "3"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as demo:
        try:
            parent = psutil.Process(demo.pid)
            assert demo.stdout is not None
            for line in demo.stdout:
                output_lines.append(line)
                children.update(child.pid for child in parent.children(recursive=True))
            code = demo.wait(120)
        finally:
            if demo.poll() is None:
                demo.kill()
    output = "".join(output_lines)
    assert code == 0, output
    assert "Log in as demo / demo" in output
    assert "sample task completed" in output
    assert (tmp_path / "django.sqlite3").exists()
    assert children, "the demo started no processes"
    assert not [pid for pid in children if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
    queue = f"celery-progress-ws-demo-{demo.pid}"  # the demo names its queue and exchanges after its pid
    assert list(redis_client.scan_iter(match=f"*{queue}*")) == []
