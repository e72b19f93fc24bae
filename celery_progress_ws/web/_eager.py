"""Running a send in the calling task up to its first suspension, and handing the rest to another task."""

from __future__ import annotations

from collections.abc import Awaitable, Coroutine, Generator
from typing import Any


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
