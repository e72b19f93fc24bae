"""Outgoing messages, serialized once per entry, and the bounded per-connection queue they wait in."""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from .._core.codec import StreamId
from .._core.keys import validate_entry_type


class Outgoing:
    """One message for clients: the JSON text is built once and shared by every connection that receives it.

    Its ``type`` always follows the entry type rule (stored entries are checked when decoded, others here), so the
    Server-Sent Events frame cannot gain a line from any value: see ``sse``.
    """

    __slots__ = ("_sse", "direct", "entry_id", "key", "terminal", "text", "type")

    def __init__(self, entry_id: str | None, key: StreamId | None, entry_type: str, text: str, terminal: bool) -> None:
        self.entry_id = entry_id
        self.key = key
        self.type = entry_type
        self.text = text
        self.terminal = terminal
        self.direct = True
        """Whether an idle connection may send it at once; ``False`` queues it for the sender (see ``Outbox``)."""
        self._sse: bytes | None = None

    @classmethod
    def stored(cls, entry_id: str, key: StreamId, entry: dict[str, Any], *, terminal: bool) -> Outgoing:
        """A stream entry as delivered: the entry with its id first."""
        return cls(entry_id, key, entry["type"], _dumps({"id": entry_id, **entry}), terminal)

    @classmethod
    def unstored(cls, message: dict[str, Any], *, terminal: bool = False) -> Outgoing:
        """A message without a stream id (``current_state``, ``history_gap``, direct broadcasts).

        Raises ``InvalidEntryType`` if its ``type`` (default ``message``) breaks the entry type rule.
        """
        return cls(None, None, validate_entry_type(message.get("type", "message")), _dumps(message), terminal)

    @classmethod
    def comment(cls, text: str) -> Outgoing:
        """An event-stream comment (a heartbeat): no event for the client; only event streams are given one."""
        item = cls(None, None, "comment", "", False)
        item._sse = f": {text}\n\n".encode()
        return item

    @property
    def sse(self) -> bytes:
        """The Server-Sent Events frame (UTF-8), built on first use and then shared.

        Each field is one line: the id is a parsed stream id (digits and a dash), the event a validated entry type,
        and the data compact JSON, whose strings escape every control character (CR and LF included).
        """
        if self._sse is None:
            head = f"id: {self.entry_id}\n" if self.entry_id is not None else ""
            self._sse = f"{head}event: {self.type}\ndata: {self.text}\n\n".encode()
        return self._sse


def _dumps(message: dict[str, Any]) -> str:
    """Compact JSON on one line: no indentation, and ``json`` escapes line breaks inside strings."""
    return json.dumps(message, separators=(",", ":"), default=str)


DirectSend = Callable[["Outgoing"], "Awaitable[None] | None"]
"""Send an item at once: ``None`` when it is sent, or what the sender must await to finish sending it."""


class Outbox:
    """A bounded FIFO of outgoing messages drained by one sender, which also learns how the connection ends.

    ``close`` ends the connection after the queued messages; ``abort`` drops them and ends it at once.

    With a ``direct`` send (``set_direct``), a message offered while the sender waits with nothing queued is sent on
    the spot, in the offering task, instead of waking the sender: no queue, no task switch. When that send cannot
    finish at once (the transport is paused, the peer is gone), what remains of it is *parked*: the sender awaits it
    before anything queued after it, so the order holds, and later messages queue as usual until the sender is idle
    again.
    """

    __slots__ = (
        "_direct",
        "_idle",
        "_items",
        "_on_closing",
        "_parked",
        "_reader",
        "_writable",
        "aborted",
        "capacity",
        "close_code",
        "close_reason",
    )

    def __init__(self, capacity: int, on_closing: Callable[[], None] | None = None) -> None:
        self.capacity = capacity
        self._items: deque[Outgoing] = deque()
        self._reader: asyncio.Future[None] | None = None
        """What the sender awaits while it has nothing to do (one future, not an ``Event``: sockets are many)."""
        self._writable: asyncio.Event | None = None
        """Created by the first ``put`` that finds the queue full."""
        self._on_closing = on_closing
        self._direct: DirectSend | None = None
        self._idle = False
        """The sender waits in ``get`` with nothing queued or parked: an offered message may be sent directly."""
        self._parked: Awaitable[None] | None = None
        self.close_code: int | None = None
        self.close_reason = ""
        self.aborted = False

    @property
    def closing(self) -> bool:
        """Whether the connection is ending: no more messages are accepted."""
        return self.close_code is not None

    @property
    def full(self) -> bool:
        return len(self._items) >= self.capacity

    def __len__(self) -> int:
        return len(self._items)

    def set_direct(self, direct: DirectSend | None) -> None:
        """Let ``offer`` send through ``direct`` while the sender is idle (``None``: always queue)."""
        self._direct = direct

    def offer(self, item: Outgoing) -> bool:
        """Queue ``item`` (or send it directly) if there is room; ``False`` when full or closing."""
        if self.close_code is not None or len(self._items) >= self.capacity:
            return False
        if self._idle and self._direct is not None and item.direct:  # nothing queued or parked: none overtaken
            parked = self._direct(item)
            if parked is not None:
                self._idle = False
                self._parked = parked
                self._wake_reader()
            return True
        self._items.append(item)
        # Not idle from now on, although the sender only resumes later: a direct send must not overtake this item.
        self._idle = False
        if self._reader is not None:
            self._wake_reader()
        return True

    async def put(self, item: Outgoing) -> bool:
        """Queue ``item``, waiting for room; ``False`` if the connection ends first."""
        while not self.closing and len(self._items) >= self.capacity:
            if self._writable is None:
                self._writable = asyncio.Event()
            self._writable.clear()
            await self._writable.wait()
        return self.offer(item)

    async def get(self) -> Outgoing | None:
        """The next message, or ``None`` once the connection ends (after the queue drains, unless aborted).

        A parked direct send is finished first (its errors, such as the peer having gone, are raised here).
        """
        while True:
            parked = self._parked
            if parked is not None:
                self._parked = None
                await parked
            if self._items:
                break
            if self.close_code is not None:
                return None
            reader = self._reader = asyncio.get_running_loop().create_future()
            self._idle = True
            try:
                await reader
            finally:
                self._idle = False
                if self._reader is reader:
                    self._reader = None
        item = self._items.popleft()
        if self._writable is not None:
            self._writable.set()
        return item

    def close(self, code: int, reason: str) -> None:
        """End the connection after the messages already queued."""
        if not self.closing:
            self.close_code, self.close_reason = code, reason
            self._closing_began()

    def abort(self, code: int, reason: str) -> None:
        """Drop the queued messages and end the connection now."""
        if self.aborted:
            return
        self._items.clear()
        began = not self.closing
        self.close_code, self.close_reason = code, reason
        self.aborted = True
        if began:
            self._closing_began()
        else:
            self._wake_reader()

    def _wake_reader(self) -> None:
        reader = self._reader
        if reader is not None:
            self._reader = None
            if not reader.done():
                reader.set_result(None)

    def _closing_began(self) -> None:
        self._wake_reader()
        if self._writable is not None:
            self._writable.set()
        on_closing = self._on_closing
        if on_closing is not None:
            on_closing()

    def release(self) -> None:
        """Forget the callbacks and anything parked (the connection has ended), so nothing keeps the session alive."""
        self._on_closing = None
        self._direct = None
        self._idle = False
        parked, self._parked = self._parked, None
        close = getattr(parked, "close", None)
        if close is not None:
            close()
