-- start.lua (task script)
-- ARGV[6..]: kind, index, ref
-- Returns {run, reason, spec, attempt, keep, task, ref, batch}
bind(ARGV[5])
if not load_task() then return {0, 'task-missing'} end
local kind, idx, ref = ARGV[6], tonumber(ARGV[7]), ARGV[8]
local r = get_row(kind, idx, ref)
if not r then return {0, 'job-missing'} end
if r.st == 's' or r.st == 'f' then return {0, 'already-finished'} end
if r.st == 'r' then return {0, 'already-running'} end
if r.st == 'w' then return {0, 'retry-not-due'} end
if kind == 'j' then
  -- a message naming the job itself (not a ticket): it may run if it is pending and its
  -- task under its caps; its place in line is skipped when reached
  if not is_live() then return {0, 'task-' .. T.state} end
  local q = queue(T.queue)
  local g = gload(q, gkey())
  if (T.maxc > 0 and T.running >= T.maxc) or (g ~= nil and g.limit > 0 and g.limit <= g.running) then
    return {0, 'capped'}
  end
  local st = start_row(ref, r)
  commit()
  return st
elseif kind == 'f' then
  if T.state ~= 'finalizing' or idx ~= T.fin_done then return {0, 'task-' .. T.state} end
elseif T.state ~= 'failed' then
  return {0, 'task-' .. T.state}
end
r.st = 'r'
r.a = r.a + 1
put_row(ref, r)
set_due(ref, NOW + LEASE)
commit()
return {1, '', redis.call('HGET', KS, ref) or '', r.a, T.keep, TID, ref, 1}
