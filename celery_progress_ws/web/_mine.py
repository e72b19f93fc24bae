"""A user's own operations in the web half: their list (``GET /me/operations``), their feed's topic, ``owner_only``,
and the summary update of an operation cancelled from the web.

Every read starts from the requesting user's id, hashed (``user_digest``): nothing in a request names whose keys are
read. The list reads the whole index (at most ``history_max_per_user`` ids) and the summaries of one page.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from .._core.append import publish_command, script_arguments
from .._core.errors import InvalidOperationId, SourceUnavailable
from .._core.history import UserHistory
from .._core.history_pages import PageBuilder, index_rows
from .._core.keys import KeySpace, user_digest
from .._core.redis_errors import REDIS_FAILURES
from .._core.schemas import TaskStatus, utc_now_iso
from .._core.settings import ProgressSettings
from .._core.streams import Topic, TopicKind

if TYPE_CHECKING:
    from ._manager import ProgressManager
    from ._router import Authorize

logger = logging.getLogger(__name__)


def is_anonymous(user_id: object) -> bool:
    """Whether ``get_user_id`` named nobody: a user's own routes refuse such requests."""
    return user_id is None or user_id == ""


def feed_topic(user_id: object) -> Topic:
    """The topic of a user's feed of ``operation_update`` entries."""
    return Topic(TopicKind.USER, user_digest(str(user_id)))


class UserOperations:
    """Reads (and the rare web-side update) of users' history keys through the manager's command client."""

    def __init__(self, redis: Redis | RedisCluster, settings: ProgressSettings) -> None:
        self._redis = redis
        self._keys = KeySpace(settings.key_prefix)
        self._history = UserHistory(settings)

    async def page(
        self,
        user_id: object,
        *,
        cursor: str | None = None,
        statuses: frozenset[TaskStatus] | None = None,
        limit: int,
    ) -> dict[str, Any]:
        """One page of the user's operations, newest first; ``InvalidCursor`` for a bad cursor, ``SourceUnavailable``
        when Redis cannot be read."""
        digest = user_digest(str(user_id))
        summaries = self._keys.user_summaries(digest)
        try:
            reply = await self._redis.zrevrange(self._keys.user_index(digest), 0, -1, withscores=True)
            builder = PageBuilder(index_rows(reply), cursor=cursor, statuses=statuses, limit=limit)
            while wanted := builder.wanted():
                found: Sequence[bytes | str | None] = await self._redis.hmget(summaries, wanted)
                builder.add(found)
        except REDIS_FAILURES as exc:
            raise SourceUnavailable("reading the operation index failed") from exc
        return builder.result()

    async def owner_of(self, operation_id: str) -> str | None:
        """The recorded owner's digest of an operation; ``None`` when unknown or unreadable (logged)."""
        try:
            value = await self._redis.get(self._keys.operation_owner(operation_id))
        except InvalidOperationId:
            return None
        except REDIS_FAILURES as exc:
            logger.warning("Reading the owner of %s failed (%s); access refused", operation_id, exc)
            return None
        return value.decode() if isinstance(value, bytes) else value

    async def record(self, operation_id: str, patch: dict[str, Any]) -> None:
        """Merge ``patch`` into the summary of an owned operation (nothing for an unowned one); raises Redis errors."""
        digest = await self.owner_of(operation_id)
        if digest is None:
            return
        call = self._history.record(digest, operation_id, patch, utc_now_iso())
        await self._redis.eval(
            call.script.source, len(call.keys), *call.keys, *script_arguments(call, publish_command(self._redis))
        )


def owner_only(manager: ProgressManager, otherwise: Authorize | None = None) -> Authorize:
    """An ``authorize`` that grants an operation to the user recorded as its owner (see docs/ownership.md), and asks
    ``otherwise`` (sync or async, e.g. the application's own check) about everything else; without it, refuses.

    The owner is read from Redis (one GET per check); an unreadable Redis refuses rather than guesses.
    """

    async def authorize(user_id: Any, operation_id: str) -> bool:
        if not is_anonymous(user_id):
            owner = await manager._mine.owner_of(operation_id)
            if owner is not None and owner == user_digest(str(user_id)):
                return True
        if otherwise is None:
            return False
        answer = otherwise(user_id, operation_id)
        if inspect.isawaitable(answer):
            answer = await answer
        return answer is True

    return authorize
