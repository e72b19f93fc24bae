"""``ProgressBootstep``: the one line a Celery user adds, ``app.steps["worker"].add(ProgressBootstep)``.

A thin adapter: it reads the settings (``app.conf.celery_progress_ws``, else ``CELERY_PROGRESS_WS_*``), creates the
publisher, connects the signal handlers before the pool forks (children inherit them), and flushes and closes the
publisher when the worker shuts down. With ``metrics_port`` it serves the worker's metrics (see ``metrics``).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import bootsteps, signals

from .._core import metrics
from .app_config import client_for_app, settings_for_app
from .metrics import WorkerExporter
from .publisher import ProgressPublisher
from .reporting import set_default_publisher
from .signals import disable_events, enable_worker_events

logger = logging.getLogger(__name__)


class ProgressBootstep(bootsteps.StartStopStep):
    """Publishes every task's lifecycle and ``report_progress`` calls to Redis Streams for this worker's app.

    Settings: ``app.conf.celery_progress_ws`` if the app sets it (a ``ProgressSettings`` or a mapping of its fields),
    else ``ProgressSettings()`` from the environment. Client: ``app.conf.celery_progress_ws_client`` if set (see
    ``client_for_app``), else one per process from the settings' URL. A worker whose Redis is down still starts (one
    warning).
    """

    label = "celery-progress-ws"

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.publisher: ProgressPublisher | None = None
        self._previous_default: ProgressPublisher | None = None
        self.exporter: WorkerExporter | None = None

    def create(self, parent: Any) -> None:
        """Runs while the worker is assembled, before any pool child is forked."""
        settings = settings_for_app(parent.app)
        if settings.metrics_port is not None and self.exporter is None:
            if metrics.AVAILABLE:
                self.exporter = WorkerExporter(settings.metrics_port)
            else:
                logger.warning("celery-progress-ws: metrics_port is set but prometheus_client is not installed")
        self.publisher = ProgressPublisher(settings, client_for_app(parent.app))
        enable_worker_events(parent.app, self.publisher)
        self._previous_default = set_default_publisher(self.publisher)
        signals.worker_shutdown.connect(self._on_worker_shutdown, sender=parent, weak=False)

    def start(self, parent: Any) -> None:
        """Check Redis once so an outage is reported at start-up; never fails the worker."""
        if self.publisher is not None:
            self.publisher.check()

    def stop(self, parent: Any) -> None:
        """Flush what is held back; tasks still finishing (threads pool) keep publishing until worker_shutdown."""
        if self.publisher is not None:
            self.publisher.flush(self._timeout())

    def terminate(self, parent: Any) -> None:
        """Cold shutdown: tasks are being killed, so close at once."""
        self._close(parent)

    def _on_worker_shutdown(self, sender: Any = None, **_: Any) -> None:
        self._close(sender)

    def _close(self, parent: Any) -> None:
        signals.worker_shutdown.disconnect(self._on_worker_shutdown, sender=parent)
        disable_events(parent.app)
        publisher, self.publisher = self.publisher, None
        if publisher is None:
            return
        exporter, self.exporter = self.exporter, None
        replaced = set_default_publisher(self._previous_default)
        if replaced is not publisher:  # someone installed another default meanwhile: leave theirs
            set_default_publisher(replaced)
        publisher.close(self._timeout(publisher))
        if exporter is not None:
            exporter.close()

    def _timeout(self, publisher: ProgressPublisher | None = None) -> float:
        publisher = publisher or self.publisher
        return 2 * publisher.settings.socket_timeout_seconds if publisher is not None else 0.0
