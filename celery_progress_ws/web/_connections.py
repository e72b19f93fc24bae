"""The open connections of one process: registered within the limits, attached to the hub, ended exactly once.

Delivery to a connection stops (it is detached from the hub) as soon as the server starts ending it; it keeps its
registry slot, and its lease in the shared per-user count, until it is ended: its route has finished (the socket is
gone), or a WebSocket sender has not finished ``close_timeout`` seconds later and was stopped. So a client that
stopped reading keeps counting against the limits for as long as its socket exists.
With a ``SharedUserCount``, a connection that passed the local limits must also be counted there (across processes).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine
from typing import Any

from .._core.errors import UserLimitExceeded
from .._core.streams import Topic
from ._hub import Hub
from ._registry import ConnectionKey, ConnectionRegistry, SharedUserCount
from ._session import CLOSE_TIMEOUT_SECONDS, Session
from ._tasks import stop_task


class Connections:
    """Sessions by identity and by WebSocket, with the registry that enforces the connection limits."""

    def __init__(
        self,
        hub: Hub,
        *,
        capacity: int,
        max_per_user: int,
        max_total: int,
        shared: SharedUserCount | None = None,
        close_timeout: float = CLOSE_TIMEOUT_SECONDS,
    ) -> None:
        self._hub = hub
        self._capacity = capacity
        self.close_timeout = close_timeout
        self._shared = shared
        self._leases: dict[Session, str] = {}
        self.registry: ConnectionRegistry[Session] = ConnectionRegistry(max_per_user=max_per_user, max_total=max_total)
        self._sessions: set[Session] = set()
        self._by_websocket: dict[int, Session] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self.registry)

    async def open(self, topic: Topic, user_id: str, last_event_id: str | None, *, handle: object = None) -> Session:
        """Register a session; raises ``UserLimitExceeded`` / ``ServerLimitExceeded`` when a limit is reached."""
        session = Session(
            ConnectionKey(user_id, topic.kind, topic.name),
            topic,
            capacity=self._capacity,
            last_event_id=last_event_id,
            handle=handle,
            close_timeout=self.close_timeout,
            on_closing=lambda closing: self._spawn(self._detach(closing)),
            on_expired=lambda expired: self._spawn(self.end(expired)),
        )
        self.registry.add(session.key, session)
        self._sessions.add(session)
        if handle is not None:
            self._by_websocket[id(handle)] = session
        if self._shared is not None:
            await self._count_shared(session, self._shared)
        return session

    async def _count_shared(self, session: Session, shared: SharedUserCount) -> None:
        """Count the session in the shared per-user count; end it and raise ``UserLimitExceeded`` if that is full."""
        connection_id = uuid.uuid4().hex
        try:
            admitted = await shared.acquire(session.key.user_id, connection_id)
        except BaseException:  # cancelled while counting: an already added member expires with its lease
            await self.end(session)
            raise
        if session.released:  # ended (shutdown) while being counted
            await shared.release(session.key.user_id, connection_id)
        elif not admitted:
            await self.end(session)
            raise UserLimitExceeded()
        else:
            self._leases[session] = connection_id

    def attach(self, session: Session) -> None:
        """Start delivering to ``session``: its catch-up, then live entries."""
        self._hub.attach(session.subscriber)

    def of_websocket(self, websocket: object) -> Session | None:
        return self._by_websocket.get(id(websocket))

    def streams(self) -> list[Session]:
        """Sessions without a WebSocket or sender: event streams, whose responses send themselves."""
        return [session for session in self._sessions if session.handle is None and session.sender is None]

    def stale(self) -> list[Session]:
        """Sessions whose sender has stopped but that nobody ended (a route that never called disconnect)."""
        return [session for session in self._sessions if session.finished.is_set()]

    async def end(self, session: Session) -> None:
        """Stop ``session``'s delivery and sender, then free its slot; safe to call more than once."""
        if not session.outbox.closing:
            session.outbox.abort(1000, "Connection closed")
        await self._detach(session)
        session.cancel_deadline()
        await stop_task(session.sender)
        session.finished.set()
        await self._release(session)
        session.outbox.release()  # break the session <-> outbox cycle: refcounting frees it, not a full GC pass
        self._sessions.discard(session)
        if session.handle is not None and self._by_websocket.get(id(session.handle)) is session:
            del self._by_websocket[id(session.handle)]

    async def close_all(self, code: int, reason: str) -> None:
        """End every session: senders get up to ``close_timeout`` seconds to send the close, then all are ended."""
        sessions = list(self._sessions)
        for session in sessions:
            session.outbox.abort(code, reason)
        finishing = [asyncio.ensure_future(session.finished.wait()) for session in sessions if session.sender]
        if finishing:
            _, pending = await asyncio.wait(finishing, timeout=self.close_timeout)
            for task in pending:
                task.cancel()
        for session in sessions:
            await self.end(session)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _detach(self, session: Session) -> None:
        """Stop delivering to the session (its sender may still be sending the close); it keeps its slot."""
        if not session.detached:
            session.detached = True
            await self._hub.detach(session.subscriber)

    async def _release(self, session: Session) -> None:
        """Free the session's registry slot and its lease in the shared count (it has ended)."""
        if session.released:
            return
        session.released = True
        self.registry.remove(session.key, session)
        connection_id = self._leases.pop(session, None)
        if connection_id is not None and self._shared is not None:
            await self._shared.release(session.key.user_id, connection_id)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
