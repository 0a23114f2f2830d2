-- lib.lua: the common part of every store script, a port of RowStore's helpers
-- (multistep_core/store.py). Each script is lib.lua, fair.lua and flow.lua followed by its
-- own body, sent as one script (Redis reports line numbers of the concatenation; the store
-- maps them back to the file and line in its error messages).
--
-- ARGV[1] now, ARGV[2] lease, ARGV[3] key prefix, ARGV[4] ticket window, ARGV[5] the task id
-- (task scripts) or the queue name (queue scripts); the rest belongs to the script.
-- KEYS: every key the script is known to touch before it runs (a task script: the task's
-- nine keys, then the global due index and queue set); keys of other tasks and of queue
-- groups are named from the prefix (one Redis server; see docs/redis.md).
--
-- Per task T (hash tag {T}):
--   meta  hash   state, counters, timestamps, options; next (next job index), batch
--                (per_message), vt (virtual time, kept while the task is out of line)
--   spec  hash   ref -> spec JSON (jobs not yet succeeded, finalizers, callback)
--   rows  hash   ref -> "<state>,<attempt>,<fails>,<lost>" (absent = pending/0/0/0)
--   done  bitmap bit i set <=> job j<i> succeeded
--   err   hash   ref -> failure JSON of rows that failed for good
--   res   hash   ref -> result JSON (tasks that keep results)
--   due   zset   ref -> due time (lease expiry, retry time, follow-up grace)
--   line  list   refs back in line for a ticket (RowStore's TaskRow.requeue)
--   kids  list   subtask ids in creation order (nest.lua; meta has parent, pref, root, tolerated)
--
-- Floats cross the boundary as strings: `now` is stored exactly as Python's repr sent
-- it, computed values are written with %.17g (exact round trip), never through Lua's
-- 14-digit tostring.
local NOW_S = ARGV[1]
local NOW = tonumber(NOW_S)
local LEASE = tonumber(ARGV[2])
local PFX = ARGV[3]
local WINDOW = tonumber(ARGV[4])
local TICKET_TIMEOUT = LEASE * 2.0  -- fairshare.TICKET_TIMEOUT_LEASES
local MAX_TICKET_BACKOFF = 4
local KDUEIDX = PFX .. ':due-tasks'
local KQUEUES = PFX .. ':queues'
local function fmt(x) return string.format('%.17g', x) end
local function fmti(x) return string.format('%d', x) end
-- byte order (Python's order of str): Lua's < on strings follows the server's locale
local function bytes_less(a, b)
  local n = math.min(#a, #b)
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end

local TASK_SUFFIXES = {'meta', 'spec', 'rows', 'done', 'err', 'res', 'due', 'line', 'kids'}
local function task_keys(tid)
  local base = PFX .. ':{' .. tid .. '}:'
  local ks = {}
  for i, s in ipairs(TASK_SUFFIXES) do ks[i] = base .. s end
  return ks
end

local NUMF = {total=1, running=1, succeeded=1, failed=1, fin_total=1, fin_done=1, sealed=1, has_cb=1,
  next=1, batch=1, vt=1, weight=1, maxc=1, gmaxc=1, tolerated=1}

-- the task a script works on; bind() switches between tasks (take and claim visit several)
local TID, KM, KS, KR, KD, KE, KRES, KDUE, KLINE, KKIDS, ALLK
local T = nil
local TC = {}
local R = {}
local FINISHED = false
local CUR = nil
local CTXS = {}
local CTX_ORDER = {}

local function bind(tid)
  if CUR then CUR.T, CUR.TC, CUR.R, CUR.FIN = T, TC, R, FINISHED end
  local c = CTXS[tid]
  if not c then
    c = {tid = tid, keys = task_keys(tid), T = nil, TC = {}, R = {}, FIN = false}
    CTXS[tid] = c
    CTX_ORDER[#CTX_ORDER + 1] = tid
  end
  CUR = c
  TID = tid
  ALLK = c.keys
  KM, KS, KR, KD, KE, KRES, KDUE, KLINE = ALLK[1], ALLK[2], ALLK[3], ALLK[4], ALLK[5], ALLK[6], ALLK[7], ALLK[8]
  KKIDS = ALLK[9]
  T, TC, R, FINISHED = c.T, c.TC, c.R, c.FIN
end

local function load_task()
  if T ~= nil then return T end
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

local TREE_TTL  -- (tid, ms) set by nest.lua: every task below tid expires in ms (nil: never)

-- A finished task expires after its retention; keys written to a finished task later
-- (a late job finishing on a cancelled task) get the same remaining time.
local function apply_ttl()
  if T == nil then return end
  local st = T.state
  if st ~= 'succeeded' and st ~= 'failed' and st ~= 'cancelled' then return end
  local ms
  if FINISHED and (T.parent == nil or T.parent == '') then
    ms = math.ceil(tonumber(T.retention) * 1000)
    if ms < 1 then ms = 1 end
    for _, k in ipairs(ALLK) do redis.call('PEXPIRE', k, string.format('%.0f', ms)) end
    TREE_TTL(TID, ms)  -- a tree expires whole (nest.lua)
  else  -- a late write, or a subtask (it expires with its root: the root set its keys' TTL)
    ms = redis.call('PTTL', KM)
    if ms <= 0 then return end
    for i = 2, #ALLK do redis.call('PEXPIRE', ALLK[i], ms) end
  end
end

local function persist_all()
  for _, k in ipairs(ALLK) do redis.call('PERSIST', k) end
  TREE_TTL(TID, nil)
end

-- rows ----------------------------------------------------------------------------------
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

-- a due time also lowers the task's entry in the global due index (a lower bound)
local function set_due(ref, t)
  redis.call('ZADD', KDUE, fmt(t), ref)
  redis.call('ZADD', KDUEIDX, 'LT', fmt(t), TID)
end
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
