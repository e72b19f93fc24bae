"""The single Redis write both halves use: XADD, EXPIRE and a live PUBLISH in one round trip.

The three commands run in one Lua script on one key, so a Redis Cluster deployment keeps working, and the live
announcement carries the id Redis assigned, which a pipeline of plain commands could not know in advance.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._codec import LIVE_SEPARATOR, MESSAGE_FIELD
from ._keys import KeySpace

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
