"""The connections of one process, keyed by ``(user, kind, name)``, with the per-user and global limits.

``add`` checks both limits and registers in one synchronous step, so concurrent connects cannot overshoot. The
per-user count across web processes is a ``SharedUserCount`` (transport-agnostic; ``_user_count`` has the Redis one),
asked after this local check passes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Generic, NamedTuple, Protocol, TypeVar

from .._core.errors import ServerLimitExceeded, UserLimitExceeded
from .._core.streams import TopicKind

H = TypeVar("H")


class ConnectionKey(NamedTuple):
    """Who watches what: never matched by substring, always compared as a whole."""

    user_id: str
    kind: TopicKind
    name: str


class SharedUserCount(Protocol):
    """A per-user connection count shared by every web process; unavailable backends admit (the local limit holds)."""

    async def acquire(self, user_id: str, connection_id: str) -> bool:
        """Count ``connection_id`` for ``user_id``; ``False`` when the user already holds the limit everywhere."""

    async def release(self, user_id: str, connection_id: str) -> None:
        """Stop counting ``connection_id``; never raises for an unreachable backend."""


class ConnectionRegistry(Generic[H]):
    """Open connections (any handle type) under their keys, within the configured limits."""

    def __init__(self, *, max_per_user: int, max_total: int) -> None:
        self.max_per_user = max_per_user
        self.max_total = max_total
        self._handles: dict[ConnectionKey, dict[int, H]] = {}  # by id(handle): O(1) removal, insertion order kept
        self._per_user: Counter[str] = Counter()
        self._total = 0

    def __len__(self) -> int:
        return self._total

    def __iter__(self) -> Iterator[tuple[ConnectionKey, H]]:
        """A snapshot of every ``(key, handle)``."""
        return iter([(key, handle) for key, handles in self._handles.items() for handle in handles.values()])

    def under(self, key: ConnectionKey) -> list[H]:
        """The handles registered under ``key``."""
        return list(self._handles.get(key, {}).values())

    def count(self, user_id: str) -> int:
        return self._per_user[user_id]

    def add(self, key: ConnectionKey, handle: H) -> None:
        """Register ``handle``; raise ``ServerLimitExceeded`` (checked first) or ``UserLimitExceeded`` if full."""
        if self._total >= self.max_total:
            raise ServerLimitExceeded()
        if self._per_user[key.user_id] >= self.max_per_user:
            raise UserLimitExceeded()
        self._handles.setdefault(key, {})[id(handle)] = handle
        self._per_user[key.user_id] += 1
        self._total += 1

    def remove(self, key: ConnectionKey, handle: H) -> bool:
        """Unregister ``handle``; ``False`` if it was not registered under ``key``."""
        handles = self._handles.get(key)
        if handles is None or handles.get(id(handle)) is not handle:
            return False
        del handles[id(handle)]
        if not handles:
            del self._handles[key]
        self._per_user[key.user_id] -= 1
        if not self._per_user[key.user_id]:
            del self._per_user[key.user_id]
        self._total -= 1
        return True
