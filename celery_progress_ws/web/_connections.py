"""The open connections of one process: registered within the limits, attached to the hub, ended exactly once.

The registry is the one index of sessions. Delivery to a session stops (it is detached from the hub) as soon as it
enters ``CLOSING`` (see ``_session``); it keeps its registry slot, and its lease in the shared per-user count, until
its holder ends it: the route once its socket is gone, or the manager at shutdown. So a client that stopped reading
keeps counting against the limits for as long as its socket exists.
With a ``SharedUserCount``, a connection that passed the local limits must also be counted there (across processes).
"""

from __future__ import annotations

import asyncio
import uuid

from .._core.errors import UserLimitExceeded
from .._core.streams import Topic
from . import _close_codes as close
from ._hub import Hub
from ._metrics import WebTally
from ._registry import ConnectionKey, ConnectionRegistry, SharedUserCount
from ._session import CLOSE_TIMEOUT_SECONDS, Phase, Session
from ._tasks import stop_task


class Connections:
    """Sessions in the registry that enforces the connection limits, and the one way they end (``end``)."""

    def __init__(
        self,
        hub: Hub,
        *,
        capacity: int,
        max_per_user: int,
        max_total: int,
        shared: SharedUserCount | None = None,
        close_timeout: float = CLOSE_TIMEOUT_SECONDS,
        tally: WebTally | None = None,
    ) -> None:
        self._hub = hub
        self._tally = tally if tally is not None else WebTally()
        self._capacity = capacity
        self.close_timeout = close_timeout
        self._shared = shared
        self.registry: ConnectionRegistry[Session] = ConnectionRegistry(max_per_user=max_per_user, max_total=max_total)
        self._detaching: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self.registry)

    async def open(self, topic: Topic, user_id: str, last_event_id: str | None, *, stream: bool = False) -> Session:
        """Register a session; raises ``UserLimitExceeded`` / ``ServerLimitExceeded`` when a limit is reached."""
        session = Session(
            ConnectionKey(user_id, topic.kind, topic.name),
            topic,
            capacity=self._capacity,
            last_event_id=last_event_id,
            stream=stream,
            close_timeout=self.close_timeout,
            on_closing=self._detach_soon,
        )
        self.registry.add(session.key, session)
        self._tally.opened(stream, topic.kind)
        if self._shared is not None:
            await self._count_shared(session, self._shared)
        return session

    async def _count_shared(self, session: Session, shared: SharedUserCount) -> None:
        """Count the session in the shared per-user count; end it and raise ``UserLimitExceeded`` if that is full."""
        lease = uuid.uuid4().hex
        try:
            admitted = await shared.acquire(session.key.user_id, lease)
        except BaseException:  # cancelled while counting: an already added member expires with its lease
            await self.end(session)
            raise
        if session.ended:  # ended (shutdown) while being counted
            await shared.release(session.key.user_id, lease)
        elif not admitted:
            await self.end(session)
            raise UserLimitExceeded()
        else:
            session.lease = lease

    def attach(self, session: Session) -> None:
        """Start delivering to ``session``: its catch-up, then live entries."""
        self._hub.attach(session.subscriber)

    def find(self, key: ConnectionKey, websocket: object) -> Session | None:
        """The session registered under ``key`` for ``websocket`` (``ProgressManager.disconnect`` gets no session)."""
        return next((session for session in self.registry.under(key) if session.websocket is websocket), None)

    def streams(self) -> list[Session]:
        """Open event streams."""
        return [session for _, session in self.registry if session.stream]

    def stale(self) -> list[Session]:
        """Sessions whose sender has stopped but that nobody ended (a route that never called disconnect)."""
        return [session for _, session in self.registry if session.finished.is_set()]

    async def end(self, session: Session) -> None:
        """End ``session``: stop its delivery and its sender, then free its slot and lease; safe to call again."""
        if session.ended:
            return
        if not session.outbox.closing:
            session.outbox.abort(*close.CLOSED)  # enters CLOSING
        await self._hub.detach(session.subscriber)
        session.cancel_deadline()
        await stop_task(session.sender)
        session.finish()
        if session.ended:  # ended by another caller meanwhile
            return
        session.phase = Phase.ENDED
        if self.registry.remove(session.key, session):
            self._tally.opened(session.stream, session.key.kind, -1)
        lease, session.lease = session.lease, None
        if lease is not None and self._shared is not None:
            await self._shared.release(session.key.user_id, lease)
        session.outbox.release()  # break the session <-> outbox cycle: refcounting frees it, not a full GC pass

    async def close_all(self, code: int, reason: str) -> None:
        """End every session: senders get up to ``close_timeout`` seconds to send the close, then all are ended."""
        sessions = [session for _, session in self.registry]
        for session in sessions:
            session.outbox.abort(code, reason)
        finishing = [asyncio.ensure_future(session.finished.wait()) for session in sessions if session.sender]
        if finishing:
            _, pending = await asyncio.wait(finishing, timeout=self.close_timeout)
            for task in pending:
                task.cancel()
        for session in sessions:
            await self.end(session)
        if self._detaching:
            await asyncio.gather(*self._detaching, return_exceptions=True)

    def _detach_soon(self, session: Session) -> None:
        """``CLOSING`` began (inside a synchronous offer or close): detach from the hub in a task of its own."""
        if session.outbox.close_code == close.TOO_SLOW.code:
            self._tally.slow_closes += 1
        task = asyncio.get_running_loop().create_task(self._hub.detach(session.subscriber))
        self._detaching.add(task)
        task.add_done_callback(self._detaching.discard)
