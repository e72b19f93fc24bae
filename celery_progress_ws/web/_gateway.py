"""``Gateway``: how a client's connection becomes a session and stops being one, for WebSockets and event streams.

The router (and the manager's ``connect`` methods) open a session here, hold it while its socket lives and end it here
once the socket is gone; a session is registered within the connection limits, gets the operation's
``current_state`` first, and is attached to live delivery only once its transport is ready. When the hosting server
begins to exit, every event stream is ended at once so that the server can finish its responses.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.websockets import WebSocket

from .._core.codec import is_valid_stream_id
from .._core.errors import ConnectionRefused
from .._core.streams import Topic, TopicKind
from . import _close_codes as close
from ._connections import Connections
from ._metrics import WebTally, refusal_reason
from ._outbox import Outgoing
from ._registry import ConnectionKey
from ._session import Session
from ._state import OperationGetter, current_state
from ._websocket import WebSocketTransport, refuse

logger = logging.getLogger(__name__)


class Gateway:
    """Opens and ends the sessions of one process' WebSockets and event streams."""

    def __init__(
        self, connections: Connections, startup: Callable[[], Awaitable[None]], tally: WebTally | None = None
    ) -> None:
        """``startup`` starts live delivery (a no-op once started); the first session to open calls it."""
        self._connections = connections
        self.tally = tally if tally is not None else WebTally()
        self._startup = startup
        self._exiting = False
        self.get_operation: OperationGetter | None = None
        """The application's ``getter(operation_id)`` whose answer is sent as ``current_state`` on connect."""

    async def open_socket(self, websocket: WebSocket, topic: Topic, user_id: str, last_event_id: str | None) -> Session:
        """Register and accept a WebSocket and start its delivery; refusals close it with 1008 and raise
        ``ConnectionRefused``. End the session with ``end``."""
        try:
            session = await self._open(topic, user_id, last_event_id)
        except ConnectionRefused as exc:
            await refuse(websocket, exc.reason)
            raise
        try:
            await websocket.accept()
        except BaseException:
            await self._connections.end(session)
            raise
        session.websocket = websocket
        session.start_sender(WebSocketTransport(websocket, self.tally))
        self._connections.attach(session)
        logger.info("%s connected (%d in this process)", session.key, len(self._connections))
        return session

    async def open_stream(self, topic: Topic, user_id: str, last_event_id: str | None) -> Session:
        """Register an event stream (limits apply) and start its delivery into its outbox; its response sends it
        (``EventStreamResponse``), then ends it with ``end``."""
        session = await self._open(topic, user_id, last_event_id, stream=True)
        if self._exiting:
            session.outbox.abort(*close.RESTART)
        self._connections.attach(session)
        return session

    async def end(self, session: Session) -> None:
        """End a session (its socket is gone, or was never opened): its slot and lease are freed."""
        await self._connections.end(session)

    async def disconnect(self, websocket: WebSocket, key: ConnectionKey) -> None:
        """End the session of ``websocket`` under ``key``, if it still has one."""
        session = self._connections.find(key, websocket)
        if session is not None:
            await self._connections.end(session)

    def end_streams(self) -> None:
        """The server has begun to exit: end every event stream now (it closes WebSockets itself, with 1012).

        Their clients resume from their last entry on another process; the server then runs the lifespan shutdown.
        """
        self._exiting = True
        streams = self._connections.streams()
        logger.info("Server exiting: ending %d event streams", len(streams))
        for session in streams:
            session.outbox.abort(*close.RESTART)

    async def current_state(self, operation_id: str) -> dict[str, Any] | None:
        """The getter's ``current_state`` of an operation; ``None`` without a getter, or when it fails (logged)."""
        if self.get_operation is None:
            return None
        try:
            return await current_state(self.get_operation, operation_id)
        except Exception:  # the application's getter: its failure must not refuse the connection
            logger.exception("The operation getter failed for %s; no current_state sent", operation_id)
            return None

    async def _open(self, topic: Topic, user_id: str, last_event_id: str | None, *, stream: bool = False) -> Session:
        """Register a session within the limits and queue its ``current_state``; delivery starts on ``attach``."""
        await self._startup()
        if last_event_id is not None and not is_valid_stream_id(last_event_id):
            raise ValueError(f"last_event_id {last_event_id[:50]!r} is not a stream id such as 1700000000000-0")
        try:
            session = await self._connections.open(topic, str(user_id), last_event_id, stream=stream)
        except ConnectionRefused as exc:
            self.tally.refuse(refusal_reason(exc))
            raise
        if topic.kind is TopicKind.OPERATION and self.get_operation is not None:
            try:
                state = await self.current_state(topic.name)
            except BaseException:  # cancelled while asking the getter: do not leak the slot
                await self._connections.end(session)
                raise
            if state is not None:
                session.outbox.offer(Outgoing.unstored(state))
        return session
