"""One open connection: its registry key, its subscriber, its sender, and the deadline that bounds its ending.

A session with a sender task (a WebSocket) is given ``close_timeout`` seconds to finish once it starts ending; one
without (an event stream) is bounded by its response instead, whose every send has that long (see ``_sse``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, Protocol

from .._core.errors import ProgressError
from .._core.streams import Topic
from ._outbox import Outbox, Outgoing
from ._registry import ConnectionKey
from ._subscriber import Subscriber

logger = logging.getLogger(__name__)

CLOSE_TIMEOUT_SECONDS = 10.0
"""Once the server ends a connection, how long the client has to take the rest before it is dropped (the default of
``ProgressSettings.send_timeout_seconds``)."""


class TransportClosed(ProgressError):
    """The peer has gone; raised by a ``Transport`` instead of its framework's own exception."""


class Transport(Protocol):
    """What a sender needs from a connection (a WebSocket, or a test double)."""

    async def send_text(self, text: str) -> None:
        """Send one message; raise ``TransportClosed`` if the peer has gone."""

    async def close(self, code: int, reason: str) -> None:
        """Close the connection with ``code`` and ``reason``; raise ``TransportClosed`` if the peer has gone."""


class Session:
    """A registered connection. ``on_closing`` runs when the server starts ending it (terminal status, overflow,
    shutdown, a gone peer); ``on_expired`` when it has not finished ``close_timeout`` seconds later."""

    def __init__(
        self,
        key: ConnectionKey,
        topic: Topic,
        *,
        capacity: int,
        last_event_id: str | None,
        handle: object = None,
        close_timeout: float = CLOSE_TIMEOUT_SECONDS,
        on_closing: Callable[[Session], None] | None = None,
        on_expired: Callable[[Session], None] | None = None,
    ) -> None:
        self.key = key
        self.handle = handle
        """The framework object (a WebSocket) this session belongs to, found by identity."""
        self.subscriber = Subscriber(topic, capacity=capacity, last_event_id=last_event_id, on_closing=self._closing)
        self.sender: asyncio.Task[None] | None = None
        self.finished = Flag()
        """Set when the sender has stopped (closed, aborted, or the peer left)."""
        self.detached = False
        """Set once delivery to it has stopped (it started ending; its socket may still be open)."""
        self.released = False
        """Set once it has ended and its registry slot (and shared lease) is freed."""
        self._close_timeout = close_timeout
        self._on_closing = on_closing
        self._on_expired = on_expired
        self._deadline: asyncio.TimerHandle | None = None

    @property
    def outbox(self) -> Outbox:
        return self.subscriber.outbox

    def start_sender(self, transport: Transport, *, direct: bool = True) -> None:
        """Drain the outbox into ``transport`` in a task of its own.

        With ``direct``, a message offered while that task is idle is sent at once by the offering task (see
        ``Outbox``); the task then only drains what queued up behind a send that had to wait, and sends the close.
        """
        outbox = self.subscriber.outbox
        if direct:
            send_text = transport.send_text

            def send_now(item: Outgoing) -> Awaitable[None] | None:
                return run_eagerly(send_text(item.text))

            outbox.set_direct(send_now)
        self.sender = asyncio.get_running_loop().create_task(self._send_all(transport))
        if outbox.closing:  # it began ending before it had a sender: bound that sender too
            self._arm_deadline()

    async def _send_all(self, transport: Transport) -> None:
        outbox = self.subscriber.outbox
        try:
            while (item := await outbox.get()) is not None:
                await transport.send_text(item.text)
            await transport.close(outbox.close_code or 1000, outbox.close_reason)
        except TransportClosed:
            logger.debug("Peer of %s left", self.key)
        finally:
            outbox.abort(1006, "Connection lost")
            outbox.release()
            self.cancel_deadline()
            self.finished.set()

    def _closing(self) -> None:
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
        if self.sender is not None:
            self.sender.cancel()
        if self._on_expired is not None:
            self._on_expired(self)

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


def run_eagerly(coroutine: Coroutine[Any, Any, None]) -> Awaitable[None] | None:
    """Run ``coroutine`` in the calling task up to its first suspension: ``None`` if it finished, else the rest of it.

    A WebSocket send whose transport is not paused completes without suspending (uvicorn writes the frame and
    returns), so the calling task sends it without a task switch. What remains after a suspension (or an exception
    to re-raise) is returned for the connection's sender task to await, which resumes the coroutine where it stopped.
    """
    try:
        suspended_on = coroutine.send(None)
    except StopIteration:
        return None
    except Exception as exc:  # re-raised by the sender task, as if it had sent this itself
        return _Raise(exc)
    return _Resume(coroutine, suspended_on)


class _Resume:
    """The rest of a coroutine suspended on ``suspended_on``, awaitable once from another task."""

    __slots__ = ("_coroutine", "_suspended_on")

    def __init__(self, coroutine: Coroutine[Any, Any, None], suspended_on: Any) -> None:
        self._coroutine = coroutine
        self._suspended_on = suspended_on

    def __await__(self) -> Generator[Any, Any, None]:
        coroutine, value = self._coroutine, self._suspended_on
        self._suspended_on = None
        while True:  # what a ``yield from`` does, starting from a value already yielded
            try:
                sent = yield value
            except GeneratorExit:
                coroutine.close()
                raise
            except BaseException as exc:  # handed to the coroutine (cancellation included)
                try:
                    value = coroutine.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    value = coroutine.send(sent)
                except StopIteration:
                    return

    def close(self) -> None:
        """Drop the rest of the send unawaited (the connection ended)."""
        self._coroutine.close()


class _Raise:
    """An exception raised when awaited."""

    __slots__ = ("_exc",)

    def __init__(self, exc: Exception) -> None:
        self._exc = exc

    def __await__(self) -> Generator[Any, Any, None]:
        exc, self._exc = self._exc, None  # type: ignore[assignment]
        raise exc
        yield  # makes this a generator
