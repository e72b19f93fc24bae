"""The worker publisher's one background thread per process: what gets written when no caller is there to write it.

It writes held-back progress values (and aggregate updates) when their interval ends, retries the buffer while Redis
is down, and now and then forgets the state of idle operations. It starts with the first entry that needs it and
sleeps on the publisher's condition until the next of those is due; ``close()`` (or a fork) ends its generation.
``PublisherThread`` is a base class of ``ProgressPublisher`` (over ``PublisherEntries``, whose entries it writes): it
works on the publisher's own state, under its lock.
"""

from __future__ import annotations

import logging
import threading
import time

from .._core.throttle import Throttle
from .aggregate_updater import AggregateUpdates
from .entries import PublisherEntries
from .meter import RawProgress

logger = logging.getLogger(__name__)

IDLE_SWEEP_SECONDS = 60.0
"""How often the background thread forgets the state of operations idle for ``stream_ttl_seconds``."""

MIN_FAILURE_PAUSE_SECONDS = 0.05
"""The shortest pause of the background thread after a failed pass, whatever ``retry_interval_seconds`` says."""

_monotonic = time.monotonic


class PublisherThread(PublisherEntries):
    """The background thread of ``ProgressPublisher``, which sets these attributes (see its ``_start_clean``)."""

    _lock: threading.Lock
    _wakeup: threading.Condition
    """On ``_lock``: notified when something new is due, or when the thread's generation ends."""
    _throttle: Throttle[RawProgress]
    _aggregates: AggregateUpdates
    _thread: threading.Thread | None
    _generation: int
    """Counts the threads ended in this process; a thread runs while its generation is the current one."""

    def _fold(self) -> None:
        """Hand the hot path's plain counts to the metrics (see ``ProgressPublisher._fold``)."""

    def _on_backlog(self) -> None:
        """Entries wait for a Redis that is down, or aggregate work got due earlier: make sure the thread looks
        (lock held)."""
        self._ensure_thread()
        self._wakeup.notify()

    def _ensure_thread(self) -> None:
        """Start the background thread in this process if it is not running (lock held)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, args=(self._generation,), name="celery-progress-ws-publisher", daemon=True
            )
            self._thread.start()

    def _stop_thread(self) -> None:
        """End the thread's generation and wait (bounded) for it to finish; a later entry starts a new one."""
        with self._lock:
            thread, self._thread = self._thread, None
            self._generation += 1
            self._wakeup.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.settings.socket_timeout_seconds * 2 + 1)

    def _run(self, generation: int) -> None:
        """Publish held-back values when they are due, retry the buffer while Redis is down, forget idle state.

        An unexpected exception in one pass is logged and the loop goes on after ``retry_interval_seconds``, so a bug
        can neither end the thread (stranding every later held-back value) nor make it spin.
        """
        sweep_at: float | None = _monotonic() + IDLE_SWEEP_SECONDS
        while sweep_at is not None:
            try:
                sweep_at = self._run_once(generation, sweep_at)
            except Exception:
                logger.exception("celery-progress-ws: the publisher's background pass failed; retrying")
                pause_until = _monotonic() + max(self.settings.retry_interval_seconds, MIN_FAILURE_PAUSE_SECONDS)
                with self._lock:
                    while generation == self._generation and (delay := pause_until - _monotonic()) > 0:
                        self._wakeup.wait(delay)

    def _run_once(self, generation: int, sweep_at: float) -> float | None:
        """Wait until there is something to do and do it; return the next sweep time, ``None`` once the thread's
        generation has ended."""
        writer = self._writer
        with self._lock:
            while generation == self._generation and (delay := self._next_wake(sweep_at)) > 0:
                self._wakeup.wait(delay)
            if generation != self._generation:
                return None
            for operation_id, raw in self._throttle.take_due():
                self._enqueue_trailing(operation_id, raw)
            self._aggregates.enqueue_due()
            due = writer.next_work()
        if due is not None and due <= _monotonic():
            writer.drain(probe=True)
        self._fold()
        if _monotonic() >= sweep_at:
            sweep_at = _monotonic() + IDLE_SWEEP_SECONDS
            self._forget_idle()
        return sweep_at

    def _next_wake(self, sweep_at: float) -> float:
        """Seconds until the background thread has something to do (lock held)."""
        now = _monotonic()
        wake = [sweep_at]
        due = self._throttle.next_due()
        if due is not None:
            wake.append(due)
        due = self._aggregates.next_due()
        if due is not None:
            wake.append(due)
        due = self._writer.next_work()
        if due is not None:
            wake.append(due)
        return min(wake) - now

    def _forget_idle(self) -> None:
        with self._lock:
            self._throttle.forget_idle(self.settings.stream_ttl_seconds)
            self._aggregates.forget_idle(self.settings.stream_ttl_seconds)
            for operation_id in self._meter.operations():
                if operation_id not in self._throttle:
                    self._meter.forget(operation_id)
            self._appenders.clear()
