"""The single Redis write both halves use: XADD, EXPIRE and a live PUBLISH in one round trip.

The three commands run in one Lua script on one key, so a Redis Cluster deployment keeps working, and the live
announcement carries the id Redis assigned, which a pipeline of plain commands could not know in advance.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._codec import LIVE_SEPARATOR, MESSAGE_FIELD
from ._keys import KeySpace

APPEND_SCRIPT = f"""
local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], '*', '{MESSAGE_FIELD}', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
if ARGV[4] ~= '' then
  redis.call('PUBLISH', ARGV[4], id .. '{LIVE_SEPARATOR}' .. ARGV[2])
end
return id
"""


@dataclass(frozen=True, slots=True)
class AppendCall:
    """Keys and arguments of one APPEND_SCRIPT call."""

    keys: list[str]
    args: list[str | int]


def operation_append(
    keys: KeySpace, operation_id: str, message: str, *, ttl: int, maxlen: int, announce: bool = True
) -> AppendCall:
    """The call that appends ``message`` to an operation's stream and announces it live."""
    live = keys.live(operation_id) if announce else ""
    return AppendCall([keys.stream(operation_id)], [maxlen, message, ttl, live])


def channel_append(keys: KeySpace, channel: str, message: str, *, ttl: int, maxlen: int) -> AppendCall:
    """The call that appends ``message`` to a custom channel's stream and announces it live."""
    return AppendCall([keys.channel_stream(channel)], [maxlen, message, ttl, keys.channel_live(channel)])
