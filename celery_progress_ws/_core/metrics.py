"""Prometheus metrics of both halves, through the optional ``prometheus_client`` (``celery-progress-ws[metrics]``).

Without it nothing is imported and the worker half's ``worker`` stays ``NO_WORKER_METRICS``, whose methods do
nothing, so call sites never branch. Every name starts with ``celery_progress_ws_``; labels take a few fixed values,
never an operation or user id. Hot paths never touch a Prometheus object: they add to plain ints that are handed over
(the worker) or read (the web half) later. See docs/operating.md for what each metric means.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any

from .errors import EntryTooLarge, ProgressError
from .schemas import CHUNKING_PROGRESS, STATUS_UPDATE

prometheus_client: ModuleType | None
try:
    import prometheus_client
    import prometheus_client.core
except ImportError:  # the extra is not installed: metrics are off
    prometheus_client = None

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

AVAILABLE = prometheus_client is not None
"""Whether ``prometheus_client`` is installed."""

PREFIX = "celery_progress_ws_"
WRITE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
"""Seconds of one Redis write (the append script's round trip)."""
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Seconds from an entry's XADD to its delivery."""

ENTRY_KINDS = (STATUS_UPDATE, CHUNKING_PROGRESS, "event")


def entry_kind(entry_type: str) -> str:
    """The ``type`` label of an entry: ``status_update``, ``chunking_progress`` or ``event`` for any other type."""
    return entry_type if entry_type in (STATUS_UPDATE, CHUNKING_PROGRESS) else "event"


def drop_reason(exc: ProgressError) -> str:
    """The ``reason`` label of an entry refused before it reached Redis."""
    return "too_large" if isinstance(exc, EntryTooLarge) else "invalid"


class NoWorkerMetrics:
    """The worker half's metrics while they are off: every method does nothing."""

    def written(self, kind: str, seconds: float) -> None:
        """One entry of ``kind`` was written in ``seconds``."""

    def throttled(self, count: int) -> None:
        """``count`` more reports were held back by the throttle."""

    def dropped(self, reason: str, count: int = 1) -> None:
        """``count`` entries were dropped for ``reason``."""

    def buffered(self, count: int) -> None:
        """``count`` entries wait in this process for Redis."""

    def redis_up(self, up: bool) -> None:
        """This process' writer found Redis reachable (or not)."""

    def reconnected(self) -> None:
        """Redis answers again after an outage."""


NO_WORKER_METRICS = NoWorkerMetrics()


class WorkerMetrics(NoWorkerMetrics):
    """The worker half's Prometheus metrics, unregistered: in a worker they live in multiprocess files (see
    ``_worker.metrics``), elsewhere in ``registry`` if one is given."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        assert prometheus_client is not None
        client = prometheus_client
        self._written = client.Counter(
            PREFIX + "entries_written", "Entries written to Redis by the worker half.", ["type"], registry=registry
        )
        self._throttled = client.Counter(
            PREFIX + "reports_throttled", "Progress reports held back by the throttle.", registry=registry
        )
        self._dropped = client.Counter(
            PREFIX + "entries_dropped", "Entries the worker half dropped, by reason.", ["reason"], registry=registry
        )
        self._buffered = client.Gauge(
            PREFIX + "entries_buffered",
            "Entries waiting in memory for Redis.",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self._seconds = client.Histogram(
            PREFIX + "write_seconds", "Seconds of one Redis write.", buckets=WRITE_BUCKETS, registry=registry
        )
        self._up = client.Gauge(
            PREFIX + "redis_up",
            "1 while Redis answers, by half.",
            ["half"],
            multiprocess_mode="livemostrecent",
            registry=registry,
        ).labels(half="worker")
        self._reconnects = client.Counter(
            PREFIX + "redis_reconnects", "Times Redis answered again after an outage.", ["half"], registry=registry
        ).labels(half="worker")
        self._by_kind = {kind: self._written.labels(type=kind) for kind in ENTRY_KINDS}

    def written(self, kind: str, seconds: float) -> None:
        self._by_kind[kind].inc()
        self._seconds.observe(seconds)

    def throttled(self, count: int) -> None:
        self._throttled.inc(count)

    def dropped(self, reason: str, count: int = 1) -> None:
        self._dropped.labels(reason=reason).inc(count)

    def buffered(self, count: int) -> None:
        self._buffered.set(count)

    def redis_up(self, up: bool) -> None:
        self._up.set(1 if up else 0)

    def reconnected(self) -> None:
        self._up.set(1)
        self._reconnects.inc()


worker: NoWorkerMetrics = NO_WORKER_METRICS
"""The worker half's metrics in this process (set by ``_worker.metrics.WorkerExporter``); read at each use."""


def family(kind: str, name: str, documentation: str, labels: tuple[str, ...] = ()) -> Any:
    """A metric family of ``kind`` (``counter``, ``gauge``) for a custom collector, named with the prefix."""
    assert prometheus_client is not None
    make: Callable[..., Any] = {
        "counter": prometheus_client.core.CounterMetricFamily,
        "gauge": prometheus_client.core.GaugeMetricFamily,
    }[kind]
    return make(PREFIX + name, documentation, labels=list(labels))
