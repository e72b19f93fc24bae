"""Publishing from asyncio code (the web process): the same entries, keys, retention and throttle as the worker half.

Every write is one ``APPEND_SCRIPT`` call, so each entry is stored, given its TTL and announced live in one round trip.
Throttled progress is never lost: the newest skipped value is written when its interval ends (a loop timer), or
before the next unthrottled entry of the same operation (so entries keep the order they were made in, and the last
value always precedes the terminal ``status_update``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .._core.append import (
    APPEND_SCRIPT,
    AppendCall,
    OperationAppender,
    channel_append,
    publish_command,
    script_arguments,
)
from .._core.clients import AsyncClient
from .._core.codec import encode_entry, make_entry
from .._core.keys import KeySpace, validate_entry_type
from .._core.policy import is_terminal, ttl_for
from .._core.redis_errors import REDIS_FAILURES
from .._core.settings import ProgressSettings
from .._core.throttle import Decision, Throttle

logger = logging.getLogger(__name__)

FailureHandler = Callable[[str, dict[str, Any]], Awaitable[None]]
"""Called with ``(operation_id, entry)`` when a trailing (throttled) write fails."""


@dataclass(frozen=True, slots=True)
class _Pending:
    """A held-back entry, encoded when it was published: later changes to the caller's data cannot reach it."""

    operation_id: str
    message: str
    ttl: int

    @property
    def entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = json.loads(self.message)
        return entry


class AsyncProgressPublisher:
    """Appends entries to operation streams and custom channels with a ``redis.asyncio`` client.

    ``publish`` raises ``redis.exceptions.RedisError`` when a write fails, so the caller can fall back; a failed
    trailing write is handed to ``on_failure`` (or logged).
    """

    def __init__(
        self,
        redis: AsyncClient,
        settings: ProgressSettings | None = None,
        *,
        on_failure: FailureHandler | None = None,
    ) -> None:
        self.settings = settings or ProgressSettings()
        self.keys = KeySpace(self.settings.key_prefix)
        self._script = redis.register_script(APPEND_SCRIPT)
        self._publish = publish_command(redis)  # SPUBLISH on a cluster, like the worker half
        self._on_failure = on_failure
        self._throttle: Throttle[_Pending] = Throttle(self.settings.throttle_seconds, clock=time.monotonic)
        self._keys_of: dict[str, set[str]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due: float | None = None
        self._trailing: set[asyncio.Task[None]] = set()

    async def publish(
        self,
        operation_id: str,
        entry_type: str,
        data: dict[str, Any],
        *,
        throttle: bool = False,
        throttle_key: str | None = None,
        timestamp: str | None = None,
    ) -> str | None:
        """Append one entry; return its stream id, or ``None`` when the throttle kept it for a trailing write.

        Raises ``InvalidEntryType`` for a type that breaks the entry type rule, before anything is written.
        """
        entry = make_entry(validate_entry_type(entry_type), data, timestamp)
        message = encode_entry(entry, self.settings.max_entry_bytes)
        terminal = is_terminal(entry)
        if throttle and not terminal:
            key = throttle_key or operation_id
            pending = _Pending(operation_id, message, ttl_for(self.settings, entry_type, data))
            decision = self._throttle.offer(key, pending)
            if decision is not Decision.PUBLISH:
                self._keys_of.setdefault(operation_id, set()).add(key)
                self._arm_timer()
                return None
            self._discard_key(operation_id, key)
        if operation_id in self._keys_of or self._trailing:
            await self._flush_operation(operation_id)  # what the throttle holds back goes first, as it came first
        ttl = ttl_for(self.settings, entry_type, data)
        return await self._append(
            OperationAppender(self.keys, operation_id, maxlen=self.settings.stream_maxlen)(message, ttl=ttl)
        )

    async def publish_to_channel(self, channel: str, entry: dict[str, Any]) -> str:
        """Append a wire entry to a custom channel's stream (TTL ``channel_ttl_seconds``) and announce it."""
        validate_entry_type(entry.get("type"))
        message = encode_entry(entry, self.settings.max_entry_bytes)
        ttl = self.settings.channel_ttl_seconds
        return await self._append(
            channel_append(self.keys, channel, message, ttl=ttl, maxlen=self.settings.stream_maxlen)
        )

    def forget(self, operation_id: str) -> list[dict[str, Any]]:
        """Drop the throttle state of an operation; return the entries it was still holding back."""
        dropped = []
        for key in self._keys_of.pop(operation_id, ()):
            pending = self._throttle.forget(key)
            if pending is not None:
                dropped.append(pending.entry)
        return dropped

    def forget_idle(self, idle_seconds: float) -> int:
        """Drop throttle keys idle for ``idle_seconds`` (nothing pending); return how many."""
        return self._throttle.forget_idle(idle_seconds)

    async def flush(self) -> None:
        """Write every value the throttle holds back now, after the trailing writes in flight."""
        for operation_id in list(self._keys_of):
            await self._flush_operation(operation_id)
        await self._wait_trailing()

    async def aclose(self) -> None:
        """Stop the trailing timer after writing what is still pending."""
        try:
            await self.flush()
        finally:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    async def _append(self, call: AppendCall) -> str:
        entry_id = await self._script(keys=call.keys, args=script_arguments(call, self._publish))
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

    async def _flush_operation(self, operation_id: str) -> None:
        """Write the pending values of one operation now, after any trailing write in flight."""
        await self._wait_trailing()
        for key in self._keys_of.pop(operation_id, ()):
            pending = self._throttle.take_pending(key)
            if pending is not None:
                await self._write_pending(pending)

    async def _wait_trailing(self) -> None:
        if self._trailing:
            await asyncio.gather(*self._trailing)

    async def _write_pending(self, pending: _Pending) -> None:
        maxlen = self.settings.stream_maxlen
        call = OperationAppender(self.keys, pending.operation_id, maxlen=maxlen)(pending.message, ttl=pending.ttl)
        try:
            await self._append(call)
        except REDIS_FAILURES as exc:
            if self._on_failure is None:
                logger.warning("Trailing progress of %s not written: %s", pending.operation_id, exc)
            else:
                await self._on_failure(pending.operation_id, pending.entry)

    def _discard_key(self, operation_id: str, key: str) -> None:
        keys = self._keys_of.get(operation_id)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._keys_of[operation_id]

    def _arm_timer(self) -> None:
        due = self._throttle.next_due()
        if due is None or (self._timer is not None and self._timer_due is not None and self._timer_due <= due):
            return
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer_due = due
        self._timer = loop.call_later(max(0.0, due - time.monotonic()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_due = None
        due = self._throttle.take_due()
        for key, pending in due:
            self._discard_key(pending.operation_id, key)
        if due:
            task = asyncio.get_running_loop().create_task(self._write_due([pending for _, pending in due]))
            self._trailing.add(task)
            task.add_done_callback(self._trailing.discard)
        self._arm_timer()

    async def _write_due(self, values: list[_Pending]) -> None:
        for pending in values:
            await self._write_pending(pending)
