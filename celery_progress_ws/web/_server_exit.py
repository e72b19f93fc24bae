"""Noticing that the hosting server has begun to exit, which ASGI only says after every open response has ended.

uvicorn waits for open HTTP responses to finish before it sends the lifespan shutdown, and an event stream does not
finish by itself, so streams must end as soon as the server starts exiting. The server that handles SIGTERM with a
bound method of itself and has a ``should_exit`` flag (uvicorn's ``Server``, also under gunicorn) is polled for it;
the handler is looked up on every poll, as a server restores the previous one only after it has stopped.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

from ._tasks import stop_task

POLL_SECONDS = 0.25


def server_exiting() -> bool:
    """Whether the server owning this process' SIGTERM handler has begun to exit."""
    owner = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
    return getattr(owner, "should_exit", False) is True


class ServerExitWatch:
    """Calls ``on_exit`` once, when ``server_exiting()`` turns true; polls in one task while started."""

    def __init__(self, on_exit: Callable[[], None], *, interval: float = POLL_SECONDS) -> None:
        self._on_exit = on_exit
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._watch())

    async def stop(self) -> None:
        task, self._task = self._task, None
        await stop_task(task)

    async def _watch(self) -> None:
        while not server_exiting():  # noqa: ASYNC110 - a server's flag offers no event to await
            await asyncio.sleep(self._interval)
        self._on_exit()
