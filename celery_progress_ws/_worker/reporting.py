"""``report_progress`` and ``send_event``: what task code calls, and how each call finds its operation and publisher.

Inside a task of an app with ``ProgressBootstep``, the task's scope (set by ``task_prerun``) supplies both. Elsewhere
the operation id comes from ``operation_id=`` or Celery's current task, and the publisher is the process default: the
one a bootstep or ``set_default_publisher`` installed, else one built on first use from ``ProgressSettings()``.
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Mapping
from typing import Any

from .._core.errors import NoOperationContext
from .._core.keys import validate_entry_type
from .._core.schemas import CHUNKING_PROGRESS, CURRENT_STATE, HISTORY_GAP, STATUS_UPDATE
from .._core.settings import ProgressSettings
from .aggregate_updater import child_progress as _child_progress
from .context import local as _local
from .meter import Count
from .publisher import ProgressPublisher
from .results import PublishResult

RESERVED_EVENT_TYPES = frozenset({STATUS_UPDATE, CHUNKING_PROGRESS, CURRENT_STATE, HISTORY_GAP})
"""Entry types only the library writes; ``send_event`` refuses them."""

_default: ProgressPublisher | None = None
_default_lock = threading.Lock()


def report_progress(
    current: Count,
    total: Count | None = None,
    *,
    message: str | None = None,
    operation_id: str | None = None,
    force: bool = False,
    **fields: Any,
) -> PublishResult:
    """Report that ``current`` of ``total`` items are done, as a throttled ``chunking_progress`` entry.

    The operation is the running task unless ``operation_id`` names another (a domain id); outside any task without
    one, ``NoOperationContext`` is raised. Per operation at most one entry per ``throttle_seconds`` is written, but
    the first report, ``current == total`` and ``force=True`` are always written at once, and the newest held-back
    value is written when the interval ends, or at the latest just before the task's terminal status. Entries carry
    ``progress_percentage``, ``documents_processed`` (= current), ``total_documents`` (= total), ``chunks_created``,
    ``current_document``, ``message``, ``rate`` (items/s since the operation's first report), ``eta_seconds`` and the
    extra ``fields``. Counts, ``message`` and extra field values are checked and converted on every call, held back or
    not (datetimes to ISO 8601, sets to lists, NaN to null, other objects to their ``str()``...; the rules are in
    ``celery_progress_ws._worker.meter``); what the rules refuse (a tuple as a mapping key, a circular structure, a
    ``str()`` that raises) raises ``TypeError``/``ValueError`` here, naming the field, and is never stored. An entry
    over ``max_entry_bytes`` raises ``EntryTooLarge`` when it is published; a held-back one is logged and skipped.
    Never raises for Redis trouble: the result says whether the entry was sent, throttled, buffered or dropped.
    """
    scope = _local.scope
    if scope is None:
        publisher = _default or default_publisher()
        if operation_id is None:
            operation_id = _running_task_id()
        return publisher._report(operation_id, current, total, message, fields, force)  # keyword names are str
    publisher = scope.publisher
    if operation_id is None:
        operation_id = scope.task_id
    elif operation_id != scope.task_id:
        scope.operations.add(operation_id)
    result = publisher._report(operation_id, current, total, message, fields, force)
    if scope.aggregate_id is not None and operation_id == scope.task_id:
        _child_progress(publisher, scope.aggregate_id, operation_id, current, total)
    return result


def send_event(type: str, data: Mapping[str, Any] | None = None, *, operation_id: str | None = None) -> PublishResult:
    """Write a free-form entry (e.g. ``chunking_document_complete``) to the operation's stream, unthrottled.

    It lands after any progress value reported before it. ``type`` is 1-64 characters of ``A-Z a-z 0-9 _ . : -``
    (``InvalidEntryType``, a ``ValueError``) and not one of ``RESERVED_EVENT_TYPES`` (``ValueError``); ``data`` must
    be a mapping (``TypeError``) whose values are converted by the same rules as ``report_progress`` fields (refused
    ones raise here, naming ``data.<field>``).
    """
    validate_entry_type(type)
    if type in RESERVED_EVENT_TYPES:
        raise ValueError(f"{type!r} entries are written by the library itself; choose another event type")
    if data is not None and not isinstance(data, Mapping):
        raise TypeError(f"event data must be a mapping, not {data.__class__.__name__}")
    scope = _local.scope
    if scope is None:
        publisher = _default or default_publisher()
        operation_id = operation_id or _running_task_id()
    else:
        publisher = scope.publisher
        operation_id = operation_id or scope.task_id
    return publisher.publish(operation_id, type, dict(data or {}))


def set_default_publisher(publisher: ProgressPublisher | None) -> ProgressPublisher | None:
    """Install the publisher used outside tasks of an app with the bootstep; return the one it replaces."""
    global _default
    with _default_lock:
        previous, _default = _default, publisher
    return previous


def default_publisher() -> ProgressPublisher:
    """The installed default publisher, else one built once from ``ProgressSettings()`` and flushed at exit."""
    global _default
    with _default_lock:
        if _default is None:
            _default = ProgressPublisher(ProgressSettings())
            atexit.register(_default.close)
        return _default


def _running_task_id() -> str:
    """The id of the task Celery is running in this thread, else ``NoOperationContext``."""
    from celery import current_task

    task_id = current_task.request.id if current_task else None
    if not task_id:
        raise NoOperationContext(
            "no running task: call report_progress()/send_event() inside a Celery task or pass operation_id="
        )
    return str(task_id)
