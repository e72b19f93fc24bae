"""A real ``celery worker`` subprocess running ``tests.support.worker_app``, started by the project's one launcher."""

from __future__ import annotations

import os
import signal
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from celery import Celery

from celery_progress_ws import ProgressSettings, enable_queued_events
from celery_progress_ws._worker.signals import disable_events
from devtools.processes import OwnedProcess
from tests.support.worker_tasks import close_app, create_app

ROOT = Path(__file__).resolve().parents[2]
WORKER_APP = "tests.support.worker_app"
WARM_SHUTDOWN_SECONDS = 30.0


@contextmanager
def worker_process(
    redis_url: str,
    broker_namespace: str,
    settings: ProgressSettings,
    log: Path,
    pool_options: list[str],
    environment: dict[str, str] | None = None,
) -> Iterator[Celery]:
    """Start a worker subprocess with ``pool_options``; yield an app that sends to its queue (with `queued` entries
    enabled, like a web app); stop the worker with a warm shutdown (SIGTERM to its pid) afterwards. ``environment``
    adds variables to the worker's."""
    queue = f"{broker_namespace}-{uuid.uuid4().hex[:6]}"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "CPWS_TEST_BROKER_URL": redis_url,
        "CPWS_TEST_NAMESPACE": broker_namespace,
        "CPWS_TEST_QUEUE": queue,
        "CELERY_PROGRESS_WS_REDIS_URL": redis_url,
        "CELERY_PROGRESS_WS_KEY_PREFIX": settings.key_prefix,
        "CELERY_PROGRESS_WS_THROTTLE_SECONDS": str(settings.throttle_seconds),
        **(environment or {}),
    }
    command = [sys.executable, "-m", "celery", "-A", WORKER_APP, "worker", *pool_options]
    command += ["--without-mingle", "--without-gossip", "--without-heartbeat", "--loglevel=INFO"]
    command += ["--hostname", f"cpws-{uuid.uuid4().hex[:6]}@%h"]
    worker = OwnedProcess(command, cwd=ROOT, env=env, log=log)
    try:
        sender = create_app(redis_url, broker_namespace, queue)
        publisher = enable_queued_events(sender, settings)
        try:
            yield sender
        finally:
            disable_events(sender)
            publisher.close()
            close_app(sender)
    finally:
        # A warm shutdown asks the main process alone, which stops its pool; the group is cleaned up once it exited.
        if not worker.exited():  # not reaped yet, so the pid is still the worker's
            os.kill(worker.pid, signal.SIGTERM)
        worker.wait_exit(WARM_SHUTDOWN_SECONDS)
        worker.stop()
