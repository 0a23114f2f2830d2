-- claim.lua (queue script: every due task, then every queue), RowStore.claim_due
-- ARGV[6..]: limit, lost message
-- Returns, per dispatch: task id ('' for a queue's), queue, ref or '', number of tickets, ticket...
local limit = tonumber(ARGV[6])
local lostmsg = cjson.encode(ARGV[7])
local ret = {}
local function emit(tid, qname, d)
  if d == nil then return end
  ret[#ret + 1] = tid
  ret[#ret + 1] = qname
  ret[#ret + 1] = d.ref or ''
  ret[#ret + 1] = #d.t
  for _, t in ipairs(d.t) do ret[#ret + 1] = t end
end
local items = {}
local visited = {}
-- rows due at the same instant in (task, ref) order, as the reference does
local function before(a, b)
  if a[1] ~= b[1] then return a[1] < b[1] end
  if a[2] ~= b[2] then return bytes_less(a[2], b[2]) end
  return bytes_less(a[3], b[3])
end
local function keep_first(n)  -- the n earliest items
  table.sort(items, before)
  for i = #items, n + 1, -1 do items[i] = nil end
end
if limit > 0 then
  local offset = 0
  local done = false
  while not done do
    local idx = redis.call('ZRANGEBYSCORE', KDUEIDX, '-inf', NOW_S, 'WITHSCORES', 'LIMIT', offset, 100)
    if #idx == 0 then break end
    offset = offset + #idx / 2
    for i = 1, #idx, 2 do
      local tid = idx[i]
      -- index entries are lower bounds, in order: once `limit` rows are known, a task whose
      -- bound is later than the last of them has nothing to add
      if #items >= limit then
        keep_first(limit)
        if tonumber(idx[i + 1]) > items[limit][1] then done = true; break end
      end
      bind(tid)
      visited[#visited + 1] = tid
      if not load_task() or expired() then
        redis.call('DEL', unpack(ALLK))
      else
        local due = redis.call('ZRANGEBYSCORE', KDUE, '-inf', NOW_S, 'WITHSCORES', 'LIMIT', 0, limit)
        for j = 1, #due, 2 do items[#items + 1] = {tonumber(due[j + 1]), tid, due[j]} end
      end
    end
  end
end
keep_first(limit)
for n, it in ipairs(items) do
  if n > limit then break end
  local tid, ref = it[2], it[3]
  bind(tid)
  local kind, idx = split_ref(ref)
  local r = get_row(kind, idx, ref)
  if not r or (kind == 'j' and r.st == 's') then
    clear_due(ref)
  else
    local wanted = (kind == 'j' and is_live())
      or (kind == 'f' and T.state == 'finalizing' and idx == T.fin_done)
      or (kind == 'x' and T.state == 'failed')
    if r.st == 'r' then
      -- the worker holding this lease stopped renewing it: presume it dead
      local unparked = {}
      if kind == 'j' then job_ended(unparked) end
      r.l = r.l + 1
      if not wanted then
        r.st = 'p'
        clear_due(ref)
        put_row(ref, r)
        emit(tid, T.queue, tickets_d(unparked))
      else
        local errjson = '{"ref":' .. cjson.encode(ref) .. ',"fn":' .. cjson.encode(spec_fn(ref))
          .. ',"type":"WorkerLost","message":' .. lostmsg .. ',"traceback":"","attempt":'
          .. fmti(r.a) .. ',"at":' .. NOW_S .. '}'
        emit(tid, T.queue, merge(record(r, kind, idx, ref, false, '', errjson, 'WorkerLost'), unparked))
      end
    elseif not wanted then
      clear_due(ref)
    else
      emit(tid, T.queue, follow(ref))
    end
  end
end
-- a job failed for good ended its task: its step in the parent ends too
settle()
for _, e in ipairs(EXTRA) do emit(e[1], e[2], e[3]) end
-- every queue: tickets presumed lost, and those owed
local names = {}
local seen = {}
for _, name in ipairs(redis.call('SMEMBERS', KQUEUES)) do names[#names + 1] = name; seen[name] = true end
for _, name in ipairs(QS_ORDER) do if not seen[name] then names[#names + 1] = name end end
table.sort(names)
for _, name in ipairs(names) do
  local q = queue(name)
  local t = {}
  expired_tickets(q, t)
  top_up(q, t)
  emit('', name, tickets_d(t))
end
commit()
-- the due index: each visited task's true earliest due time (or none)
for _, tid in ipairs(visited) do
  local nxt = redis.call('ZRANGE', task_keys(tid)[7], 0, 0, 'WITHSCORES')
  if nxt[2] then redis.call('ZADD', KDUEIDX, nxt[2], tid) else redis.call('ZREM', KDUEIDX, tid) end
end
return ret
