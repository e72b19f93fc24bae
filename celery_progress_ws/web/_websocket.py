"""The Starlette WebSocket edge: the transport a session sends through, refusals, and bounded client input."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from .._core.errors import TransportClosed
from . import _close_codes as close
from ._metrics import WebTally
from ._outbox import Outbox, Outgoing
from ._session import Session

if TYPE_CHECKING:
    from .._core.settings import ProgressSettings

MAX_REASON_BYTES = 123
"""A close frame's reason must fit in 123 bytes of UTF-8."""


def close_reason(text: str) -> str:
    """``text`` cut to what a close frame can carry."""
    return text.encode()[:MAX_REASON_BYTES].decode(errors="ignore")


class WebSocketTransport:
    """``Transport`` over a Starlette WebSocket, one frame per message; the peer going away becomes
    ``TransportClosed``."""

    __slots__ = ("tally", "websocket")

    max_batch = 1

    def __init__(self, websocket: WebSocket, tally: WebTally | None = None) -> None:
        self.websocket = websocket
        self.tally = tally if tally is not None else WebTally()

    async def send(self, item: Outgoing) -> None:
        try:
            await self.websocket.send_text(item.text)
        except WebSocketDisconnect as exc:
            raise TransportClosed(f"peer left ({exc.code})") from exc
        self.tally.delivered_websocket += 1

    async def send_many(self, items: list[Outgoing]) -> None:
        for item in items:
            await self.send(item)

    async def close(self, code: int, reason: str) -> None:
        if self.websocket.application_state is WebSocketState.DISCONNECTED:
            return
        try:
            await self.websocket.close(code, close_reason(reason))
        except WebSocketDisconnect as exc:
            raise TransportClosed(f"peer left ({exc.code})") from exc

    def abort(self) -> None:
        """Nothing to drop here: once the sender is stopped, the route returns and the server closes the socket."""


async def refuse(websocket: WebSocket, reason: str, code: int = close.POLICY_VIOLATION) -> None:
    """Accept, then close with ``code`` and ``reason``: a browser sees the reason, unlike a rejected handshake."""
    with contextlib.suppress(WebSocketDisconnect):
        if websocket.application_state is WebSocketState.CONNECTING:
            await websocket.accept()
        await websocket.close(code, close_reason(reason))


@dataclass(frozen=True, slots=True)
class ClientInput:
    """What a client may send: messages up to ``max_bytes``, ``burst`` at once, then ``per_second`` on average."""

    max_bytes: int
    per_second: float
    burst: int

    @classmethod
    def of(cls, settings: ProgressSettings) -> ClientInput:
        """The limits ``settings`` set."""
        per_second, burst = settings.client_messages_per_second, settings.client_message_burst
        return cls(settings.max_client_message_bytes, per_second, burst)


class MessageRate:
    """A token bucket: holds up to ``burst`` tokens, refilled at ``per_second``; each message takes one."""

    __slots__ = ("_burst", "_per_second", "_tokens", "_updated")

    def __init__(self, per_second: float, burst: int, now: float) -> None:
        self._per_second = per_second
        self._burst = float(burst)
        self._tokens = float(burst)
        self._updated = now

    def take(self, now: float) -> bool:
        """Whether a message arriving at ``now`` is within the rate."""
        self._tokens = min(self._burst, self._tokens + (now - self._updated) * self._per_second)
        self._updated = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


async def read_client(websocket: WebSocket, outbox: Outbox, limits: ClientInput) -> None:
    """Read and discard what the client sends until it leaves; a message over ``max_bytes`` closes with 1009, one
    over the rate with 1008 ``Too many messages``. Once closing, the rest is read without being looked at."""
    rate: MessageRate | None = None  # made on the first message: most clients never send one
    clock = asyncio.get_running_loop().time
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        if outbox.closing:
            continue
        if rate is None:
            rate = MessageRate(limits.per_second, limits.burst, clock())
        text = message.get("text")
        size = len(text.encode()) if text is not None else len(message.get("bytes") or b"")
        if size > limits.max_bytes:
            outbox.abort(close.MESSAGE_TOO_BIG, f"Message too big (limit {limits.max_bytes} bytes)")
        elif not rate.take(clock()):
            outbox.abort(*close.TOO_MANY_MESSAGES)


async def serve(websocket: WebSocket, session: Session, limits: ClientInput) -> None:
    """Run until the client leaves or the server has ended the connection (terminal status, overflow, shutdown).

    Client input is read in the calling task (no reader task, no waiter task per connection); when the session's
    sender stops first, it interrupts that read by cancelling the calling task, and only that cancellation is absorbed.
    """
    sender = session.sender
    task = asyncio.current_task()
    if sender is None or task is None:  # no sender to wait for: read until the client leaves
        await read_client(websocket, session.outbox, limits)
        return
    if sender.done():
        return
    interrupt = _Interrupt(task)
    sender.add_done_callback(interrupt)
    try:
        await read_client(websocket, session.outbox, limits)
    except asyncio.CancelledError:
        if not interrupt.fired or task.uncancel() > 0:
            raise
    except WebSocketDisconnect:
        pass
    finally:
        interrupt.armed = False
        sender.remove_done_callback(interrupt)


class _Interrupt:
    """A sender's done-callback that cancels the task reading the client, while that read is going on."""

    __slots__ = ("armed", "fired", "task")

    def __init__(self, task: asyncio.Task[object]) -> None:
        self.task: asyncio.Task[object] | None = task
        self.armed = True
        self.fired = False

    def __call__(self, _sender: object) -> None:
        task, self.task = self.task, None
        if self.armed and task is not None:
            self.fired = True
            task.cancel()
