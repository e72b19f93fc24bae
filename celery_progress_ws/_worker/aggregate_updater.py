"""Worker side of aggregate operations: child statuses and progress become ``UPDATE_SCRIPT`` calls on the parent.

A child learns its parent from the ``cpws_aggregate`` message header when it starts (no Redis read); tasks without
it cost one dict lookup per status and per ``report_progress``. A revoke seen by the worker's main process reads the
child->parent key (one GET). Child progress is throttled per child here (``throttle_seconds``) and the aggregate
entries are throttled again inside the script; a dirty aggregate or a held-back child value is written by this
process's flusher thread when its interval ends. Bookkeeping never raises into a task: Redis errors are logged.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from typing import Any

import redis
from redis.commands.core import Script
from redis.exceptions import RedisError

from .._aggregate.scripts import UPDATE_SCRIPT
from .._aggregate.track import AGGREGATE_HEADER, update_args, update_keys
from .._core.errors import ProgressError
from .._core.keys import KeySpace
from .._core.schemas import TaskStatus
from .._core.settings import ProgressSettings

logger = logging.getLogger(__name__)

running: dict[str, str] = {}
"""Child task id -> aggregate operation id, for children running in this process (read by ``report_progress``)."""

_EVENTS = {
    TaskStatus.STARTED: "started",
    TaskStatus.RETRYING: "retrying",
    TaskStatus.COMPLETED: "completed",
    TaskStatus.FAILED: "failed",
    TaskStatus.CANCELLED: "cancelled",
}
_ENDED = (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED)
MAX_RUNNING = 100_000
"""``running`` is emptied past this size (children that ended without a terminal status)."""


class AggregateUpdater:
    """One process's connection, per-child throttle and flusher thread for the aggregates of one settings object."""

    def __init__(self, settings: ProgressSettings) -> None:
        self.settings = settings
        self.calls = 0
        """Round trips made (for benchmarks)."""
        self._client: redis.Redis | None = None
        self._script: Script | None = None
        self._lock = threading.Condition()
        self._connect_lock = threading.Lock()
        self._last_sent: dict[str, float] = {}
        self._pending: dict[str, tuple[str, float]] = {}
        self._due: dict[str, float] = {}
        self._thread: threading.Thread | None = None
        self._down_until = 0.0

    def update(self, operation_id: str, child: str, event: str, fraction: float | None = None, **extra: str) -> None:
        """Run one ``UPDATE_SCRIPT`` call now; schedule a trailing flush if it left the aggregate dirty."""
        if time.monotonic() < self._down_until:
            return
        try:
            keys = update_keys(self.settings, operation_id)
            args = update_args(self.settings, operation_id, child, event, fraction, **extra)
            self.calls += 1
            _, dirty, due_ms, _ = self._connect()(keys=keys, args=args)
        except ProgressError as exc:
            logger.warning("celery-progress-ws: no aggregate update for %s: %s", operation_id, exc)
            return
        except RedisError as exc:
            self._down_until = time.monotonic() + self.settings.retry_interval_seconds
            logger.warning("celery-progress-ws: aggregate update of %s failed: %s", operation_id, exc)
            return
        if dirty:
            self._schedule(operation_id, time.monotonic() + int(due_ms) / 1000)

    def parent_of(self, task_id: str) -> str | None:
        """One GET of the child->parent key (revokes, handled in the worker's main process)."""
        if time.monotonic() < self._down_until:
            return None
        try:
            self._connect()
            assert self._client is not None
            self.calls += 1
            value = self._client.get(KeySpace(self.settings.key_prefix).aggregate_parent(task_id))
        except (RedisError, ProgressError) as exc:
            logger.warning("celery-progress-ws: cannot look up the aggregate of %s: %s", task_id, exc)
            return None
        return value.decode() if isinstance(value, bytes) else None

    def _connect(self) -> Script:
        """This process's connection and script object, created on first use."""
        with self._connect_lock:
            if self._script is None:
                self._client = redis.Redis.from_url(
                    self.settings.redis_url, socket_timeout=self.settings.socket_timeout_seconds,
                    socket_connect_timeout=self.settings.socket_timeout_seconds,
                )  # fmt: skip
                self._script = self._client.register_script(UPDATE_SCRIPT)
            return self._script

    def progress(self, operation_id: str, child: str, fraction: float) -> None:
        """A child's progress: sent at most once per throttle interval per child, the newest held value later."""
        now = time.monotonic()
        with self._lock:
            last = self._last_sent.get(child)
            if last is not None and now - last < self.settings.throttle_seconds:
                self._pending[child] = (operation_id, fraction)
                self._wake(last + self.settings.throttle_seconds, child)
                return
            self._last_sent[child] = now
            self._pending.pop(child, None)
        self.update(operation_id, child, "progress", fraction)

    def status(self, operation_id: str, child: str, event: str, **extra: str) -> None:
        """A child's status; an ended child's held-back fraction travels with it."""
        with self._lock:
            held = self._pending.pop(child, None)
            if event in ("completed", "failed", "cancelled"):
                self._last_sent.pop(child, None)
        self.update(operation_id, child, event, held[1] if held else None, **extra)

    def _schedule(self, operation_id: str, at: float) -> None:
        with self._lock:
            self._wake(at, "\0" + operation_id)

    def _wake(self, at: float, key: str) -> None:
        """Remember a due time (lock held) and make sure the flusher thread runs."""
        self._due[key] = min(at, self._due.get(key, at))
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="celery-progress-ws-aggregates", daemon=True)
            self._thread.start()
        self._lock.notify()

    def _run(self) -> None:
        """Send held-back child values and flush dirty aggregates when due."""
        while True:
            with self._lock:
                while not self._due or (delay := min(self._due.values()) - time.monotonic()) > 0:
                    self._lock.wait(None if not self._due else delay)
                now = time.monotonic()
                ready = [key for key, at in self._due.items() if at <= now]
                work: list[tuple[str, str, str, float | None]] = []
                for key in ready:
                    del self._due[key]
                    if key.startswith("\0"):
                        work.append((key[1:], "", "flush", None))
                    elif (held := self._pending.pop(key, None)) is not None:
                        self._last_sent[key] = now
                        work.append((held[0], key, "progress", held[1]))
            for operation_id, child, event, fraction in work:
                self.update(operation_id, child, event, fraction)

    def close(self) -> None:
        """Write held-back values and flush dirty aggregates now (worker process shutdown)."""
        with self._lock:
            work = [(key, *held) for key, held in self._pending.items()]
            self._pending.clear()
            flushes = [key[1:] for key in self._due if key.startswith("\0")]
            self._due.clear()
        for child, operation_id, fraction in work:
            self.update(operation_id, child, "progress", fraction)
        for operation_id in flushes:
            self.update(operation_id, "", "flush")


_updaters: weakref.WeakKeyDictionary[Any, AggregateUpdater] = weakref.WeakKeyDictionary()
_fork_hook_installed = False


def updater_for(publisher: Any) -> AggregateUpdater:
    """The updater of ``publisher``'s settings in this process (a forked child starts with none)."""
    global _fork_hook_installed
    found = _updaters.get(publisher)
    if found is None:
        if not _fork_hook_installed:
            os.register_at_fork(after_in_child=_reset)
            _fork_hook_installed = True
        found = _updaters.setdefault(publisher, AggregateUpdater(publisher.settings))
    return found


def _reset() -> None:
    _updaters.clear()
    running.clear()


def child_status(publisher: Any, task_id: str, status: TaskStatus, data: dict[str, Any]) -> None:
    """Called after a task's status entry is published: update its aggregate, if it belongs to one."""
    try:
        event = _EVENTS.get(status)
        if event is None:
            return
        operation_id = running.get(task_id)
        if operation_id is None:
            operation_id = _parent_from_request(task_id) if status is TaskStatus.STARTED else None
            if operation_id is None and status is TaskStatus.CANCELLED:
                operation_id = updater_for(publisher).parent_of(task_id)
            if operation_id is None:
                return
        if status in _ENDED:
            running.pop(task_id, None)
        elif status is TaskStatus.STARTED:
            if len(running) >= MAX_RUNNING:
                running.clear()
            running[task_id] = operation_id
        extra = {}
        if status is TaskStatus.FAILED:
            extra = {"error_type": str(data.get("error_type") or ""), "message": str(data.get("error_message") or "")}
        updater_for(publisher).status(operation_id, task_id, event, **extra)
    except Exception:  # a task never fails because aggregate bookkeeping failed
        logger.exception("celery-progress-ws: aggregate update for task %s failed", task_id)


def child_progress(publisher: Any, task_id: str, current: float, total: float | None) -> None:
    """Called by ``report_progress`` for a running child of an aggregate: feed its fraction to the aggregate."""
    operation_id = running.get(task_id)
    if operation_id is None or total is None:
        return
    try:
        fraction = 1.0 if total == 0 else min(current / total, 1.0)
        updater_for(publisher).progress(operation_id, task_id, fraction)
    except Exception:
        logger.exception("celery-progress-ws: aggregate progress for task %s failed", task_id)


def close_all() -> None:
    """Flush every updater of this process (called when a pool process shuts down)."""
    for updater in list(_updaters.values()):
        updater.close()


def _parent_from_request(task_id: str) -> str | None:
    from celery import current_task

    request = current_task.request if current_task else None
    if request is None or request.id != task_id:
        return None
    parent = getattr(request, AGGREGATE_HEADER, None)
    if parent is None:
        parent = (getattr(request, "headers", None) or {}).get(AGGREGATE_HEADER)
    return parent if isinstance(parent, str) else None
