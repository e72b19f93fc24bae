"""Django ORM calls from the progress routes: in Django's database thread, off the event loop, with fresh connections.

The progress routes run outside Django's request cycle, whose signals close database connections that have grown
old or broken; each call here does that before and after, as a Django view's request would.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar, cast

from asgiref.sync import sync_to_async
from django.db import close_old_connections

from ...web import Authorize

P = ParamSpec("P")
R = TypeVar("R")

SyncCheck = Callable[[Any, str], bool]
"""``check(user_id, operation_id_or_channel)`` that may use the ORM as any sync Django code does."""
AsyncCheck = Callable[[Any, str], Awaitable[bool]]
"""``async check(user_id, operation_id_or_channel)`` that may use Django's async ORM (``aget``, ``aexists``...)."""


def run_in_django_thread(func: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """``func`` as a coroutine function that runs it in Django's thread for sync code (``sync_to_async``), where the
    ORM may be used, closing connections that are too old or broken before and after."""

    def with_fresh_connections(*args: P.args, **kwargs: P.kwargs) -> R:
        close_old_connections()
        try:
            return func(*args, **kwargs)
        finally:
            close_old_connections()

    in_thread = sync_to_async(with_fresh_connections, thread_sensitive=True)

    @functools.wraps(func)
    async def run(*args: P.args, **kwargs: P.kwargs) -> R:
        return await in_thread(*args, **kwargs)

    return run


def orm_authorize(check: SyncCheck | AsyncCheck) -> Authorize:
    """An ``authorize`` for ``create_progress_app``: anonymous users (``None``) are refused, others asked of ``check``.

    A sync ``check`` runs through ``run_in_django_thread``; a coroutine function is awaited as it is. Only ``True``
    allows, as everywhere in the routes.
    """
    asynchronous = cast(AsyncCheck, check) if inspect.iscoroutinefunction(check) else run_in_django_thread(check)

    async def authorize(user_id: Any, name: str) -> bool:
        if user_id is None:
            return False
        return await asynchronous(user_id, name) is True

    return authorize
