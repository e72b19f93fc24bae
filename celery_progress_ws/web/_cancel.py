"""Cancelling an operation from the web: revoke its task (or an aggregate's children), then tell its viewers at once.

The web process writes the ``cancelled`` status itself (for an aggregate, ``cancel_aggregate`` does, atomically), right
after the revoke is broadcast, so viewers see it before any worker acts. A worker that then revokes or terminates the
task writes its own ``cancelled`` entry; clients stop at the first terminal entry, so the second one is harmless.
An owned operation's summary is marked ``cancelled`` by the web process too (the worker's later update changes nothing).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

from celery import Celery
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

from .._aggregate.track import aggregate_children_async, cancel_aggregate_async
from .._core.errors import BrokerUnavailable, OperationFinished, OperationNotFound, SourceUnavailable
from .._core.keys import validate_operation_id
from .._core.policy import terminal_status
from .._core.redis_errors import REDIS_FAILURES
from .._core.schemas import STATUS_UPDATE, TaskStatus
from ._manager import ProgressManager

logger = logging.getLogger(__name__)

T = TypeVar("T")

BROKER_DOWN = (OperationalError, RedisError, OSError)
"""What a revoke broadcast raises when the broker cannot be reached."""

CANCELLED_MESSAGE = "Cancelled on request"
LOOKBACK = 16
"""Newest entries searched for a terminal status (nothing but a late second terminal entry follows the first)."""


@dataclass(frozen=True, slots=True)
class Cancellation:
    """What a cancel request did: the task ids revoked, and whether running ones are terminated."""

    operation_id: str
    revoked: tuple[str, ...]
    terminate: bool

    def as_json(self) -> dict[str, Any]:
        return {
            "operation_id": self.operation_id,
            "status": TaskStatus.CANCELLED.value,
            "revoked": len(self.revoked),
            "terminate": self.terminate,
        }


class Canceller:
    """Cancels operations (single tasks and ``track()``-ed aggregates) through ``celery_app``."""

    def __init__(self, manager: ProgressManager, celery_app: Celery) -> None:
        self._manager = manager
        self._app = celery_app

    async def cancel(self, operation_id: str) -> Cancellation:
        """Revoke and announce ``cancelled``; raises ``OperationNotFound``, ``OperationFinished``,
        ``BrokerUnavailable`` or ``SourceUnavailable`` (Redis cannot be read)."""
        operation_id = validate_operation_id(operation_id)
        settings = self._manager.settings
        client = self._manager.redis
        entries = await self._manager._reads.entries(operation_id, LOOKBACK)
        children = await _redis_call(aggregate_children_async(operation_id, settings, client))
        if not entries and children is None:
            raise OperationNotFound(f"Nothing is known about operation {operation_id}")
        finished = next((status for entry in entries if (status := terminal_status(entry)) is not None), None)
        if finished is not None:
            raise OperationFinished(finished)
        targets = tuple(children) if children is not None else (operation_id,)
        terminate = settings.cancel_terminate
        try:
            await asyncio.to_thread(self._revoke, list(targets), terminate, settings.cancel_signal)
        except BROKER_DOWN as exc:
            raise BrokerUnavailable(f"Revoking {operation_id} failed: {exc}") from exc
        if children is None:
            data = {"status": TaskStatus.CANCELLED.value, "message": CANCELLED_MESSAGE}
            await self._manager.send_update(operation_id, STATUS_UPDATE, data)
        elif not await _redis_call(cancel_aggregate_async(operation_id, settings, client, CANCELLED_MESSAGE)):
            raise OperationFinished()  # it ended between the check and the revoke (revoking finished tasks is a no-op)
        try:
            await self._manager._mine.record(operation_id, {"status": "cancelled", "message": CANCELLED_MESSAGE})
        except RedisError as exc:  # the worker's own `cancelled` updates the summary when it revokes the task
            logger.warning("Marking the summary of %s cancelled failed: %s", operation_id, exc)
        logger.info("Cancelled %s (%d tasks revoked, terminate=%s)", operation_id, len(targets), terminate)
        return Cancellation(operation_id, targets, terminate)

    def _revoke(self, task_ids: list[str], terminate: bool, signal: str) -> None:
        """Broadcast the revoke (blocking: runs in a worker thread)."""
        if task_ids:
            self._app.control.revoke(task_ids, terminate=terminate, signal=signal)


async def _redis_call(call: Awaitable[T]) -> T:
    """Await a call of the aggregate module on the manager's client; Redis failures become unavailability."""
    try:
        return await call
    except REDIS_FAILURES as exc:
        raise SourceUnavailable(f"Reading or updating the aggregate failed: {exc}") from exc
