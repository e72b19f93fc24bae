"""Every way the server ends a connection, as a WebSocket close ``(code, reason)``; an event stream just ends.

The browser client tells them apart by code (and by reason for 1000), so a pair here is part of the wire format.
``Close`` is a tuple: ``outbox.close(*COMPLETED)`` and ``websocket.close(*COMPLETED)`` both take it apart.
"""

from __future__ import annotations

from typing import NamedTuple


class Close(NamedTuple):
    """A close code and its reason text (at most 123 bytes of UTF-8)."""

    code: int
    reason: str


COMPLETED = Close(1000, "Operation completed")
"""The operation reached a terminal status (or the application ended its connections): nothing more will come."""
CLOSED = Close(1000, "Connection closed")
"""The connection was ended by its route or the application without another reason."""
SHUTDOWN = Close(1001, "Server shutting down")
"""The manager is shutting down (lifespan shutdown): the client may resume elsewhere."""
LOST = Close(1006, "Connection lost")
"""The peer went away before the server closed (never sent: recorded on the outbox)."""
CLIENT_LEFT = Close(1006, "Client left")
"""An event-stream client disconnected (never sent)."""
POLICY_VIOLATION = 1008
"""A refusal (invalid id, not authorized, a limit reached, a bad origin): the reason says which."""
TOO_MANY_MESSAGES = Close(POLICY_VIOLATION, "Too many messages")
"""The client sent messages faster than ``client_messages_per_second`` allows."""
MESSAGE_TOO_BIG = 1009
"""The client sent a message over ``max_client_message_bytes`` (the reason names the limit)."""
INTERNAL_ERROR = Close(1011, "Internal server error")
"""Delivery to this connection failed unexpectedly (logged on the server)."""
RESTART = Close(1012, "Server restarting")
"""The server process is exiting (its server closes WebSockets with 1012 too): resume on another process."""
TOO_SLOW = Close(1013, "Client too slow")
"""The client's queue overflowed: it did not take messages as fast as they came."""
