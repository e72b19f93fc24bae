"""The single Redis write both halves use: XADD, EXPIRE and a live announcement in one round trip.

The three commands run in one Lua script on one key (its live channel shares the key's hash tag, hence its cluster
slot), and the live announcement carries the id Redis assigned, which a pipeline of plain commands could not know.
The announcement is a ``PUBLISH`` on one server and a sharded ``SPUBLISH`` on a cluster (a classic ``PUBLISH`` there
is broadcast to every node). Which one is decided once per client (``publish_command``) by whoever runs the scripts,
which pass it as the last argument of every script that announces (``LuaScript.announces``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Protocol

import redis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .codec import LIVE_SEPARATOR, MESSAGE_FIELD
from .keys import KeySpace

APPEND_FUNCTION = f"""
local function append_entry(stream, maxlen, message, ttl, live, publish)
  if publish ~= 'PUBLISH' and publish ~= 'SPUBLISH' then
    error(redis.error_reply('ERR the announcing command must be PUBLISH or SPUBLISH'))
  end
  local id = redis.call('XADD', stream, 'MAXLEN', maxlen, '*', '{MESSAGE_FIELD}', message)
  redis.call('EXPIRE', stream, ttl)
  if live ~= '' then
    redis.call(publish, live, id .. '{LIVE_SEPARATOR}' .. message)
  end
  return id
end
"""
"""Lua ``append_entry(stream, maxlen, message, ttl, live, publish)``: the one definition of a stream write, shared by
scripts; ``publish`` is ``PUBLISH`` or ``SPUBLISH`` (anything else is an error reply, before anything is written)."""

APPEND_SCRIPT = APPEND_FUNCTION + "return append_entry(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])\n"


class PublishCommand(StrEnum):
    """How a write script announces an entry live: classic pub/sub on one server, sharded pub/sub on a cluster."""

    PUBLISH = "PUBLISH"
    SPUBLISH = "SPUBLISH"


def publish_command(client: object) -> PublishCommand:
    """``SPUBLISH`` for a cluster client (sync or asyncio), ``PUBLISH`` for any other client."""
    return PublishCommand.SPUBLISH if isinstance(client, (RedisCluster, AsyncRedisCluster)) else PublishCommand.PUBLISH


@dataclass(frozen=True, slots=True)
class LuaScript:
    """A Lua script's source and the SHA-1 that EVALSHA names it by.

    ``announces``: the script calls ``append_entry`` and takes the ``PublishCommand`` as its last argument, which the
    runner adds (callers never pass it).
    """

    source: str
    announces: bool = False
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())


APPEND = LuaScript(APPEND_SCRIPT, announces=True)


@dataclass(frozen=True, slots=True)
class AppendCall:
    """Keys and arguments of one APPEND_SCRIPT call, and the ``type`` label its entry is counted under."""

    keys: list[str]
    args: list[str | int]
    kind: str = "event"
    script: ClassVar[LuaScript] = APPEND
    on_reply: ClassVar[None] = None


@dataclass(frozen=True, slots=True)
class ScriptCall:
    """One call of another script (an aggregate update), written in turn with the append calls around it.

    ``on_reply`` receives the script's reply once it has run.
    """

    script: LuaScript
    keys: list[str]
    args: list[str | int | float]
    on_reply: Callable[[Any], None] | None = None


SEEN_FUNCTION = f"""
local function seen(stream, message, depth)
  if depth > 0 then
    local recent = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', depth)
    for i = 1, #recent do
      local fields = recent[i][2]
      for j = 1, #fields - 1, 2 do
        if fields[j] == '{MESSAGE_FIELD}' and fields[j + 1] == message then return recent[i][1] end
      end
    end
  end
  return false
end
local depth = tonumber(table.remove(ARGV, #ARGV - 1))
local found = seen(KEYS[1], ARGV[2], depth)
if found then return found end
"""
"""Lua run before an append script's own body when the append is sent again: the depth argument (just before the
publish command) is taken out of ARGV, and an entry already holding this message among the stream's last ``depth``
ones is answered with its id instead of being written twice."""


def _retry_of(script: LuaScript) -> LuaScript:
    """``script`` (an ``append_entry`` script: KEYS[1] the stream, ARGV[2] the message) guarded by ``SEEN_FUNCTION``."""
    return LuaScript(script.source.replace(APPEND_FUNCTION, APPEND_FUNCTION + SEEN_FUNCTION, 1), announces=True)


_RETRIES: dict[str, LuaScript] = {}


def retryable(script: LuaScript) -> LuaScript:
    """Register ``script``'s guarded twin for ``RetriedAppend``; returns ``script``."""
    _RETRIES[script.sha] = _retry_of(script)
    return script


retryable(APPEND)

RETRY_MARGIN = 8
"""Entries of other writers that may have landed between a lost write and its second sending."""


@dataclass(frozen=True, slots=True)
class RetriedAppend:
    """An append sent again after its fate was lost (the connection dropped or timed out after sending it): its
    script first looks for the entry among the stream's last ``depth`` entries and answers that entry's id rather
    than writing it twice, so a write retried across a failover or a frozen server lands once."""

    call: AppendCall
    depth: int
    on_reply: ClassVar[None] = None

    @property
    def script(self) -> LuaScript:
        return _RETRIES[self.call.script.sha]

    @property
    def keys(self) -> list[str]:
        return self.call.keys

    @property
    def args(self) -> list[str | int]:
        return [*self.call.args, self.depth]

    @property
    def kind(self) -> str:
        return self.call.kind


WriteCall = AppendCall | ScriptCall | RetriedAppend
"""What a writer's buffer holds and its runner runs."""


def retried(call: WriteCall, depth: int) -> WriteCall:
    """``call`` to send again when it may have run already: an append looks for itself among the stream's last
    ``depth`` entries first; other scripts (summaries, aggregate updates) give the same result when run twice."""
    if isinstance(call, RetriedAppend):
        return RetriedAppend(call.call, max(call.depth, depth))
    if isinstance(call, AppendCall) and call.script.sha in _RETRIES:
        return RetriedAppend(call, depth)
    return call


def script_arguments(call: WriteCall, publish: PublishCommand) -> tuple[str | int | float, ...]:
    """The ARGV of ``call``: its own arguments, then ``publish`` if its script announces entries."""
    return (*call.args, publish) if call.script.announces else tuple(call.args)


class OperationAppender:
    """Builds the append calls of one operation; its key and channel are validated and formatted once, not per entry."""

    __slots__ = ("_live", "_maxlen", "_stream")

    def __init__(self, keys: KeySpace, operation_id: str, *, maxlen: int) -> None:
        self._stream = keys.stream(operation_id)
        self._live = keys.live(operation_id)
        self._maxlen = maxlen

    def __call__(self, message: str, *, ttl: int, kind: str = "event") -> AppendCall:
        return AppendCall([self._stream], [self._maxlen, message, ttl, self._live], kind)


def channel_append(keys: KeySpace, channel: str, message: str, *, ttl: int, maxlen: int) -> AppendCall:
    """The call that appends ``message`` to a custom channel's stream and announces it live."""
    return AppendCall([keys.channel_stream(channel)], [maxlen, message, ttl, keys.channel_live(channel)])


class CommandConnection(Protocol):
    """The part of a redis-py connection ``ConnectionAppend`` uses (redis-py leaves these methods untyped)."""

    def send_command(self, *args: Any, **kwargs: Any) -> None: ...

    def send_packed_command(self, command: Any, check_health: bool = True) -> None: ...

    def pack_commands(self, commands: Any) -> Any: ...

    def read_response(self, *args: Any, **kwargs: Any) -> Any: ...

    def disconnect(self, *args: Any) -> None: ...

    def connect(self) -> None: ...

    @property
    def is_connected(self) -> bool: ...


class ConnectionAppend:
    """Runs script calls (``APPEND_SCRIPT`` above all) by EVALSHA on one dedicated connection, skipping redis-py's
    per-command layers, and runs consecutive calls in one round trip (``run_many``).

    Those layers (script wrapper, client dispatch, retry wrapper) cost about as much client CPU as the round trip
    itself. Like redis-py with one retry, a dropped connection is reopened once; after any connection error or timeout
    the connection is closed, so a late reply can never be read as the answer to a later command. A closed connection
    is reopened by its ``connect()``, which is where a Sentinel-managed connection asks the sentinels for the current
    master (sending on a closed connection would reopen it at its last address). One server (or a Sentinel
    service's master) announces with ``PUBLISH``; a cluster primary's own connection with ``SPUBLISH``.
    """

    __slots__ = ("_connection", "_publish")

    batch = 64
    """Calls sent in one round trip at most (an entry and its owner's summary, or a backlog after an outage)."""

    def __init__(self, connection: CommandConnection, publish: PublishCommand = PublishCommand.PUBLISH) -> None:
        self._connection = connection
        self._publish = publish

    def __call__(self, call: WriteCall) -> Any:
        """Run ``call`` and return the script's reply; raises the error Redis answered with."""
        outcome = self.run_many([call])[0]
        if isinstance(outcome, ResponseError):
            raise outcome
        return outcome

    def run_many(self, calls: Sequence[WriteCall]) -> list[Any]:
        """Run ``calls`` in order in one round trip: one outcome per call, its reply or the ``ResponseError`` Redis
        answered it with. A connection error or timeout is raised, and then no call's fate is known."""
        try:
            return self._run_many(calls)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            self._connection.disconnect()
            if isinstance(exc, RedisTimeoutError):
                raise
        try:  # the connection had dropped, maybe after the server ran some calls: once more, on a new one
            return self._run_many([retried(call, len(calls) + RETRY_MARGIN) for call in calls])
        except (RedisConnectionError, RedisTimeoutError):
            self._connection.disconnect()
            raise

    def _run_many(self, calls: Sequence[WriteCall]) -> list[Any]:
        if not self._connection.is_connected:
            self._connection.connect()
        outcomes = self._send(calls)
        missing = [index for index, outcome in enumerate(outcomes) if isinstance(outcome, NoScriptError)]
        if missing:  # a new or flushed server: load those scripts, then run those calls again, in order
            for script in {calls[index].script for index in missing}:
                self._connection.send_command("SCRIPT", "LOAD", script.source)
                self._connection.read_response()
            for index, outcome in zip(missing, self._send([calls[index] for index in missing]), strict=True):
                outcomes[index] = outcome
        return outcomes

    def _send(self, calls: Sequence[WriteCall]) -> list[Any]:
        commands = [
            ("EVALSHA", call.script.sha, len(call.keys), *call.keys, *script_arguments(call, self._publish))
            for call in calls
        ]
        self._connection.send_packed_command(self._connection.pack_commands(commands))
        outcomes: list[Any] = []
        for _ in calls:
            try:
                outcomes.append(self._connection.read_response())
            except ResponseError as exc:  # that call's answer; the replies after it still follow
                outcomes.append(exc)
        return outcomes


class ScriptAppend:
    """Runs script calls through a caller's client (any redis-py client: its own pool, retries and routing; a
    cluster client sends each to its keys' slot, and a ``NOSCRIPT`` reloads the script on every primary); the
    announcing command follows the client (``publish_command``)."""

    __slots__ = ("_client", "_publish", "_scripts")

    batch = 1
    """One call per round trip: consecutive calls may go to different nodes."""

    def __init__(self, client: redis.Redis | RedisCluster) -> None:
        self._client = client
        self._publish = publish_command(client)
        self._scripts = {APPEND.sha: client.register_script(APPEND_SCRIPT)}

    def __call__(self, call: WriteCall) -> Any:
        """Run ``call`` and return the script's reply."""
        script = self._scripts.get(call.script.sha)
        if script is None:
            script = self._scripts[call.script.sha] = self._client.register_script(call.script.source)
        return script(keys=call.keys, args=script_arguments(call, self._publish))

    def run_many(self, calls: Sequence[WriteCall]) -> list[Any]:
        """``ConnectionAppend.run_many``, one call after the other."""
        outcomes: list[Any] = []
        for call in calls:
            try:
                outcomes.append(self(call))
            except ResponseError as exc:
                outcomes.append(exc)
        return outcomes


Append = ConnectionAppend | ScriptAppend
"""Something that runs write calls and returns their outcomes (``run_many``); raises redis-py's connection errors."""
