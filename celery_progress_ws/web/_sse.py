"""Server-Sent Events: a session's outbox as an ``text/event-stream`` response with comment heartbeats."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from ._session import Session

HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
HEARTBEAT = ": heartbeat\n\n"


class EventStreamResponse(StreamingResponse):
    """Streams ``id:``/``event:``/``data:`` frames until the session ends; ``on_end`` runs however it ends."""

    def __init__(self, session: Session, *, heartbeat: float, on_end: Callable[[Session], Awaitable[None]]) -> None:
        super().__init__(self._frames(), media_type="text/event-stream", headers=HEADERS)
        self._session = session
        self._heartbeat = heartbeat
        self._on_end = on_end

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._on_end(self._session)

    async def _frames(self) -> AsyncIterator[str]:
        outbox = self._session.outbox
        while True:
            try:
                async with asyncio.timeout(self._heartbeat):
                    item = await outbox.get()
            except TimeoutError:
                yield HEARTBEAT
                continue
            if item is None:
                return
            yield item.sse
