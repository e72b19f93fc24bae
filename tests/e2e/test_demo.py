"""The README's demo command, in its non-interactive mode, runs a task to completion and leaves nothing running."""

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


def test_demo_once_completes_a_task_and_stops_everything(
    redis_url: str, key_prefix: str, redis_client: redis.Redis
) -> None:
    """`demo --once` starts a worker and the web app, shows a sample task to completion, exits 0, and every process
    it started is gone afterwards, and so are the broker keys it made in the shared Redis."""
    env = {**os.environ, "CELERY_PROGRESS_WS_REDIS_URL": redis_url, "CELERY_PROGRESS_WS_KEY_PREFIX": key_prefix}
    children: set[int] = set()
    output_lines: list[str] = []
    with subprocess.Popen(
        [sys.executable, "-m", "example_project.demo", "--once", "--documents", "3"],
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
    assert "sample task completed" in output
    assert children, "the demo started no processes"
    assert not [pid for pid in children if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
    queue = f"celery-progress-ws-demo-{demo.pid}"  # the demo names its queue and exchanges after its pid
    assert list(redis_client.scan_iter(match=f"*{queue}*")) == []
    # kombu's key is shared by every app on this Redis (other test runs included): only the demo's own names count
    assert [name for name in redis_client.zrange("_kombu.binding_deadlines", 0, -1) if queue in str(name)] == []
