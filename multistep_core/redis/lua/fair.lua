-- fair.lua: the scheduling state of a queue, the twin of multistep_core/fairshare.py
-- (QueueRow, GroupRow). Per queue Q (hash tag {Q}; suffixes never used by task keys):
--   q             hash  seq (last ticket issued), clock, waiting, parked
--   q-tickets     zset  ticket -> issued at (the ledger of tickets in the broker)
--   q-resends     hash  ticket -> times re-sent (absent = 0)
--   q-groups      zset  group key -> virtual time, groups with tasks waiting (order: vt, key)
--   q-g:<group>   hash  vt, clock, running, weight, limit (a group waiting or running)
--   q-gt:<group>  zset  task id -> virtual time, the group's tasks with jobs waiting
--   q-gall        set   every group key with a q-g hash (for inspection)
-- and the global set <prefix>:queues names every queue with state (claim_due visits them).
local QS = {}
local QS_ORDER = {}
local GS = {}

local function qk(name, suffix) return PFX .. ':{' .. name .. '}:' .. suffix end

local function queue(name)
  local q = QS[name]
  if q then return q end
  local v = redis.call('HMGET', qk(name, 'q'), 'seq', 'clock', 'waiting', 'parked')
  q = {name = name, seq = tonumber(v[1] or '0'), clock = tonumber(v[2] or '0'), waiting = tonumber(v[3] or '0'),
       parked = tonumber(v[4] or '0'), kt = qk(name, 'q-tickets'), kr = qk(name, 'q-resends'),
       kg = qk(name, 'q-groups')}
  QS[name] = q
  QS_ORDER[#QS_ORDER + 1] = name
  return q
end

local function save_queues()
  for _, name in ipairs(QS_ORDER) do
    local q = QS[name]
    redis.call('HSET', qk(name, 'q'), 'seq', fmti(q.seq), 'clock', fmt(q.clock), 'waiting', fmti(q.waiting),
      'parked', fmti(q.parked))
    redis.call('SADD', KQUEUES, name)
  end
end

-- tickets ---------------------------------------------------------------------------------
local function issue(q, n, out)
  for _ = 1, n do
    q.seq = q.seq + 1
    redis.call('ZADD', q.kt, NOW_S, fmti(q.seq))
    out[#out + 1] = q.seq
  end
end

-- no more parked tickets are owed than jobs wait (fairshare.QueueRow.owe_at_most_waiting)
local function owe_at_most_waiting(q)
  if q.parked > q.waiting then q.parked = math.max(q.waiting, 0) end
end

-- tickets until the broker holds one per waiting job, at most WINDOW (parked ones count),
-- once it holds half the window or less (fairshare.QueueRow.top_up, REFILL_AT)
local function top_up(q, out)
  owe_at_most_waiting(q)
  local held = redis.call('ZCARD', q.kt) + q.parked
  if held > WINDOW * 0.5 then return end
  local w = q.waiting
  if WINDOW < w then w = WINDOW end
  issue(q, w - held, out)
end

local function unpark(q, out)
  owe_at_most_waiting(q)
  if q.parked <= 0 then return end
  q.parked = q.parked - 1
  issue(q, 1, out)
end

local function expired_tickets(q, out)
  local flat = redis.call('ZRANGE', q.kt, 0, -1, 'WITHSCORES')
  if #flat == 0 then return end
  local rs = {}
  local rflat = redis.call('HGETALL', q.kr)
  for i = 1, #rflat, 2 do rs[rflat[i]] = tonumber(rflat[i + 1]) end
  local ts = {}
  for i = 1, #flat, 2 do ts[#ts + 1] = {tonumber(flat[i]), tonumber(flat[i + 1]), rs[flat[i]] or 0} end
  table.sort(ts, function(a, b) return a[1] < b[1] end)
  for _, e in ipairs(ts) do
    local m = 2 ^ e[3]
    if m > MAX_TICKET_BACKOFF then m = MAX_TICKET_BACKOFF end
    if e[2] + TICKET_TIMEOUT * m <= NOW then
      redis.call('ZADD', q.kt, NOW_S, fmti(e[1]))
      redis.call('HSET', q.kr, fmti(e[1]), fmti(e[3] + 1))
      out[#out + 1] = e[1]
    end
  end
end

local function take_ticket(q, t)
  local n = redis.call('ZREM', q.kt, t)
  redis.call('HDEL', q.kr, t)
  return n == 1
end

-- groups ----------------------------------------------------------------------------------
local function gload(q, key)
  local id = q.name .. '\0' .. key
  local g = GS[id]
  if g ~= nil then
    if g == false then return nil end
    return g
  end
  local kh, kt = qk(q.name, 'q-g:' .. key), qk(q.name, 'q-gt:' .. key)
  local v = redis.call('HMGET', kh, 'vt', 'clock', 'running', 'weight', 'limit')
  if not v[1] then GS[id] = false; return nil end
  g = {id = id, key = key, kh = kh, kt = kt, vt = tonumber(v[1]), clock = tonumber(v[2]), running = tonumber(v[3]),
       weight = tonumber(v[4]), limit = tonumber(v[5]), ntasks = redis.call('ZCARD', kt)}
  GS[id] = g
  return g
end

local function gsave(q, g)
  redis.call('HSET', g.kh, 'vt', fmt(g.vt), 'clock', fmt(g.clock), 'running', fmti(g.running),
    'weight', fmt(g.weight), 'limit', fmti(g.limit))
  if g.ntasks > 0 then redis.call('ZADD', q.kg, fmt(g.vt), g.key) else redis.call('ZREM', q.kg, g.key) end
end

local function group(q, key, weight, limit)
  local g = gload(q, key)
  if g == nil then
    g = {id = q.name .. '\0' .. key, key = key, kh = qk(q.name, 'q-g:' .. key), kt = qk(q.name, 'q-gt:' .. key),
         vt = q.clock, clock = 0.0, running = 0, weight = weight, limit = limit, ntasks = 0}
    GS[g.id] = g
    redis.call('SADD', qk(q.name, 'q-gall'), key)
  else
    g.weight, g.limit = weight, limit
  end
  gsave(q, g)
  return g
end

local function forget_if_idle(q, key)
  local g = gload(q, key)
  if g ~= nil and g.ntasks == 0 and g.running <= 0 then
    redis.call('DEL', g.kh, g.kt)
    redis.call('ZREM', q.kg, key)
    redis.call('SREM', qk(q.name, 'q-gall'), key)
    GS[g.id] = false
  end
end

-- a task has jobs waiting again (or for the first time)
local function join(q, g, tid, task_vt)
  if g.ntasks == 0 and q.clock > g.vt then g.vt = q.clock end
  if not redis.call('ZSCORE', g.kt, tid) then
    local v = task_vt
    if g.clock > v then v = g.clock end
    redis.call('ZADD', g.kt, fmt(v), tid)
    g.ntasks = g.ntasks + 1
  end
  gsave(q, g)
end

-- a task has no job waiting any more: its virtual time (kept on the task), or nil
local function leave(q, key, tid)
  local g = gload(q, key)
  if g == nil then return nil end
  local s = redis.call('ZSCORE', g.kt, tid)
  if s then
    redis.call('ZREM', g.kt, tid)
    g.ntasks = g.ntasks - 1
    gsave(q, g)
  end
  forget_if_idle(q, key)
  if s then return tonumber(s) end
  return nil
end

-- one job of tid starts: advance the virtual times
local function charge(q, g, tid, task_weight)
  q.clock = g.vt
  g.vt = g.vt + 1.0 / g.weight
  local tvt = tonumber(redis.call('ZSCORE', g.kt, tid))
  g.clock = tvt
  redis.call('ZADD', g.kt, fmt(tvt + 1.0 / task_weight), tid)
  gsave(q, g)
end
