"""The single Redis write both halves use: XADD, EXPIRE and a live PUBLISH in one round trip.

The three commands run in one Lua script on one key, so a Redis Cluster deployment keeps working, and the live
announcement carries the id Redis assigned, which a pipeline of plain commands could not know in advance.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Protocol

import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .codec import LIVE_SEPARATOR, MESSAGE_FIELD
from .keys import KeySpace

APPEND_FUNCTION = f"""
local function append_entry(stream, maxlen, message, ttl, live)
  local id = redis.call('XADD', stream, 'MAXLEN', maxlen, '*', '{MESSAGE_FIELD}', message)
  redis.call('EXPIRE', stream, ttl)
  if live ~= '' then
    redis.call('PUBLISH', live, id .. '{LIVE_SEPARATOR}' .. message)
  end
  return id
end
"""
"""Lua ``append_entry(stream, maxlen, message, ttl, live)``: the one definition of a stream write, shared by scripts."""

APPEND_SCRIPT = APPEND_FUNCTION + "return append_entry(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4])\n"


@dataclass(frozen=True, slots=True)
class AppendCall:
    """Keys and arguments of one APPEND_SCRIPT call."""

    keys: list[str]
    args: list[str | int]


class OperationAppender:
    """Builds the append calls of one operation; its key and channel are validated and formatted once, not per entry."""

    __slots__ = ("_live", "_maxlen", "_stream")

    def __init__(self, keys: KeySpace, operation_id: str, *, maxlen: int, announce: bool = True) -> None:
        self._stream = keys.stream(operation_id)
        self._live = keys.live(operation_id) if announce else ""
        self._maxlen = maxlen

    def __call__(self, message: str, *, ttl: int) -> AppendCall:
        return AppendCall([self._stream], [self._maxlen, message, ttl, self._live])


def operation_append(
    keys: KeySpace, operation_id: str, message: str, *, ttl: int, maxlen: int, announce: bool = True
) -> AppendCall:
    """The call that appends ``message`` to an operation's stream and announces it live."""
    return OperationAppender(keys, operation_id, maxlen=maxlen, announce=announce)(message, ttl=ttl)


def channel_append(keys: KeySpace, channel: str, message: str, *, ttl: int, maxlen: int) -> AppendCall:
    """The call that appends ``message`` to a custom channel's stream and announces it live."""
    return AppendCall([keys.channel_stream(channel)], [maxlen, message, ttl, keys.channel_live(channel)])


class CommandConnection(Protocol):
    """The part of a redis-py connection ``ConnectionAppend`` uses (redis-py leaves these methods untyped)."""

    def send_command(self, *args: Any, **kwargs: Any) -> None: ...

    def read_response(self, *args: Any, **kwargs: Any) -> Any: ...

    def disconnect(self, *args: Any) -> None: ...


class ConnectionAppend:
    """Runs ``APPEND_SCRIPT`` by EVALSHA on one dedicated connection, skipping redis-py's per-command layers.

    Those layers (script wrapper, client dispatch, retry wrapper) cost about as much client CPU as the round trip
    itself. Like redis-py with one retry, a dropped connection is reopened once; after any connection error or timeout
    the connection is closed, so a late reply can never be read as the answer to a later command.
    """

    __slots__ = ("_connection", "_sha")

    def __init__(self, connection: CommandConnection) -> None:
        self._connection = connection
        self._sha = hashlib.sha1(APPEND_SCRIPT.encode()).hexdigest()

    def __call__(self, call: AppendCall) -> None:
        for retries_left in (1, 0):
            try:
                self._run(call)
                return
            except (RedisConnectionError, RedisTimeoutError) as exc:
                self._connection.disconnect()
                if retries_left == 0 or isinstance(exc, RedisTimeoutError):
                    raise

    def _run(self, call: AppendCall) -> None:
        arguments = (len(call.keys), *call.keys, *call.args)
        try:
            self._command("EVALSHA", self._sha, *arguments)
        except NoScriptError:  # a new or flushed server: load the script, then run it
            self._command("SCRIPT", "LOAD", APPEND_SCRIPT)
            self._command("EVALSHA", self._sha, *arguments)

    def _command(self, *arguments: str | int) -> Any:
        self._connection.send_command(*arguments)
        return self._connection.read_response()


class ScriptAppend:
    """Runs ``APPEND_SCRIPT`` through a caller's client (any redis-py client: its own pool, retries and routing)."""

    __slots__ = ("_script",)

    def __init__(self, client: redis.Redis) -> None:
        self._script = client.register_script(APPEND_SCRIPT)

    def __call__(self, call: AppendCall) -> None:
        self._script(keys=call.keys, args=call.args)


Append = ConnectionAppend | ScriptAppend
"""Something that runs one ``AppendCall``; raises redis-py's errors."""
