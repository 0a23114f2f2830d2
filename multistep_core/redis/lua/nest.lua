-- nest.lua: nested tasks (multistep_core/nesting.py, docs/nested.md) over flow.lua.
-- A subtask's step is a job row of its parent ('r' from creation, no due time: never queued,
-- never recovered) whose spec is {"subtask":"<child>","on_failure":"fail|ignore|continue"};
-- it ends in the same script as the child's last transition (settle). Dispatches of other
-- tasks go to EXTRA and out to the caller after the script's own reply (extras()).
local EXTRA = {}

local function is_slot_spec(s) return s ~= nil and string.sub(s, 1, 11) == '{"subtask":' end

local function slot_of(ref)
  local d = cjson.decode(redis.call('HGET', KS, ref))
  return d['subtask'], d['on_failure'] or 'fail'
end

TREE_TTL = function(tid, ms)
  for _, kid in ipairs(redis.call('LRANGE', task_keys(tid)[9], 0, -1)) do
    for _, k in ipairs(task_keys(kid)) do
      if ms == nil then redis.call('PERSIST', k) else redis.call('PEXPIRE', k, string.format('%.0f', ms)) end
    end
    TREE_TTL(kid, ms)
  end
end

local function pyrepr(s) return "'" .. s .. "'" end  -- a task id's repr (ids hold no quotes)

-- every step ended but the line never walked over some slots: take them out of it (_drop_walk)
local function drop_walk(extra)
  if is_live() and T.succeeded + T.failed + extra >= T.total and task_waiting() > 0 then
    unschedule()
    tset('next', T.total)
    redis.call('DEL', KLINE)
  end
end

-- end the step of child `c` (a snapshot of its meta) in the bound parent: RowStore's _end_slot
local function end_slot(cid, c)
  local ref = c.pref
  local kind, idx = split_ref(ref)
  local r = get_row(kind, idx, ref)
  if not r or r.st ~= 'r' then return nil end  -- counted already: exactly once
  local _, mode = slot_of(ref)
  tset('running', T.running - 1)
  local tk = {}
  unpark(queue(T.queue), tk)
  local d
  if c.state == 'succeeded' or mode == 'ignore' then
    redis.call('SETBIT', KD, idx, 1)
    redis.call('HDEL', KR, ref)
    redis.call('HDEL', KE, ref)
    clear_due(ref)
    R[ref] = {st = 's', a = r.a, f = r.f, l = r.l}
    tset('succeeded', T.succeeded + 1)
    drop_walk(0)
    d = advance()
  else
    local kindname, why
    if c.state == 'cancelled' then
      kindname = 'SubtaskCancelled'
      why = 'subtask ' .. pyrepr(cid) .. ' was cancelled by ' .. tostring(c.cancelled_by)
    else
      kindname = 'SubtaskFailed'
      why = 'subtask ' .. pyrepr(cid) .. ' failed (' .. fmti(c.failed) .. ' of ' .. fmti(c.total) .. ' steps failed)'
    end
    r.st = 'f'
    clear_due(ref)
    put_row(ref, r)
    redis.call('HSET', KE, ref, '{"ref":' .. cjson.encode(ref) .. ',"fn":' .. cjson.encode('subtask:' .. cid)
      .. ',"type":"' .. kindname .. '","message":' .. cjson.encode(why) .. ',"traceback":"","attempt":'
      .. fmti(r.a) .. ',"at":' .. NOW_S .. '}')
    if mode == 'continue' then
      tset('failed', T.failed + 1)
      tset('tolerated', (T.tolerated or 0) + 1)
      drop_walk(0)
      d = advance()
    else
      drop_walk(1)
      d = ended_for_good('j')
    end
  end
  return merge(d, tk)
end

-- every task with a parent that ended in this script ends its step there (up the tree)
local function settle()
  local was = TID
  local i = 1
  while i <= #ENDED do
    local tid = ENDED[i]
    i = i + 1
    bind(tid)
    if T ~= nil and T.parent ~= nil and T.parent ~= '' then
      local c = {state = T.state, pref = T.pref, failed = T.failed, total = T.total, cancelled_by = T.cancelled_by}
      bind(T.parent)
      if load_task() then
        local d = end_slot(tid, c)
        if d ~= nil then EXTRA[#EXTRA + 1] = {TID, T.queue, d} end
      end
    end
  end
  ENDED = {}
  if was then bind(was) end
end

-- cancel cascades down (the bound task was just cancelled)
local function cancel_children(by)
  local pid = TID
  for _, kid in ipairs(redis.call('LRANGE', KKIDS, 0, -1)) do
    bind(kid)
    if load_task() and T.state ~= 'succeeded' and T.state ~= 'cancelled' then
      finish_task('cancelled')
      tset('cancelled_by', by .. ' (cancelled with its parent ' .. pyrepr(pid) .. ')')
      tset('cancelled_at', NOW_S)
      cancel_children(by)
    end
    bind(pid)
  end
end

-- the extras as reply items: '+', then per dispatch task, queue, ref or '', n, ticket...
local function extras(ret)
  if #EXTRA == 0 then return ret end
  ret[#ret + 1] = '+'
  for _, e in ipairs(EXTRA) do
    ret[#ret + 1] = e[1]
    ret[#ret + 1] = e[2]
    ret[#ret + 1] = e[3].ref or ''
    ret[#ret + 1] = #e[3].t
    for _, t in ipairs(e[3].t) do ret[#ret + 1] = t end
  end
  return ret
end

-- the failure a row resumes from stays in KE as 'h<ref>' (history: failures.lua lists it,
-- resolved, once the row succeeds; RowStore keeps it in the row's error, marked 'retried')
local function keep_history(ref)
  local e = redis.call('HGET', KE, ref)
  if e then redis.call('HSET', KE, 'h' .. ref, e) end
  redis.call('HDEL', KE, ref)
end

-- RowStore._retry_row on the bound (failed) task; a failed parent retries its failed children
local retry_bound
retry_bound = function()
  tset('finished_at', nil)
  tset('expires_at', nil)
  local bm = redis.call('GET', KD) or ''
  local flat = redis.call('HGETALL', KR)
  local rows = {}
  for i = 1, #flat, 2 do rows[flat[i]] = flat[i + 1] end
  local dues = {}
  for _, m in ipairs(redis.call('ZRANGE', KDUE, 0, -1)) do dues[m] = true end
  local inline = {}
  for _, m in ipairs(redis.call('LRANGE', KLINE, 0, -1)) do inline[m] = true end
  local refs = {}
  local slots = {}
  local again = 0
  local failed = T.failed
  for i = 0, T.total - 1 do
    local byte = string.byte(bm, math.floor(i / 8) + 1) or 0
    if bit.band(byte, bit.rshift(128, i % 8)) == 0 then
      local ref = 'j' .. fmti(i)
      local r = parse_row(rows[ref])
      if r.st ~= 'r' then
        if r.st == 'f' and is_slot_spec(redis.call('HGET', KS, ref)) then
          slots[#slots + 1] = i
        else
          if r.st == 'f' then
            failed = failed - 1
            keep_history(ref)
          end
          if r.st ~= 'p' or r.f ~= 0 or r.l ~= 0 then
            r.st = 'p'; r.f = 0; r.l = 0
            put_row(ref, r)
          end
          if dues[ref] then clear_due(ref) end
          again = again + 1
          if not inline[ref] and i < T.next then refs[#refs + 1] = ref end
        end
      end
    end
  end
  if failed ~= T.failed then tset('failed', failed) end
  -- failed subtasks (nesting.retry_slots)
  local pid = TID
  for _, i in ipairs(slots) do
    local ref = 'j' .. fmti(i)
    local cid, mode = slot_of(ref)
    bind(cid)
    local cst = nil
    if load_task() then cst = T.state end
    bind(pid)
    if cst == 'failed' or cst == 'succeeded' then
      tset('failed', T.failed - 1)
      if mode == 'continue' then tset('tolerated', T.tolerated - 1) end
      redis.call('HDEL', KE, ref)
      local r = get_row('j', i, ref)
      if cst == 'succeeded' then
        redis.call('SETBIT', KD, i, 1)
        redis.call('HDEL', KR, ref)
        R[ref] = {st = 's', a = r.a, f = r.f, l = r.l}
        tset('succeeded', T.succeeded + 1)
      else
        r.st = 'r'
        r.a = r.a + 1
        put_row(ref, r)
        tset('running', T.running + 1)
        again = again + 1
        bind(cid)
        local d = retry_bound()
        local cq = T.queue
        bind(pid)
        if d ~= nil then EXTRA[#EXTRA + 1] = {cid, cq, d} end
      end
    end
  end
  local fin_failed = nil
  for i = 0, T.fin_total - 1 do
    local ref = 'f' .. fmti(i)
    if rows[ref] then
      local r = parse_row(rows[ref])
      if r.st == 'f' then fin_failed = ref end
    end
  end
  if fin_failed and again == 0 then
    local r = get_row('f', tonumber(string.sub(fin_failed, 2)), fin_failed)
    r.f = 0; r.l = 0
    keep_history(fin_failed)
    put_row(fin_failed, r)
    tset('state', 'finalizing')
    return follow(fin_failed)
  end
  if T.sealed == 1 then tset('state', 'running') else tset('state', 'open') end
  local q = queue(T.queue)
  q.waiting = q.waiting + task_waiting()
  wait(refs)
  local d = advance()
  local more = {}
  top_up(q, more)
  return merge(d, more)
end

-- a failed subtask retried on its own reopens its step in the parent (nesting.reopen_slot)
local function reopen_slot()
  if T.parent == nil or T.parent == '' then return end
  local cid, pref = TID, T.pref
  bind(T.parent)
  if load_task() and T.state ~= 'succeeded' and T.state ~= 'cancelled' then
    local kind, idx = split_ref(pref)
    local r = get_row(kind, idx, pref)
    if r and r.st == 'f' then
      local _, mode = slot_of(pref)
      tset('failed', T.failed - 1)
      if mode == 'continue' then tset('tolerated', T.tolerated - 1) end
      tset('running', T.running + 1)
      r.st = 'r'
      r.a = r.a + 1
      put_row(pref, r)
      redis.call('HDEL', KE, pref)
    end
  end
  bind(cid)
end

-- remove a task and every task below it (a waiting one leaves its queue's line first)
local delete_tree
delete_tree = function(tid)
  bind(tid)
  if load_task() then
    if is_live() then unschedule() end
    if T.running > 0 then
      -- its running jobs will never report back: free their places under the group's cap,
      -- and owe back the tickets parked on them (the next top-up issues them)
      local q = queue(T.queue)
      local key = gkey()
      local g = gload(q, key)
      if g ~= nil then
        g.running = g.running - T.running
        gsave(q, g)
        forget_if_idle(q, key)
      end
      q.parked = math.max(0, q.parked - T.running)
    end
  end
  for _, kid in ipairs(redis.call('LRANGE', KKIDS, 0, -1)) do
    delete_tree(kid)
    bind(tid)
  end
  redis.call('DEL', unpack(ALLK))
  redis.call('ZREM', PFX .. ':tasks', TID)
  redis.call('ZREM', KDUEIDX, TID)
  T = nil
  TC = {}
  R = {}
end
