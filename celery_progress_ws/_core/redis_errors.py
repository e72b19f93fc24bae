"""Which failures of a Redis call mean "Redis cannot take this now" (an outage: keep the data, retry later) and which
mean "Redis will never take this" (a refusal: retrying cannot help).

A server that became a replica (``READONLY``), is loading its data (``LOADING``), lost its master (``MASTERDOWN``),
is a master short of in-sync replicas (``NOREPLICAS``, ``min-replicas-to-write``) or whose cluster is reconfiguring
(``CLUSTERDOWN``, ``TRYAGAIN``, redirections the client gave up on) accepts the same write again later, exactly like a
server that is unreachable. Every edge that treats a lost connection as an outage uses ``OUTAGE`` instead, so these
never pass for success or for a permanent refusal. redis-py has no class for ``NOREPLICAS``: ``SYNC_PARSER`` raises
``NoReplicasError`` for it on the connections given it.
"""

from __future__ import annotations

from typing import Any

import redis.connection
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ClusterError,
    MasterDownError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError


class NoReplicasError(ResponseError):
    """``NOREPLICAS``: a master with ``min-replicas-to-write`` set has too few replicas in sync to take a write (it may
    be cut off from them and already replaced by one: then everything it took would be lost)."""


def _parser_knowing_noreplicas(parser: type[Any]) -> type[Any]:
    """``parser`` with ``NOREPLICAS`` replies raised as ``NoReplicasError`` (redis-py raises a plain ResponseError)."""
    classes = {**parser.EXCEPTION_CLASSES, "NOREPLICAS": NoReplicasError}
    return type(f"NoReplicasAware{parser.__name__}", (parser,), {"EXCEPTION_CLASSES": classes})


SYNC_PARSER: type[Any] = _parser_knowing_noreplicas(redis.connection.DefaultParser)
"""redis-py's default reply parser, raising ``NoReplicasError``: the ``parser_class`` of the connections that write."""

OUTAGE: tuple[type[Exception], ...] = (
    RedisConnectionError,  # also LOADING (BusyLoadingError), auth failures and Sentinel's MasterNotFoundError
    RedisTimeoutError,
    ReadOnlyError,  # a write reached a replica
    MasterDownError,  # a replica with replica-serve-stale-data no whose master is gone
    NoReplicasError,  # a master short of in-sync replicas (min-replicas-to-write), with SYNC_PARSER
    ClusterDownError,  # CLUSTERDOWN (MasterDownError derives from it too)
    ClusterError,  # the cluster client ran out of redirections or retries ("TTL exhausted.")
    TryAgainError,  # TRYAGAIN: a multi-key command during a slot migration
    AskError,  # ASK and MOVED (a subclass) that reached the caller
    RedisClusterException,  # raised by the cluster client itself (no slot map yet...): not a RedisError
)
"""Failures after which the same call succeeds once Redis is itself again."""

REDIS_FAILURES: tuple[type[Exception], ...] = (RedisError, RedisClusterException)
"""Everything a redis-py call raises for Redis' sake (the cluster client's own errors are not ``RedisError``s)."""


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` (raised by a redis-py call) is an outage rather than a permanent refusal."""
    return isinstance(exc, OUTAGE)


def describe(exc: BaseException) -> str:
    """``"<type>: <message>"`` for a log line (a redis-py error's repr hides its message)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
