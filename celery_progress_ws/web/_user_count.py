"""The per-user connection count shared by web processes through Redis: one sorted set of leased members per user.

Members are connection ids, scores the expiry of their lease in Redis' own clock (``TIME``), so replicas with skewed
clocks agree. Acquiring drops expired members, checks the count and adds in one Lua script; every process renews the
leases of all its connections in one pipelined round trip each third of the lease (on a cluster, one per node that
holds some of the sets: the cluster pipeline groups the calls by their key's node), and a process that dies stops
renewing, so its members expire. While Redis is unreachable connections are admitted on the per-process limit alone
(degraded mode); the next successful renewal counts them in Redis again and removes what was released meanwhile.
"""

from __future__ import annotations

import asyncio
import logging

from redis.exceptions import NoScriptError

from .._core.clients import AsyncClient
from .._core.keys import KeySpace
from .._core.redis_errors import REDIS_FAILURES
from ._tasks import stop_task

logger = logging.getLogger(__name__)

_NOW = """
local now = redis.call('TIME')
local millis = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', millis)
"""

ACQUIRE_SCRIPT = (
    _NOW
    + """
local lease = tonumber(ARGV[3])
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], millis + lease, ARGV[1])
redis.call('PEXPIRE', KEYS[1], lease)
return 1
"""
)
"""KEYS: the user's set; ARGV: connection id, limit, lease in ms. Returns 1 when counted, 0 when the user is full."""

RENEW_SCRIPT = (
    _NOW
    + """
local lease = tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], millis + lease, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], lease)
return #ARGV - 1
"""
)
"""KEYS: the user's set; ARGV: lease in ms, then this process' connection ids of that user (re-added if expired)."""

Held = dict[str, set[str]]
"""Set key -> connection ids."""


class RedisUserCount:
    """``SharedUserCount`` over Redis; ``start`` the renewal loop, ``stop`` it when the process ends."""

    def __init__(self, redis: AsyncClient, keys: KeySpace, *, limit: int, lease_seconds: float) -> None:
        self._redis = redis
        self._keys = keys
        self._limit = limit
        self._lease_ms = max(1, round(lease_seconds * 1000))
        self._period = lease_seconds / 3
        self._acquire = redis.register_script(ACQUIRE_SCRIPT)
        self._renew_sha = redis.register_script(RENEW_SCRIPT).sha
        self._held: Held = {}
        self._released: Held = {}
        """Released while Redis was unreachable or a renewal was in flight: removed after the next renewal."""
        self._renewing = False
        self._degraded = False
        self._task: asyncio.Task[None] | None = None

    @property
    def degraded(self) -> bool:
        """Whether Redis was unreachable at the last attempt (only the per-process limit holds)."""
        return self._degraded

    async def acquire(self, user_id: str, connection_id: str) -> bool:
        key = self._keys.user_connections(user_id)
        if not self._degraded:  # in degraded mode the renewal loop probes Redis, not every connect
            try:
                counted = await self._acquire(keys=[key], args=[connection_id, self._limit, self._lease_ms])
            except REDIS_FAILURES as exc:
                self._set_degraded(exc)
            else:
                if not counted:
                    return False
        self._held.setdefault(key, set()).add(connection_id)
        return True

    async def release(self, user_id: str, connection_id: str) -> None:
        key = self._keys.user_connections(user_id)
        members = self._held.get(key)
        if members is None or connection_id not in members:
            return
        members.discard(connection_id)
        if not members:
            del self._held[key]
        if self._degraded or self._renewing:
            self._released.setdefault(key, set()).add(connection_id)
            return
        try:
            await self._redis.zrem(key, connection_id)
        except REDIS_FAILURES as exc:
            self._released.setdefault(key, set()).add(connection_id)
            self._set_degraded(exc)

    async def renew(self) -> None:
        """Renew every lease this process holds and remove late releases, in one pipelined round trip."""
        held = {key: sorted(members) for key, members in self._held.items()}
        released = self._released
        self._released = {}
        if not held and not released and not self._degraded:
            return
        self._renewing = True
        try:
            try:
                await self._send(held, released)
            except NoScriptError:  # Redis restarted or flushed its script cache (on a cluster: loaded on every primary)
                await self._redis.script_load(RENEW_SCRIPT)
                await self._send(held, released)
        except REDIS_FAILURES as exc:
            for key, members in released.items():
                self._released.setdefault(key, set()).update(members)
            self._set_degraded(exc)
        else:
            if self._degraded:
                logger.warning("Per-user connection counts are shared through Redis again")
            self._degraded = False
        finally:
            self._renewing = False

    async def _send(self, held: dict[str, list[str]], released: Held) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for key, members in held.items():
                # A plain command: a cluster pipeline has no evalsha() but routes EVALSHA by its key like any command.
                pipe.execute_command("EVALSHA", self._renew_sha, 1, key, self._lease_ms, *members)
            for key, gone in released.items():
                pipe.zrem(key, *gone)
            if not held and not released:
                pipe.ping()  # degraded with nothing to renew: probe Redis
            for result in await pipe.execute(raise_on_error=False):
                if isinstance(result, REDIS_FAILURES):
                    raise result

    async def start(self) -> None:
        """Start renewing leases every third of the lease."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="celery-progress-ws leases")

    async def stop(self) -> None:
        """Stop renewing (what is still held expires with its lease unless released)."""
        task, self._task = self._task, None
        await stop_task(task)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._period)
            try:
                await self.renew()
            except Exception:  # a task boundary: keep renewing whatever went wrong once
                logger.exception("Renewing connection leases failed")

    def _set_degraded(self, exc: Exception) -> None:
        if not self._degraded:
            logger.warning("Redis unreachable for per-user connection counts (%s); limits are per process now", exc)
        self._degraded = True
