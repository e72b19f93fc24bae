"""``create_progress_app``: the progress routes as a plain ASGI application, to mount in any ASGI framework.

It is the router of ``create_progress_router`` included at the root of a small FastAPI application, so the routes and
their behaviour are the same. Lifespan events, when the host forwards them, start and stop the manager; a host that
does not (a Starlette ``Mount`` does not) gets the manager started by the first request and stops it itself.
The origin check reads the scope's scheme and ``Host``, which mounting leaves as they are.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from celery import Celery
from fastapi import FastAPI
from starlette.requests import HTTPConnection
from starlette.types import Receive, Scope, Send

from ._manager import ProgressManager
from ._router import Authorize, create_progress_router

GetUserId = Callable[[HTTPConnection], Any]
"""``get_user_id(connection)``, sync or async: the user of an HTTP request or WebSocket handshake."""


class ProgressApp:
    """An ASGI application serving the progress routes of one ``ProgressManager`` under whatever path it is mounted."""

    def __init__(self, manager: ProgressManager, app: FastAPI) -> None:
        self.manager = manager
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            await self.manager.startup()  # a no-op once started, by a forwarded lifespan or an earlier request
            path = scope["path"]
            if len(path) > 1 and path.endswith("/"):  # no route ends in "/"; Litestar's mounts add one
                scope = {**scope, "path": path[:-1]}
        await self._app(scope, receive, send)


def create_progress_app(
    manager: ProgressManager,
    *,
    get_user_id: GetUserId | Callable[[HTTPConnection], Awaitable[Any]],
    authorize: Authorize,
    authorize_channel: Authorize | None = None,
    celery_app: Celery | None = None,
    metrics: bool = False,
) -> ProgressApp:
    """The routes of ``create_progress_router`` as an ASGI application, e.g. ``Mount("/progress", app=...)``.

    ``get_user_id(connection)`` receives the ``starlette.requests.HTTPConnection`` of each request or WebSocket
    handshake and returns the user id, sync or async. The other arguments are those of ``create_progress_router``.
    Lifespan events sent to the application run ``manager.lifespan``; without them the first request starts the
    manager, and the host must call ``manager.shutdown()`` (or run ``manager.lifespan`` in its own lifespan).
    """

    async def user_id(connection: HTTPConnection) -> Any:
        answer = get_user_id(connection)
        if inspect.isawaitable(answer):
            answer = await answer
        return answer

    router = create_progress_router(
        manager,
        get_user_id=user_id,
        authorize=authorize,
        authorize_channel=authorize_channel,
        celery_app=celery_app,
        metrics=metrics,
    )
    app = FastAPI(lifespan=manager.lifespan, openapi_url=None, docs_url=None, redoc_url=None)
    app.include_router(router)
    return ProgressApp(manager, app)
