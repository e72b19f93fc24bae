"""The running task as ``report_progress`` sees it: a thread-local stack of scopes pushed by the task signals.

A thread-local read is the cheapest way for a progress call to find its task; the signal handlers keep it current.
Under gevent/eventlet with monkey-patching, ``threading.local`` is greenlet-local, so each task greenlet has its own.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .publisher import ProgressPublisher


@dataclass(eq=False, slots=True)
class TaskScope:
    """One running task: its id, the publisher of its app, its aggregate, and other operations it reported to."""

    task_id: str
    publisher: ProgressPublisher
    operations: set[str] = field(default_factory=set)
    """Explicit ``operation_id``\\s reported during the task; their held-back values are flushed when it ends."""
    aggregate_id: str | None = None
    """The aggregate operation this task is a child of (from its message header, read when it starts)."""
    retry_announced: bool = False
    """Set when ``retrying`` was written as the task re-sent itself, so ``task_retry`` does not write it twice."""


class _Local(threading.local):
    scope: TaskScope | None = None
    stack: tuple[TaskScope, ...] = ()


local = _Local()
"""This thread's scope (``local.scope``); an empty container, it does nothing at import."""


def push(scope: TaskScope) -> None:
    """Make ``scope`` current for this thread (a task starts; eager subtasks nest)."""
    local.stack = (*local.stack, scope)
    local.scope = scope


def pop(task_id: str) -> TaskScope | None:
    """Remove the scope of ``task_id`` (normally the current one) and return it; ``None`` if it is not on the stack."""
    stack = local.stack
    for index in range(len(stack) - 1, -1, -1):
        if stack[index].task_id == task_id:
            local.stack = stack[:index] + stack[index + 1 :]
            local.scope = local.stack[-1] if local.stack else None
            return stack[index]
    return None


def current() -> TaskScope | None:
    """This thread's current scope."""
    return local.scope


def running_header(task_id: str, name: str) -> str | None:
    """A message header (``header_text``) of the task Celery is running in this thread, if that task is ``task_id``.

    Celery 5 copies a message's custom headers onto ``task.request`` as attributes; ``request.headers`` is checked too.
    """
    from celery import current_task

    request = current_task.request if current_task else None
    if request is None or request.id != task_id:
        return None
    value = getattr(request, name, None)
    if value is None:
        value = (getattr(request, "headers", None) or {}).get(name)
    return header_text(value)


def header_text(value: object) -> str | None:
    """A header value as text: a non-empty string, or an integer (a numeric user id) as its decimal text."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value if isinstance(value, str) and value else None
