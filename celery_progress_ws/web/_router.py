"""``create_progress_router``: HTTP and WebSocket routes translated to calls of a ``ProgressManager``, nothing more.

Each connection route holds its session from opening to end: the manager's gateway opens it and ends it once its
socket is gone. Snapshots, resume checks and cancels read through the manager's reads. The ``/me/...`` routes serve
the requesting user's own operations: their list, and their feed as a topic of its own (see docs/ownership.md).
"""

# No `from __future__ import annotations`: FastAPI must resolve the routes' annotations, which use a local alias.

import inspect
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

from celery import Celery
from fastapi import APIRouter, Depends, Header, HTTPException, Query, Response, WebSocket, WebSocketException
from fastapi.responses import FileResponse, JSONResponse
from starlette.requests import HTTPConnection

from .._core.codec import is_valid_stream_id
from .._core.errors import (
    BrokerUnavailable,
    ConnectionRefused,
    InvalidChannelName,
    InvalidCursor,
    InvalidOperationId,
    InvalidStatusFilter,
    OperationFinished,
    OperationNotFound,
    SourceUnavailable,
    Unauthorized,
)
from .._core.history_pages import DEFAULT_PAGE, MAX_PAGE, parse_statuses
from .._core.keys import validate_channel, validate_operation_id
from .._core.streams import Topic, TopicKind
from . import _close_codes as close
from ._cancel import Canceller
from ._manager import ProgressManager
from ._metrics import WebTally, exposition
from ._mine import feed_topic, is_anonymous
from ._origin import OriginPolicy
from ._sse import EventStreamResponse
from ._websocket import ClientInput, refuse, serve

STATIC = Path(__file__).parent / "static"
CLIENT_FILES = {
    "client.js": ("progress-client.js", "text/javascript"),
    "client.d.ts": ("progress-client.d.ts", "text/plain"),
}

Authorize = Callable[[Any, str], "bool | Awaitable[bool]"]
"""``authorize(user_id, operation_id_or_channel)``, sync or async: may this user watch it? Only ``True`` allows."""


class _BadRequest(ValueError):
    """A request the routes refuse before asking the manager (invalid id or resume id)."""


def create_progress_router(
    manager: ProgressManager,
    *,
    get_user_id: Callable[..., Any],
    authorize: Authorize,
    authorize_channel: Authorize | None = None,
    celery_app: Celery | None = None,
    metrics: bool = False,
) -> APIRouter:
    """The progress routes, to mount with ``app.include_router(router, prefix="/progress")``.

    ``get_user_id`` is a FastAPI dependency usable by HTTP and WebSocket routes alike (declare a
    ``starlette.requests.HTTPConnection`` parameter to read headers, query parameters or cookies).
    ``authorize(user_id, operation_id)`` decides who may watch what; ``authorize_channel(user_id, channel)``
    does so for custom channels (default: ``authorize`` with the channel name).
    With ``celery_app``, ``POST /operations/{operation_id}/cancel`` revokes an operation (see docs/cancellation.md).
    Requests from pages of other origins than the server's own and ``allowed_origins`` get 403 (see docs/security.md).
    ``GET /health`` answers 200 while live delivery is connected to Redis, else 503; with ``metrics`` (and the
    ``metrics`` extra installed), ``GET /metrics`` serves the manager's Prometheus registry. Neither needs a user
    nor checks the origin (see docs/operating.md).
    """
    channel_check = authorize_channel or authorize
    UserId = Annotated[Any, Depends(get_user_id)]  # noqa: N806 - a type alias
    gateway = manager._gateway
    tally = gateway.tally
    policy = OriginPolicy(manager.settings.allowed_origins)
    guarded = APIRouter(dependencies=[Depends(_origin_guard(policy, tally))])
    client_input = ClientInput.of(manager.settings)

    async def hold_socket(websocket: WebSocket, topic: Topic, user_id: str, last_event_id: str | None) -> None:
        """Serve one WebSocket session until its client leaves or the server ends it, then end it."""
        try:
            session = await gateway.open_socket(websocket, topic, user_id, last_event_id)
        except ConnectionRefused:
            return
        try:
            await serve(websocket, session, client_input)
        finally:
            await gateway.end(session)

    @guarded.websocket("/operations/{operation_id}/ws")
    async def operation_socket(
        websocket: WebSocket, operation_id: str, user_id: UserId, last_event_id: str | None = None
    ) -> None:
        """Live entries of one operation over a WebSocket; resume with ``?last_event_id=``."""
        try:
            operation_id = validate_operation_id(operation_id)
            resume = _resume_id(last_event_id)
        except (InvalidOperationId, _BadRequest) as exc:
            tally.refuse("invalid")
            await refuse(websocket, str(exc))
            return
        if not await _allowed(authorize, user_id, operation_id):
            tally.refuse("unauthorized")
            await refuse(websocket, Unauthorized.reason)
            return
        await hold_socket(websocket, Topic(TopicKind.OPERATION, operation_id), str(user_id), resume)

    @guarded.websocket("/channels/{channel}/ws")
    async def channel_socket(
        websocket: WebSocket, channel: str, user_id: UserId, last_event_id: str | None = None
    ) -> None:
        """Messages of one custom channel over a WebSocket; resume with ``?last_event_id=``."""
        try:
            channel = validate_channel(channel)
            resume = _resume_id(last_event_id)
        except (InvalidChannelName, _BadRequest) as exc:
            tally.refuse("invalid")
            await refuse(websocket, str(exc))
            return
        if not await _allowed(channel_check, user_id, channel):
            tally.refuse("unauthorized")
            await refuse(websocket, Unauthorized.reason)
            return
        await hold_socket(websocket, Topic(TopicKind.CHANNEL, channel), str(user_id), resume)

    @guarded.get("/operations/{operation_id}/events", response_model=None)
    async def operation_events(
        operation_id: str,
        user_id: UserId,
        last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
        last_event_id: str | None = None,
    ) -> Response:
        """Live entries of one operation as Server-Sent Events; resume with ``Last-Event-ID`` or ``?last_event_id=``.

        The header (sent by EventSource on reconnects) wins over the query parameter (usable on a first connect).
        """
        operation_id, resume = _checked(operation_id, last_event_id_header or last_event_id, tally)
        await _authorized(authorize, user_id, operation_id, tally)
        if resume is not None and await manager._reads.is_finished(operation_id, resume):
            return Response(status_code=204)  # tells EventSource not to reconnect: nothing more will come
        return await open_event_stream(Topic(TopicKind.OPERATION, operation_id), str(user_id), resume)

    async def open_event_stream(topic: Topic, user_id: str, resume: str | None) -> Response:
        """An event stream of ``topic`` for ``user_id``, within the limits (else 429)."""
        try:
            session = await gateway.open_stream(topic, user_id, resume)
        except ConnectionRefused as exc:
            raise HTTPException(status_code=429, detail=exc.reason) from exc
        settings = manager.settings
        return EventStreamResponse(
            session,
            heartbeat=settings.heartbeat_seconds,
            send_timeout=settings.send_timeout_seconds,
            on_end=gateway.end,
            tally=tally,
        )

    @guarded.get("/me/operations")
    async def my_operations(
        user_id: UserId,
        cursor: str | None = None,
        status: Annotated[list[str] | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = DEFAULT_PAGE,
    ) -> dict[str, Any]:
        """The user's operations newest first, ``{"operations": [...], "next_cursor": ...}``; ``?status=`` (repeated
        or comma-separated) filters, ``?cursor=`` continues from the previous page."""
        if is_anonymous(user_id):
            raise HTTPException(status_code=403, detail=Unauthorized.reason)
        try:
            statuses = parse_statuses(status)
            return await manager._mine.page(user_id, cursor=cursor or None, statuses=statuses, limit=limit)
        except (InvalidCursor, InvalidStatusFilter) as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from exc
        except SourceUnavailable as exc:
            raise HTTPException(status_code=503, detail="Progress store unavailable") from exc

    @guarded.websocket("/me/ws")
    async def my_socket(websocket: WebSocket, user_id: UserId, last_event_id: str | None = None) -> None:
        """The user's feed of ``operation_update`` entries over a WebSocket; resume with ``?last_event_id=``."""
        try:
            resume = _resume_id(last_event_id)
        except _BadRequest as exc:
            tally.refuse("invalid")
            await refuse(websocket, str(exc))
            return
        if is_anonymous(user_id):
            tally.refuse("unauthorized")
            await refuse(websocket, Unauthorized.reason)
            return
        await hold_socket(websocket, feed_topic(user_id), str(user_id), resume)

    @guarded.get("/me/events", response_model=None)
    async def my_events(
        user_id: UserId,
        last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
        last_event_id: str | None = None,
    ) -> Response:
        """The user's feed as Server-Sent Events; resume with ``Last-Event-ID`` or ``?last_event_id=``."""
        try:
            resume = _resume_id(last_event_id_header or last_event_id)
        except _BadRequest as exc:
            tally.refuse("invalid")
            raise HTTPException(status_code=400, detail=str(exc)) from exc
        if is_anonymous(user_id):
            tally.refuse("unauthorized")
            raise HTTPException(status_code=403, detail=Unauthorized.reason)
        return await open_event_stream(feed_topic(user_id), str(user_id), resume)

    @guarded.get("/operations/{operation_id}")
    async def operation_snapshot(operation_id: str, user_id: UserId) -> dict[str, Any]:
        """Latest status, latest progress and last entry id of an operation."""
        operation_id, _ = _checked(operation_id, None)
        await _authorized(authorize, user_id, operation_id)
        try:
            found = await manager.snapshot(operation_id)
        except SourceUnavailable as exc:
            raise HTTPException(status_code=503, detail="Progress store unavailable") from exc
        if found is None:
            raise HTTPException(status_code=404, detail="Nothing is known about this operation")
        return found

    if celery_app is not None:
        canceller = Canceller(manager, celery_app)

        @guarded.post("/operations/{operation_id}/cancel", status_code=202)
        async def cancel_operation(operation_id: str, user_id: UserId) -> dict[str, Any]:
            """Revoke the operation's task (terminating it if ``cancel_terminate``) and announce ``cancelled``."""
            operation_id, _ = _checked(operation_id, None)
            await _authorized(authorize, user_id, operation_id)
            try:
                cancellation = await canceller.cancel(operation_id)
            except OperationNotFound as exc:
                raise HTTPException(status_code=404, detail="Nothing is known about this operation") from exc
            except OperationFinished as exc:
                raise HTTPException(status_code=409, detail=str(exc)) from exc
            except SourceUnavailable as exc:
                raise HTTPException(status_code=503, detail="Progress store unavailable") from exc
            except BrokerUnavailable as exc:
                raise HTTPException(status_code=503, detail="Task broker unavailable") from exc
            return cancellation.as_json()

    @guarded.get("/client.js", include_in_schema=False)
    async def client_module() -> FileResponse:
        """The browser client, an ES module."""
        return _static("client.js")

    @guarded.get("/client.d.ts", include_in_schema=False)
    async def client_declarations() -> FileResponse:
        """TypeScript declarations of the browser client."""
        return _static("client.d.ts")

    router = APIRouter()
    router.include_router(guarded)

    @router.get("/health", include_in_schema=False)
    async def health() -> JSONResponse:
        """200 while live delivery is connected to Redis; 503 (degraded: current state only) while it is not."""
        if manager.redis_available:
            return JSONResponse({"status": "ok", "redis": "connected"})
        return JSONResponse({"status": "degraded", "redis": "unreachable"}, status_code=503)

    if metrics and manager.metrics_enabled:

        @router.get("/metrics", include_in_schema=False)
        async def metrics_exposition() -> Response:
            """The Prometheus text exposition of the manager's registry."""
            body, content_type = exposition(manager.metrics_registry)
            return Response(body, media_type=content_type)

    return router


def _origin_guard(policy: OriginPolicy, tally: WebTally) -> Callable[[HTTPConnection], Awaitable[None]]:
    """A dependency that runs before any other: 403 for a page the policy refuses, before the user is looked up."""

    async def check_origin(connection: HTTPConnection) -> None:
        reason = policy.refusal(connection.scope)
        if reason is None:
            return
        if connection.scope["type"] == "websocket" or connection.scope["path"].endswith("/events"):
            tally.refuse("origin")  # a refused connection; other routes are requests
        if connection.scope["type"] == "websocket":
            raise WebSocketException(close.POLICY_VIOLATION, reason)  # closed before accepting: the handshake gets 403
        raise HTTPException(status_code=403, detail=reason)

    return check_origin


def _static(name: str) -> FileResponse:
    filename, media_type = CLIENT_FILES[name]
    return FileResponse(STATIC / filename, media_type=media_type, headers={"Cache-Control": "no-cache"})


def _resume_id(last_event_id: str | None) -> str | None:
    if last_event_id is None or last_event_id == "":
        return None
    if not is_valid_stream_id(last_event_id):
        raise _BadRequest(f"Invalid last_event_id {last_event_id[:50]!r}: expected a stream id such as 1700000000000-0")
    return last_event_id


def _checked(operation_id: str, last_event_id: str | None, tally: WebTally | None = None) -> tuple[str, str | None]:
    """The validated ids, or 400; ``tally`` counts the refusal of a connection."""
    try:
        return validate_operation_id(operation_id), _resume_id(last_event_id)
    except (InvalidOperationId, _BadRequest) as exc:
        if tally is not None:
            tally.refuse("invalid")
        raise HTTPException(status_code=400, detail=str(exc)) from exc


async def _allowed(check: Authorize, user_id: Any, name: str) -> bool:
    answer = check(user_id, name)
    if inspect.isawaitable(answer):
        answer = await answer
    return answer is True


async def _authorized(check: Authorize, user_id: Any, name: str, tally: WebTally | None = None) -> None:
    """403 unless ``check`` allows; ``tally`` counts the refusal of a connection."""
    if not await _allowed(check, user_id, name):
        if tally is not None:
            tally.refuse("unauthorized")
        raise HTTPException(status_code=403, detail=Unauthorized.reason)
