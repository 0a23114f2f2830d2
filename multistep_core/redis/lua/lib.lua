-- lib.lua: the common part of every task script, a port of RowStore's helpers
-- (multistep_core/store.py). Each task script is this file followed by its own body,
-- sent as one script (Redis reports line numbers of the concatenation; the store maps them
-- back to the file and line in its error messages).
--
-- KEYS (all of one task T, hash tag {T}, so one script touches one cluster slot):
--   1 meta  hash   state, counters, timestamps, options
--   2 spec  hash   ref -> spec JSON (jobs not yet succeeded, finalizers, callback)
--   3 rows  hash   ref -> "<state>,<attempt>,<fails>,<lost>" (absent = pending/0/0/0)
--   4 done  bitmap bit i set <=> job j<i> succeeded
--   5 err   hash   ref -> failure JSON of rows that failed for good
--   6 res   hash   ref -> result JSON (tasks that keep results)
--   7 due   zset   ref -> due time (lease expiry, retry time, follow-up grace)
-- ARGV[1] now, ARGV[2] lease; the rest belongs to the script.
--
-- Floats cross the boundary as strings: `now` is stored exactly as Python's repr sent
-- it, computed times are written with %.17g (exact round trip), never through Lua's
-- 14-digit tostring.
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
  -- the rule of model.retries_value: a whole number >= 0, else no valid count
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
