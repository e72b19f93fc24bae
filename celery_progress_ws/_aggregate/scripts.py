"""The Lua scripts of aggregate operations: registration and every child update run atomically inside Redis.

Both scripts touch two keys of one operation, its aggregate hash and its stream, and publish on its live channel; all
three carry the operation id as their hash tag (``_core.keys``), so on Redis Cluster each call runs on one node.

Hash fields: ``kind``, ``total`` (children), ``tw`` (total weight), ``sum`` (weighted sum of child fractions),
``start_ms`` (Redis clock), counters ``queued``/``started``/``completed``/``failed``/``cancelled``, ``last_ms`` and
``dirty`` (the in-script throttle), ``status`` (set once, when terminal), ``failed_ids`` (JSON, at most 100), ``owner``
(the owner's digest, for an owned operation) and one ``c:<child id>`` field per child holding
``state|fraction|weight|required`` (state: q, s, c, f or x).
"""

from __future__ import annotations

from .._core.append import APPEND_FUNCTION, LuaScript

REGISTER_SCRIPT = (
    APPEND_FUNCTION
    + """
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'start_ms', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
local id
for i = 6, #ARGV do
  id = append_entry(KEYS[2], ARGV[1], ARGV[i], ARGV[2], ARGV[3], ARGV[5])
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
return id
"""
)
"""KEYS: hash, stream. ARGV: maxlen, stream ttl, live channel, hash ttl, publish command (``PublishCommand``), entry
messages... (written in order)."""

UPDATE_SCRIPT = (
    APPEND_FUNCTION
    + """
local h, stream = KEYS[1], KEYS[2]
local child, ev, frac_arg = ARGV[1], ARGV[2], ARGV[3]
local throttle_ms, maxlen, ttl_run = tonumber(ARGV[4]), ARGV[5], ARGV[6]
local ttl_done, ttl_fail, live, stamp = ARGV[7], ARGV[8], ARGV[9], ARGV[10]
local publish = ARGV[13]
if redis.call('EXISTS', h) == 0 then return {-1, 0, 0, ''} end
local status = redis.call('HGET', h, 'status')
if status then return {0, 0, 0, status} end
local counter = {q = 'queued', s = 'started', c = 'completed', f = 'failed', x = 'cancelled'}
local terminal, reason = nil, {}
if ev ~= 'flush' and ev ~= 'cancel' then
  local field = 'c:' .. child
  local rec = redis.call('HGET', h, field)
  if not rec then return {-2, 0, 0, ''} end
  local st, fr_s, w_s, req = string.match(rec, '^(%a)|([^|]*)|([^|]*)|(%d)$')
  if st == 'c' or st == 'f' or st == 'x' then return {0, 0, 0, ''} end
  local fr = tonumber(fr_s)
  local nst, nfr = st, fr
  if ev == 'started' then nst = 's'
  elseif ev == 'retrying' then nst = 'q'
  elseif ev == 'completed' then nst = 'c'
  elseif ev == 'failed' then nst = 'f'
  elseif ev == 'cancelled' then nst = 'x'
  elseif st == 'q' then nst = 's' end
  if frac_arg ~= '' then
    local p = math.min(math.max(tonumber(frac_arg), 0), 1)
    if p > nfr then nfr = p end
  end
  if nst == 'c' then nfr = 1 end
  if nst ~= st then
    redis.call('HINCRBY', h, counter[st], -1)
    redis.call('HINCRBY', h, counter[nst], 1)
  end
  if nfr ~= fr then
    redis.call('HINCRBYFLOAT', h, 'sum', string.format('%.17g', (nfr - fr) * tonumber(w_s)))
  end
  redis.call('HSET', h, field, nst .. '|' .. string.format('%.17g', nfr) .. '|' .. w_s .. '|' .. req)
  if nst == 'f' then
    local ids = cjson.decode(redis.call('HGET', h, 'failed_ids') or '[]')
    if #ids < 100 then
      ids[#ids + 1] = child
      redis.call('HSET', h, 'failed_ids', cjson.encode(ids))
    end
    if req == '1' then
      terminal = 'failed'
      reason = {failed_child = child, error_type = ARGV[11], error_message = ARGV[12]}
    end
  elseif nst == 'x' and req == '1' then
    terminal = 'cancelled'
    reason = {cancelled_child = child}
  end
elseif ev == 'cancel' then
  terminal = 'cancelled'
  reason = {message = ARGV[12]}
end
local v = redis.call('HMGET', h, 'total', 'queued', 'started', 'completed', 'failed', 'cancelled', 'sum', 'tw',
  'start_ms', 'last_ms', 'dirty', 'kind', 'failed_ids', 'owner')
local total, done, failed, cancelled = tonumber(v[1]), tonumber(v[4]), tonumber(v[5]), tonumber(v[6])
if not terminal and done + failed + cancelled == total then
  if failed > 0 then terminal = 'failed'
  elseif cancelled > 0 then terminal = 'cancelled'
  else terminal = 'completed' end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local last_ms = tonumber(v[10] or '0')
if not terminal then
  local due = last_ms + throttle_ms - now
  if ev == 'flush' and v[11] ~= '1' then return {0, 0, 0, ''} end
  if due > 0 then
    redis.call('HSET', h, 'dirty', '1')
    redis.call('EXPIRE', h, ttl_run)
    return {0, 1, due, ''}
  end
end
local share = tonumber(v[7]) / tonumber(v[8])
local pct = math.floor(math.min(share, 1) * 10000 + 0.5) / 100
if done == total then pct = 100 end
local elapsed = (now - tonumber(v[9])) / 1000
local effective = math.min(share, 1) * total
local rate, eta = cjson.null, cjson.null
if elapsed > 0 and effective > 0 then
  rate = math.floor(effective / elapsed * 1000 + 0.5) / 1000
  eta = math.floor((total - effective) / (effective / elapsed) * 1000 + 0.5) / 1000
end
if pct == 100 or terminal then eta = 0 end
local counts = {queued = tonumber(v[2]), started = tonumber(v[3]), completed = done, failed = failed,
  cancelled = cancelled}
local data = {progress_percentage = pct, documents_processed = done, total_documents = total,
  total_children = total, counts = counts, rate = rate, eta_seconds = eta, kind = v[12], aggregate = true}
local ttl = ttl_run
if terminal == 'failed' then ttl = ttl_fail elseif terminal then ttl = ttl_done end
local progress = cjson.encode({timestamp = stamp, type = 'chunking_progress', data = data})
append_entry(stream, maxlen, progress, ttl, live, publish)
redis.call('HSET', h, 'last_ms', now, 'dirty', '0')
if terminal then
  local sdata = {status = terminal, message = 'Aggregate ' .. terminal, aggregate = true, kind = v[12],
    progress_percentage = pct, counts = counts, total_children = total}
  for k, val in pairs(reason) do sdata[k] = val end
  if terminal == 'failed' then sdata.failed_children = cjson.decode(v[13] or '[]') end
  local final = cjson.encode({timestamp = stamp, type = 'status_update', data = sdata})
  append_entry(stream, maxlen, final, ttl, live, publish)
  redis.call('HSET', h, 'status', terminal)
end
redis.call('EXPIRE', h, ttl)
return {1, 0, 0, terminal or '', v[14] or '', tostring(pct), reason.error_type or '', reason.error_message or ''}
"""
)
"""KEYS: hash, stream. ARGV: child id, event (started, retrying, completed, failed, cancelled, progress, flush or
cancel), fraction or '', throttle ms, maxlen, running ttl, completed ttl, failed ttl, live channel, ISO timestamp,
error type, error message, publish command (``PublishCommand``, added by the runner). Returns ``{written, dirty,
due_ms, terminal status}``; written is -1 for an unknown aggregate and -2 for a task that is not one of its children. A
written update adds the owner's digest (or ''), the percentage written, and the error type and message that failed it,
for the owner's summary."""

UPDATE = LuaScript(UPDATE_SCRIPT, announces=True)
