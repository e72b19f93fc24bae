"""Failing fast while Redis is stalled: after a command times out, one probe at a time until one answers.

A stalled server (paused, swapping, blocked by a long script) accepts connections and answers nothing; every command
then waits for the full socket timeout on the process' one command connection, one after the other. Once a command
has timed out, the guard lets a single command through as a probe and fails the others at once, until a command
answers again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import TimeoutError as RedisTimeoutError

from .._core.errors import SourceUnavailable

T = TypeVar("T")


class StallGuard:
    """Wraps the source's commands; ``run`` raises ``SourceUnavailable`` at once while a probe is in flight."""

    def __init__(self) -> None:
        self._stalled = False
        self._probing = False

    @property
    def stalled(self) -> bool:
        """Whether the last command that ended timed out."""
        return self._stalled

    async def run(self, command: Callable[[], Awaitable[T]]) -> T:
        """Send ``command()`` unless another command is already probing a stalled server."""
        probe = self._stalled
        if probe:
            if self._probing:
                raise SourceUnavailable("Redis did not answer in time; failing fast until it does")
            self._probing = True
        try:
            result = await command()
        except RedisTimeoutError:
            self._stalled = True
            raise
        finally:
            if probe:
                self._probing = False
        self._stalled = False
        return result
