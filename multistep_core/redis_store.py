"""Redis store: every transition is one Lua script, every task lives in one hash slot.

``redis://host:6379/0`` in a backend string. The logic of each script is a line-by-line
port of :class:`~multistep_core.store.RowStore` (the reference); the differential test in
``tests/test_redis_store.py`` drives both with the same random operations and compares
every answer. See ``docs/redis.md`` for the key layout, the scripts and memory figures.

Keys of task ``T`` (prefix ``ms``), all with the hash tag ``{T}`` so that one script only
touches one slot (Redis Cluster compatible):

* ``ms:{T}:meta``  hash: state, counters, timestamps, options
* ``ms:{T}:spec``  hash: ref → spec JSON, for every job not (yet) succeeded, finalizers, callback
* ``ms:{T}:rows``  hash: ref → ``"<state>,<attempt>,<fails>,<lost>"`` for rows that are not
  plain "pending, never started" (absent = pending/0/0/0)
* ``ms:{T}:done``  bitmap: bit *i* set ⇔ job ``j<i>`` succeeded (its spec and row are deleted)
* ``ms:{T}:err``   hash: ref → failure JSON of rows that failed for good
* ``ms:{T}:res``   hash: ref → result JSON (tasks that keep results)
* ``ms:{T}:due``   zset: ref → due time (lease expiry, retry time, follow-up grace)

Global keys (each updated by its own command, never inside a task script):

* ``ms:tasks``      zset: task id → created_at (for ``list_tasks``; pruned lazily)
* ``ms:due-tasks``  zset: task id → a lower bound of the task's earliest due time
* ``ms:rejected``   list: refused messages, newest first, capped
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from .backend import Backend
from .config import redact_url, reject_unknown
from .errors import BackendConnectionError, ConfigurationError, InvalidTransition, TaskExists, TaskNotFound
from .model import (
    CALLBACK,
    NOTHING,
    Dispatch,
    Failure,
    Progress,
    Rejected,
    Start,
    TaskOptions,
    TaskState,
    parse_ref,
)
from .store import DEFAULT_LEASE, Store, worker_lost_failure

DEFAULT_URL = "redis://127.0.0.1:6379/0"
DEFAULT_PREFIX = "ms"
ADD_CHUNK = 2000  # specs per add_jobs script call (several calls share one MULTI)
MAX_REJECTED = 1000
SWEEP_INTERVAL = 15.0  # seconds between two repair/GC sweeps of the global indexes
SWEEP_BATCH = 200  # tasks looked at per sweep

_STATE_CODE = {"p": "pending", "r": "running", "w": "retry_wait", "s": "succeeded", "f": "failed"}
_TERMINAL = {"succeeded", "failed", "cancelled"}

# ---------------------------------------------------------------------------------------
# Lua. ``_LIB`` is the common part of every task script: a port of RowStore's helpers.
# Floats cross the boundary as strings: ``now`` is stored exactly as Python's repr sent
# it, computed times are written with %.17g (exact round trip), never through Lua's
# 14-digit tostring.
# ---------------------------------------------------------------------------------------

_LIB = r"""
local KM, KS, KR, KD, KE, KRES, KDUE = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local ALLK = {KM, KS, KR, KD, KE, KRES, KDUE}
local NOW_S = ARGV[1]
local NOW = tonumber(NOW_S)
local LEASE = tonumber(ARGV[2])
local function fmt(x) return string.format('%.17g', x) end

local NUMF = {total=1, running=1, succeeded=1, failed=1, fin_total=1, fin_done=1, sealed=1, has_cb=1}
local T = nil
local TC = {}
local FINISHED = false

local function load_task()
  local flat = redis.call('HGETALL', KM)
  if #flat == 0 then return nil end
  local t = {}
  for i = 1, #flat, 2 do
    local k, v = flat[i], flat[i + 1]
    if NUMF[k] then t[k] = tonumber(v) else t[k] = v end
  end
  T = t
  return t
end

local function expired()
  return T.expires_at ~= nil and tonumber(T.expires_at) <= NOW
end

local function tset(k, v)
  T[k] = v
  if v == nil then TC[k] = false else TC[k] = v end
end

local function save_task()
  local hs, hd = {}, {}
  for k, v in pairs(TC) do
    if v == false then
      hd[#hd + 1] = k
    else
      hs[#hs + 1] = k
      if type(v) == 'number' then hs[#hs + 1] = fmt(v) else hs[#hs + 1] = v end
    end
  end
  if #hs > 0 then redis.call('HSET', KM, unpack(hs)) end
  if #hd > 0 then redis.call('HDEL', KM, unpack(hd)) end
  TC = {}
end

-- A finished task expires after its retention; keys written to a finished task later
-- (a late job finishing on a cancelled task) get the same remaining time.
local function apply_ttl()
  if T == nil then return end
  local st = T.state
  if st ~= 'succeeded' and st ~= 'failed' and st ~= 'cancelled' then return end
  local ms
  if FINISHED then
    ms = math.ceil(tonumber(T.retention) * 1000)
    if ms < 1 then ms = 1 end
    for _, k in ipairs(ALLK) do redis.call('PEXPIRE', k, string.format('%.0f', ms)) end
  else
    ms = redis.call('PTTL', KM)
    if ms <= 0 then return end
    for i = 2, #ALLK do redis.call('PEXPIRE', ALLK[i], ms) end
  end
end

local function persist_all()
  for _, k in ipairs(ALLK) do redis.call('PERSIST', k) end
end

-- rows ----------------------------------------------------------------------------------
local R = {}

local function parse_row(v)
  if not v then return {st = 'p', a = 0, f = 0, l = 0} end
  local st, a, f, l = string.match(v, '^(%a),(%d+),(%d+),(%d+)$')
  return {st = st, a = tonumber(a), f = tonumber(f), l = tonumber(l)}
end

local function row_exists(kind, idx)
  if kind == 'j' then return idx < T.total end
  if kind == 'f' then return idx < T.fin_total end
  return idx == 0 and T.has_cb == 1
end

local function get_row(kind, idx, ref)
  local r = R[ref]
  if r ~= nil then
    if r == false then return nil end
    return r
  end
  if not row_exists(kind, idx) then R[ref] = false; return nil end
  if kind == 'j' and redis.call('GETBIT', KD, idx) == 1 then
    r = {st = 's', a = 0, f = 0, l = 0}
  else
    r = parse_row(redis.call('HGET', KR, ref))
  end
  R[ref] = r
  return r
end

local function put_row(ref, r)
  R[ref] = r
  if r.st == 'p' and r.a == 0 and r.f == 0 and r.l == 0 then
    redis.call('HDEL', KR, ref)
  else
    redis.call('HSET', KR, ref, r.st .. ',' .. string.format('%d,%d,%d', r.a, r.f, r.l))
  end
end

local function set_due(ref, t) redis.call('ZADD', KDUE, fmt(t), ref) end
local function clear_due(ref) redis.call('ZREM', KDUE, ref) end

local function split_ref(ref) return string.sub(ref, 1, 1), tonumber(string.sub(ref, 2)) end

local function spec_table(ref)
  local s = redis.call('HGET', KS, ref)
  if not s then return nil end
  local ok, d = pcall(cjson.decode, s)
  if not ok or type(d) ~= 'table' then return nil end
  return d
end

local function spec_retries(ref)
  local d = spec_table(ref)
  if d == nil then return nil end
  local r = d['retries']
  if r == true then return 1 elseif r == false then return 0 end
  if type(r) == 'number' and r >= 0 and r == math.floor(r) then return r end
  return nil
end

local function spec_fn(ref)
  local d = spec_table(ref)
  if d == nil or type(d['fn']) ~= 'string' then return '?' end
  return d['fn']
end

-- RowStore's lifecycle helpers ------------------------------------------------------------
local function finish_task(state)
  tset('state', state)
  tset('finished_at', NOW_S)
  tset('expires_at', fmt(NOW + tonumber(T.retention)))
  FINISHED = true
end

local function follow(ref)
  local kind, idx = split_ref(ref)
  local r = get_row(kind, idx, ref)
  if not r then return nil end
  r.st = 'p'
  put_row(ref, r)
  set_due(ref, NOW + LEASE)
  return ref
end

local function fail()
  finish_task('failed')
  if T.has_cb == 1 then
    local cb = get_row('x', 0, 'x0')
    if cb then
      cb.f = 0
      cb.l = 0
      redis.call('HDEL', KE, 'x0')
      put_row('x0', cb)
      return follow('x0')
    end
  end
  return nil
end

local function advance()
  if T.state ~= 'running' or T.succeeded + T.failed < T.total then return nil end
  if T.policy == 'fail' and T.failed > 0 then return fail() end
  if T.fin_done < T.fin_total then
    tset('state', 'finalizing')
    return follow('f' .. string.format('%d', T.fin_done))
  end
  finish_task('succeeded')
  return nil
end

local function ended_for_good(kind)
  if kind == 'j' then
    tset('failed', T.failed + 1)
    if (T.state == 'open' or T.state == 'running') and T.policy == 'fail_fast' then return fail() end
    return advance()
  end
  if kind == 'f' and T.state == 'finalizing' then return fail() end
  return nil
end

local function backoff_for(n)
  local b = tonumber(T.backoff)
  if b <= 0 then return 0.0 end
  local k = n - 1
  if k < 0 then k = 0 end
  local v = b * (2 ^ k)
  local m = tonumber(T.backoff_max)
  if m < v then return m end
  return v
end

-- errjson nil: success (result kept when has_result and the task keeps results)
local function record(r, kind, idx, ref, has_result, result, errjson, errtype)
  if errjson == nil then
    if kind == 'j' then
      redis.call('SETBIT', KD, idx, 1)
      redis.call('HDEL', KS, ref)
      redis.call('HDEL', KR, ref)
      redis.call('HDEL', KE, ref)
      clear_due(ref)
      if has_result and T.keep == '1' then redis.call('HSET', KRES, ref, result) end
      R[ref] = {st = 's', a = r.a, f = r.f, l = r.l}
      tset('succeeded', T.succeeded + 1)
      return advance()
    end
    r.st = 's'
    clear_due(ref)
    redis.call('HDEL', KE, ref)
    put_row(ref, r)
    if kind == 'f' and T.state == 'finalizing' and idx == T.fin_done then
      tset('fin_done', T.fin_done + 1)
      if T.fin_done < T.fin_total then return follow('f' .. string.format('%d', T.fin_done)) end
      finish_task('succeeded')
    end
    return nil
  end
  local lost = (errtype == 'WorkerLost')
  if not lost then r.f = r.f + 1 end
  local retries = spec_retries(ref)
  if retries == nil then retries = tonumber(T.max_retries) end
  local lost_out = lost and r.l > tonumber(T.max_lost)
  if (not lost_out) and (not lost) and r.f <= retries then
    local delay = backoff_for(r.f)
    r.st = 'w'
    put_row(ref, r)
    set_due(ref, NOW + delay)
    if delay <= 0 then return follow(ref) end
    return nil
  end
  if lost and not lost_out then
    put_row(ref, r)
    return follow(ref)
  end
  r.st = 'f'
  clear_due(ref)
  put_row(ref, r)
  redis.call('HSET', KE, ref, errjson)
  return ended_for_good(kind)
end

local function out(d)
  if d then return {'ok', T.queue, d} end
  return {'ok', T.queue}
end
"""

# ARGV: now, lease(unused), option pairs...
_CREATE = r"""
if redis.call('EXISTS', KM) == 1 then
  local v = redis.call('HMGET', KM, 'state', 'expires_at')
  if v[2] and tonumber(v[2]) <= NOW then
    redis.call('DEL', unpack(ALLK))
  else
    return {'exists', v[1]}
  end
else
  redis.call('DEL', unpack(ALLK))
end
local fields = {'state', 'open', 'sealed', '0', 'total', '0', 'running', '0', 'succeeded', '0',
  'failed', '0', 'fin_total', '0', 'fin_done', '0', 'has_cb', '0', 'created_at', NOW_S}
for i = 3, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KM, unpack(fields))
return {'ok'}
"""

# ARGV: now, lease(unused), kind, spec...
_ADD = r"""
if not load_task() or expired() then return {'notfound'} end
local kind = ARGV[3]
local n = #ARGV - 3
if kind == 'x' then
  if T.state == 'succeeded' or T.state == 'failed' or T.state == 'cancelled' then return {'late-callback', T.state} end
  if n ~= 1 then return {'unpack', n} end
  redis.call('HSET', KS, 'x0', ARGV[4])
  redis.call('HDEL', KR, 'x0')
  redis.call('HDEL', KE, 'x0')
  clear_due('x0')
  tset('has_cb', 1)
  save_task()
  return {'ok', 0}
end
if T.state ~= 'open' and T.state ~= 'running' then return {'closed', T.state} end
local first
if kind == 'j' then
  first = T.total
  tset('total', first + n)
elseif kind == 'f' then
  first = T.fin_total
  tset('fin_total', first + n)
else
  return {'kind'}
end
local batch = {}
for i = 1, n do
  batch[#batch + 1] = kind .. string.format('%d', first + i - 1)
  batch[#batch + 1] = ARGV[3 + i]
  if #batch >= 1000 then
    redis.call('HSET', KS, unpack(batch))
    batch = {}
  end
end
if #batch > 0 then redis.call('HSET', KS, unpack(batch)) end
save_task()
return {'ok', first}
"""

# ARGV: now, lease
_SEAL = r"""
if not load_task() or expired() then return {'notfound'} end
local st = T.state
if st == 'succeeded' or st == 'failed' or st == 'cancelled' then return {'ok', T.queue} end
if T.sealed == 1 then return {'sealed'} end
tset('sealed', 1)
tset('sealed_at', NOW_S)
tset('state', 'running')
local d = advance()
save_task()
apply_ttl()
return out(d)
"""

# ARGV: now, lease, kind, index, ref
_START = r"""
if not load_task() then return {0, 'task-missing'} end
local kind, idx, ref = ARGV[3], tonumber(ARGV[4]), ARGV[5]
local r = get_row(kind, idx, ref)
if not r then return {0, 'job-missing'} end
if r.st == 's' or r.st == 'f' then return {0, 'already-finished'} end
if r.st == 'r' then return {0, 'already-running'} end
if r.st == 'w' then return {0, 'retry-not-due'} end
if kind == 'j' then
  if T.state ~= 'open' and T.state ~= 'running' then return {0, 'task-' .. T.state} end
  tset('running', T.running + 1)
elseif kind == 'f' then
  if T.state ~= 'finalizing' or idx ~= T.fin_done then return {0, 'task-' .. T.state} end
elseif T.state ~= 'failed' then
  return {0, 'task-' .. T.state}
end
r.st = 'r'
r.a = r.a + 1
put_row(ref, r)
set_due(ref, NOW + LEASE)
save_task()
apply_ttl()
return {1, '', redis.call('HGET', KS, ref) or '', r.a, T.keep}
"""

# ARGV: now, lease, ref...   (pending refs without a due time get one, a lease from now)
_GUARD = r"""
if not load_task() then return 0 end
local n = 0
for i = 3, #ARGV do
  local ref = ARGV[i]
  local kind, idx = split_ref(ref)
  local r = get_row(kind, idx, ref)
  if r and r.st == 'p' and not redis.call('ZSCORE', KDUE, ref) then
    set_due(ref, NOW + LEASE)
    n = n + 1
  end
end
return n
"""

# KEYS: rows, due only. ARGV: now, lease, ref, attempt
_RENEW = r"""
local v = redis.call('HGET', KEYS[1], ARGV[3])
if not v then return 0 end
local st, a = string.match(v, '^(%a),(%d+),')
if st ~= 'r' or tonumber(a) ~= tonumber(ARGV[4]) then return 0 end
redis.call('ZADD', KEYS[2], string.format('%.17g', tonumber(ARGV[1]) + tonumber(ARGV[2])), ARGV[3])
return 1
"""

# ARGV: now, lease, kind, index, ref, attempt, has_result, result, errjson, errtype
_FINISH = r"""
if not load_task() then return {'ok', ''} end
local kind, idx, ref, attempt = ARGV[3], tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])
local errjson = nil
if ARGV[9] ~= '' then errjson = ARGV[9] end
local r = get_row(kind, idx, ref)
if not r or r.st == 's' or r.st == 'f' then return {'ok', T.queue} end
if errjson and (r.st ~= 'r' or r.a ~= attempt) then return {'ok', T.queue} end
if kind == 'f' and (T.state ~= 'finalizing' or idx ~= T.fin_done) then return {'ok', T.queue} end
if kind == 'x' and T.state ~= 'failed' then return {'ok', T.queue} end
if kind == 'j' and r.st == 'r' then tset('running', T.running - 1) end
local d = record(r, kind, idx, ref, ARGV[7] == '1', ARGV[8], errjson, ARGV[10])
save_task()
apply_ttl()
return out(d)
"""

# ARGV: now, lease, by
_CANCEL = r"""
if not load_task() or expired() then return {'notfound'} end
if T.state == 'succeeded' or T.state == 'cancelled' then return {'ok', 0} end
finish_task('cancelled')
tset('cancelled_by', ARGV[3])
tset('cancelled_at', NOW_S)
save_task()
apply_ttl()
return {'ok', 1}
"""

# ARGV: now, lease
_RETRY = r"""
if not load_task() or expired() then return {'notfound'} end
if T.state ~= 'failed' then return {'notfailed', T.state} end
tset('finished_at', nil)
tset('expires_at', nil)
persist_all()
local bm = redis.call('GET', KD) or ''
local flat = redis.call('HGETALL', KR)
local rows = {}
for i = 1, #flat, 2 do rows[flat[i]] = flat[i + 1] end
local dues = {}
for _, m in ipairs(redis.call('ZRANGE', KDUE, 0, -1)) do dues[m] = true end
local refs = {}
local failed = T.failed
for i = 0, T.total - 1 do
  local byte = string.byte(bm, math.floor(i / 8) + 1) or 0
  if bit.band(byte, bit.rshift(128, i % 8)) == 0 then
    local ref = 'j' .. string.format('%d', i)
    local r = parse_row(rows[ref])
    if r.st ~= 'r' then
      if r.st == 'f' then
        failed = failed - 1
        redis.call('HDEL', KE, ref)
      end
      if r.st ~= 'p' or r.f ~= 0 or r.l ~= 0 then
        r.st = 'p'; r.f = 0; r.l = 0
        put_row(ref, r)
      end
      if dues[ref] then clear_due(ref) end
      refs[#refs + 1] = ref
    end
  end
end
if failed ~= T.failed then tset('failed', failed) end
local fin_failed = nil
for i = 0, T.fin_total - 1 do
  local ref = 'f' .. string.format('%d', i)
  if rows[ref] then
    local r = parse_row(rows[ref])
    if r.st == 'f' then fin_failed = ref end
  end
end
if fin_failed and #refs == 0 then
  local r = get_row('f', tonumber(string.sub(fin_failed, 2)), fin_failed)
  r.f = 0; r.l = 0
  redis.call('HDEL', KE, fin_failed)
  put_row(fin_failed, r)
  tset('state', 'finalizing')
  local d = follow(fin_failed)
  save_task()
  apply_ttl()
  return {'D', T.queue, d}
end
if T.sealed == 1 then tset('state', 'running') else tset('state', 'open') end
local d = advance()
save_task()
apply_ttl()
if d then return {'D', T.queue, d} end
local ret = {'R', T.queue}
for _, ref in ipairs(refs) do ret[#ret + 1] = ref end
return ret
"""

# ARGV: now, lease, limit, lost message
# Returns {'gone'} or {'ok', queue, processed, next_due or '', ref...}
_CLAIM = r"""
if not load_task() then
  redis.call('DEL', unpack(ALLK))
  return {'gone'}
end
if expired() then
  redis.call('DEL', unpack(ALLK))
  return {'gone'}
end
local limit = tonumber(ARGV[3])
local lostmsg = cjson.encode(ARGV[4])
local items = redis.call('ZRANGEBYSCORE', KDUE, '-inf', NOW_S, 'LIMIT', 0, limit)
local sent = {}
for _, ref in ipairs(items) do
  local kind, idx = split_ref(ref)
  local r = get_row(kind, idx, ref)
  if not r or (kind == 'j' and r.st == 's') then
    clear_due(ref)
  else
    local wanted = (kind == 'j' and (T.state == 'open' or T.state == 'running'))
      or (kind == 'f' and T.state == 'finalizing' and idx == T.fin_done)
      or (kind == 'x' and T.state == 'failed')
    if r.st == 'r' then
      if kind == 'j' then tset('running', T.running - 1) end
      r.l = r.l + 1
      if not wanted then
        r.st = 'p'
        clear_due(ref)
        put_row(ref, r)
      else
        local errjson = '{"ref":' .. cjson.encode(ref) .. ',"fn":' .. cjson.encode(spec_fn(ref))
          .. ',"type":"WorkerLost","message":' .. lostmsg .. ',"traceback":"","attempt":'
          .. string.format('%d', r.a) .. ',"at":' .. NOW_S .. '}'
        local d = record(r, kind, idx, ref, false, '', errjson, 'WorkerLost')
        if d then sent[#sent + 1] = d end
      end
    elseif not wanted then
      clear_due(ref)
    else
      sent[#sent + 1] = follow(ref)
    end
  end
end
save_task()
apply_ttl()
local nxt = redis.call('ZRANGE', KDUE, 0, 0, 'WITHSCORES')
local ret = {'ok', T.queue, #items, nxt[2] or ''}
for _, ref in ipairs(sent) do ret[#ret + 1] = ref end
return ret
"""

# KEYS: meta, rows, done. Returns {total, fin_total, has_cb, done bitmap as hex, rows...}
_JOB_STATES = r"""
local v = redis.call('HMGET', KEYS[1], 'total', 'fin_total', 'has_cb')
if not v[1] then return {} end
local bm = redis.call('GET', KEYS[3]) or ''
local hex = string.gsub(bm, '.', function(c) return string.format('%02x', string.byte(c)) end)
local ret = {v[1], v[2], v[3], hex}
for _, x in ipairs(redis.call('HGETALL', KEYS[2])) do ret[#ret + 1] = x end
return ret
"""

# KEYS: rows, err. Errors of rows that failed for good.
_FAILURES = r"""
local flat = redis.call('HGETALL', KEYS[2])
local ret = {}
for i = 1, #flat, 2 do
  local v = redis.call('HGET', KEYS[1], flat[i])
  if v and string.sub(v, 1, 1) == 'f' then ret[#ret + 1] = flat[i + 1] end
end
return ret
"""

# KEYS: a global zset. ARGV: member, score pairs. Remove each member whose score is
# still the one seen (a task created again meanwhile keeps its new entry).
_ZREM_IF = r"""
local n = 0
for i = 1, #ARGV, 2 do
  local s = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if s and tonumber(s) == tonumber(ARGV[i + 1]) then
    n = n + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return n
"""

_TASK_SCRIPTS = {
    "create": _CREATE,
    "add": _ADD,
    "seal": _SEAL,
    "start": _START,
    "guard": _GUARD,
    "finish": _FINISH,
    "cancel": _CANCEL,
    "retry": _RETRY,
    "claim": _CLAIM,
}
_PLAIN_SCRIPTS = {"renew": _RENEW, "job_states": _JOB_STATES, "failures": _FAILURES, "zrem_if": _ZREM_IF}


def _s(v: Any) -> Any:
    """bytes → str (the store works with clients that decode responses or not)."""
    if isinstance(v, bytes):
        return v.decode("utf-8")
    if isinstance(v, list):
        return [_s(x) for x in v]
    return v


def _f(v: Any) -> float | None:
    return None if v is None else float(v)




def _progress(tid: str, m: dict[str, str]) -> Progress:
    total = int(m["total"])
    running = int(m["running"])
    succeeded = int(m["succeeded"])
    failed = int(m["failed"])
    return Progress(
        task_id=tid,
        state=TaskState(m["state"]),
        total=total,
        pending=total - running - succeeded - failed,
        running=running,
        succeeded=succeeded,
        failed=failed,
        finalizers_total=int(m["fin_total"]),
        finalizers_done=int(m["fin_done"]),
        created_at=float(m["created_at"]),
        sealed_at=_f(m.get("sealed_at")),
        finished_at=_f(m.get("finished_at")),
        cancelled_by=m.get("cancelled_by"),
        cancelled_at=_f(m.get("cancelled_at")),
        options=TaskOptions.from_dict(json.loads(m["opts"])),
    )


class RedisStore(Store):
    """Task state in Redis; each transition is one Lua script on one task's keys."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        prefix: str = DEFAULT_PREFIX,
        lease: float = DEFAULT_LEASE,
        client: Any = None,
        max_rejected: int = MAX_REJECTED,
    ) -> None:
        try:
            import redis
        except ImportError as exc:  # pragma: no cover - depends on the environment
            from .errors import BackendDriverMissing

            raise BackendDriverMissing(
                'the redis store needs the redis package; install it with: pip install "multistep[redis]"'
            ) from exc
        if not isinstance(prefix, str) or not prefix or "{" in prefix or "}" in prefix:
            raise ConfigurationError(f"redis key prefix {prefix!r} must be a non-empty string without braces")
        self.lease = float(lease)
        self.prefix = prefix
        self.url = url
        self.max_rejected = int(max_rejected)
        self._redis = redis
        self._conn_errors: tuple[type[BaseException], ...] = (
            redis.exceptions.ConnectionError,
            redis.exceptions.TimeoutError,
        )
        self._noscript = redis.exceptions.NoScriptError
        if client is None:
            try:
                client = redis.Redis.from_url(url)
            except ValueError as exc:
                raise ConfigurationError(f"bad Redis URL {redact_url(url)!r}: {exc}") from None
        else:
            kw = getattr(getattr(client, "connection_pool", None), "connection_kwargs", {}) or {}
            if url == DEFAULT_URL and "host" in kw:
                self.url = f"redis://{kw.get('host')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"
        self.r = client
        self._where = redact_url(self.url)
        self._lost_message = worker_lost_failure("j0", "?", 0, 0.0, self.lease).message
        self._k_tasks = f"{prefix}:tasks"
        self._k_due = f"{prefix}:due-tasks"
        self._k_rejected = f"{prefix}:rejected"
        self._scripts: dict[str, Any] = {}
        for name, body in _TASK_SCRIPTS.items():
            self._scripts[name] = client.register_script(_LIB + body)
        for name, body in _PLAIN_SCRIPTS.items():
            self._scripts[name] = client.register_script(body)
        self._sweep_lock = threading.Lock()
        self._next_sweep = 0.0
        self._sweep_cursor = 0
        with self._errors():
            self._load_scripts()

    # -- plumbing ----------------------------------------------------------------------
    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except self._conn_errors as exc:
            raise BackendConnectionError(f"cannot reach Redis at {self._where}: {exc}") from exc

    def _load_scripts(self) -> None:
        pipe = self.r.pipeline(transaction=False)
        for s in self._scripts.values():
            pipe.script_load(s.script)
        for s, sha in zip(self._scripts.values(), pipe.execute(), strict=True):
            s.sha = _s(sha)

    def keys(self, task_id: str) -> list[str]:
        """The seven keys of one task, in the order the scripts expect."""
        base = f"{self.prefix}:{{{task_id}}}:"
        return [base + k for k in ("meta", "spec", "rows", "done", "err", "res", "due")]

    def _call(self, name: str, task_id: str, args: Sequence[Any]) -> Any:
        with self._errors():
            return _s(self._scripts[name](keys=self.keys(task_id), args=args, client=self.r))

    def _pipe(self, build: Any, *, transaction: bool = False) -> list[Any]:
        """Run a pipeline built by ``build(pipe)``; reload the scripts once if Redis lost them."""
        with self._errors():
            for again in (True, False):
                pipe = self.r.pipeline(transaction=transaction)
                build(pipe)
                try:
                    return [_s(x) for x in pipe.execute()]
                except self._noscript:
                    if not again:
                        raise
                    self._load_scripts()
                except self._redis.exceptions.ResponseError as exc:
                    if not again or "NOSCRIPT" not in str(exc):
                        raise
                    self._load_scripts()
        raise AssertionError("unreachable")  # pragma: no cover

    def _evalsha(self, pipe: Any, name: str, task_id: str, args: Sequence[Any]) -> None:
        keys = self.keys(task_id)
        pipe.evalsha(self._scripts[name].sha, len(keys), *keys, *args)

    def _dispatch(self, task_id: str, res: list[Any]) -> Dispatch:
        if len(res) > 2:
            return Dispatch(task_id, res[1], tuple(res[2:]))
        return NOTHING

    @staticmethod
    def _not_found(task_id: str) -> TaskNotFound:
        return TaskNotFound(f"no task with id {task_id!r}")

    # -- writing -----------------------------------------------------------------------
    def create_task(self, task_id: str, options: TaskOptions, now: float) -> None:
        o = options
        args: list[Any] = [
            repr(now), "0",
            "opts", json.dumps(o.to_dict(), separators=(",", ":")),
            "policy", o.policy.value,
            "max_retries", str(int(o.max_retries)),
            "backoff", repr(o.backoff),
            "backoff_max", repr(o.backoff_max),
            "max_lost", str(int(o.max_lost)),
            "keep", "1" if o.keep_results else "0",
            "retention", repr(o.retention),
            "queue", o.queue,
        ]
        res = self._call("create", task_id, args)
        if res[0] == "exists":
            raise TaskExists(f"a task with id {task_id!r} already exists ({res[1]})")
        with self._errors():
            self.r.zadd(self._k_tasks, {task_id: repr(now)})

    def add_jobs(self, task_id: str, kind: str, specs: Sequence[str], now: float) -> list[str]:
        specs = list(specs)
        chunks = [specs[i : i + ADD_CHUNK] for i in range(0, len(specs), ADD_CHUNK)] or [[]]
        if kind == CALLBACK:
            chunks = [specs]
        if len(chunks) == 1:
            results = [self._call("add", task_id, [repr(now), "0", kind, *chunks[0]])]
        else:
            # All chunks in one MULTI: atomic like one call, no single command too big.
            def build(pipe: Any) -> None:
                for c in chunks:
                    self._evalsha(pipe, "add", task_id, [repr(now), "0", kind, *c])

            results = self._pipe(build, transaction=True)
        res = results[0]
        status = res[0]
        if status == "notfound":
            raise self._not_found(task_id)
        if status == "late-callback":
            raise InvalidTransition(f"task {task_id!r} is {res[1]}; too late for a failure callback")
        if status == "unpack":
            raise ValueError(f"expected 1 spec for the failure callback, got {res[1]}")
        if status == "closed":
            raise InvalidTransition(
                f"task {task_id!r} is {res[1]}; jobs and finalizers can be added only while it is open or running"
            )
        if status == "kind":
            raise ValueError(f"unknown job kind {kind!r}")
        if kind == CALLBACK:
            return ["x0"]
        refs: list[str] = []
        for c, r in zip(chunks, results, strict=True):
            first = int(r[1])
            refs.extend(f"{kind}{first + i}" for i in range(len(c)))
        return refs

    def seal(self, task_id: str, now: float) -> Dispatch:
        def build(pipe: Any) -> None:
            self._evalsha(pipe, "seal", task_id, [repr(now), repr(self.lease)])
            pipe.zadd(self._k_due, {task_id: repr(now + self.lease)}, lt=True)

        res = self._pipe(build)[0]
        if res[0] == "notfound":
            raise self._not_found(task_id)
        if res[0] == "sealed":
            raise InvalidTransition(f"task {task_id!r} is already sealed")
        return self._dispatch(task_id, res)

    def start(self, task_id: str, ref: str, now: float) -> Start:
        kind, index = parse_ref(ref)

        def build(pipe: Any) -> None:
            self._evalsha(pipe, "start", task_id, [repr(now), repr(self.lease), kind, index, ref])
            pipe.zadd(self._k_due, {task_id: repr(now + self.lease)}, lt=True)

        res = self._pipe(build)[0]
        if int(res[0]) != 1:
            return Start(False, res[1])
        return Start(True, spec=res[2], attempt=int(res[3]), keep_results=res[4] == "1")

    def guard(self, task_id: str, refs: Sequence[str], now: float) -> int:
        if not refs:
            return 0

        def build(pipe: Any) -> None:
            self._evalsha(pipe, "guard", task_id, [repr(now), repr(self.lease), *refs])
            pipe.zadd(self._k_due, {task_id: repr(now + self.lease)}, lt=True)

        return int(self._pipe(build)[0])

    def start_packed(self, task_id: str, refs: Sequence[str], now: float) -> Start:
        """The guard of ``refs[1:]`` and the start of ``refs[0]`` in one round trip."""
        kind, index = parse_ref(refs[0])

        def build(pipe: Any) -> None:
            self._evalsha(pipe, "guard", task_id, [repr(now), repr(self.lease), *refs[1:]])
            self._evalsha(pipe, "start", task_id, [repr(now), repr(self.lease), kind, index, refs[0]])
            pipe.zadd(self._k_due, {task_id: repr(now + self.lease)}, lt=True)

        res = self._pipe(build)[1]
        if int(res[0]) != 1:
            return Start(False, res[1])
        return Start(True, spec=res[2], attempt=int(res[3]), keep_results=res[4] == "1")

    def renew(self, task_id: str, ref: str, attempt: int, now: float) -> bool:
        k = self.keys(task_id)
        with self._errors():
            ok = self._scripts["renew"](
                keys=[k[2], k[6]], args=[repr(now), repr(self.lease), ref, attempt], client=self.r
            )
        return bool(int(ok))

    def finish(
        self,
        task_id: str,
        ref: str,
        attempt: int,
        now: float,
        *,
        result: str | None = None,
        error: Failure | None = None,
    ) -> Dispatch:
        args = self._finish_args(ref, attempt, now, result, error)
        # A success can only add a follow-up due at now + lease; a failure may add a retry
        # due any time from now on. The global index holds a lower bound of each task's
        # earliest due time, so it is lowered in the same round trip.
        bound = now + self.lease if error is None else now

        def build(pipe: Any) -> None:
            self._evalsha(pipe, "finish", task_id, args)
            pipe.zadd(self._k_due, {task_id: repr(bound)}, lt=True)

        return self._dispatch(task_id, self._pipe(build)[0])

    def _finish_args(
        self, ref: str, attempt: int, now: float, result: str | None, error: Failure | None
    ) -> list[Any]:
        kind, index = parse_ref(ref)
        err = json.dumps(error.to_dict(), separators=(",", ":")) if error is not None else ""
        return [
            repr(now), repr(self.lease), kind, index, ref, attempt,
            "0" if result is None else "1", result or "", err, error.type if error is not None else "",
        ]

    def finish_then_start(
        self,
        task_id: str,
        ref: str,
        attempt: int,
        now: float,
        next_ref: str,
        *,
        result: str | None = None,
        error: Failure | None = None,
    ) -> tuple[Dispatch, Start]:
        """The finish script of ``ref`` and the start script of ``next_ref`` (with their due
        index updates) in one pipelined round trip; Redis runs them in this order."""
        args = self._finish_args(ref, attempt, now, result, error)
        bound = now if error is not None else now + self.lease  # covers both scripts' due times
        nkind, nindex = parse_ref(next_ref)

        def build(pipe: Any) -> None:
            self._evalsha(pipe, "finish", task_id, args)
            self._evalsha(pipe, "start", task_id, [repr(now), repr(self.lease), nkind, nindex, next_ref])
            pipe.zadd(self._k_due, {task_id: repr(bound)}, lt=True)

        out = self._pipe(build)
        res = out[1]
        start = (
            Start(True, spec=res[2], attempt=int(res[3]), keep_results=res[4] == "1")
            if int(res[0]) == 1
            else Start(False, res[1])
        )
        return self._dispatch(task_id, out[0]), start

    def cancel(self, task_id: str, by: str, now: float) -> bool:
        res = self._call("cancel", task_id, [repr(now), "0", by])
        if res[0] == "notfound":
            raise self._not_found(task_id)
        return int(res[1]) == 1

    def retry(self, task_id: str, now: float) -> Dispatch:
        def build(pipe: Any) -> None:
            self._evalsha(pipe, "retry", task_id, [repr(now), repr(self.lease)])
            pipe.zadd(self._k_due, {task_id: repr(now + self.lease)}, lt=True)

        res = self._pipe(build)[0]
        if res[0] == "notfound":
            raise self._not_found(task_id)
        if res[0] == "notfailed":
            raise InvalidTransition(f"task {task_id!r} is {res[1]}; only a failed task can be retried")
        if res[0] == "D":
            return self._dispatch(task_id, res)
        return Dispatch(task_id, res[1], tuple(res[2:]))

    def claim_due(self, now: float, limit: int = 1000) -> list[Dispatch]:
        out: list[Dispatch] = []
        if limit > 0:
            with self._errors():
                tids = _s(self.r.zrangebyscore(self._k_due, "-inf", repr(now), start=0, num=limit))
            remaining = limit
            fix: list[tuple[str, str | None]] = []
            for tid in tids:
                if remaining <= 0:
                    break
                res = self._call("claim", tid, [repr(now), repr(self.lease), remaining, self._lost_message])
                if res[0] == "gone":
                    fix.append((tid, None))
                    continue
                queue, processed, nxt = res[1], int(res[2]), res[3]
                remaining -= processed
                out.extend(Dispatch(tid, queue, (ref,)) for ref in res[4:])
                fix.append((tid, nxt or None))
            self._fix_due_index(fix)
        self._maybe_sweep()
        return out

    def _fix_due_index(self, fix: list[tuple[str, str | None]]) -> None:
        """Raise each visited task's entry to its true earliest due (or drop it), then read
        the task's due set again: a due time added meanwhile, whose writer lowered the
        entry before our raise, is put back. Any due added after that re-read comes with
        its writer's own ``ZADD LT``."""
        if not fix:
            return

        def build(pipe: Any) -> None:
            for tid, nxt in fix:
                if nxt is None:
                    pipe.zrem(self._k_due, tid)
                else:
                    pipe.zadd(self._k_due, {tid: nxt})
            for tid, _ in fix:
                pipe.zrange(self.keys(tid)[6], 0, 0, withscores=True)

        res = self._pipe(build)
        lower = []
        for (tid, nxt), cur in zip(fix, res[len(fix) :], strict=True):
            if cur:
                score = float(cur[0][1])
                if nxt is None or score < float(nxt):
                    lower.append((tid, score))
        if lower:

            def build2(pipe: Any) -> None:
                for tid, score in lower:
                    pipe.zadd(self._k_due, {tid: repr(score)}, lt=True)

            self._pipe(build2)

    def _maybe_sweep(self) -> None:
        """Bounded background repair: a slice of the task index per pass puts every task's
        earliest due time back into the due index (should a process have died between
        the two steps of ``_fix_due_index``) and drops index entries of expired tasks."""
        t = time.monotonic()
        if t < self._next_sweep or not self._sweep_lock.acquire(blocking=False):
            return
        try:
            self._next_sweep = t + SWEEP_INTERVAL
            with self._errors():
                batch = self.r.zrange(self._k_tasks, self._sweep_cursor, self._sweep_cursor + SWEEP_BATCH - 1,
                                      withscores=True)
            batch = [(_s(m), sc) for m, sc in batch]
            self._sweep_cursor = 0 if len(batch) < SWEEP_BATCH else self._sweep_cursor + SWEEP_BATCH
            if batch:
                self._sweep(batch)
        finally:
            self._sweep_lock.release()

    def _sweep(self, batch: list[tuple[str, float]]) -> None:
        def build(pipe: Any) -> None:
            for tid, _ in batch:
                k = self.keys(tid)
                pipe.exists(k[0])
                pipe.zrange(k[6], 0, 0, withscores=True)

        res = self._pipe(build)
        gone: list[Any] = []
        due: list[tuple[str, float]] = []
        for i, (tid, score) in enumerate(batch):
            if not int(res[2 * i]):
                gone += [tid, repr(score)]
            elif res[2 * i + 1]:
                due.append((tid, float(res[2 * i + 1][0][1])))

        def build2(pipe: Any) -> None:
            if gone:
                pipe.evalsha(self._scripts["zrem_if"].sha, 1, self._k_tasks, *gone)
            for tid, sc in due:
                pipe.zadd(self._k_due, {tid: repr(sc)}, lt=True)

        if gone or due:
            self._pipe(build2)

    def delete(self, task_id: str) -> bool:
        keys = self.keys(task_id)

        def build(pipe: Any) -> None:
            pipe.exists(keys[0])
            pipe.delete(*keys)
            pipe.zrem(self._k_tasks, task_id)
            pipe.zrem(self._k_due, task_id)

        return bool(int(self._pipe(build)[0]))

    def reject(self, raw: str, reason: str, now: float) -> None:
        item = json.dumps({"raw": raw[:4096], "reason": reason, "at": now}, separators=(",", ":"))

        def build(pipe: Any) -> None:
            pipe.lpush(self._k_rejected, item)
            pipe.ltrim(self._k_rejected, 0, self.max_rejected - 1)

        self._pipe(build, transaction=True)

    # -- reading -----------------------------------------------------------------------
    def _meta(self, task_id: str) -> dict[str, str] | None:
        with self._errors():
            m = self.r.hgetall(self.keys(task_id)[0])
        if not m:
            return None
        return {_s(k): _s(v) for k, v in m.items()}

    def progress(self, task_id: str) -> Progress | None:
        m = self._meta(task_id)
        if m is None or ("expires_at" in m and float(m["expires_at"]) <= time.time()):
            return None
        return _progress(task_id, m)

    def failures(self, task_id: str) -> list[Failure]:
        k = self.keys(task_id)
        with self._errors():
            errs = _s(self._scripts["failures"](keys=[k[2], k[4]], args=[], client=self.r))
        out = [Failure.from_dict(json.loads(e)) for e in errs]
        out.sort(key=lambda f: (f.ref[0] != "j", f.ref[0], int(f.ref[1:])))
        return out

    def results(self, task_id: str) -> dict[str, Any]:
        with self._errors():
            m = self.r.hgetall(self.keys(task_id)[5])
        return {_s(k): json.loads(_s(v)) for k, v in m.items()}

    def list_tasks(self, state: TaskState | None = None, limit: int = 1000) -> list[Progress]:
        out: list[Progress] = []
        now = time.time()
        page = max(50, min(limit, 500))
        offset = 0
        while len(out) < limit:
            with self._errors():
                ids = self.r.zrevrange(self._k_tasks, offset, offset + page - 1, withscores=True)
            if not ids:
                break
            offset += len(ids)
            ids = [(_s(m), sc) for m, sc in ids]

            def build(pipe: Any, ids: list[tuple[str, float]] = ids) -> None:
                for tid, _ in ids:
                    pipe.hgetall(self.keys(tid)[0])

            metas = self._pipe(build)
            gone: list[Any] = []
            for (tid, score), raw in zip(ids, metas, strict=True):
                if not raw:
                    gone += [tid, repr(score)]
                    continue
                m = {_s(k): _s(v) for k, v in raw.items()}
                if "expires_at" in m and float(m["expires_at"]) <= now:
                    continue
                if state is not None and m["state"] != state.value:
                    continue
                out.append(_progress(tid, m))
                if len(out) >= limit:
                    break
            if gone:
                with self._errors():
                    self._scripts["zrem_if"](keys=[self._k_tasks], args=gone, client=self.r)
                offset -= len(gone) // 2
            if len(ids) < page:
                break
        return out

    def rejected(self, limit: int = 100) -> list[Rejected]:
        if limit <= 0:
            return []
        with self._errors():
            items = self.r.lrange(self._k_rejected, 0, limit - 1)
        out = []
        for it in items:
            d = json.loads(_s(it))
            out.append(Rejected(raw=d["raw"], reason=d["reason"], at=d["at"]))
        return out

    def job_states(self, task_id: str) -> dict[str, str]:
        k = self.keys(task_id)
        with self._errors():
            res = _s(self._scripts["job_states"](keys=[k[0], k[2], k[3]], args=[], client=self.r))
        if not res:
            return {}
        total, fin_total, has_cb = int(res[0]), int(res[1]), int(res[2])
        bm = bytes.fromhex(res[3])
        rows = dict(zip(res[4::2], res[5::2], strict=True))
        out: dict[str, str] = {}
        for i in range(total):
            ref = f"j{i}"
            b = i >> 3
            if b < len(bm) and bm[b] & (0x80 >> (i & 7)):
                out[ref] = "succeeded"
            else:
                v = rows.get(ref)
                out[ref] = _STATE_CODE[v[0]] if v else "pending"
        for i in range(fin_total):
            ref = f"f{i}"
            v = rows.get(ref)
            out[ref] = _STATE_CODE[v[0]] if v else "pending"
        if has_cb:
            v = rows.get("x0")
            out["x0"] = _STATE_CODE[v[0]] if v else "pending"
        return out

    # -- inspection --------------------------------------------------------------------
    def memory_usage(self, task_id: str) -> int:
        """Bytes Redis reports for the task's keys (``MEMORY USAGE ... SAMPLES 0``)."""
        total = 0
        with self._errors():
            for k in self.keys(task_id):
                n = self.r.memory_usage(k, samples=0)
                total += int(n or 0)
        return total

    def close(self) -> None:
        try:
            self.r.close()
        except Exception:  # pragma: no cover - closing must not raise
            pass


def redis_url(url: str) -> str:
    """``redis`` alone means the local default; anything else is a redis-py URL."""
    if "://" not in url:
        return DEFAULT_URL
    return url


def redis_backend(
    url: str = DEFAULT_URL,
    *,
    threads: int = 4,
    lease: float = DEFAULT_LEASE,
    prefix: str = DEFAULT_PREFIX,
    **opts: Any,
) -> Backend:
    """``redis://host:6379/0``: state in Redis (one Lua script per transition), jobs on
    ``threads`` threads of this process."""
    from .embedded.threads import ThreadQueue

    reject_unknown(opts, {"threads", "lease", "prefix"}, "redis")
    store = RedisStore(redis_url(url), prefix=str(prefix), lease=lease)
    return Backend(store, ThreadQueue(int(threads)), name="redis")


__all__ = ["RedisStore", "redis_backend"]
