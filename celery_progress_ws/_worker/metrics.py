"""The worker half's metrics endpoint: every process of a worker counts, its main process serves the totals.

A prefork worker's children write; the main process answers the scrape. So the metrics use ``prometheus_client``'s
multiprocess mode: each process keeps its values in files under ``PROMETHEUS_MULTIPROC_DIR`` and a scrape sums them
(``MultiProcessCollector``). The exporter is started in the main process before the pool forks: it creates that
directory when the environment names none (and removes it at the end), switches ``prometheus_client`` to files for
metrics created from then on (it may have been imported earlier, before the variable was set), and marks each child's
live gauges dead when the child exits. Threads, solo, gevent and eventlet pools are one process: the same files serve.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from typing import Any, Protocol

from celery import signals
from redis.exceptions import RedisError

from .._core import metrics
from .._core.append import AppendCall, RetriedAppend, WriteCall
from .._core.redis_errors import OUTAGE

logger = logging.getLogger(__name__)

MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
_perf = time.perf_counter


class Runner(Protocol):
    """Runs write calls (an ``Append``, counted or not): ``run_many`` returns one outcome per call, its reply or the
    ``ResponseError`` Redis answered; ``batch`` is how many calls one round trip may carry."""

    batch: int

    def run_many(self, calls: Sequence[WriteCall]) -> list[Any]: ...


class MeteredAppend:
    """Runs write calls through ``append`` and counts each entry written, its duration, and the refused ones."""

    __slots__ = ("_append", "_up", "batch")

    def __init__(self, append: Runner) -> None:
        self._append = append
        self._up = False
        self.batch = append.batch

    def run_many(self, calls: Sequence[WriteCall]) -> list[Any]:
        started = _perf()
        outcomes = self._append.run_many(calls)
        seconds = _perf() - started
        for call, outcome in zip(calls, outcomes, strict=True):
            if not isinstance(call, (AppendCall, RetriedAppend)):
                continue
            if not isinstance(outcome, RedisError):
                metrics.worker.written(call.kind, seconds)
            elif not isinstance(outcome, OUTAGE):
                metrics.worker.dropped("refused")
        if not self._up:  # a new connection's first answer; outages and returns are the writer's to report
            self._up = True
            metrics.worker.redis_up(True)
        return outcomes


def metered(append: Runner) -> Runner:
    """``append`` counted while the worker metrics are on, else ``append`` itself (nothing is added to a write)."""
    return append if metrics.worker is metrics.NO_WORKER_METRICS else MeteredAppend(append)


class WorkerExporter:
    """Serves the worker metrics of every process of this worker on ``port`` (``0``: a free one, see ``port``)."""

    def __init__(self, port: int, host: str = "0.0.0.0") -> None:
        assert metrics.prometheus_client is not None
        client = metrics.prometheus_client
        from prometheus_client import multiprocess, values

        self._own_dir: str | None = None
        if not os.environ.get(MULTIPROC_DIR):
            self._own_dir = tempfile.mkdtemp(prefix="celery-progress-ws-metrics-")
            os.environ[MULTIPROC_DIR] = self._own_dir
        self.directory = os.environ[MULTIPROC_DIR]
        self._values = values
        self._value_class = values.ValueClass
        # prometheus_client picks its value class when imported, maybe before the variable was set: pick again.
        values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
        self._mark_dead = multiprocess.mark_process_dead
        registry = client.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self.directory)  # type: ignore[no-untyped-call]
        self._previous = metrics.worker
        metrics.worker = metrics.WorkerMetrics()
        self._server, self._thread = client.start_http_server(port, addr=host, registry=registry)
        self.port: int = self._server.server_port
        signals.worker_process_shutdown.connect(self._child_exits, weak=False, dispatch_uid=f"cpws-metrics-{id(self)}")
        logger.info("celery-progress-ws: worker metrics on port %d (files in %s)", self.port, self.directory)

    def _child_exits(self, **_: Any) -> None:
        """A pool child exits: its live gauges stop counting (its counters stay in the totals)."""
        self._mark_dead(os.getpid(), self.directory)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        """Stop serving, turn the metrics off in this process and remove the directory if this exporter made it."""
        signals.worker_process_shutdown.disconnect(dispatch_uid=f"cpws-metrics-{id(self)}")
        self._server.shutdown()
        self._server.server_close()
        metrics.worker = self._previous
        self._values.ValueClass = self._value_class
        if self._own_dir is not None:
            if os.environ.get(MULTIPROC_DIR) == self._own_dir:
                del os.environ[MULTIPROC_DIR]
            shutil.rmtree(self._own_dir, ignore_errors=True)
