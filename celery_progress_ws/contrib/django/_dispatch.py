"""``ProgressDispatcher``: a Django project's ASGI application, the progress routes under a prefix and Django elsewhere.

Django's ASGI handler serves HTTP only: it refuses WebSockets and lifespan events. The dispatcher sends
``{prefix}/...`` (HTTP and WebSocket) to the progress application, everything else to Django, and lifespan events to
the progress application, whose manager they start and stop. A server that sends no lifespan events (``--lifespan
off``, or a server without them) gets the manager started by the first progress request and stopped when the
server begins to exit (its exit flag, polled as the manager does to end event streams).
"""

from __future__ import annotations

import asyncio
import logging

from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocketClose

from ...web import ProgressApp
from ...web._server_exit import server_exiting
from ._hosts import host_allowed

logger = logging.getLogger(__name__)

POLICY_VIOLATION = 1008
EXIT_POLL_SECONDS = 0.05
"""How often, without lifespan events, the server's exit flag is checked: uvicorn takes at least 0.1 s to exit."""


class ProgressDispatcher:
    """``application = ProgressDispatcher(progress_app, get_asgi_application(), prefix="/progress")`` in ``asgi.py``.

    Progress requests whose ``Host`` is not in ``ALLOWED_HOSTS`` get 400 (a WebSocket handshake, 403), as Django
    answers its own; WebSockets outside the prefix are refused, which Django would do with an error.
    """

    def __init__(self, progress_app: ProgressApp, django_app: ASGIApp, *, prefix: str = "/progress") -> None:
        if not prefix.startswith("/") or prefix.endswith("/"):
            raise ValueError(f"prefix {prefix!r} must start with '/' and not end with one, e.g. '/progress'")
        self.progress_app = progress_app
        self.django_app = django_app
        self.prefix = prefix
        self._lifespan_seen = False
        self._manager_stop: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            self._lifespan_seen = True  # it comes before any request when the server sends it
            await self.progress_app(scope, receive, send)
            return
        if not self._lifespan_seen and self._manager_stop is None:
            self._manager_stop = asyncio.get_running_loop().create_task(self._stop_manager_with_server())
        if self._is_progress(scope):
            await self._progress(scope, receive, send)
        elif scope["type"] == "websocket":
            await WebSocketClose(POLICY_VIOLATION)(scope, receive, send)
        else:
            await self.django_app(scope, receive, send)

    def _is_progress(self, scope: Scope) -> bool:
        path = _route_path(scope)
        return path == self.prefix or path.startswith(self.prefix + "/")

    async def _progress(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not host_allowed(scope):
            logger.warning("Refused %s %s: Host not in ALLOWED_HOSTS", scope["type"], scope["path"][:100])
            if scope["type"] == "websocket":
                await WebSocketClose(POLICY_VIOLATION)(scope, receive, send)
            else:
                await PlainTextResponse("Bad Request (invalid host)", status_code=400)(scope, receive, send)
            return
        mounted = {**scope, "root_path": scope.get("root_path", "") + self.prefix}  # as a mount: path stays whole
        await self.progress_app(mounted, receive, send)

    async def _stop_manager_with_server(self) -> None:
        """Without lifespan events: stop the manager as a lifespan shutdown would, once the server begins to exit."""
        try:
            while not server_exiting():  # noqa: ASYNC110 - a server's flag offers no event to await
                await asyncio.sleep(EXIT_POLL_SECONDS)
        finally:
            logger.info("Server exiting without lifespan events: stopping the progress manager")
            await self.progress_app.manager.shutdown()
            logger.info("Progress manager stopped")


def _route_path(scope: Scope) -> str:
    """The request's path below the server's ``root_path`` (ASGI paths include it)."""
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    return path[len(root_path) :] if root_path and path.startswith(root_path) else path
