"""Server-Sent Events: a session's ``text/event-stream`` response, a ``Transport`` driven by the session's sender.

Every send must finish within ``send_timeout`` seconds. A client that stops reading blocks a send once the socket's
buffers are full; it is then dropped (its socket aborted, see ``_abort``) instead of holding the response, its session
and its slot for as long as it likes. The stream ends when the session's outbox does: a terminal entry, overflow (the
client is too slow), the server exiting (the client resumes elsewhere with ``Last-Event-ID``), or the client leaving.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from .._core.errors import SendStuck, TransportClosed
from . import _close_codes as close
from ._abort import Abortable, request_transport
from ._eager import run_eagerly
from ._metrics import WebTally
from ._outbox import Outgoing
from ._registry import ConnectionKey
from ._session import Session
from ._tasks import stop_task

logger = logging.getLogger(__name__)

HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
HEARTBEAT = Outgoing.comment("heartbeat")
BATCH_FRAMES = 64
"""At most this many queued frames go out in one write."""
DISCONNECT_WAIT_SECONDS = 1.0
"""After aborting a socket, how long to wait for the server to report it gone."""


class EventStreamTransport:
    """``Transport`` over an ASGI HTTP response: each message an event frame, queued ones batched in one write.

    Its sends run only in the session's sender task (no direct sends), since each one is bounded by a timeout of
    that task.
    """

    max_batch = BATCH_FRAMES

    def __init__(
        self,
        send: Send,
        socket: Abortable | None,
        *,
        send_timeout: float,
        key: ConnectionKey,
        tally: WebTally | None = None,
    ) -> None:
        self._send = send
        self._tally = tally if tally is not None else WebTally()
        self._socket = socket
        self._send_timeout = send_timeout
        self._key = key
        self._clock = asyncio.get_running_loop().time
        self.last_write = self._clock()
        self.dropped = False
        """Whether its socket was aborted (the server then reports the client gone)."""
        self._given_up = False

    async def start(self, headers: list[tuple[bytes, bytes]]) -> None:
        rest = self._begin({"type": "http.response.start", "status": 200, "headers": headers})
        if rest is not None:
            await self._finish(rest)

    async def send(self, item: Outgoing) -> None:
        rest = self._begin(_body(item.sse))
        if rest is not None:
            await self._finish(rest)
        if item is not HEARTBEAT:
            self._tally.delivered_sse += 1

    async def send_many(self, items: list[Outgoing]) -> None:
        rest = self._begin(_body(b"".join([item.sse for item in items])))
        if rest is not None:
            await self._finish(rest)
        self._tally.delivered_sse += len(items) - items.count(HEARTBEAT)

    async def close(self, code: int, reason: str) -> None:
        """End the response (an event stream carries no close code)."""
        rest = self._begin({"type": "http.response.body", "body": b"", "more_body": False})
        if rest is not None:
            await self._finish(rest)

    def abort(self) -> None:
        """Drop the socket: its client has stopped reading."""
        if self._given_up:
            return
        self._given_up = True
        if self._socket is None:
            logger.warning("%s stopped reading; this server offers no way to drop its socket", self._key)
            return
        logger.info("Dropping %s: it took nothing for %s s", self._key, self._send_timeout)
        self._socket.abort()
        self.dropped = True

    def _begin(self, message: Message) -> Awaitable[None] | None:
        """Send ``message`` as far as it goes at once: ``None`` when the socket took it (no timer needed), else the
        rest, which ``_finish`` bounds."""
        self.last_write = self._clock()
        sending = self._send(message)
        return run_eagerly(sending) if isinstance(sending, Coroutine) else sending

    async def _finish(self, rest: Awaitable[None]) -> None:
        try:
            async with asyncio.timeout(self._send_timeout):
                await rest
        except TimeoutError as exc:
            self.abort()
            raise SendStuck(f"a send took longer than {self._send_timeout} s") from exc
        except OSError as exc:  # a server that reports a gone peer by raising (ASGI 2.4)
            raise TransportClosed(str(exc)) from exc


class EventStreamResponse(Response):
    """Streams ``session`` through its sender and lives until that has finished; ``on_end`` runs however it ends,
    once the socket is gone or finished with (so the session holds its slot until then). A ``Response`` for FastAPI,
    with its own ``__call__``."""

    media_type = "text/event-stream"

    def __init__(
        self,
        session: Session,
        *,
        heartbeat: float,
        send_timeout: float,
        on_end: Callable[[Session], Awaitable[None]],
        tally: WebTally | None = None,
    ) -> None:
        self._tally = tally
        self.status_code = 200
        self.background = None
        self.init_headers(HEADERS)
        self._session = session
        self._heartbeat = heartbeat
        self._send_timeout = send_timeout
        self._on_end = on_end

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        session = self._session
        transport = EventStreamTransport(
            send, request_transport(), send_timeout=self._send_timeout, key=session.key, tally=self._tally
        )
        gone = asyncio.get_running_loop().create_task(self._until_disconnected(receive))
        try:
            try:
                await transport.start(self.raw_headers)
            except TransportClosed:
                logger.debug("Peer of %s left", session.key)
            else:
                session.start_sender(transport, direct=False)
                await self._beat(transport)
            if transport.dropped:
                await self._until_gone(gone)
        finally:
            await stop_task(gone)
            await self._on_end(session)

    async def _beat(self, transport: EventStreamTransport) -> None:
        """Until the sender has finished: a heartbeat after each ``heartbeat`` seconds in which nothing was sent."""
        finished = self._session.finished
        clock = asyncio.get_running_loop().time
        while not finished.is_set():
            wait = transport.last_write + self._heartbeat - clock()
            if wait <= 0:
                self._session.outbox.offer(HEARTBEAT)
                wait = self._heartbeat
            try:
                async with asyncio.timeout(wait):
                    await finished.wait()
            except TimeoutError:
                pass

    async def _until_disconnected(self, receive: Receive) -> None:
        """Wait for the client to leave, then end the stream (delivery stops; nothing more is sent)."""
        while (await receive())["type"] != "http.disconnect":
            pass
        self._session.outbox.abort(*close.CLIENT_LEFT)

    async def _until_gone(self, gone: asyncio.Task[None]) -> None:
        """The socket was aborted: the server reports it gone on a later loop iteration, then the session may end."""
        try:
            async with asyncio.timeout(DISCONNECT_WAIT_SECONDS):
                await asyncio.shield(gone)
        except TimeoutError:
            logger.warning("The server did not report the dropped socket of %s gone", self._session.key)


def _body(chunk: bytes) -> dict[str, Any]:
    return {"type": "http.response.body", "body": chunk, "more_body": True}
