"""Server-Sent Events: a session's outbox as a ``text/event-stream`` response, with heartbeats and bounded sends.

Every send must finish within ``send_timeout`` seconds. A client that stops reading blocks a send once the socket's
buffers are full; it is then dropped (its socket aborted, see ``_abort``) instead of holding the response, its session
and its slot for as long as it likes. The stream ends when the outbox does: a terminal entry, overflow (the client is
too slow), the server exiting (the client resumes elsewhere with ``Last-Event-ID``), or the client leaving.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from ._abort import Abortable, request_transport
from ._session import Session, run_eagerly
from ._tasks import stop_task

logger = logging.getLogger(__name__)

HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
HEARTBEAT = b": heartbeat\n\n"
CLOSE_CLIENT_LEFT = (1006, "Client left")
BATCH_FRAMES = 64
"""At most this many queued frames go out in one write."""
DISCONNECT_WAIT_SECONDS = 1.0
"""After aborting a socket, how long to wait for the server to report it gone."""


class SendStuck(Exception):
    """A send did not finish within the send timeout: the client has stopped reading."""


class EventStreamResponse(Response):
    """Streams ``session``'s outbox; ``on_end`` runs however it ends, once the socket is gone or finished with (so
    the session holds its slot until then). A ``Response`` for FastAPI, with its own ``__call__``."""

    media_type = "text/event-stream"

    def __init__(
        self,
        session: Session,
        *,
        heartbeat: float,
        send_timeout: float,
        on_end: Callable[[Session], Awaitable[None]],
    ) -> None:
        self.status_code = 200
        self.background = None
        self.init_headers(HEADERS)
        self._session = session
        self._heartbeat = heartbeat
        self._send_timeout = send_timeout
        self._on_end = on_end

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        transport = request_transport()
        gone = asyncio.get_running_loop().create_task(self._until_disconnected(receive))
        try:
            await self._stream(send)
        except SendStuck:
            await self._drop(transport, gone)
        except OSError:  # a server that reports a gone peer by raising (ASGI 2.4)
            logger.debug("Peer of %s left", self._session.key)
        finally:
            await stop_task(gone)
            await self._on_end(self._session)

    async def _stream(self, send: Send) -> None:
        outbox = self._session.outbox
        await self._send(send, {"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        while True:
            if len(outbox) or outbox.closing:
                item = await outbox.get()
            else:
                try:
                    async with asyncio.timeout(self._heartbeat):
                        item = await outbox.get()
                except TimeoutError:
                    await self._send(send, _body(HEARTBEAT))
                    continue
            if item is None:
                break
            frames = [item.sse]
            while len(outbox) and len(frames) < BATCH_FRAMES:  # queued items: ``get`` returns without waiting
                queued = await outbox.get()
                if queued is not None:
                    frames.append(queued.sse)
            await self._send(send, _body(b"".join(frames) if len(frames) > 1 else frames[0]))
        await self._send(send, {"type": "http.response.body", "body": b"", "more_body": False})

    async def _send(self, send: Send, message: Message) -> None:
        """Send ``message``: no timer when it completes at once (the socket takes it), else within the timeout."""
        sending = send(message)
        rest = run_eagerly(sending) if isinstance(sending, Coroutine) else sending
        if rest is None:
            return
        try:
            async with asyncio.timeout(self._send_timeout):
                await rest
        except TimeoutError as exc:
            raise SendStuck(f"a send took longer than {self._send_timeout} s") from exc

    async def _until_disconnected(self, receive: Receive) -> None:
        """Wait for the client to leave, then end the stream (delivery stops; nothing more is sent)."""
        while (await receive())["type"] != "http.disconnect":
            pass
        self._session.outbox.abort(*CLOSE_CLIENT_LEFT)

    async def _drop(self, transport: Abortable | None, gone: asyncio.Task[None]) -> None:
        key = self._session.key
        self._session.outbox.abort(*CLOSE_CLIENT_LEFT)
        if transport is None:
            logger.warning("%s stopped reading; this server offers no way to drop its socket, it closes by itself", key)
            return
        logger.info("Dropping %s: it took nothing for %s s", key, self._send_timeout)
        transport.abort()
        try:  # the server reports the socket gone on a later loop iteration: then the session may end
            async with asyncio.timeout(DISCONNECT_WAIT_SECONDS):
                await asyncio.shield(gone)
        except TimeoutError:
            logger.warning("The server did not report the dropped socket of %s gone", key)


def _body(chunk: bytes) -> dict[str, Any]:
    return {"type": "http.response.body", "body": chunk, "more_body": True}
