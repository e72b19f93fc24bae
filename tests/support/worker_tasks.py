"""A Celery app with ``ProgressBootstep`` and the tasks the worker tests run, for in-process and subprocess workers."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import Enum
from typing import Any

import redis
from celery import Celery, Task
from celery.backends.redis import RedisBackend
from celery.contrib.testing.worker import start_worker

from celery_progress_ws import ProgressBootstep, ProgressSettings, PublishResult, report_progress, send_event
from tests.support.streams import ended, statuses, wait_for

GATES: dict[str, tuple[threading.Event, threading.Event]] = {}
"""In-process tests only: ``token -> (reached, release)`` events the ``gated`` task waits on."""


class Color(Enum):
    RED = "red"


class Named:
    """An object JSON has no form for; its str() is what the wire shows."""

    def __str__(self) -> str:
        return "named!"


class Unprintable:
    """An object whose str() raises: the rules refuse it."""

    def __str__(self) -> str:
        raise RuntimeError("no text for you")


def _circular() -> list[object]:
    loop: list[object] = []
    loop.append(loop)
    return loop


ODD_VALUES: dict[str, Callable[[], object]] = {
    "tuple_keys": lambda: {(1, 2): 3},
    "circular": _circular,
    "unprintable": Unprintable,
    "datetime": lambda: datetime(2026, 1, 1, tzinfo=UTC),
    "set": lambda: {"b", "a"},
    "bytes": lambda: b"caf\xc3\xa9\xff",
    "nan": lambda: float("nan"),
    "enum": lambda: Color.RED,
    "named": Named,
    "nested": lambda: {"when": datetime(2026, 1, 1), "ids": (3, {1}), 7: None},
}
"""Extra field values the ``odd_value`` task reports, by name (built in the worker: most cannot travel as arguments)."""


ODD_OUTCOMES: dict[str, object] = {
    "tuple_keys": "TypeError",
    "circular": "ValueError",
    "unprintable": "TypeError",
    "datetime": "2026-01-01T00:00:00+00:00",
    "set": ["a", "b"],
    "bytes": "café\ufffd",
    "nan": None,
    "enum": "red",
    "named": "named!",
    "nested": {"when": "2026-01-01T00:00:00", "ids": [3, [1]], "7": None},
}
"""For each of worker_tasks.ODD_VALUES: the error report_progress raises for it, or the value the wire shows."""


def check_odd_value_runs(app: Celery, client: redis.Redis, settings: ProgressSettings, pause: float) -> None:
    """Run every odd value through cpws.odd_value (and two of them in failing tasks); each task must end with its
    terminal status, converted values must be written converted, refused ones raise in the task and leave no trace,
    and the publisher's background thread must keep writing held-back values (progress 2 and 4) on time."""
    runs = [(kind, False) for kind in ODD_OUTCOMES] + [("tuple_keys", True), ("circular", True)]
    results = [(kind, fail, app.tasks["cpws.odd_value"].delay(kind, pause, fail)) for kind, fail in runs]
    for kind, fail, result in results:
        outcome = result.get(timeout=60, propagate=False)
        entries = wait_for(client, settings, result.id, ended, timeout=20)
        expected = ODD_OUTCOMES[kind]
        refused = expected in ("TypeError", "ValueError")
        assert statuses(entries)[-1] == ("failed" if fail else "completed"), (kind, entries)
        if not fail:
            assert outcome == (expected if refused else "accepted"), kind
        progress = [entry["data"] for entry in entries if entry["type"] == "chunking_progress"]
        assert [data["documents_processed"] for data in progress] == ([1, 3, 4, 5] if refused else [1, 2, 3, 4, 5, 6])
        for data in progress:
            if data["documents_processed"] in (2, 6):
                assert data["odd"] == expected, kind
            else:
                assert "odd" not in data, kind


def create_app(
    broker_url: str,
    namespace: str,
    queue: str,
    progress: ProgressSettings | Mapping[str, Any] | None = None,
) -> Celery:
    """An app whose broker and result keys all live under ``namespace:``, consuming only from ``queue``."""
    app = Celery("cpws_tests", broker=broker_url, backend=broker_url, set_as_current=False)
    app.conf.update(
        task_default_queue=queue,
        broker_transport_options={"global_keyprefix": f"{namespace}:"},
        result_backend_transport_options={"global_keyprefix": f"{namespace}:"},
        control_exchange=f"{namespace}-control",
        result_expires=600,
        result_backend_thread_safe=True,  # one backend for all threads, so close_app() can close it
        worker_hijack_root_logger=False,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
    )
    if progress is not None:
        app.conf.celery_progress_ws = progress
    app.steps["worker"].add(ProgressBootstep)
    _register_tasks(app)
    return app


def close_app(app: Celery) -> None:
    """Release the connections this thread opened through ``app``: the result listener, the result and broker pools."""
    backend = app.backend
    if isinstance(backend, RedisBackend):
        # Results collected later unsubscribe in __del__, which would open a new connection for keys still listed.
        backend.result_consumer.subscribed_to.clear()
        backend.result_consumer.stop()
        backend.client.connection_pool.disconnect()
    app.close()


@contextmanager
def threads_worker(app: Celery) -> Iterator[Celery]:
    """Serve ``app`` with an in-process threads worker (concurrency 2), then close the app."""
    try:
        with start_worker(app, pool="threads", concurrency=2, perform_ping_check=False, shutdown_timeout=20):
            yield app
    finally:
        close_app(app)


def _register_tasks(app: Celery) -> None:
    @app.task(name="cpws.count", shared=False)
    def count(n: int, total: int | None = None) -> int:
        """Reports 1..n, each with the seed's extra fields."""
        for i in range(1, n + 1):
            report_progress(i, n if total is None else total, message=f"item {i}", chunks_created=2 * i,
                            current_document=f"doc-{i}")  # fmt: skip
        return n

    @app.task(name="cpws.burst", shared=False)
    def burst(calls: int, seconds: float) -> float:
        """``calls`` reports spread over about ``seconds``; the total is never reached, so none is forced."""
        start = time.monotonic()
        for i in range(1, calls + 1):
            report_progress(i, 2 * calls)
            if i % 100 == 0:
                time.sleep(max(0.0, start + seconds * i / calls - time.monotonic()))
        return time.monotonic() - start

    @app.task(name="cpws.tally", shared=False)
    def tally(calls: int, seconds: float) -> tuple[int, int]:
        """``calls`` reports over about ``seconds``; returns this process' pid and how many the throttle held back."""
        held = 0
        for i in range(1, calls + 1):
            held += report_progress(i, calls + 1) is PublishResult.THROTTLED
            time.sleep(seconds / calls)
        return os.getpid(), held

    @app.task(name="cpws.hold_then_wait", shared=False)
    def hold_then_wait(seconds: float) -> None:
        """Reports 1 of 10 (published) and 2 of 10 (held back), then waits ``seconds`` before it returns."""
        report_progress(1, 10)
        report_progress(2, 10)
        time.sleep(seconds)

    @app.task(name="cpws.fail", shared=False)
    def fail(text: str) -> None:
        """Reports once, then raises."""
        report_progress(1, 2, message="about to fail")
        raise ValueError(text)

    @app.task(name="cpws.flaky", shared=False, bind=True, max_retries=1)
    def flaky(self: Task[Any, Any]) -> str:
        """Fails its first attempt with a retry, succeeds on the second."""
        report_progress(self.request.retries + 1, 2)
        try:
            if self.request.retries == 0:
                raise RuntimeError("flaky dependency")
        except RuntimeError as exc:
            raise self.retry(exc=exc, countdown=0) from exc
        return "recovered"

    @app.task(name="cpws.events", shared=False)
    def events(domain_id: str) -> None:
        """Sends a chunking event and reports to a domain operation as well as to the task's own stream."""
        send_event("chunking_started", {"documents": 2})
        report_progress(1, 10, operation_id=domain_id)
        send_event("chunking_document_complete", {"document": "a.pdf"}, operation_id=domain_id)
        report_progress(2, 10, operation_id=domain_id)  # held back by the throttle, written when the task ends

    @app.task(name="cpws.wait_for_key", shared=False)
    def wait_for_key(url: str, key: str, timeout: float) -> bool:
        """Reports once, then blocks until ``key`` exists in Redis (lets a test revoke a running task)."""
        report_progress(0, 1, message="waiting")
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if client.exists(key):
                    return True
                time.sleep(0.05)
            return False
        finally:
            client.close()

    @app.task(name="cpws.odd_value", shared=False)
    def odd_value(kind: str, pause: float, fail: bool = False) -> str:
        """Reports 1-6 of 10 with ``ODD_VALUES[kind]`` as the extra field ``odd`` of 2 and 6: 2 is held back while the
        task pauses (the background thread writes it), 6 just before the terminal status. Returns what the first odd
        report raised (the task's own bug, caught here), or ``"accepted"``; raises at the end if ``fail``."""

        def report_odd(current: int) -> str:
            try:
                report_progress(current, 10, odd=ODD_VALUES[kind]())
            except (TypeError, ValueError) as exc:
                return type(exc).__name__
            return "accepted"

        report_progress(1, 10)
        outcome = report_odd(2)
        time.sleep(pause)
        report_progress(3, 10)
        report_progress(4, 10)  # held back: only the background thread can write it before 5 replaces it
        time.sleep(pause)
        report_progress(5, 10)
        report_odd(6)
        if fail:
            raise RuntimeError(f"failed after reporting {kind}")
        return outcome

    @app.task(name="cpws.gated", shared=False)
    def gated(token: str) -> str:
        """Reports, waits for the test to release it (e.g. after stopping Redis), then reports to the end."""
        reached, release = GATES[token]
        report_progress(1, 3, message="before")
        reached.set()
        if not release.wait(10):
            raise TimeoutError("the test never released the gate")
        report_progress(2, 3, message="during")
        send_event("chunking_document_complete", {"document": "b.pdf"})
        report_progress(3, 3, message="done")
        return "ok"
