"""The FastAPI app the web tests serve: the progress router behind a header user and a deny-list authorization.

Also importable by a uvicorn subprocess (``tests.support.serverapp:create_app --factory``), which reads its settings
from the ``CELERY_PROGRESS_WS_*`` environment.
"""

from __future__ import annotations

from celery import Celery
from fastapi import FastAPI, HTTPException
from starlette.requests import HTTPConnection

from celery_progress_ws import ProgressSettings
from celery_progress_ws.web import ProgressManager, create_progress_router

FORBIDDEN_PREFIX = "forbidden-"


def user_id(connection: HTTPConnection) -> str:
    """The ``x-user`` header, or a ``user`` query parameter (browsers cannot set WebSocket headers)."""
    user = connection.headers.get("x-user") or connection.query_params.get("user")
    if not user:
        raise HTTPException(status_code=401, detail="no user")
    return user


async def may_view(user: str, name: str) -> bool:
    """Everyone may watch everything except names starting with ``forbidden-``."""
    return not name.startswith(FORBIDDEN_PREFIX)


def build_app(manager: ProgressManager, celery_app: Celery | None = None, *, metrics: bool = False) -> FastAPI:
    """The progress router under ``/progress``; with ``celery_app``, including the cancel route; with ``metrics``,
    ``/progress/metrics``."""
    app = FastAPI(lifespan=manager.lifespan)
    router = create_progress_router(
        manager, get_user_id=user_id, authorize=may_view, celery_app=celery_app, metrics=metrics
    )
    app.include_router(router, prefix="/progress")
    return app


def create_app() -> FastAPI:
    """For ``uvicorn --factory``: settings from the environment."""
    return build_app(ProgressManager(settings=ProgressSettings()))
