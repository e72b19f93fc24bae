"""The example FastAPI app: the progress router (with cancellation) behind a demonstration token auth, and a page.

Each browser gets its own user (a random token in a cookie). Every task it starts is sent with that user as its
owner (the ``progress_owner`` header, or ``track(..., owner=)`` for a group), so the page lists the user's operations
after a reload (``/progress/me/...``), and ``owner_only`` lets the user alone watch and cancel them.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Annotated, Literal

from celery import group
from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection

from celery_progress_ws import ProgressSettings, enable_queued_events, track
from celery_progress_ws.web import ProgressManager, create_progress_router, owner_only
from example_project.tasks import TASKS
from example_project.tasks import app as celery_app

STATIC = Path(__file__).parent / "static"
USER_COOKIE = "demo_user"
OWNER_HEADER = "progress_owner"
GROUP_SIZE = 4


def current_user_id(connection: HTTPConnection) -> str:
    """The demo user: the ``demo_user`` cookie, or a ``token`` query parameter (for scripts and the terminal)."""
    token = connection.cookies.get(USER_COOKIE) or connection.query_params.get("token")
    if not token or len(token) > 64 or not token.isalnum():
        raise HTTPException(status_code=401, detail="no demo user: open / first to get one")
    return token


UserId = Annotated[str, Depends(current_user_id)]


class StartRequest(BaseModel):
    """What the page sends to start a task."""

    kind: Literal["ingest", "failing", "retrying", "group"] = "ingest"
    documents: int = Field(default=12, ge=1, le=500)
    seconds_per_document: float = Field(default=0.5, ge=0, le=10)


class Started(BaseModel):
    """The id to watch."""

    operation_id: str


def create_app(settings: ProgressSettings | None = None) -> FastAPI:
    """Build the example web app; settings default to the environment (``CELERY_PROGRESS_WS_*``)."""
    settings = settings or ProgressSettings()
    manager = ProgressManager(settings=settings)
    enable_queued_events(celery_app, settings)

    app = FastAPI(title="celery-progress-ws demo", lifespan=manager.lifespan)
    app.include_router(
        create_progress_router(
            manager, get_user_id=current_user_id, authorize=owner_only(manager), celery_app=celery_app, metrics=True
        ),
        prefix="/progress",
    )

    @app.get("/", include_in_schema=False)
    async def page(request: Request) -> Response:
        response = FileResponse(STATIC / "index.html")
        if USER_COOKIE not in request.cookies:
            response.set_cookie(USER_COOKIE, secrets.token_hex(16), httponly=True, samesite="strict")
        return response

    @app.post("/api/tasks")
    async def start_task(body: StartRequest, user_id: UserId) -> Started:
        """Start a task (or a group of GROUP_SIZE tasks tracked as one operation) owned by this user."""
        operation_id = secrets.token_hex(16)
        kwargs = {"documents": body.documents, "seconds_per_document": body.seconds_per_document}
        if body.kind == "group":
            share = {**kwargs, "documents": max(1, body.documents // GROUP_SIZE)}
            children = group(TASKS["ingest"].s(**share) for _ in range(GROUP_SIZE))
            await run_in_threadpool(track, children, operation_id, settings=settings, owner=user_id)
        else:
            task = TASKS[body.kind]
            headers = {OWNER_HEADER: user_id}
            await run_in_threadpool(task.apply_async, kwargs=kwargs, task_id=operation_id, headers=headers)
        return Started(operation_id=operation_id)

    return app
