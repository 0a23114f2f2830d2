-- flow.lua: RowStore's lifecycle helpers (multistep_core/store.py) over lib.lua's rows and
-- fair.lua's queues. A dispatch is nil or {ref = <ref or nil>, t = {tickets}}.
local ENDED = {}  -- tasks that ended in this script, in order (nest.lua)

local function task_waiting()
  return T.total - T.next + redis.call('LLEN', KLINE)
end

local function gkey()
  if T.group ~= '' then return T.group end
  if T.root ~= nil and T.root ~= '' then return '=' .. T.root end  -- a tree shares one share
  return '=' .. TID
end

local function is_live() return T.state == 'open' or T.state == 'running' end

local function merge(d, tickets)
  if #tickets == 0 then return d end
  if d == nil then d = {t = {}} end
  for _, t in ipairs(tickets) do d.t[#d.t + 1] = t end
  return d
end

local function tickets_d(tickets)
  if #tickets == 0 then return nil end
  return {t = tickets}
end

-- refs go back in line (or, with none, the task's new jobs start waiting)
local function wait(refs)
  if #refs > 0 then redis.call('RPUSH', KLINE, unpack(refs)) end
  local q = queue(T.queue)
  q.waiting = q.waiting + #refs
  if task_waiting() > 0 and is_live() then
    local w = 1.0
    if T.group == '' then w = T.weight end
    local g = group(q, gkey(), w, T.gmaxc)
    join(q, g, TID, T.vt)
  end
end

-- the task ended (or was cancelled): its waiting jobs leave the line at once
local function unschedule()
  local q = queue(T.queue)
  q.waiting = q.waiting - task_waiting()
  local vt = leave(q, gkey(), TID)
  if vt ~= nil then tset('vt', vt) end
end

-- a running job of the task ended: free its place under the caps
local function job_ended(out)
  tset('running', T.running - 1)
  local q = queue(T.queue)
  local key = gkey()
  local g = gload(q, key)
  if g ~= nil then
    g.running = g.running - 1
    gsave(q, g)
    forget_if_idle(q, key)
  end
  unpark(q, out)
end

-- the task's next waiting job that is still pending (refs in line first): ref, row
local function next_row()
  local q = queue(T.queue)
  while true do
    local ref = redis.call('LPOP', KLINE)
    if not ref then
      if T.next >= T.total then return nil end
      ref = 'j' .. fmti(T.next)
      tset('next', T.next + 1)
    end
    q.waiting = q.waiting - 1
    local kind, idx = split_ref(ref)
    local r = get_row(kind, idx, ref)
    if r and r.st == 'p' then return ref, r end
  end
end

local function start_row(ref, r)
  tset('running', T.running + 1)
  local q = queue(T.queue)
  local g = gload(q, gkey())
  if g ~= nil then
    g.running = g.running + 1
    gsave(q, g)
  end
  r.st = 'r'
  r.a = r.a + 1
  put_row(ref, r)
  set_due(ref, NOW + LEASE)
  return {1, '', redis.call('HGET', KS, ref) or '', r.a, T.keep, TID, ref, T.batch}
end

local function after_take()
  if task_waiting() <= 0 then
    local vt = leave(queue(T.queue), gkey(), TID)
    if vt ~= nil then tset('vt', vt) end
  end
end

local function finish_task(state)
  if is_live() then unschedule() end
  tset('state', state)
  tset('finished_at', NOW_S)
  if T.parent ~= nil and T.parent ~= '' then
    tset('expires_at', nil)  -- a subtask expires with its root
  else
    tset('expires_at', fmt(NOW + tonumber(T.retention)))
  end
  FINISHED = true
  ENDED[#ENDED + 1] = TID  -- nest.lua's settle() ends its step in its parent
end

local function follow(ref)
  local kind, idx = split_ref(ref)
  local r = get_row(kind, idx, ref)
  if not r then return nil end
  r.st = 'p'
  if kind == 'j' then  -- back in line for a ticket
    clear_due(ref)
    put_row(ref, r)
    wait({ref})
    local out = {}
    top_up(queue(T.queue), out)
    return tickets_d(out)
  end
  put_row(ref, r)
  set_due(ref, NOW + LEASE)
  return {ref = ref, t = {}}
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
  if T.policy == 'fail' and T.failed > (T.tolerated or 0) then return fail() end
  if T.fin_done < T.fin_total then
    unschedule()  -- every job has ended: what is left in line is stale
    redis.call('DEL', KLINE)
    tset('next', T.total)
    tset('state', 'finalizing')
    return follow('f' .. fmti(T.fin_done))
  end
  finish_task('succeeded')
  return nil
end

local function ended_for_good(kind)
  if kind == 'j' then
    tset('failed', T.failed + 1)
    if is_live() and T.policy == 'fail_fast' then return fail() end
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
      if T.fin_done < T.fin_total then return follow('f' .. fmti(T.fin_done)) end
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

-- RowStore._finish on the bound task (loaded): the outcome of one attempt
local function finish_one(kind, idx, ref, attempt, has_result, result, errjson, errtype)
  local r = get_row(kind, idx, ref)
  if not r or r.st == 's' or r.st == 'f' then return nil end
  if kind == 'j' and r.st == 'r' and string.sub(redis.call('HGET', KS, ref) or '', 1, 11) == '{"subtask":' then
    return nil  -- a subtask's step ends only with the subtask (nest.lua)
  end
  if errjson and (r.st ~= 'r' or r.a ~= attempt) then return nil end
  if kind == 'f' and (T.state ~= 'finalizing' or idx ~= T.fin_done) then return nil end
  if kind == 'x' and T.state ~= 'failed' then return nil end
  local unparked = {}
  if kind == 'j' and r.st == 'r' then job_ended(unparked) end
  local d = record(r, kind, idx, ref, has_result, result, errjson, errtype)
  top_up(queue(T.queue), unparked)
  return merge(d, unparked)
end

-- write back every task and queue the script touched, and fix expiry
local function commit()
  local was = TID
  for _, tid in ipairs(CTX_ORDER) do
    bind(tid)
    if T ~= nil then
      save_task()
      apply_ttl()
    end
  end
  save_queues()
  if was then bind(was) end
end

-- a dispatch as a reply: {status, queue, ref or '', ticket...}
local function out(d, status)
  local ret = {status or 'ok', T.queue, ''}
  if d == nil then return ret end
  if d.ref then ret[3] = d.ref end
  for _, t in ipairs(d.t) do ret[#ret + 1] = t end
  return ret
end

-- start the next job of the fairest task of queue q under its caps (RowStore._take_fairest):
-- the start reply, or nil. Groups with waiting tasks, fairest first (vt, key), visited in pages
-- by rank: a group leaves the zset only once visited, so ranks shift by the groups that left.
local function take_fairest(q)
  local PAGE = 32
  local gpos, gleft = 0, 0
  while true do
    local gs = redis.call('ZRANGE', q.kg, gpos - gleft, gpos - gleft + PAGE - 1)
    if #gs == 0 then return nil end
    gpos = gpos + #gs
    for _, key in ipairs(gs) do
      local g = gload(q, key)
      if g ~= nil and (g.limit <= 0 or g.running < g.limit) then
        local tpos, tleft = 0, 0
        while true do
          local ts = redis.call('ZRANGE', g.kt, tpos - tleft, tpos - tleft + PAGE - 1)
          if #ts == 0 then break end
          tpos = tpos + #ts
          for _, tid in ipairs(ts) do
            bind(tid)
            if not load_task() or not is_live() then
              redis.call('ZREM', g.kt, tid)  -- ended tasks leave the line (not reached)
              g.ntasks = g.ntasks - 1
              gsave(q, g)
              tleft = tleft + 1
            elseif not (T.maxc > 0 and T.running >= T.maxc) then
              local ref, r = next_row()
              if ref == nil then
                after_take()
                tleft = tleft + 1
              else
                charge(q, g, tid, T.weight)
                local st = start_row(ref, r)
                after_take()
                return st
              end
            end
          end
        end
        if g.ntasks == 0 then gleft = gleft + 1 end
      end
    end
  end
end
