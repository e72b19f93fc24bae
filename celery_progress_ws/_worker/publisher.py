"""The synchronous publisher of worker processes: throttled progress, entries in order, never an exception for Redis.

Threads: every public method may be called from any thread. ``_lock`` guards the throttle (all but its lock-free
``keep``, which lets a dropped report skip the lock), the rate state and the writer's buffer, and is never held
during network I/O; decisions and enqueueing happen under it together, so the writer (see ``writer``) delivers each
operation's entries in the order they were decided.

The class is split by concept into base classes that share its state: ``entries.PublisherEntries`` makes the
entries, ``background.PublisherThread`` runs the background thread, and this module holds the public methods.

Processes: a forked child starts clean (new locks, empty buffer, no thread, no connection; see ``os.register_at_fork``),
so a connection opened by this publisher is never used by two processes.

gevent and eventlet: with the standard library monkey-patched (``celery worker -P gevent`` and ``-P eventlet`` do it),
the locks, the background thread and the thread-local task scope become greenlet-based and socket waits yield, so all of
the above holds per greenlet. A task that computes without ever yielding delays the trailing publishes until it yields;
they are still written before its terminal status. Unpatched, every round trip blocks the hub.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from types import TracebackType
from typing import Any

from .._core import metrics
from .._core.clients import validate_url
from .._core.codec import encode_entry, make_entry
from .._core.errors import InvalidOperationId
from .._core.history import UserHistory
from .._core.jsonsafe import PLAIN_TYPES, json_safe_fields, text_of
from .._core.keys import KeySpace, user_digest
from .._core.policy import ttl_for
from .._core.schemas import STATUS_UPDATE
from .._core.settings import ProgressSettings
from .._core.throttle import Decision, Throttle
from .aggregate_updater import AggregateUpdates
from .background import PublisherThread
from .buffer import Rank
from .connection import ClientSource
from .meter import COMPUTED_FIELDS, Count, ProgressMeter, RawProgress, check_count, check_fields
from .results import PublishResult, rank_of
from .writer import StreamWriter

_INF = float("inf")
_monotonic = time.monotonic
_KEPT = Decision.KEPT
_SCHEDULE = Decision.SCHEDULE
_THROTTLED = PublishResult.THROTTLED


class ProgressPublisher(PublisherThread):
    """Writes entries to operation streams from sync code; thread-safe, fork-safe, outage-tolerant.

    Pass a ready-made ``redis.Redis`` or ``RedisCluster`` as ``client`` to share one (its own timeouts and retries then
    apply), or a factory making one, called once in each process; otherwise each process lazily opens its own
    connection from the settings' URL, with their socket timeout and one immediate reconnect.
    """

    def __init__(self, settings: ProgressSettings | None = None, client: ClientSource | None = None) -> None:
        self.settings = settings if settings is not None else ProgressSettings()
        if client is None:
            validate_url(self.settings)  # a malformed URL is a ValueError here rather than at the first report
        self._given_client = client
        self._keys = KeySpace(self.settings.key_prefix)
        self._start_clean()
        os.register_at_fork(after_in_child=_ForkHook(self))

    def _start_clean(self) -> None:
        """(Re)create all per-process state; the only thing a forked child keeps is the configuration."""
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._throttle: Throttle[RawProgress] = Throttle(self.settings.throttle_seconds)
        self._meter = ProgressMeter()
        self._appenders = {}
        self._owners = {}
        self._history = UserHistory(self.settings)
        self._writer = StreamWriter(self.settings, self._given_client, self._lock, self._on_backlog)
        self._aggregates = AggregateUpdates(self.settings, self._writer, self._lock, self._on_backlog)
        self._thread: threading.Thread | None = None
        self._generation = 0
        self._throttled = 0
        """Reports held back by the throttle: a plain int on the hot path, handed to the metrics by ``_fold``."""
        self._folded = (0, 0, 0)
        """(throttled, buffer drops, buffered) as last handed to the metrics."""

    @property
    def healthy(self) -> bool:
        """``False`` from a failed write until a later write (or ``check()``) succeeds."""
        return self._writer.healthy

    @property
    def buffered(self) -> int:
        """How many entries wait in memory for Redis."""
        with self._lock:
            return self._writer.pending()

    # -- publishing -------------------------------------------------------------------------------------------------

    def publish(
        self,
        operation_id: str,
        entry_type: str,
        data: dict[str, Any],
        *,
        final: bool = False,
        owner: str | None = None,
    ) -> PublishResult:
        """Write one entry now, after the operation's held-back progress value if there is one.

        ``final`` also forgets the operation's throttle, rate state and owner (for the entry that ends a task
        attempt). For an operation a user owns (``owner``, a user id, or one given to ``own``), a status entry also
        records the owner and is followed by the owner's summary update (see docs/ownership.md).
        ``data`` is converted by the rules of ``celery_progress_ws._core.jsonsafe``. Raises ``InvalidOperationId``,
        ``EntryTooLarge`` or the ``TypeError``/``ValueError`` of a refused value before anything is written or
        forgotten; the held-back value written first never raises (one that cannot be encoded is logged and skipped).
        """
        entry = make_entry(entry_type, data)
        message = encode_entry(entry, self.settings.max_entry_bytes)
        ttl = ttl_for(self.settings, entry_type, data)
        call = self._call(operation_id, message, ttl, metrics.entry_kind(entry_type))
        given = user_digest(owner) if owner is not None else None
        rank = rank_of(entry_type, data)
        with self._lock:
            raw = self._throttle.forget(operation_id) if final else self._throttle.take_pending(operation_id)
            if raw is not None:
                self._enqueue_trailing(operation_id, raw)
            digest = given or self._owners.get(operation_id)
            summary = self._summary_call(operation_id, entry_type, data, entry["timestamp"], digest)
            if digest is not None and summary is not None and entry_type == STATUS_UPDATE:
                call = self._history.owned(call, operation_id, digest)
            if final:
                self._forget_entries(operation_id)
            result = self._writer.enqueue(call, rank)
            if result is not PublishResult.DROPPED:
                self._enqueue_summary(summary, rank)
        result = self._writer.write_now(call, result)
        self._fold()
        return result

    def progress(
        self,
        operation_id: str,
        current: Count,
        total: Count | None = None,
        message: str | None = None,
        fields: dict[str, Any] | None = None,
        force: bool = False,
    ) -> PublishResult:
        """Report progress, throttled per operation; see ``report_progress`` for the rules and the computed fields.

        ``fields`` and ``message`` are converted (or refused with ``TypeError``/``ValueError``) by the rules of
        ``_core.jsonsafe`` before anything is stored. A value the throttle holds back while an earlier one waits costs
        a type check per field, two number checks, a clock read and a tuple: no lock, no I/O, no JSON.
        Extra ``fields`` named like computed ones raise ``TypeError`` when the report is published.
        """
        if fields:  # a copy: a change the caller makes later must not reach a held-back value
            fields = dict(fields) if all(key.__class__ is str for key in fields) else json_safe_fields(fields)
        return self._report(operation_id, current, total, message, fields, force)

    def _report(
        self,
        operation_id: str,
        current: Count,
        total: Count | None,
        message: str | None,
        fields: dict[str, Any] | None,
        force: bool,
    ) -> PublishResult:
        """``progress`` for ``fields`` whose keys are all ``str`` (keyword arguments: ``report_progress`` calls it)."""
        # Inline checks for the common cases: plain field values, a str message, int/float counts. The full
        # conversion (json_safe_fields, text_of, check_count) handles or refuses everything else.
        if fields:
            for value in fields.values():
                if type(value) not in PLAIN_TYPES:
                    fields = json_safe_fields(fields)
                    break
        if message.__class__ is not str and message is not None:
            message = text_of(message, "message")
        if not ((current.__class__ is int and current >= 0) or (current.__class__ is float and 0 <= current < _INF)):
            current = check_count(current, "current")
        if total is not None and not (
            (total.__class__ is int and total >= 0) or (total.__class__ is float and 0 <= total < _INF)
        ):
            total = check_count(total, "total")
        now = _monotonic()
        raw = (current, total, message, fields, now)
        publish_now = force or current == total
        if not publish_now and self._throttle.keep(operation_id, raw, now):
            self._throttled += 1
            return _THROTTLED
        lock = self._lock
        lock.acquire()
        try:
            decision = self._throttle.offer(operation_id, raw, publish_now, now)
            if decision is _KEPT:
                self._throttled += 1
                return _THROTTLED
            if decision is _SCHEDULE:
                self._throttled += 1
                self._ensure_thread()
                self._wakeup.notify()
                return _THROTTLED
            try:
                if fields and not COMPUTED_FIELDS.isdisjoint(fields):
                    check_fields(fields)
                call, summary = self._progress_call(operation_id, raw)
            except (InvalidOperationId, TypeError):
                self._throttle.forget(operation_id)
                raise
            result = self._writer.enqueue(call, Rank.PROGRESS)
            if result is not PublishResult.DROPPED:
                self._enqueue_summary(summary, Rank.PROGRESS)
            self._ensure_thread()
        finally:
            lock.release()
        result = self._writer.write_now(call, result)
        self._fold()
        return result

    def _fold(self) -> None:
        """Hand what the hot path counted in plain ints to the metrics; called after writes and by the background
        thread (a held-back report always leaves a value that thread writes), never on the path of a dropped report."""
        with self._lock:
            now = (self._throttled, self._writer.lanes.dropped()[1], self._writer.pending())
            before, self._folded = self._folded, now
        if now == before:
            return
        worker = metrics.worker
        if now[0] != before[0]:
            worker.throttled(now[0] - before[0])
        if now[1] != before[1]:
            worker.dropped("buffer_full", now[1] - before[1])
        if now[2] != before[2]:
            worker.buffered(now[2])

    def own(self, operation_id: str, user_id: str) -> None:
        """Record ``user_id`` as the owner of a running operation: its statuses and progress update their summary
        until the entry that ends the attempt (``final``) or ``disown``."""
        digest = user_digest(user_id)
        with self._lock:
            self._owners[operation_id] = digest

    def disown(self, operation_id: str) -> None:
        """Forget an operation's owner in this process (its task ended without a final entry)."""
        with self._lock:
            self._owners.pop(operation_id, None)

    def flush_operation(self, operation_id: str) -> None:
        """Write the operation's held-back progress value now, if it has one (a task ends without a status)."""
        with self._lock:
            raw = self._throttle.take_pending(operation_id)
            if raw is None:
                return
            self._enqueue_trailing(operation_id, raw)
        self._writer.drain()
        self._fold()

    def flush(self, timeout: float | None = None) -> bool:
        """Publish every held-back progress value (aggregate updates included) now and write all buffered entries;
        ``True`` if nothing is left.

        While Redis does not answer it retries every ``retry_interval_seconds`` until ``timeout`` seconds have passed
        (default: the socket timeout).
        """
        deadline = _monotonic() + (self.settings.socket_timeout_seconds if timeout is None else timeout)
        with self._lock:
            for operation_id in self._throttle.pending_keys():
                raw = self._throttle.take_pending(operation_id)
                if raw is not None:
                    self._enqueue_trailing(operation_id, raw)
            self._aggregates.enqueue_due(everything=True)
        while not self._writer.drain(probe=True):
            self._fold()
            remaining = deadline - _monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(max(self.settings.retry_interval_seconds, 0.01), remaining))
        self._fold()
        return True

    def check(self) -> bool:
        """Ping Redis once; on failure log the outage warning (once) and return ``False``. Never raises."""
        return self._writer.check()

    def close(self, timeout: float | None = None) -> bool:
        """Flush (see ``flush``), stop the background thread and close the connection this publisher opened.

        The publisher stays usable: a later call reopens what it needs. Returns whether everything was written.
        """
        flushed = self.flush(timeout)
        self._stop_thread()
        self._writer.close()
        return flushed

    def __enter__(self) -> ProgressPublisher:
        return self

    def __exit__(self, *exc_info: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


class _ForkHook:
    """Resets a publisher in a forked child; holds it weakly so publishers can still be garbage-collected."""

    __slots__ = ("_ref",)

    def __init__(self, publisher: ProgressPublisher) -> None:
        self._ref = weakref.ref(publisher)

    def __call__(self) -> None:
        publisher = self._ref()
        if publisher is not None:
            publisher._start_clean()
