"""One open connection, WebSocket or event stream: its subscriber, the sender that drives its transport, and the
phases of its ending, the same for both transports::

    OPEN ──outbox starts closing──> CLOSING ──sender stops──> FINISHED ──Connections.end──> ENDED
      └───────────────────── Connections.end (refused, route done, shutdown) ────────────────┘

- OPEN: registered (it holds a slot, and a lease in the shared per-user count); delivering once attached to the hub.
- CLOSING: the outbox stopped taking messages (terminal entry, overflow, shutdown, server exit, the peer leaving, its
  input over the limits), so delivery stops; the sender sends what is queued and the close within ``close_timeout``
  seconds, after which its transport is aborted and the sender stopped.
- FINISHED: the sender has stopped. The socket may still exist, so the session keeps its slot.
- ENDED: its holder (the route, once the socket is gone; the manager at shutdown) ended it: slot and lease are free.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from enum import IntEnum
from typing import Protocol

from .._core.errors import TransportClosed
from .._core.streams import Topic
from . import _close_codes as close
from ._eager import run_eagerly
from ._outbox import Outbox, Outgoing
from ._registry import ConnectionKey
from ._subscriber import Subscriber

logger = logging.getLogger(__name__)

CLOSE_TIMEOUT_SECONDS = 10.0
"""Once the server ends a connection, how long the client has to take the rest before it is dropped (the default of
``ProgressSettings.send_timeout_seconds``)."""


class Phase(IntEnum):
    """Where a session is in its ending; it only moves forward."""

    OPEN = 0
    CLOSING = 1
    FINISHED = 2
    ENDED = 3


class Transport(Protocol):
    """What a session's sender drives: a WebSocket, an event-stream response, or a test double."""

    @property
    def max_batch(self) -> int:
        """How many queued messages one ``send_many`` may carry (1: one message per send)."""

    async def send(self, item: Outgoing) -> None:
        """Send one message; raise ``TransportClosed`` if the peer has gone."""

    async def send_many(self, items: list[Outgoing]) -> None:
        """Send queued messages in order (at most ``max_batch``); raise ``TransportClosed`` if the peer has gone."""

    async def close(self, code: int, reason: str) -> None:
        """End the connection with ``code`` and ``reason``; raise ``TransportClosed`` if the peer has gone."""

    def abort(self) -> None:
        """The client did not take its last messages in time: drop what the transport can (the sender is stopped)."""


class Session:
    """A registered connection; ``on_closing`` runs once, when it enters ``CLOSING`` (its delivery must stop)."""

    def __init__(
        self,
        key: ConnectionKey,
        topic: Topic,
        *,
        capacity: int,
        last_event_id: str | None,
        stream: bool = False,
        close_timeout: float = CLOSE_TIMEOUT_SECONDS,
        on_closing: Callable[[Session], None] | None = None,
    ) -> None:
        self.key = key
        self.stream = stream
        """An event stream: ended as soon as the hosting server starts to exit (see ``_server_exit``)."""
        self.subscriber = Subscriber(topic, capacity=capacity, last_event_id=last_event_id, on_closing=self._closing)
        self.phase = Phase.OPEN
        self.lease: str | None = None
        """Its id in the shared per-user count, while it is counted there."""
        self.websocket: object | None = None
        """The WebSocket of a session opened by ``ProgressManager.connect``, which ``disconnect`` is given back."""
        self.sender: asyncio.Task[None] | None = None
        self.finished = Flag()
        """Set when the sender has stopped (closed, dropped, or the peer left), or the session ended without one."""
        self._transport: Transport | None = None
        self._close_timeout = close_timeout
        self._on_closing = on_closing
        self._deadline: asyncio.TimerHandle | None = None

    @property
    def outbox(self) -> Outbox:
        return self.subscriber.outbox

    @property
    def ended(self) -> bool:
        return self.phase is Phase.ENDED

    def start_sender(self, transport: Transport, *, direct: bool = True) -> None:
        """Drain the outbox into ``transport`` in a task of its own.

        With ``direct``, a message offered while that task is idle is sent at once by the offering task (see
        ``Outbox``); the task then only drains what queued up behind a send that had to wait, and sends the close.
        """
        outbox = self.subscriber.outbox
        if direct:
            send = transport.send

            def send_now(item: Outgoing) -> Awaitable[None] | None:
                return run_eagerly(send(item))

            outbox.set_direct(send_now)
        self._transport = transport
        self.sender = asyncio.get_running_loop().create_task(self._send_all(transport))
        if outbox.closing:  # it began ending before it had a sender: bound that sender too
            self._arm_deadline()

    async def _send_all(self, transport: Transport) -> None:
        outbox = self.subscriber.outbox
        batch = transport.max_batch
        try:
            while (item := await outbox.get()) is not None:
                if batch > 1 and len(outbox):
                    items = [item]
                    while len(outbox) and len(items) < batch:  # queued items: ``get`` returns without waiting
                        if (queued := await outbox.get()) is not None:
                            items.append(queued)
                    await transport.send_many(items)
                else:
                    await transport.send(item)
            await transport.close(outbox.close_code or close.CLOSED.code, outbox.close_reason)
        except TransportClosed:
            logger.debug("Peer of %s left", self.key)
        finally:
            outbox.abort(*close.LOST)
            outbox.release()
            self.cancel_deadline()
            self.finish()

    def finish(self) -> None:
        """Enter ``FINISHED``: the sender has stopped (or never will run)."""
        self.phase = max(self.phase, Phase.FINISHED)
        self.finished.set()

    def _closing(self) -> None:
        """The outbox stopped taking messages: enter ``CLOSING`` and bound the sender's last sends."""
        if self.phase is not Phase.OPEN:
            return
        self.phase = Phase.CLOSING
        self._arm_deadline()
        if self._on_closing is not None:
            self._on_closing(self)

    def _arm_deadline(self) -> None:
        if self._deadline is None and self.sender is not None and not self.finished.is_set():
            self._deadline = asyncio.get_running_loop().call_later(self._close_timeout, self._expire)

    def _expire(self) -> None:
        self._deadline = None
        if self.finished.is_set():
            return
        logger.info("Dropping %s: it did not take its last messages within %s s", self.key, self._close_timeout)
        if self._transport is not None:
            self._transport.abort()
        if self.sender is not None:
            self.sender.cancel()

    def cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None


class Flag:
    """``asyncio.Event``'s ``is_set`` / ``set`` / ``wait``, with the event (and its waiter deque) made only if waited
    on: each of thousands of connections has one, and hardly any is ever awaited."""

    __slots__ = ("_event", "_set")

    def __init__(self) -> None:
        self._set = False
        self._event: asyncio.Event | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        if self._event is not None:
            self._event.set()

    async def wait(self) -> None:
        if self._set:
            return
        if self._event is None:
            self._event = asyncio.Event()
        await self._event.wait()
