"""Worker side of aggregate operations: child statuses and progress become ``UPDATE_SCRIPT`` calls on the parent.

A child learns its parent from the ``cpws_aggregate`` message header when it starts (no Redis read) and keeps it in
its task scope, so other tasks cost one attribute read per status and per ``report_progress``. A revoke seen by the
worker's main process reads the child->parent key (one GET). The calls go through the publisher's writer, in order
with its entries and buffered like them while Redis is down (a child's terminal update ranks with terminal statuses).
Child progress is throttled per child (``throttle_seconds``) and the aggregate entries again inside the script; a
held-back child value or a dirty aggregate is written by the publisher's background thread when its interval ends.
An owned aggregate (``track(owner=)``) names its owner in each written update's reply; the owner's summary update is
then buffered right behind it. Bookkeeping never raises into a task: errors are logged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from .._aggregate.scripts import UPDATE
from .._aggregate.track import AGGREGATE_HEADER, update_args, update_keys
from .._core.append import ScriptCall
from .._core.errors import ProgressError
from .._core.history import UserHistory
from .._core.keys import KeySpace
from .._core.schemas import TaskStatus, utc_now_iso
from .._core.settings import ProgressSettings
from .._core.throttle import Decision, Throttle
from . import context as _context
from .buffer import Rank
from .results import PublishResult
from .writer import StreamWriter

if TYPE_CHECKING:
    from .publisher import ProgressPublisher

logger = logging.getLogger(__name__)

_EVENTS = {
    TaskStatus.STARTED: "started",
    TaskStatus.RETRYING: "retrying",
    TaskStatus.COMPLETED: "completed",
    TaskStatus.FAILED: "failed",
    TaskStatus.CANCELLED: "cancelled",
}
_ENDED = frozenset({"completed", "failed", "cancelled"})

HeldProgress = tuple[str, float]
"""A child's held-back progress: its aggregate operation id and its fraction."""


class AggregateUpdates:
    """One publisher's aggregate updates in one process: it shares the publisher's lock, writer and thread.

    ``wake`` is called with the lock held when ``next_due`` may have moved earlier (the owner's thread looks again).
    """

    def __init__(
        self, settings: ProgressSettings, writer: StreamWriter, lock: threading.Lock, wake: Callable[[], None]
    ) -> None:
        self.settings = settings
        self.calls = 0
        """Update calls Redis has answered (for benchmarks)."""
        self._keys = KeySpace(settings.key_prefix)
        self._history = UserHistory(settings)
        self._writer = writer
        self._lock = lock
        self._wake = wake
        self._throttle: Throttle[HeldProgress] = Throttle(settings.throttle_seconds)
        self._flushes: dict[str, float] = {}
        """Aggregate operation id -> when its dirty aggregate entry is due (``time.monotonic()``)."""

    def status(self, operation_id: str, child: str, event: str, error_type: str = "", message: str = "") -> None:
        """A child's status, written in turn; an ended child's held-back fraction travels with it."""
        keys = update_keys(self.settings, operation_id)
        ended = event in _ENDED
        with self._lock:
            held = self._throttle.forget(child) if ended else self._throttle.take_pending(child)
            fraction = None if held is None else held[1]
            call = self._call(keys, operation_id, child, event, fraction, error_type, message)
            result = self._writer.enqueue(call, Rank.TERMINAL if ended else Rank.EVENT)
        self._writer.write_now(call, result)

    def progress(self, operation_id: str, child: str, fraction: float) -> PublishResult:
        """A child's progress: written at most once per throttle interval per child, the newest held value later."""
        keys = update_keys(self.settings, operation_id)
        now = time.monotonic()
        with self._lock:
            decision = self._throttle.offer(child, (operation_id, fraction), now=now)
            if decision is Decision.SCHEDULE:
                self._wake()
            if decision is not Decision.PUBLISH:
                return PublishResult.THROTTLED
            call = self._call(keys, operation_id, child, "progress", fraction)
            result = self._writer.enqueue(call, Rank.PROGRESS)
        return self._writer.write_now(call, result)

    def parent_of(self, task_id: str) -> str | None:
        """The aggregate a task belongs to, by one GET of its child->parent key; ``None`` while Redis is down."""
        value = self._writer.get(self._keys.aggregate_parent(task_id))
        return None if value is None else value.decode()

    def next_due(self) -> float | None:
        """When ``enqueue_due`` next has something to do (``time.monotonic()``), if ever (lock held)."""
        times = list(self._flushes.values())
        due = self._throttle.next_due()
        if due is not None:
            times.append(due)
        return min(times, default=None)

    def enqueue_due(self, everything: bool = False) -> None:
        """Buffer the held-back child values and aggregate flushes that are due, or all of them (lock held)."""
        if everything:
            held = [(child, self._throttle.take_pending(child)) for child in self._throttle.pending_keys()]
        else:
            held = list(self._throttle.take_due())
        for child, value in held:
            if value is not None:
                self._buffer(value[0], child, "progress", value[1])
        now = time.monotonic()
        for operation_id in [key for key, at in self._flushes.items() if everything or at <= now]:
            del self._flushes[operation_id]
            self._buffer(operation_id, "", "flush", None)

    def forget_idle(self, idle_seconds: float) -> None:
        """Drop the throttle state of children idle for ``idle_seconds`` (lock held)."""
        self._throttle.forget_idle(idle_seconds)

    def _buffer(self, operation_id: str, child: str, event: str, fraction: float | None) -> None:
        keys = update_keys(self.settings, operation_id)  # validated when the value was offered: cannot raise here
        self._writer.hold(self._call(keys, operation_id, child, event, fraction), Rank.PROGRESS)

    def _call(
        self,
        keys: list[str],
        operation_id: str,
        child: str,
        event: str,
        fraction: float | None,
        error_type: str = "",
        message: str = "",
    ) -> ScriptCall:
        args = update_args(self.settings, operation_id, child, event, fraction, error_type, message)
        return ScriptCall(UPDATE, keys, args, partial(self._replied, operation_id))

    def _replied(self, operation_id: str, reply: Any) -> None:
        """``UPDATE_SCRIPT`` answered ``{written, dirty, due_ms, terminal, ...}``: plan a flush of a dirty aggregate,
        or follow a written update of an owned aggregate with its owner's summary update."""
        with self._lock:
            self.calls += 1
            if int(reply[0]) == 1 and len(reply) > 4 and reply[4]:
                decoded = [_text(part) for part in reply]
                rank = Rank.TERMINAL if decoded[3] else Rank.PROGRESS
                self._writer.hold(self._summary(operation_id, decoded), rank)
            if not int(reply[1]):
                return
            at = time.monotonic() + int(reply[2]) / 1000
            if at < self._flushes.get(operation_id, float("inf")):
                self._flushes[operation_id] = at
                self._wake()

    def _summary(self, operation_id: str, reply: list[str]) -> ScriptCall:
        """The owner's summary update after a written aggregate entry (``reply`` decoded)."""
        terminal, owner, percentage, error_type, error_message = reply[3:8]
        patch: dict[str, Any] = {"status": terminal or "started", "progress_percentage": float(percentage)}
        if terminal:
            patch["message"] = f"Aggregate {terminal}"
        if error_type or error_message:
            patch.update(error_type=error_type or None, error_message=error_message or None)
        return self._history.record(owner, operation_id, patch, utc_now_iso())


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def child_status(publisher: ProgressPublisher, task_id: str, status: TaskStatus, data: dict[str, Any]) -> None:
    """Called after a task's status entry is published: update its aggregate, if it belongs to one."""
    try:
        event = _EVENTS.get(status)
        if event is None:
            return
        scope = _context.current()
        if scope is not None and scope.task_id != task_id:
            scope = None
        operation_id = scope.aggregate_id if scope is not None else None
        if operation_id is None:
            if status is TaskStatus.STARTED:
                operation_id = _context.running_header(task_id, AGGREGATE_HEADER)
                if scope is not None:
                    scope.aggregate_id = operation_id
            elif status is TaskStatus.CANCELLED:
                operation_id = publisher._aggregates.parent_of(task_id)
            if operation_id is None:
                return
        error_type = message = ""
        if status is TaskStatus.FAILED:
            error_type, message = str(data.get("error_type") or ""), str(data.get("error_message") or "")
        publisher._aggregates.status(operation_id, task_id, event, error_type, message)
    except ProgressError as exc:  # an aggregate or task id that cannot be a key
        logger.warning("celery-progress-ws: no aggregate update for task %s: %s", task_id, exc)
    except Exception:  # a task never fails because aggregate bookkeeping failed
        logger.exception("celery-progress-ws: aggregate update for task %s failed", task_id)


def child_progress(
    publisher: ProgressPublisher, operation_id: str, task_id: str, current: float, total: float | None
) -> None:
    """Called by ``report_progress`` for a running child of aggregate ``operation_id``: feed it its fraction."""
    if total is None:
        return
    try:
        fraction = 1.0 if total == 0 else min(current / total, 1.0)
        publisher._aggregates.progress(operation_id, task_id, fraction)
    except ProgressError as exc:
        logger.warning("celery-progress-ws: no aggregate progress for task %s: %s", task_id, exc)
    except Exception:
        logger.exception("celery-progress-ws: aggregate progress for task %s failed", task_id)
