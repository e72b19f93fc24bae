"""Real ``celery worker`` subprocesses (prefork with concurrency 2, solo, gevent), configured by environment.

The workers are the ``prefork_worker``, ``gevent_worker`` and ``solo_worker`` fixtures of tests/conftest.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from celery import Celery

from celery_progress_ws import ProgressSettings
from devtools.servers import free_port
from tests.support.streams import ended, kinds, progress_values, stream_key, wait_for
from tests.support.worker_process import worker_process
from tests.support.worker_tasks import check_odd_value_runs

pytestmark = pytest.mark.integration


def test_prefork_worker_publishes_every_lifecycle_from_children_and_main_process(
    prefork_worker: tuple[Celery, Path], settings: ProgressSettings, redis_client: redis.Redis, redis_url: str
) -> None:
    """Prefork children publish their lifecycles, the main process `cancelled`, the sender `queued`."""
    app, log = prefork_worker
    blocker_key = f"{settings.key_prefix}release"
    blocker = app.tasks["cpws.wait_for_key"].delay(redis_url, blocker_key, 60)
    count = app.tasks["cpws.count"].delay(5)
    fail = app.tasks["cpws.fail"].delay("from a child")
    flaky = app.tasks["cpws.flaky"].delay()
    assert count.get(timeout=60) == 5, log.read_text()
    assert flaky.get(timeout=30) == "recovered"
    fail.get(timeout=30, propagate=False)

    wait_for(redis_client, settings, blocker.id, lambda entries: "status:started" in kinds(entries), timeout=30)
    assert app.control.revoke(blocker.id, terminate=True, reply=True, limit=1, timeout=10)
    cancelled = wait_for(redis_client, settings, blocker.id, ended)
    assert kinds(cancelled)[:3] == ["status:queued", "status:started", "progress:0"]
    assert cancelled[-1]["data"]["status"] == "cancelled"
    assert "terminated" in cancelled[-1]["data"]["message"]

    counted = wait_for(redis_client, settings, count.id, ended)
    assert kinds(counted)[:2] == ["status:queued", "status:started"]
    assert kinds(counted)[-1] == "status:completed"
    assert progress_values(counted)[0] == 1
    assert progress_values(counted)[-1] == 5
    failed = wait_for(redis_client, settings, fail.id, ended)
    assert failed[-1]["data"]["error_message"] == "from a child"
    retried = wait_for(redis_client, settings, flaky.id, ended)
    assert [kind for kind in kinds(retried) if kind.startswith("status:")] == [
        "status:queued",
        "status:started",
        "status:retrying",
        "status:started",
        "status:completed",
    ]
    for task_id, ttl in ((count.id, 300), (blocker.id, 300), (fail.id, 60), (flaky.id, 300)):
        assert ttl - 30 < redis_client.ttl(stream_key(settings, task_id)) <= ttl
    output = log.read_text()
    assert "Signal handler" not in output, output
    assert "celery-progress-ws" not in output, output


def test_gevent_worker_publishes_lifecycles_and_trailing_values_while_tasks_wait(
    gevent_worker: tuple[Celery, Path], settings: ProgressSettings, redis_client: redis.Redis
) -> None:
    """Under gevent, concurrent tasks each get their whole lifecycle, and a held-back value is written when its
    interval ends, while the task still waits, not only before the terminal status."""
    app, log = gevent_worker
    waiting = [app.tasks["cpws.hold_then_wait"].delay(1.5) for _ in range(3)]
    counting = [app.tasks["cpws.count"].delay(20) for _ in range(3)]
    for result in waiting + counting:
        result.get(timeout=60)
    assert settings.throttle_seconds < 1.0  # the interval ends well before the task does
    for result in waiting:
        entries = wait_for(redis_client, settings, result.id, ended)
        assert kinds(entries) == ["status:queued", "status:started", "progress:1", "progress:2", "status:completed"]
        ids = [int(entry_id.split("-")[0]) for entry_id, _ in redis_client.xrange(stream_key(settings, result.id))]
        assert ids[4] - ids[3] >= 1000, "the held-back value was only written when the task ended"
    for result in counting:
        entries = wait_for(redis_client, settings, result.id, ended)
        assert kinds(entries)[:2] == ["status:queued", "status:started"]
        assert kinds(entries)[-1] == "status:completed"
        assert progress_values(entries)[0] == 1
        assert progress_values(entries)[-1] == 20
    output = log.read_text()
    assert "celery-progress-ws" not in output, output


def test_solo_worker_publishes_lifecycles_and_trailing_values(
    solo_worker: tuple[Celery, Path], settings: ProgressSettings, redis_client: redis.Redis
) -> None:
    """With the solo pool, tasks run in the worker's main thread: each gets its lifecycle, a failure its error, and a
    held-back value is written when its interval ends while the task still waits."""
    app, log = solo_worker
    waiting = app.tasks["cpws.hold_then_wait"].delay(1.5)
    counting = app.tasks["cpws.count"].delay(20)
    failing = app.tasks["cpws.fail"].delay("solo failure")
    waiting.get(timeout=60)
    assert counting.get(timeout=60) == 20
    failing.get(timeout=60, propagate=False)
    entries = wait_for(redis_client, settings, waiting.id, ended)
    assert kinds(entries) == ["status:queued", "status:started", "progress:1", "progress:2", "status:completed"]
    ids = [int(entry_id.split("-")[0]) for entry_id, _ in redis_client.xrange(stream_key(settings, waiting.id))]
    assert ids[4] - ids[3] >= 1000, "the held-back value was only written when the task ended"
    counted = wait_for(redis_client, settings, counting.id, ended)
    assert progress_values(counted)[0] == 1
    assert progress_values(counted)[-1] == 20
    failed = wait_for(redis_client, settings, failing.id, ended)
    assert kinds(failed)[-1] == "status:failed"
    assert failed[-1]["data"]["error_message"] == "solo failure"
    assert 30 < redis_client.ttl(stream_key(settings, failing.id)) <= 60
    output = log.read_text()
    assert "celery-progress-ws" not in output, output


def test_prefork_worker_survives_odd_extra_values(
    prefork_worker: tuple[Celery, Path], settings: ProgressSettings, redis_client: redis.Redis
) -> None:
    """In prefork children, each odd extra value is converted or refused at the call: every task ends with its
    terminal status, later held-back values still flow, and nothing reaches Celery's signal-handler log."""
    app, log = prefork_worker
    check_odd_value_runs(app, redis_client, settings, pause=0.6)
    output = log.read_text()
    assert "Signal handler" not in output, output
    assert "celery-progress-ws" not in output, output


def test_prefork_worker_writes_through_the_client_factory_its_app_configures(
    redis_url: str, broker_namespace: str, settings: ProgressSettings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """``app.conf.celery_progress_ws_client`` wins over the settings' URL (here a port nobody listens on): each prefork
    child makes its client with the factory and every lifecycle lands."""
    environment = {
        "CELERY_PROGRESS_WS_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "CPWS_TEST_PROGRESS_CLIENT_URL": redis_url,
    }
    log = tmp_path / "worker.log"
    pool = ["--pool=prefork", "--concurrency=2"]
    with worker_process(redis_url, broker_namespace, settings, log, pool, environment) as app:
        results = [app.tasks["cpws.count"].delay(3) for _ in range(4)]
        assert [result.get(timeout=60) for result in results] == [3] * 4, log.read_text()
        for result in results:
            entries = wait_for(redis_client, settings, result.id, ended)
            assert kinds(entries)[:2] == ["status:queued", "status:started"]
            assert kinds(entries)[-1] == "status:completed"
    assert "cannot take writes" not in log.read_text()
