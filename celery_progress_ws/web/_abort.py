"""Dropping the socket under a stuck HTTP response, for which ASGI has no message.

A server that closes a response whose peer has stopped reading waits for its write buffer to drain first (asyncio's
and uvloop's ``transport.close()``), which then never happens: the socket, its buffers and the server's connection
stay until the peer reads or its host goes away. Only the transport's ``abort()`` drops them at once. uvicorn runs each
request in a task whose coroutine is ``RequestResponseCycle.run_asgi``, and that cycle holds the transport.
"""

from __future__ import annotations

import asyncio
from typing import Protocol


class Abortable(Protocol):
    """What is needed of a transport (asyncio's and uvloop's both have it)."""

    def abort(self) -> None:
        """Close the connection at once, dropping what is still buffered."""


def request_transport() -> Abortable | None:
    """The transport of the request the current task serves, or ``None`` when the server does not reveal it."""
    task = asyncio.current_task()
    frame = getattr(task.get_coro(), "cr_frame", None) if task is not None else None
    if frame is None:
        return None
    transport = getattr(frame.f_locals.get("self"), "transport", None)
    return transport if callable(getattr(transport, "abort", None)) else None
