"""Celery signal handlers that turn a task's lifecycle into ``status_update`` entries, for the apps that enabled them.

Handlers are connected once per process (the first time an app enables them) and then look the sending app up in a
weak registry, so tasks and workers of other apps in the same process are ignored. ``before_task_publish`` carries no
app: a process with exactly one app enabled for ``queued`` entries writes them for every task it sends; with several,
the app that has the task registered is chosen, and a task none of them knows is skipped.

Ownership: a message with an ``OWNER_HEADER`` header (or whose owner the app's ``owner`` hook names; the header is
then added) belongs to that user: its ``queued`` entry records the owner, and the worker reads the header from the task
request when the task starts, so every status and progress of the task updates the owner's summary.
"""

from __future__ import annotations

import logging
import sys
import weakref
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from celery import Celery, Task, signals

from .._core import metrics
from .._core.errors import EntryTooLarge, ProgressError
from .._core.schemas import STATUS_UPDATE, TaskStatus
from .._core.settings import ProgressSettings
from . import aggregate_updater as _aggregate_hooks
from . import context as _context
from .app_config import client_for_app, settings_for_app
from .publisher import ProgressPublisher

logger = logging.getLogger(__name__)

"""``app.conf`` key that may hold a ``ProgressSettings`` or a mapping of its fields."""

MAX_ERROR_MESSAGE = 2000
"""Characters of an exception's text kept in a ``failed`` entry."""

OWNER_HEADER = "progress_owner"
"""Message header naming the user who owns a task: ``task.apply_async(..., headers={OWNER_HEADER: user_id})``."""

OwnerHook = Callable[[str, Mapping[str, Any]], object]
"""``owner(task_name, headers)``: the user id owning a task being sent, or ``None``; for apps that derive it."""


@dataclass(eq=False)
class Binding:
    """What one app enabled in this process, and the publisher its entries go through."""

    publisher: ProgressPublisher
    lifecycle: bool = False
    queued: bool = False
    owner: OwnerHook | None = None


_bindings: weakref.WeakKeyDictionary[Celery, Binding] = weakref.WeakKeyDictionary()


def enable_worker_events(app: Celery, publisher: ProgressPublisher) -> Binding:
    """Publish the lifecycle statuses of ``app``'s tasks in this process, and ``queued`` if the settings say so."""
    binding = _bindings.setdefault(app, Binding(publisher))
    binding.publisher = publisher
    binding.lifecycle = True
    binding.queued = binding.queued or publisher.settings.publish_queued
    _connect()
    return binding


def enable_queued_events(
    app: Celery, settings: ProgressSettings | None = None, *, owner: OwnerHook | None = None
) -> ProgressPublisher:
    """Write a ``queued`` entry for every task this process sends through ``app``; for web apps that only send tasks.

    ``settings`` default to ``settings_for_app(app)``. Call it once at start-up; it returns the publisher it uses.
    If ``app`` is already enabled in this process (say, by the bootstep), that publisher is kept and returned.
    ``owner(task_name, headers)`` names the user owning a task sent without a ``progress_owner`` header (``None``:
    nobody); see docs/ownership.md.
    """
    binding = _bindings.get(app)
    if binding is None:
        publisher = ProgressPublisher(settings or settings_for_app(app), client_for_app(app))
        binding = _bindings.setdefault(app, Binding(publisher))
    binding.queued = True
    if owner is not None:
        binding.owner = owner
    _connect()
    return binding.publisher


def disable_events(app: Celery) -> Binding | None:
    """Stop publishing anything for ``app`` in this process; return what was enabled."""
    return _bindings.pop(app, None)


def bindings() -> list[Binding]:
    """Everything enabled in this process."""
    return list(_bindings.values())


def _connect() -> None:
    """Connect every handler once per process (signals keep them; ``dispatch_uid`` makes this idempotent)."""
    for signal, handler in (
        (signals.before_task_publish, _on_before_publish),
        (signals.task_prerun, _on_prerun),
        (signals.task_postrun, _on_postrun),
        (signals.task_retry, _on_retry),
        (signals.task_success, _on_success),
        (signals.task_failure, _on_failure),
        (signals.task_revoked, _on_revoked),
        (signals.worker_process_shutdown, _on_process_shutdown),
    ):
        signal.connect(handler, weak=False, dispatch_uid=f"celery_progress_ws.{handler.__name__}")


def _lifecycle(task: Task[Any, Any] | None) -> Binding | None:
    binding = _bindings.get(task.app) if task is not None else None
    return binding if binding is not None and binding.lifecycle else None


def _status(
    publisher: ProgressPublisher,
    task_id: str | None,
    status: TaskStatus,
    task_name: str,
    message: str,
    owner: str | None = None,
    **extra: Any,
) -> None:
    """Publish one status entry; all but ``queued``/``started`` end an attempt, flushing its held-back value first."""
    if not task_id:
        return
    data: dict[str, Any] = {"status": status.value, "task_name": task_name, "message": message, **extra}
    final = status not in (TaskStatus.QUEUED, TaskStatus.STARTED)
    try:
        try:
            publisher.publish(task_id, STATUS_UPDATE, data, final=final, owner=owner)
        except EntryTooLarge:  # a huge exception text or traceback: keep the status, drop the details
            data = {"status": status.value, "task_name": task_name, "message": message[:200]}
            publisher.publish(task_id, STATUS_UPDATE, data, final=final, owner=owner)
    except ProgressError as exc:  # a custom task id that cannot be a key, or a tiny max_entry_bytes
        metrics.worker.dropped(metrics.drop_reason(exc))
        logger.warning("celery-progress-ws: no %s entry for task %s: %s", status.value, task_id, exc)
    except Exception:  # a signal handler that raises would reach Celery: a task never fails because of progress
        logger.exception("celery-progress-ws: no %s entry for task %s", status.value, task_id)
    _aggregate_hooks.child_status(publisher, task_id, status, data)


def _scope_of(task_id: str | None) -> _context.TaskScope | None:
    scope = _context.current()
    return scope if scope is not None and task_id and scope.task_id == task_id else None


def _flush_domain_operations(scope: _context.TaskScope | None) -> None:
    """Write the held-back values of the explicit operation ids a task reported to (its own id is _status's job)."""
    if scope is None:
        return
    for operation_id in sorted(scope.operations):
        _flush(scope.publisher, operation_id)
    scope.operations.clear()


def _flush(publisher: ProgressPublisher, operation_id: str) -> None:
    """Write an operation's held-back value; an unexpected error is logged, never raised into Celery (and so never
    keeps a status entry that follows from being written)."""
    try:
        publisher.flush_operation(operation_id)
    except Exception:
        logger.exception("celery-progress-ws: held-back progress of %s not flushed", operation_id)


def _on_before_publish(sender: str | None = None, headers: MutableMapping[str, Any] | None = None, **_: Any) -> None:
    headers = headers if headers is not None else {}
    task_id = headers.get("id")
    if headers.get("retries"):
        scope = _scope_of(task_id)
        if scope is not None:  # the running task re-sends itself: say `retrying` before the next attempt can start
            _announce_retry(scope, sender or "", headers)
        return
    candidates = [binding for app, binding in _bindings.items() if binding.queued and _knows(app, sender)]
    if not candidates:
        candidates = [binding for binding in _bindings.values() if binding.queued]
        if len(candidates) != 1:
            return
    binding = candidates[0]
    owner = _owner_of(binding, sender or "", headers)
    _status(binding.publisher, task_id, TaskStatus.QUEUED, sender or "", "Task queued", owner)


def _owner_of(binding: Binding, task_name: str, headers: MutableMapping[str, Any]) -> str | None:
    """The user owning a task being sent: its header, else the app's hook; the answer becomes the header as text
    (an integer user id too), which is what the worker reads."""
    owner = headers.get(OWNER_HEADER)
    if owner is None and binding.owner is not None:
        try:
            owner = binding.owner(task_name, headers)
        except Exception:  # the application's hook: its failure must not keep the task from being sent
            logger.exception("celery-progress-ws: the owner hook failed for %s; the task is sent unowned", task_name)
            return None
    if owner is None or owner == "":
        return None
    headers[OWNER_HEADER] = owner = str(owner)
    return owner


def _announce_retry(scope: _context.TaskScope, task_name: str, headers: Mapping[str, Any]) -> None:
    """``retrying`` with the exception being handled (``raise self.retry(exc=exc)`` inside ``except``), if any."""
    handled = sys.exc_info()[1]
    message = f"{type(handled).__name__}: {handled}" if handled is not None else "Task will be retried"
    _flush_domain_operations(scope)
    extra = {"retries": headers.get("retries"), "eta": headers.get("eta")}
    _status(scope.publisher, scope.task_id, TaskStatus.RETRYING, task_name, message[:MAX_ERROR_MESSAGE], **extra)
    scope.retry_announced = True


def _knows(app: Celery, task_name: str | None) -> bool:
    """Whether ``app`` registers ``task_name``, without finalizing an app that is not finalized yet."""
    finalized = getattr(app, "finalized", False)  # a public attribute the celery-types stubs lack
    return bool(finalized and task_name in app.tasks)


def _on_prerun(sender: Task[Any, Any] | None = None, task_id: str | None = None, **_: Any) -> None:
    binding = _lifecycle(sender)
    if binding is None or sender is None or not task_id:
        return
    _context.push(_context.TaskScope(task_id, binding.publisher))
    owner = _context.running_header(task_id, OWNER_HEADER)
    if owner:
        binding.publisher.own(task_id, owner)
    _status(binding.publisher, task_id, TaskStatus.STARTED, sender.name, "Task started")


def _on_postrun(sender: Task[Any, Any] | None = None, task_id: str | None = None, **_: Any) -> None:
    binding = _lifecycle(sender)
    if binding is None or not task_id:
        return
    _flush_domain_operations(_scope_of(task_id))
    if _context.pop(task_id) is not None:  # Ignore/Reject end a task without a terminal signal: keep the last value
        _flush(binding.publisher, task_id)
    binding.publisher.disown(task_id)


def _on_retry(sender: Task[Any, Any] | None = None, request: Any = None, reason: Any = None, **_: Any) -> None:
    binding = _lifecycle(sender)
    if binding is None or sender is None or request is None:
        return
    scope = _scope_of(request.id)
    if scope is not None and scope.retry_announced:
        return
    _flush_domain_operations(scope)
    message = str(reason) if reason is not None else "Task will be retried"
    _status(binding.publisher, request.id, TaskStatus.RETRYING, sender.name, message[:MAX_ERROR_MESSAGE])


def _on_success(sender: Task[Any, Any] | None = None, **_: Any) -> None:
    binding = _lifecycle(sender)
    if binding is None or sender is None:
        return
    task_id = sender.request.id
    _flush_domain_operations(_scope_of(task_id))
    _status(binding.publisher, task_id, TaskStatus.COMPLETED, sender.name, "Task completed")


def _on_failure(
    sender: Task[Any, Any] | None = None,
    task_id: str | None = None,
    exception: BaseException | None = None,
    einfo: Any = None,
    **_: Any,
) -> None:
    binding = _lifecycle(sender)
    if binding is None or sender is None:
        return
    _flush_domain_operations(_scope_of(task_id))
    error_type = type(exception).__name__ if exception is not None else "Exception"
    error_message = str(exception)[:MAX_ERROR_MESSAGE] if exception is not None else ""
    extra: dict[str, Any] = {"error_type": error_type, "error_message": error_message}
    settings = binding.publisher.settings
    if settings.include_traceback and einfo is not None:
        extra["traceback"] = str(einfo.traceback)[-(settings.max_entry_bytes // 2) :]
    _status(binding.publisher, task_id, TaskStatus.FAILED, sender.name, f"Task failed: {error_type}", **extra)


def _on_revoked(
    sender: Task[Any, Any] | None = None,
    request: Any = None,
    terminated: bool = False,
    signum: Any = None,
    expired: bool = False,
    **_: Any,
) -> None:
    binding = _lifecycle(sender)
    if binding is None or sender is None or request is None:
        return
    if expired:
        message = "Task expired before it ran"
    elif terminated:
        message = f"Task terminated (signal {signum})"
    else:
        message = "Task revoked"
    owner = _context.header_text(getattr(request, OWNER_HEADER, None))
    _status(binding.publisher, request.id, TaskStatus.CANCELLED, sender.name, message, owner)


def _on_process_shutdown(**_: Any) -> None:
    """A pool child exits: write what it still holds, aggregate updates included (the parent's bootstep cannot)."""
    for binding in bindings():
        binding.publisher.close()
