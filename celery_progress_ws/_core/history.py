"""A user's operation history in Redis: the summary merge script, the owner record, and the calls that run them.

Per user, three keys share the user's digest as hash tag (one cluster slot): a hash of summaries (operation id ->
summary JSON), an index (sorted set scored by queued time, in microseconds) and a feed stream of ``operation_update``
entries announced on its live channel. ``RECORD_SCRIPT`` merges one patch into a summary, indexes it, trims the index
to ``history_max_per_user`` (dropping the oldest summaries with it), refreshes every TTL and appends the merged summary
to the feed, atomically. Writes come from several processes (the sender's ``queued``, the worker's statuses), so the
merge never regresses: a terminal status is final, and ``queued`` never replaces a status already recorded.

An operation's owner (the user's digest) is kept in the operation's own slot, set by ``OWNED_APPEND`` in the same
script call that appends one of its status entries.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from .append import APPEND_FUNCTION, AppendCall, LuaScript, ScriptCall, retryable
from .jsonsafe import json_safe_fields
from .keys import KeySpace
from .schemas import CHUNKING_PROGRESS, OPERATION_UPDATE, STATUS_UPDATE
from .settings import ProgressSettings

SUMMARY_FIELDS = (
    "operation_id",
    "task_name",
    "status",
    "progress_percentage",
    "message",
    "error_type",
    "error_message",
    "queued_at",
    "started_at",
    "finished_at",
)
"""The fields of a summary, every one always present (``null`` when unknown)."""

_PATCH_FIELDS = ("task_name", "status", "progress_percentage", "message", "error_type", "error_message")

RECORD_SCRIPT = (
    APPEND_FUNCTION
    + """
local op, patch, stamp, score = ARGV[1], cjson.decode(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local max, ttl, maxlen, live = tonumber(ARGV[5]), ARGV[6], ARGV[7], ARGV[8]
local null = cjson.null
local rank = {queued = 0, started = 1, retrying = 1, completed = 2, failed = 2, cancelled = 2}
local old = redis.call('HGET', KEYS[1], op)
local s, changed
if old then
  s, changed = cjson.decode(old), false
else
  s, changed = {operation_id = op}, true
  for _, f in ipairs({'task_name', 'status', 'progress_percentage', 'message', 'error_type', 'error_message',
      'queued_at', 'started_at', 'finished_at'}) do s[f] = null end
end
local function known(v) return v ~= nil and v ~= null end
local function put(f, v)
  if v == nil then v = null end
  if s[f] ~= v then s[f] = v; changed = true end
end
local function fill(f, v) if not known(s[f]) and known(v) then put(f, v) end end
local current, new = s.status, patch.status
local ended = known(current) and rank[current] == 2
if known(new) then
  if not known(current) or (not ended and new ~= 'queued') then
    put('status', new)
    if patch.message ~= nil then put('message', patch.message) end
    if patch.progress_percentage ~= nil then put('progress_percentage', patch.progress_percentage) end
    if rank[new] == 2 then
      put('error_type', patch.error_type)
      put('error_message', patch.error_message)
      put('finished_at', stamp)
    end
  end
  if new == 'queued' then fill('queued_at', stamp) elseif new == 'started' then fill('started_at', stamp) end
elseif not ended then
  if patch.progress_percentage ~= nil then put('progress_percentage', patch.progress_percentage) end
  if patch.message ~= nil then put('message', patch.message) end
  if not known(current) then put('status', 'started') end
end
fill('task_name', patch.task_name)
if not changed then return 0 end
local summary = cjson.encode(s)
redis.call('HSET', KEYS[1], op, summary)
local indexed = redis.call('ZSCORE', KEYS[2], op)
if not indexed or score < tonumber(indexed) then redis.call('ZADD', KEYS[2], score, op) end
local count = redis.call('ZCARD', KEYS[2])
if count > max then
  local gone = redis.call('ZRANGE', KEYS[2], 0, count - max - 1)
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, count - max - 1)
  for i = 1, #gone, 1000 do
    redis.call('HDEL', KEYS[1], unpack(gone, i, math.min(i + 999, #gone)))
  end
  if not redis.call('ZSCORE', KEYS[2], op) then return 0 end
end
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
local entry = '{"timestamp":' .. cjson.encode(stamp) .. ',"type":"OPERATION_UPDATE","data":' .. summary .. '}'
append_entry(KEYS[3], maxlen, entry, ttl, live, ARGV[#ARGV])
return 1
""".replace("OPERATION_UPDATE", OPERATION_UPDATE)
)
"""KEYS: the user's summaries, index, feed. ARGV: operation id, patch JSON, ISO time of the change, its time in µs
(the index score, lowered to the earliest seen), max operations, TTL, feed max length, feed live channel, publish
command (added by the runner). Returns 1 when the summary changed (and was announced on the feed), else 0."""

OWNED_APPEND_SCRIPT = (
    APPEND_FUNCTION
    + """
redis.call('SET', KEYS[2], ARGV[#ARGV - 2], 'EX', ARGV[#ARGV - 1])
return append_entry(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[#ARGV])
"""
)
"""``APPEND_SCRIPT`` that also records the operation's owner. KEYS: stream, owner key. ARGV: those of the append
call, then the owner's digest, the owner key's TTL and the publish command (added by the runner)."""

RECORD = LuaScript(RECORD_SCRIPT, announces=True)
OWNED_APPEND = retryable(LuaScript(OWNED_APPEND_SCRIPT, announces=True))


@dataclass(frozen=True, slots=True)
class OwnedAppendCall(AppendCall):
    """An append call that also sets the operation's owner key (counted like any append)."""

    script: ClassVar[LuaScript] = OWNED_APPEND


def summary_patch(entry_type: str, data: Mapping[str, Any]) -> dict[str, Any] | None:
    """What a stream entry changes in its operation's summary: a status or a progress; ``None`` for other entries."""
    if entry_type == STATUS_UPDATE:
        return {field: data[field] for field in _PATCH_FIELDS if field in data and field != "progress_percentage"}
    if entry_type == CHUNKING_PROGRESS:
        return {field: data.get(field) for field in ("progress_percentage", "message") if data.get(field) is not None}
    return None


class UserHistory:
    """Builds the history calls of one settings' key space: summary records and owned appends."""

    __slots__ = ("_keys", "_settings")

    def __init__(self, settings: ProgressSettings) -> None:
        self._settings = settings
        self._keys = KeySpace(settings.key_prefix)

    def record(
        self, digest: str, operation_id: str, patch: Mapping[str, Any], stamp: str, at_us: int | None = None
    ) -> ScriptCall:
        """The ``RECORD_SCRIPT`` call merging ``patch`` (made at ISO time ``stamp``) into a user's summary."""
        keys = self._keys
        settings = self._settings
        return ScriptCall(
            RECORD,
            [keys.user_summaries(digest), keys.user_index(digest), keys.user_feed(digest)],
            [
                operation_id,
                _encode_patch(patch),
                stamp,
                time.time_ns() // 1000 if at_us is None else at_us,
                settings.history_max_per_user,
                settings.history_ttl_seconds,
                settings.history_feed_maxlen,
                keys.user_feed_live(digest),
            ],
        )

    def owned(self, call: AppendCall, operation_id: str, digest: str) -> OwnedAppendCall:
        """``call`` extended to record ``digest`` as the operation's owner, in the same round trip."""
        owner = self._keys.operation_owner(operation_id)
        args = [*call.args, digest, self._settings.history_ttl_seconds]
        return OwnedAppendCall([*call.keys, owner], args, call.kind)


def _encode_patch(patch: Mapping[str, Any]) -> str:
    """The patch's summary fields as JSON, converted by the rules every entry's data follows."""
    fields = json_safe_fields({key: patch[key] for key in _PATCH_FIELDS if key in patch})
    return json.dumps(fields, separators=(",", ":"))
